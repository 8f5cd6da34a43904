"""Self-contained HTML reports (and the markdown summary), rendering only.

``write_network_report(workdir)`` reads what a run stored in its workdir
(``metrics.json``, ``analyses.json``, the PNG figures) and writes
``workdir/report.html``: a summary in plain sentences with every number
next to its control, what the run rests on (network, dataset, concepts,
seeds, steps, config), the table of scores, every figure with a caption,
the top-k table and the per-class numbers. ``write_comparison_html`` does
the same for several networks (``nad_jax.compare``).

The HTML has no scripts, no external fonts, styles or CDNs: the CSS is
inline and every image is embedded as a ``data:image/png;base64`` URI, so
the file opens offline and can be mailed on its own. Links to the JSON/CSV
files next to it are relative. Memory: the PNGs of one report (a few MB).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

NETWORK_REPORT = "report.html"

# Figure key -> (title, caption). Order = order in the report.
FIGURE_TEXT = (
    ("precision", "Per-class precision (paper Fig. 3)",
     "Top-1 precision of each class's validation images, binned in 10% "
     "steps: the original network vs. each class through its own path."),
    ("unit_usage", "Unit usage per gate site (paper Fig. 4)",
     "Share of each site's units that a path selects, averaged over "
     "classes and seeds. The random-path control selects exactly as many "
     "units per class and site, so its usage is identical by construction."),
    ("activation_maps", "Activation maps on a 2x2 mosaic (paper Fig. 1, 5)",
     "Four validation images of four classes tiled into a mosaic of twice "
     "the input size and shrunk to the input (the authors' convention). "
     "Per site, the channel sum of the site's output, min-max scaled, "
     "resized to the input (bicubic) and binarised to its top pixels (red). "
     "Rows: the original network, each class's path, and a random path "
     "with as many units per site as the first class's path."),
    ("activation_maps_full", "Activation maps on the full-size mosaic",
     "The same mosaic fed at twice the input size (no shrinking), for "
     "networks that take any input size."),
    ("similarity", "Path similarity M, clustered (paper Fig. 7)",
     "Mean Jaccard index of two classes' paths over the sites; rows and "
     "columns in the order of the average-linkage dendrogram on 1 - M; "
     "labels coloured by the hierarchy's primary concept."),
    ("permutation_tests", "Hierarchy agreement vs. random relabelling",
     "Each score recomputed after relabelling the classes at random "
     "(grey); the red line is the observed value. p = share of "
     "relabellings at least as large (one-sided)."),
    ("ablation", "Sufficiency and necessity",
     "Top-1 accuracy of each class's validation images with only its "
     "path's units (sufficiency = path accuracy), with its path's units "
     "removed (necessity), and the same with random paths of the same "
     "number of units per site (controls)."),
    ("cross_class", "Does a path serve only its class?",
     "Accuracy of class d's images (columns) through class c's path "
     "(rows). A path that serves only its class has a bright diagonal."),
    ("cross_class_predicted", "What another class's path predicts",
     "Share of class d's images that class c's path classifies as c."),
    ("top_k", "Most similar paths vs. most confused classes",
     "How many of each class's k most similar paths are among the k "
     "classes the original network most confuses it with (mean softmax "
     "over its validation images), next to chance (hypergeometric), and "
     "the authors' variant (first 100 classes, one validation image)."),
    ("hit_rate", "Hit rate on 2x2 mosaics (the authors' analysis)",
     "Per site, the share of a path's top activation pixels that lie in "
     "its own class's quadrant (mean and standard deviation over "
     "mosaics), for the paths and for random same-size paths; chance is "
     "0.25."),
    ("seed_stability", "Path stability across seeds",
     "M between the paths of one class found from different random "
     "initialisations, against M between different classes."),
    ("trajectory", "Paths during the search",
     "Share of each site's units whose binary value changed since the "
     "previous record, and the unit usage, against the search step."),
)

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;
max-width:1180px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;
border-bottom:1px solid #ddd;padding-bottom:.2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;
font-variant-numeric:tabular-nums}
figure{margin:1.2em 0;padding:.6em;border:1px solid #e3e3e3;
background:#fcfcfc}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.9em;color:#444;margin-top:.4em}
ul.summary li{margin:.35em 0}pre{background:#f6f6f6;padding:.6em;
overflow-x:auto;font-size:.8em}.muted{color:#666;font-size:.9em}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
"""


def _escape(text: Any) -> str:
  return html.escape(str(text), quote=True)


def _missing(value) -> bool:
  return value is None or (isinstance(value, float) and math.isnan(value))


def _no_negative_zero(text: str) -> str:
  """``-0.00`` -> ``0.00``: a rounded tiny negative is shown as zero."""
  return text[1:] if text.startswith("-") and not text.strip("-0.%") else text


def _fixed(value, digits: int = 3) -> str:
  return _no_negative_zero(f"{value:.{digits}f}")


def format_value(value, unit: str) -> str:
  """A score as the report shows it (``percent``, ``I`` or ``fixed``)."""
  if _missing(value):
    return "n/a"
  if unit == "percent":
    return _no_negative_zero(f"{100 * value:.1f}%")
  if unit == "I":
    return f"{value:.4g}"
  return _fixed(value)


def format_p(p_value) -> str:
  if _missing(p_value):
    return "n/a"
  return f"{p_value:.3g}"


def _difference(entry: Mapping[str, Any]) -> str:
  value, control = entry.get("value"), entry.get("control")
  if _missing(value) or _missing(control):
    return ""
  if entry["unit"] == "percent":
    return _no_negative_zero(f"{100 * (value - control):+.1f}") + " points"
  if entry["unit"] == "I":
    return f"{value / control:.3g}x the control" if control > 0 else ""
  return _no_negative_zero(f"{value - control:+.3f}")


def _embed_png(path: str) -> str:
  with open(path, "rb") as file:
    data = base64.b64encode(file.read()).decode("ascii")
  return f"data:image/png;base64,{data}"


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as file:
    return json.load(file)


# --------------------------------------------------------------------------
# The summary in plain sentences.
# --------------------------------------------------------------------------


def _pct(value) -> str:
  return "n/a" if _missing(value) else f"{100 * value:.1f}%"


def _points(value, control) -> str:
  if _missing(value) or _missing(control):
    return ""
  return f"{100 * (value - control):+.1f} points from the control"


def summary_sentences(row: Mapping[str, Any],
                      analysis: Mapping[str, Any] | None) -> list[str]:
  """Plain sentences with the numbers and how far each is from its control.

  Args:
    row: the network's ``metrics.summary_row``.
    analysis: its ``analyses.json`` content, or None (then only the row's
      numbers are described).
  """
  name = row["model"]
  lines = []
  run = (analysis or {}).get("run", {})
  seeds = int(row.get("num_seeds", 1))
  lines.append(
      f"{name}: {row['num_concepts']} concepts"
      + (f" of the {run['dataset']}" if run.get("dataset") else "")
      + f", {seeds} seed{'s' if seeds != 1 else ''} each, "
      f"{row['steps']} search steps per concept.")
  if not analysis:
    lines.append(
        f"Paths keep {100 * row['mean_usage']:.1f}% of the units on average; "
        f"path accuracy {_pct(row['mean_path_accuracy'])} (original network "
        f"{_pct(row['original_accuracy'])}); I = "
        f"{row['interpretability']:.4g}. The analyses and controls were not "
        f"run (config.analysis.enabled = False, or fewer than 2 concepts).")
    return lines
  ablation = analysis["ablation"]
  lines.append(
      f"With only its path's units (on average {100 * row['mean_usage']:.1f}%"
      f" of the units per site), a class's validation images are classified "
      f"correctly {_pct(row['mean_path_accuracy'])} of the time (original "
      f"network {_pct(row['original_accuracy'])}); random paths with the "
      f"same number of units per site reach "
      f"{_pct(ablation['random_kept']['mean'])} "
      f"({_points(row['mean_path_accuracy'], ablation['random_kept']['mean'])}"
      f").")
  removed_gap = _points(ablation["removed"]["mean"],
                        ablation["random_removed"]["mean"])
  lines.append(
      f"With its path's units removed, a class is classified correctly "
      f"{_pct(ablation['removed']['mean'])} of the time; removing as many "
      f"random units leaves {_pct(ablation['random_removed']['mean'])} "
      f"({removed_gap}).")
  cross = analysis.get("cross_class")
  if cross:
    lines.append(
        f"Through another class's path, images are classified correctly "
        f"{_pct(cross['other_accuracy'])} of the time (through their own "
        f"path {_pct(cross['own_accuracy'])}; the original network on the "
        f"same {cross['num_classes']} classes "
        f"{_pct(cross['original_accuracy'])}), and "
        f"{_pct(cross['other_predicted_as_path'])} of them are predicted as "
        f"the path's class.")
  control = analysis["random_control"]
  random_i = control["interpretability"]["mean"]
  ratio = (f"{row['interpretability'] / random_i:.3g} times the control"
           if random_i and random_i > 0 else "")
  lines.append(
      f"Interpretability I = {row['interpretability']:.4g}"
      + (f" ± {row['interpretability_std']:.2g} over seeds"
         if seeds > 1 else "")
      + f"; random same-size paths (their own accuracies, "
      f"{control['draws']} draws) give I = {random_i:.4g} ± "
      f"{control['interpretability']['std']:.2g}"
      + (f" ({ratio})" if ratio else "")
      + f"; random same-size paths' M with the paths' own accuracies gives "
      f"I = {control['interpretability_nad_accuracy']['mean']:.4g} ± "
      f"{control['interpretability_nad_accuracy']['std']:.2g}. The mean path "
      f"similarity "
      f"between classes is {control['nad_mean_similarity']:.3f} "
      f"(random same-size paths {control['mean_similarity']:.3f}).")
  hierarchy = analysis.get("hierarchy")
  if hierarchy:
    ari = hierarchy["adjusted_rand_index"]
    coph = hierarchy["cophenetic_correlation"]
    gap = hierarchy["within_minus_across"]
    random_ari = control.get("adjusted_rand_index", {}).get("mean")
    lines.append(
        f"Clustering M recovers the hierarchy's {hierarchy['num_primaries']} "
        f"primary concepts with ARI {_fixed(ari['observed'], 2)} (random "
        f"relabelling {_fixed(ari['null_mean'], 2)}, p = "
        f"{format_p(ari['p_value'])}"
        + (f"; random same-size paths {_fixed(random_ari, 2)}"
           if not _missing(random_ari) else "")
        + f"); cophenetic correlation {_fixed(coph['observed'], 2)} "
        f"(relabelled {_fixed(coph['null_mean'], 2)}, p = "
        f"{format_p(coph['p_value'])}); M is {_fixed(gap['observed'])} "
        f"higher within primaries than across (relabelled "
        f"{_fixed(gap['null_mean'])}, p = {format_p(gap['p_value'])}).")
  wordnet = analysis.get("wordnet")
  if wordnet:
    lines.append(
        f"M correlates with WordNet (Wu-Palmer) similarity at r = "
        f"{_fixed(wordnet['observed'])} (random relabelling "
        f"{_fixed(wordnet['null_mean'])}, p = "
        f"{format_p(wordnet['p_value'])}).")
  top = analysis.get("top_k")
  if top:
    ours = top["ours"]
    text = (f"Of each class's {top['k']} most similar paths, "
            f"{ours['mean_overlap']:.2f} on average are among the "
            f"{top['k']} classes the network most confuses it with (chance "
            f"{ours['chance_overlap']:.2f}, p = {format_p(ours['p_value'])})")
    if "authors" in top:
      authors = top["authors"]
      text += (f"; in the authors' variant (first "
               f"{top['authors_num_classes']} classes, one validation image "
               f"each) {authors['mean_overlap']:.2f} (chance "
               f"{authors['chance_overlap']:.2f}, p = "
               f"{format_p(authors['p_value'])})")
    lines.append(text + ".")
  hit = analysis.get("hit_rate", {})
  if "authors" in hit:
    entry = hit["authors"]
    hit_gap = _points(entry["last_sites_mean"],
                      entry["random_last_sites_mean"])
    text = (f"On {hit['num_mosaics']} 2x2 mosaics shrunk to the input (the "
            f"authors' convention), {_pct(entry['last_sites_mean'])} of a "
            f"path's top {100 * hit['mask_rate']:g}% activation pixels at "
            f"the last {len(entry['last_sites'])} sites lie in its own "
            f"class's quadrant (chance 25%; random same-size paths "
            f"{_pct(entry['random_last_sites_mean'])}, "
            f"{hit_gap})")
    if "full_size" in hit:
      full = hit["full_size"]
      text += (f"; on the same mosaics at full size "
               f"{_pct(full['last_sites_mean'])} (random "
               f"{_pct(full['random_last_sites_mean'])})")
    lines.append(text + ".")
  stability = analysis.get("seed_stability")
  spread = analysis.get("seeds", {})
  if stability:
    parts = []
    for key, label, unit in (("mean_path_accuracy", "path accuracy",
                              "percent"),
                             ("necessity", "accuracy with the path removed",
                              "percent"),
                             ("mean_usage", "mean usage", "fixed"),
                             ("adjusted_rand_index", "ARI", "fixed"),
                             ("hit_rate_last_sites", "hit rate", "fixed")):
      entry = spread.get(key)
      if entry and not _missing(entry.get("mean")):
        if unit == "percent":
          parts.append(f"{label} {_pct(entry['mean'])} ± "
                       f"{100 * entry['std']:.1f} points")
        else:
          parts.append(f"{label} {entry['mean']:.3f} ± {entry['std']:.3f}")
    lines.append(
        f"Over the {seeds} seeds: " + "; ".join(parts) + f". Two seeds' "
        f"paths of one class have M = {stability['mean']:.3f} (two classes "
        f"in one seed {stability['across_concepts']:.3f}; random same-size "
        f"paths {stability['random_same_size']:.3f}).")
  else:
    lines.append("One seed: no spread over seeds and no path stability "
                 "(set config.search.num_seeds > 1).")
  trajectory = analysis.get("trajectory")
  if trajectory:
    last = trajectory["last_change_step"]
    lines.append(
        f"In the last {trajectory['steps_between_records']} steps of the "
        f"search, {100 * trajectory['final_flip_fraction']:.2f}% of the "
        f"units changed; the last change was recorded at step "
        f"{last if last is not None else 'none'} of "
        f"{trajectory['last_step']}.")
  else:
    lines.append("The search did not record its trajectory "
                 "(no trajectory.npz in the workdir).")
  return lines


def summary_markdown(row: Mapping[str, Any],
                     analysis: Mapping[str, Any] | None) -> str:
  """The summary sentences and the score table as a markdown section."""
  lines = ["", "## Analyses and controls", ""]
  lines += [f"- {line}" for line in summary_sentences(row, analysis)]
  if analysis:
    lines += ["", "| score | value | control | difference | p |",
              "|---|---|---|---|---|"]
    for entry in analysis["scores"]:
      control = ("" if _missing(entry.get("control")) else
                 f"{format_value(entry['control'], entry['unit'])} "
                 f"({entry['control_label']})")
      p_value = ("" if _missing(entry.get("p_value")) else
                 format_p(entry["p_value"]))
      lines.append(
          f"| {entry['label']} | {_value_with_std(entry)} | {control} | "
          f"{_difference(entry)} | {p_value} |")
    lines += ["", "Figures and all numbers: report.html, analyses.json, "
              "scores.csv, per_class.csv."]
  return "\n".join(lines) + "\n"


def _value_with_std(entry) -> str:
  text = format_value(entry["value"], entry["unit"])
  std = entry.get("std")
  if not _missing(std):
    text += (f" ± {100 * std:.1f}" if entry["unit"] == "percent" else
             f" ± {std:.2g}")
  return text


# --------------------------------------------------------------------------
# HTML pieces.
# --------------------------------------------------------------------------


def _page(title: str, body: Sequence[str]) -> str:
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{_escape(title)}</title><style>{_CSS}</style></head>"
          "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]],
           numeric: Sequence[bool] | None = None) -> str:
  numeric = numeric or [False] * len(header)
  out = ["<table><thead><tr>"]
  out += [f"<th>{_escape(cell)}</th>" for cell in header]
  out.append("</tr></thead><tbody>")
  for row in rows:
    out.append("<tr>" + "".join(
        f"<td class=\"num\">{_escape(cell)}</td>" if is_num else
        f"<td>{_escape(cell)}</td>" for cell, is_num in zip(row, numeric))
               + "</tr>")
  out.append("</tbody></table>")
  return "".join(out)


def _figure(path: str, title: str, caption: str) -> str:
  return (f"<figure><h3>{_escape(title)}</h3><img src=\"{_embed_png(path)}\" "
          f"alt=\"{_escape(title)}\"><figcaption>{_escape(caption)}"
          f"</figcaption></figure>")


def _scores_html(scores: Sequence[Mapping[str, Any]]) -> str:
  rows = []
  for entry in scores:
    control = ("" if _missing(entry.get("control")) else
               f"{format_value(entry['control'], entry['unit'])} "
               f"({entry['control_label']})")
    rows.append([entry["label"], _value_with_std(entry), control,
                 _difference(entry),
                 "" if _missing(entry.get("p_value")) else
                 format_p(entry["p_value"])])
  return _table(["score", "value", "control", "difference", "p"], rows,
                [False, True, False, True, True])


def _facts_html(row, analysis, config=None) -> str:
  """The run's facts; without analyses, the settings come from the
  workdir's ``config.json`` (``config``), what the network ran with."""
  run = (analysis or {}).get("run", {})
  facts = [["network", row["model"]]]
  if run:
    hparams = ", ".join(f"{k} {v}" for k, v in run["hparams"].items())
    facts += [["weights", run["checkpoint"]],
              ["dataset", f"{run['dataset']} ({run['num_dataset_classes']} "
               f"classes)"],
              ["concepts searched", str(run["num_concepts"])],
              ["seeds per concept", str(run["num_seeds"])],
              ["search steps per concept",
               f"{run['steps']} (budget {run['step_budget']}, patience "
               f"{run['patience']}, batch {run['batch_size']})"],
              ["search seed", str(run["seed"])],
              ["objective and hyperparameters", hparams],
              ["validation images per class",
               str(analysis["ablation"]["images_per_class"])]]
  else:
    facts += [["concepts searched", str(row["num_concepts"])],
              ["seeds per concept", str(row["num_seeds"])],
              ["search steps per concept", str(row["steps"])]]
    if config:
      objective = config["objective"]
      facts.append(["objective and hyperparameters", ", ".join(
          [objective["name"], f"alpha {config['optim']['alpha']}"]
          + [f"{k} {v}" for k, v in objective.items() if k != "name"])])
  out = ["<table><tbody>" + "".join(
      f"<tr><th>{_escape(label)}</th><td>{_escape(value)}</td></tr>"
      for label, value in facts) + "</tbody></table>"]
  config_json = run.get("config_json") or (
      json.dumps(config, indent=1) if config else "")
  if config_json:
    out.append("<details><summary>The full config</summary><pre>"
               + _escape(config_json) + "</pre></details>")
  return "".join(out)


def _top_k_html(analysis) -> str:
  top = analysis.get("top_k")
  if not top:
    return ""
  rows = []
  for entry in top["table"]:
    rows.append([entry["class"],
                 ", ".join(f"{n} ({m:.2f})" for n, m in entry["similar"]),
                 ", ".join(f"{n} ({p:.2g})" for n, p in entry["confused"]),
                 str(entry["overlap"])])
  table = _table(["class", f"top-{top['k']} similar paths (M)",
                  f"top-{top['k']} confusions (mean softmax)", "shared"],
                 rows, [False, False, False, True])
  if len(rows) > 40:
    table = (f"<details><summary>All {len(rows)} classes</summary>{table}"
             "</details>")
  return ("<h2>Most similar paths and most confused classes</h2>" + table)


def _per_class_html(analysis) -> str:
  rows = []
  for entry in analysis.get("per_class", []):
    rows.append([entry["class"], _pct(entry["original"]),
                 _pct(entry["path_kept"]), _pct(entry["random_kept"]),
                 _pct(entry["path_removed"]), _pct(entry["random_removed"])]
                + ([f"{entry['seed_stability']:.3f}"]
                   if "seed_stability" in entry else []))
  if not rows:
    return ""
  header = ["class", "original", "path kept", "random kept", "path removed",
            "random removed"]
  if len(rows[0]) > len(header):
    header.append("seed stability (M)")
  table = _table(header, rows, [False] + [True] * (len(header) - 1))
  return ("<h2>Per class</h2><details><summary>Accuracy of each class "
          f"under each condition ({len(rows)} classes)</summary>{table}"
          "</details>")


def write_network_report(workdir: str) -> str:
  """Writes ``workdir/report.html`` from what the workdir holds.

  Needs ``metrics.json``; ``analyses.json`` and the figures are used when
  present (a missing analysis is said so in the page).

  Returns:
    The path of the HTML file.
  """
  metrics_json = _read_json(os.path.join(workdir, "metrics.json"))
  if metrics_json is None:
    raise FileNotFoundError(f"no metrics.json in {workdir}: run the search "
                            f"and evaluation first")
  row = metrics_json["row"]
  analysis = _read_json(os.path.join(workdir, "analyses.json"))
  name = row["model"]
  body = [f"<h1>NAD report: {_escape(name)}</h1>",
          "<p class=\"muted\">Neural Architecture Disentanglement: each "
          "class's concept feature path (a binary mask of units at every "
          "gate site), its scores, and controls that tell how far each "
          "number stands from chance.</p>",
          "<h2>Summary</h2><ul class=\"summary\">"]
  body += [f"<li>{_escape(line)}</li>" for line in
           summary_sentences(row, analysis)]
  body.append("</ul>")
  body.append("<h2>What this rests on</h2>" + _facts_html(
      row, analysis, _read_json(os.path.join(workdir, "config.json"))))
  if analysis:
    body.append("<h2>Scores and their controls</h2>"
                + _scores_html(analysis["scores"]))
  body.append("<h2>Figures</h2>")
  figure_files = dict((row.get("figures") or {}))
  figure_files = {key: os.path.basename(path) for key, path in
                  figure_files.items()}
  if analysis:
    figure_files.update(analysis.get("figures", {}))
  shown = set()
  for key, title, caption in FIGURE_TEXT:
    file_name = figure_files.get(key)
    if file_name and os.path.exists(os.path.join(workdir, file_name)):
      body.append(_figure(os.path.join(workdir, file_name), title, caption))
      shown.add(key)
  for key, file_name in sorted(figure_files.items()):
    if key not in shown and os.path.exists(os.path.join(workdir, file_name)):
      body.append(_figure(os.path.join(workdir, file_name), key,
                          "Activation maps of a user-given image."
                          if key.startswith("activation_maps_image") else ""))
  if analysis and analysis.get("skipped"):
    body.append("<h2>Not computed</h2><ul>" + "".join(
        f"<li>{_escape(key)}: {_escape(reason)}</li>"
        for key, reason in analysis["skipped"].items()) + "</ul>")
  if analysis:
    body.append(_top_k_html(analysis))
    body.append(_per_class_html(analysis))
  body.append(_conventions_html())
  files = [f for f in ("metrics.json", "analyses.json", "analyses.npz",
                       "scores.csv", "per_class.csv", "paths.npz",
                       "paths.json", "report.md", "report.json")
           if os.path.exists(os.path.join(workdir, f))]
  body.append("<h2>Files</h2><p>" + ", ".join(
      f"<a href=\"{_escape(f)}\">{_escape(f)}</a>" for f in files) + "</p>")
  path = os.path.join(workdir, NETWORK_REPORT)
  _write(path, _page(f"NAD report: {name}", body))
  return path


def _conventions_html() -> str:
  items = [
      "Path similarity M: mean Jaccard index over sites; two empty "
      "selections count as identical (J = 1). The authors' code gives NaN "
      "there.",
      "I (Eq. 12): the variance of a_i a_j M_ij over class pairs, with mu "
      "the mean of those products.",
      "Random-path control: for every class and site, a uniformly random "
      "set of as many units as the class's path selects (so the usage is "
      "identical); its accuracies, M and I are computed with the same "
      "formulas.",
      "Hit rate (the authors' analysis): 2x2 mosaics of four validation "
      "images of four random classes at twice the input size, shrunk to "
      "the input with PIL's antialiased bilinear (torchvision's Resize); "
      "activation maps are the site's channel sum, min-max scaled, resized "
      "bicubically (Keys a = -0.5, PIL's BICUBIC; torch's uses a = -0.75) "
      "to the input, top mask_rate of pixels kept (ties at the threshold "
      "kept). The mean over the last three sites is the authors' summary.",
      "Top-k: only the searched classes compete; a class is never its own "
      "neighbour or confusion. Ours averages the softmax over all of a "
      "class's validation images and uses all classes with the seed-mean "
      "M; the authors' variant uses the first 100 classes, one validation "
      "image and one path (seed 0). Chance: two random k-subsets of the "
      "other K - 1 classes share k^2 / (K - 1).",
      "Permutation tests relabel the classes at random; p = (1 + number of "
      "relabellings at least as large) / (1 + relabellings). The hierarchy "
      "tests use the seed-mean M.",
  ]
  return ("<h2>Conventions</h2><ul>" + "".join(
      f"<li>{_escape(item)}</li>" for item in items) + "</ul>")


def _write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as file:
    file.write(text)
  os.replace(tmp, path)


# --------------------------------------------------------------------------
# Several networks.
# --------------------------------------------------------------------------


def write_comparison_html(path: str, title: str,
                          networks: Sequence[Mapping[str, Any]],
                          score_rows: Sequence[Sequence[str]],
                          score_header: Sequence[str],
                          figure_paths: Mapping[str, str],
                          sentences: Sequence[str]) -> str:
  """The comparison page (``nad_jax.compare`` prepares the content).

  Args:
    path: the HTML file to write.
    title: page title.
    networks: per network ``model``, ``workdir`` (relative link to its
      report), ``facts`` (``[label, value]`` pairs).
    score_rows: the table of every score, one row per score.
    score_header: its header (score, then one column per network).
    figure_paths: figure title -> PNG path (embedded).
    sentences: the summary.

  Returns:
    ``path``.
  """
  body = [f"<h1>{_escape(title)}</h1>",
          "<h2>Summary</h2><ul class=\"summary\">"]
  body += [f"<li>{_escape(line)}</li>" for line in sentences]
  body.append("</ul><h2>Networks</h2>")
  facts_header = ["network"] + [label for label, _ in networks[0]["facts"]]
  facts_rows = [[network["model"]] + [value for _, value in network["facts"]]
                for network in networks]
  body.append(_table(facts_header, facts_rows))
  body.append("<p>Each network's own report: " + ", ".join(
      f"<a href=\"{_escape(network['link'])}\">{_escape(network['model'])}"
      f"</a>" for network in networks if network.get("link")) + "</p>")
  body.append("<h2>Every score</h2>" + _table(
      score_header, score_rows, [False] + [True] * (len(score_header) - 1)))
  body.append("<h2>Figures</h2>")
  captions = {
      "Unit usage per gate site (paper Fig. 4)":
          "One line per network: share of each site's units selected by "
          "the paths.",
      "Interpretability vs. accuracy (paper Fig. 6)":
          "One point per network (error bar: std over seeds); the hollow "
          "marker is the I of random same-size paths.",
  }
  for figure_title, figure_path in figure_paths.items():
    body.append(_figure(figure_path, figure_title,
                        captions.get(figure_title, "")))
  _write(path, _page(title, body))
  return path
