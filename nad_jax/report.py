"""The results table and a short "what was found" text, markdown and JSON.

Rendering only: ``write_report`` writes the rows of all networks (from
``nad_jax.metrics.summary_row``) as one markdown table plus a paragraph
generated from the numbers, and the same rows as JSON.
``summarize_model`` is kept for callers that hold only paths: it computes
M and the usage and calls ``metrics.summary_row``. The HTML report is
``nad_jax.html_report``. Memory: negligible (one K x K matrix per seed
while summarising).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nad_jax import metrics

# Markdown columns: row key, header, how the value is shown.
_COLUMNS = (
    ("model", "network", "text"),
    ("num_concepts", "concepts", "int"),
    ("num_seeds", "seeds", "int"),
    ("steps", "steps", "int"),
    ("interpretability", "I (Eq. 12)", "I"),
    ("mean_path_accuracy", "path acc.", "percent"),
    ("original_accuracy", "original acc.", "percent"),
    ("mean_usage", "mean usage", "fixed"),
    ("cophenetic_correlation", "cophenetic r", "fixed"),
    ("adjusted_rand_index", "ARI", "fixed"),
)

COLUMN_DESCRIPTIONS = {
    "model": "network name",
    "num_concepts": "number of concepts (classes) disentangled",
    "num_seeds": "random initialisations per concept; metrics are seed means",
    "steps": "search steps per concept",
    "interpretability": "I, paper Eq. 12 (mean over seeds)",
    "interpretability_std": "standard deviation of I over seeds (0 for one)",
    "mean_path_accuracy": "mean per-class top-1 accuracy with the hard path",
    "original_accuracy": "mean per-class top-1 accuracy of the original "
                         "network on the same classes",
    "mean_usage": "unit usage rate averaged over sites (each site equal)",
    "usage_per_site": "unit usage rate per gate site",
    "cophenetic_correlation": "Pearson r of the average-linkage cophenetic "
                              "distances of 1 - M vs. the planted distance "
                              "(0 within a primary, 1 across); seed mean",
    "adjusted_rand_index": "ARI of the tree cut into as many clusters as "
                           "primaries vs. the planted primaries; seed mean",
    "within_primary_similarity": "mean M over class pairs of one primary",
    "across_primary_similarity": "mean M over class pairs of different "
                                 "primaries",
    "num_primaries": "number of planted primary concepts",
    "figures": "figure name -> PNG path",
    "per_seed": "score -> its value for each seed",
}

ARI_RECOVERED = 0.5  # the report calls the hierarchy recovered above this


def summarize_model(model: str,
                    paths: Mapping[str, np.ndarray],
                    path_accuracy: np.ndarray,
                    original_accuracy: np.ndarray,
                    steps: int,
                    primary_of: np.ndarray | None = None,
                    figures: Mapping[str, str] | None = None
                    ) -> dict[str, Any]:
  """One report row for one network, computed from its paths.

  ``metrics.summary_row`` does the work (every metric per seed, then the
  mean over seeds; I also gets its standard deviation); this wrapper first
  computes M and the usage from ``paths``. A run that already holds them
  calls ``metrics.summary_row`` directly.

  Args:
    model: network name.
    paths: site -> bool ``[K, channels]`` or ``[S, K, channels]`` hard paths.
    path_accuracy: ``[K]`` or ``[S, K]`` per-class accuracy with the path.
    original_accuracy: ``[K]`` per-class accuracy of the original network.
    steps: search steps per concept.
    primary_of: ``[K]`` planted primary of each class, or None (then the
      hierarchy scores are NaN).
    figures: figure name -> PNG path as the figure functions return it
      (absolute, or relative to the working directory); the report links
      it relative to the markdown file.

  Returns:
    A dict of plain Python values (keys in ``COLUMN_DESCRIPTIONS``).
  """
  similarity = metrics.path_similarity(paths)
  if similarity.ndim not in (2, 3):
    raise ValueError(f"paths of model {model!r} must be [K, C] or [S, K, C] "
                     f"per site; got similarity of shape {similarity.shape}")
  row = metrics.summary_row(model, similarity, metrics.unit_usage(paths),
                            path_accuracy, original_accuracy, steps,
                            primary_of)
  row["figures"] = dict(figures or {})
  return row


def _is_missing(value) -> bool:
  return value is None or (isinstance(value, float) and math.isnan(value))


def _format(value, kind: str, row: Mapping[str, Any]) -> str:
  if _is_missing(value):
    return "n/a"
  if kind == "text":
    return str(value)
  if kind == "int":
    return str(int(value))
  if kind == "percent":
    return f"{100 * value:.1f}%"
  if kind == "I":
    text = f"{value:.4g}"
    if row.get("num_seeds", 1) > 1 and not _is_missing(
        row.get("interpretability_std")):
      text += f" ± {row['interpretability_std']:.2g}"
    return text
  return f"{value:.3f}"


def _plain(value):
  """JSON-safe copy: numpy -> Python, NaN -> None."""
  if isinstance(value, Mapping):
    return {str(key): _plain(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(item) for item in value]
  if isinstance(value, np.ndarray):
    return _plain(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and math.isnan(value):
    return None
  return value


def _findings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Plain sentences that the numbers in ``rows`` support."""
  lines = []
  ranked = sorted((row for row in rows
                   if not _is_missing(row.get("interpretability"))),
                  key=lambda row: row["interpretability"], reverse=True)
  if len(ranked) >= 2:
    order = ", ".join(f"{row['model']} ({row['interpretability']:.4g})"
                      for row in ranked)
    lines.append(f"Interpretability I, highest first: {order}. By the "
                 f"paper's measure {ranked[0]['model']} is the most "
                 f"interpretable network here.")
    first, second = ranked[0], ranked[1]
    spread = max(first.get("interpretability_std", 0.0) or 0.0,
                 second.get("interpretability_std", 0.0) or 0.0)
    gap = first["interpretability"] - second["interpretability"]
    if min(first.get("num_seeds", 1), second.get("num_seeds", 1)) < 2:
      lines.append("With a single seed there is no estimate of the "
                   "seed-to-seed spread of I, so small gaps may not hold up.")
    elif gap <= spread:
      lines.append(f"The gap between {first['model']} and {second['model']} "
                   f"({gap:.2g}) is within the seed-to-seed standard "
                   f"deviation ({spread:.2g}): that ranking is not settled.")
  elif len(ranked) == 1:
    lines.append(f"{ranked[0]['model']}: I = "
                 f"{ranked[0]['interpretability']:.4g} (one network, so no "
                 f"ranking).")

  recovered, not_recovered = [], []
  for row in rows:
    ari = row.get("adjusted_rand_index")
    if _is_missing(ari):
      continue
    text = (f"{row['model']} (ARI {ari:.2f}, cophenetic r "
            f"{_format(row.get('cophenetic_correlation'), 'fixed', row)}, "
            f"similarity within/across primaries "
            f"{_format(row.get('within_primary_similarity'), 'fixed', row)}/"
            f"{_format(row.get('across_primary_similarity'), 'fixed', row)})")
    (recovered if ari > ARI_RECOVERED else not_recovered).append(text)
  if recovered:
    lines.append("The planted hierarchy is recovered (ARI > "
                 f"{ARI_RECOVERED}) by clustering the path similarity of: "
                 + "; ".join(recovered) + ".")
  if not_recovered:
    lines.append(f"Not recovered (ARI <= {ARI_RECOVERED}): "
                 + "; ".join(not_recovered) + ".")

  at_least, below = [], []
  for row in rows:
    path_acc, original = row.get("mean_path_accuracy"), row.get(
        "original_accuracy")
    if _is_missing(path_acc) or _is_missing(original):
      continue
    text = f"{row['model']} ({100 * path_acc:.1f}% vs {100 * original:.1f}%)"
    (at_least if path_acc >= original else below).append(text)
  if at_least:
    lines.append("Mean path accuracy is at least the original network's "
                 "accuracy for: " + "; ".join(at_least) + ".")
  if below:
    lines.append("Mean path accuracy is below the original network's for: "
                 + "; ".join(below) + ".")

  by_usage = sorted((row for row in rows
                     if not _is_missing(row.get("mean_usage"))),
                    key=lambda row: row["mean_usage"], reverse=True)
  if len(by_usage) >= 2:
    lines.append("Mean unit usage, highest first: " + ", ".join(
        f"{row['model']} ({row['mean_usage']:.3f})" for row in by_usage) + ".")
  return lines


def write_report(rows: Sequence[Mapping[str, Any]],
                 path_md: str | os.PathLike,
                 path_json: str | os.PathLike,
                 extra_md: str = "",
                 title: str = "NAD report") -> tuple[str, str]:
  """Writes the results table as markdown (with findings) and as JSON.

  Args:
    rows: one dict per network (``summarize_model`` output; needs at least
      ``model``; missing or NaN values show as "n/a").
    path_md: the markdown file to write.
    path_json: the JSON file to write: ``{"columns": {key: description},
      "rows": [...]}`` with NaN written as null.
    extra_md: markdown appended at the end (e.g. run settings).
    title: the markdown title.

  Returns:
    ``(path_md, path_json)``.
  """
  if not rows:
    raise ValueError("write_report needs at least one row")
  for index, row in enumerate(rows):
    if "model" not in row:
      raise ValueError(f"report row {index} has no 'model' key: "
                       f"{sorted(row)}")
  path_md, path_json = os.fspath(path_md), os.fspath(path_json)
  md_dir = os.path.dirname(os.path.abspath(path_md))

  lines = [f"# {title}", ""]
  lines.append("| " + " | ".join(header for _, header, _ in _COLUMNS) + " |")
  lines.append("|" + "|".join("---" for _ in _COLUMNS) + "|")
  for row in rows:
    cells = [_format(row.get(key), kind, row) for key, _, kind in _COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "I: variance of a_i a_j M_ij over class pairs (larger = more "
            "interpretable). Accuracies are means of per-class top-1 "
            "accuracy. ARI and cophenetic r score how well average-linkage "
            "clustering of 1 - M recovers the planted primary concepts "
            "(1 = perfectly; ARI about 0 = chance). See docs/metrics.md.",
            "", "## What was found", ""]
  lines += [f"- {line}" for line in _findings(rows)]

  figure_lines = []
  for row in rows:
    links = [f"[{name}]({os.path.relpath(os.path.abspath(path), md_dir)})"
             for name, path in (row.get("figures") or {}).items()]
    if links:
      figure_lines.append(f"- {row['model']}: " + ", ".join(links))
  if figure_lines:
    lines += ["", "## Figures", ""] + figure_lines
  if extra_md:
    lines += ["", extra_md.rstrip()]

  for path in (path_md, path_json):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path_md, "w") as file:
    file.write("\n".join(lines) + "\n")
  with open(path_json, "w") as file:
    json.dump({"columns": COLUMN_DESCRIPTIONS, "rows": _plain(list(rows))},
              file, indent=2, allow_nan=False)
    file.write("\n")
  return path_md, path_json
