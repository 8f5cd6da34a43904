"""Compare several networks' runs from their workdirs alone.

    python -m nad_jax.compare --workdirs=runs/vgg16,runs/resnet50 \\
        --out=runs/compare

reads each workdir's ``metrics.json`` (and ``analyses.json`` when the
analyses ran) and writes into ``--out``:

* ``report.html``: self-contained (figures embedded), a summary, each
  network's facts, a table of every score (with its control) and the
  figures: unit usage per site across networks (paper Fig. 4) and
  interpretability vs. original accuracy (Fig. 6);
* ``report.md`` / ``report.json``: the markdown table and the rows
  (``nad_jax.report.write_report``);
* ``scores.csv``: one line per network and score;
* ``unit_usage.png``, ``interpretability_vs_accuracy.png``.

Nothing is recomputed and no network is loaded: the comparison reads only
what the runs stored, so runs made on different machines can be compared.
The demo's compare mode (``config.compare``) calls ``compare_workdirs``.
Memory: the stored JSON of the runs.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

from nad_jax import figures
from nad_jax import html_report
from nad_jax import report


def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as file:
    return json.load(file)


def load_run(workdir: str) -> dict[str, Any]:
  """``{"workdir", "row", "analysis"}`` of one run.

  Raises:
    FileNotFoundError: no ``metrics.json`` (the run did not finish its
      evaluation), naming the workdir.
  """
  metrics_json = _read_json(os.path.join(workdir, "metrics.json"))
  if metrics_json is None:
    raise FileNotFoundError(
        f"{workdir} has no metrics.json: not a finished nad-jax run (run the "
        f"search there, or --config.mode=analyze on it)")
  return {"workdir": workdir, "row": metrics_json["row"],
          "analysis": _read_json(os.path.join(workdir, "analyses.json")),
          "config": _read_json(os.path.join(workdir, "config.json"))}


def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _settings_lines(runs) -> list[str]:
  """Markdown: the settings each network ran with (its ``config.json``),
  those that differ as a table, the rest once."""
  if not all(run.get("config") for run in runs):
    return []
  configs = [_flat(run["config"]) for run in runs]
  keys = sorted(set().union(*configs))
  differ = [k for k in keys if len({json.dumps(c.get(k), default=str)
                                    for c in configs}) > 1]
  lines = ["", "## Settings of each network", "",
           "Each network ran with its `config.json` (in its workdir). "
           "Settings that differ:", "",
           "| network | " + " | ".join(differ) + " |",
           "|---|" + "---|" * len(differ)]
  for run, values in zip(runs, configs):
    lines.append(f"| {run['row']['model']} | " + " | ".join(
        str(values.get(k)) for k in differ) + " |")
  shared = {k: configs[0].get(k) for k in keys if k not in differ}
  return lines + ["", "Shared settings:", "", "```",
                  json.dumps(shared, indent=1, default=str), "```"]


def _hparams_text(run) -> str:
  """The network's hyperparameters, from its analyses or its config."""
  hparams = (run["analysis"] or {}).get("run", {}).get("hparams")
  if not hparams and run.get("config"):
    config = run["config"]
    objective = config["objective"]
    hparams = {"objective": objective["name"],
               "alpha": config["optim"]["alpha"]}
    hparams.update({k: v for k, v in objective.items() if k != "name"})
  return ", ".join(f"{k} {v}" for k, v in (hparams or {}).items())


def _score_entries(run) -> dict[str, dict[str, Any]]:
  """key -> score entry; runs without analyses get the row's scores."""
  if run["analysis"]:
    return {entry["key"]: entry for entry in run["analysis"]["scores"]}
  row = run["row"]
  entries = {}
  for key, label, unit in (
      ("interpretability", "interpretability I (Eq. 12)", "I"),
      ("mean_path_accuracy", "path accuracy (sufficiency: only the path)",
       "percent"),
      ("original_accuracy", "original network accuracy", "percent"),
      ("mean_usage", "mean unit usage", "fixed")):
    entries[key] = {"key": key, "label": label, "value": row.get(key),
                    "std": None, "control": None, "control_label": None,
                    "p_value": None, "unit": unit}
  return entries


def _cell(entry) -> str:
  if entry is None:
    return "n/a"
  text = html_report.format_value(entry.get("value"), entry["unit"])
  if entry.get("control") is not None:
    text += (f" (control "
             f"{html_report.format_value(entry['control'], entry['unit'])})")
  if entry.get("p_value") is not None:
    text += f", p = {html_report.format_p(entry['p_value'])}"
  return text


def _sentences(runs) -> list[str]:
  lines = []
  ranked = sorted(runs, key=lambda run: run["row"]["interpretability"],
                  reverse=True)
  order = ", ".join(
      f"{run['row']['model']} ({run['row']['interpretability']:.4g}"
      + (f", random-path control "
         f"{run['analysis']['random_control']['interpretability']['mean']:.4g}"
         if run["analysis"] else "") + ")" for run in ranked)
  lines.append(f"Interpretability I, highest first: {order}.")
  seeds = min(int(run["row"].get("num_seeds", 1)) for run in runs)
  if len(ranked) >= 2:
    first, second = ranked[0]["row"], ranked[1]["row"]
    gap = first["interpretability"] - second["interpretability"]
    spread = max(first.get("interpretability_std") or 0.0,
                 second.get("interpretability_std") or 0.0)
    if seeds < 2:
      lines.append("With one seed per network there is no seed-to-seed "
                   "spread of I, so a small gap between two networks may "
                   "not hold up.")
    elif gap <= spread:
      lines.append(f"The gap between {first['model']} and {second['model']} "
                   f"({gap:.2g}) is within the seed-to-seed standard "
                   f"deviation ({spread:.2g}): that ranking is not settled.")
  for run in runs:
    row, analysis = run["row"], run["analysis"]
    text = (f"{row['model']}: path accuracy "
            f"{100 * row['mean_path_accuracy']:.1f}% (original "
            f"{100 * row['original_accuracy']:.1f}%), mean usage "
            f"{row['mean_usage']:.3f}")
    if analysis:
      ablation = analysis["ablation"]
      text += (f"; random same-size paths "
               f"{100 * ablation['random_kept']['mean']:.1f}%; path removed "
               f"{100 * ablation['removed']['mean']:.1f}% (random removed "
               f"{100 * ablation['random_removed']['mean']:.1f}%)")
      hierarchy = analysis.get("hierarchy")
      if hierarchy:
        ari = hierarchy["adjusted_rand_index"]
        text += (f"; hierarchy ARI {ari['observed']:.2f} (p = "
                 f"{html_report.format_p(ari['p_value'])})")
      hit = analysis.get("hit_rate", {}).get("authors")
      if hit:
        text += (f"; hit rate {100 * hit['last_sites_mean']:.1f}% (random "
                 f"{100 * hit['random_last_sites_mean']:.1f}%, chance 25%)")
    lines.append(text + ".")
  return lines


def compare_workdirs(workdirs: Sequence[str], out_dir: str,
                     title: str = "NAD report: networks compared",
                     figures_enabled: bool = True) -> dict[str, str]:
  """Compares the runs in ``workdirs`` into ``out_dir``.

  Args:
    workdirs: finished runs (each with ``metrics.json``).
    out_dir: where the comparison goes (may be the parent of the workdirs).
    title: the report title.
    figures_enabled: write (and embed) the two figures.

  Returns:
    ``{"html", "md", "json", "csv"}`` paths.

  Raises:
    FileNotFoundError: a workdir without ``metrics.json`` (named).
    ValueError: no workdirs.
  """
  if not workdirs:
    raise ValueError("compare_workdirs needs at least one workdir")
  runs = [load_run(os.path.abspath(w)) for w in workdirs]
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)

  figure_paths = {}
  if figures_enabled:
    figure_paths["Unit usage per gate site (paper Fig. 4)"] = \
        figures.unit_usage_plot(
            {run["row"]["model"]: run["row"]["usage_per_site"]
             for run in runs}, os.path.join(out_dir, "unit_usage.png"),
            title="Unit usage rate per gate site")
    points = []
    for run in runs:
      row = run["row"]
      point = {"model": row["model"],
               "interpretability": row["interpretability"],
               "interpretability_std": row.get("interpretability_std"),
               "original_accuracy": row["original_accuracy"]}
      if run["analysis"]:
        point["random_interpretability"] = run["analysis"][
            "random_control"]["interpretability"]["mean"]
      points.append(point)
    figure_paths["Interpretability vs. accuracy (paper Fig. 6)"] = \
        figures.interpretability_vs_accuracy(
            points, os.path.join(out_dir, "interpretability_vs_accuracy.png"),
            title="Interpretability vs. original accuracy")

  # The table of every score: union of the runs' score keys, in order.
  entries = [_score_entries(run) for run in runs]
  keys, labels = [], {}
  for per_run in entries:
    for key, entry in per_run.items():
      if key not in labels:
        keys.append(key)
        labels[key] = entry["label"]
  names = [run["row"]["model"] for run in runs]
  score_rows = [[labels[key]] + [_cell(per_run.get(key)) for per_run in
                                 entries] for key in keys]
  csv_path = os.path.join(out_dir, "scores.csv")
  with open(csv_path, "w", newline="") as file:
    writer = csv.writer(file)
    writer.writerow(["model", "key", "label", "value", "std", "control",
                     "control_label", "p_value"])
    for name, per_run in zip(names, entries):
      for key in keys:
        entry = per_run.get(key)
        if entry is None:
          continue
        writer.writerow([name, key, entry["label"]] + [
            "" if entry.get(field) is None else entry.get(field)
            for field in ("value", "std", "control", "control_label",
                          "p_value")])

  sentences = _sentences(runs)
  networks = []
  for run in runs:
    row = run["row"]
    run_facts = (run["analysis"] or {}).get("run", {})
    link = os.path.relpath(os.path.join(run["workdir"], "report.html"),
                           out_dir)
    networks.append({
        "model": row["model"],
        "link": link if os.path.exists(os.path.join(
            run["workdir"], "report.html")) else None,
        "facts": [["dataset", run_facts.get("dataset", "")],
                  ["concepts", str(row["num_concepts"])],
                  ["seeds", str(row["num_seeds"])],
                  ["steps", str(row["steps"])],
                  ["hyperparameters", _hparams_text(run)],
                  ["workdir", run["workdir"]]]})
  html_path = html_report.write_comparison_html(
      os.path.join(out_dir, "report.html"), title, networks, score_rows,
      ["score"] + names, figure_paths, sentences)

  rows = []
  for run in runs:
    row = dict(run["row"])
    row["figures"] = {key: os.path.join(run["workdir"], os.path.basename(
        value)) for key, value in (row.get("figures") or {}).items()}
    rows.append(row)
  extra = ["", "## Analyses and controls", ""]
  extra += [f"- {line}" for line in sentences]
  extra += ["", "| score | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names)]
  extra += ["| " + " | ".join(cells) + " |" for cells in score_rows]
  if figure_paths:
    extra += [""] + [f"![{figure_title}]({os.path.basename(p)})"
                     for figure_title, p in figure_paths.items()]
  extra += ["", "Workdirs: " + ", ".join(run["workdir"] for run in runs)]
  extra += _settings_lines(runs)
  md_path, json_path = report.write_report(
      rows, os.path.join(out_dir, "report.md"),
      os.path.join(out_dir, "report.json"), extra_md="\n".join(extra),
      title=title)
  return {"html": html_path, "md": md_path, "json": json_path,
          "csv": csv_path}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  outputs = compare_workdirs(flags.FLAGS.workdirs, flags.FLAGS.out,
                             title=flags.FLAGS.title)
  print(outputs["html"])


def _define_flags():
  """The command line's flags (only when run as a program, so that
  importing this module adds nothing to another program's flags)."""
  flags.DEFINE_list("workdirs", None,
                    "Comma-separated workdirs of finished runs.")
  flags.DEFINE_string("out", None, "Directory for the comparison.")
  flags.DEFINE_string("title", "NAD report: networks compared",
                      "Report title.")
  flags.mark_flags_as_required(["workdirs", "out"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
