"""The whole job: config -> model + data -> disentangle -> evaluate -> report.

``run(config, workdir)`` is what ``python -m nad_jax.main`` calls; notebooks
and tests call it directly. For each network it writes into its workdir:

* ``checkpoints/``: Orbax checkpoints of the search (resumable, see
  ``nad_jax.checkpoint``);
* ``paths.npz`` (``path/<site>`` bool ``[N, S, C]``, ``gate_logits/<site>``,
  ``concept_ids``, ``class_names``) and ``paths.json`` (selected unit indices
  per concept, seed and site) for people outside JAX;
* ``trajectory.npz``: how many units of each site flipped between records
  and the share selected, every ``trajectory_every`` steps of the search
  (``search.SearchResult.trajectory``);
* ``metrics.json`` (accuracies, similarity matrix, I, usage, hierarchy
  scores, skipped images, stopped concepts), figures (PNG),
  ``report.md`` / ``report.json`` and ``config.json``, the config this
  network ran with (after compare-mode overrides);
* the analyses (``nad_jax.analyze``: ``analyses.json``, ``analyses.npz``,
  ``scores.csv``, ``per_class.csv``, figures) and ``report.html``.

With ``config.compare`` (the demo) each named network runs as its own run
into ``workdir/<name>`` (``config_lib.network_config`` says which settings
it gets: a field set on the command line wins for every network), then
``nad_jax.compare`` compares the workdirs into
``workdir/report.{html,md,json}``. ``config.mode='analyze'`` skips the
search and analyses the finished search already in the workdir.

Faults (``nad_jax.errors``): the config is validated before anything is
written; the workdir is locked (``nad_jax.workdir_lock``); SIGINT/SIGTERM
save and stop (``nad_jax.stop``); concepts stopped on non-finite values
are left out of the outputs, named in the report, and end the run with
:class:`nad_jax.errors.NonFiniteError` after the outputs of the others are
written.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from nad_jax import analyze
from nad_jax import compare
from nad_jax import config_lib
from nad_jax import data as data_lib
from nad_jax import distributed
from nad_jax import errors
from nad_jax import evaluate
from nad_jax import figures
from nad_jax import html_report
from nad_jax import metrics
from nad_jax import models
from nad_jax import objectives
from nad_jax import optim
from nad_jax import report
from nad_jax import search
from nad_jax import stop
from nad_jax import workdir_lock
from nad_jax.data import batch_source


def run(config: ml_collections.ConfigDict, workdir: str,
        overrides: Iterable[str] = ()) -> list[dict]:
  """Runs the job described by ``config`` into ``workdir``.

  Args:
    config: the run's config (``nad_jax.config_lib``).
    workdir: where checkpoints and outputs go.
    overrides: the config fields set on the command line
      (``'optim.alpha'``; ``main`` passes them): in compare mode they win
      over ``hparams_by_model`` for every network.

  Returns:
    One report row per network (``nad_jax.report.summarize_model``); a
    network whose search stopped early (``search.stop_after_steps``) has no
    row yet: rerun to resume it.

  Raises:
    nad_jax.errors.UserError: a bad config (before anything is written), a
      busy workdir, bad data or checkpoints, a failed save, a stop request,
      or concepts stopped on non-finite values (raised last, after the
      other concepts' outputs are written).
  """
  if not workdir or not str(workdir).strip():
    raise errors.ConfigError("--workdir is empty; give the directory for "
                             "checkpoints and outputs")
  overrides = set(overrides)
  # Several processes: jax.distributed before anything touches a backend.
  distributed.initialize(config.distributed)
  config_lib.validate(config, overrides)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  networks = network_configs(config, workdir, overrides)
  os.makedirs(workdir, exist_ok=True)
  with stop.handle_signals(), workdir_lock.WorkdirLock(
      workdir, jax.process_index()):
    logging.info("JAX devices: %s", jax.devices())
    if config.compare:
      config_lib.log_overrides(config, overrides)
    rows, workdirs, failures = [], [], []
    for network_config, network_workdir in networks:
      row, failed = run_network(network_config, network_workdir)
      failures += [f"{network_config.model.name}: {f}" for f in failed]
      if row:
        rows.append(row)
        workdirs.append(network_workdir)
    if workdirs and config.compare and jax.process_index() == 0:
      with _writing(workdir):
        outputs = compare.compare_workdirs(
            workdirs, workdir, title="NAD report: demo networks compared",
            figures_enabled=config.report.figures)
      logging.info("Report: %s", outputs["html"])
  if failures:
    raise errors.NonFiniteError(
        f"{len(failures)} concepts stopped on non-finite values and are not "
        f"in the results: " + "; ".join(failures) + ". Their last finite "
        f"state is checkpointed; a rerun retries them.")
  return rows


def network_configs(config: ml_collections.ConfigDict, workdir: str,
                    overrides: Iterable[str] = ()
                    ) -> list[tuple[ml_collections.ConfigDict, str]]:
  """``[(network config, network workdir)]``: what each network runs with
  (``config_lib.network_config`` in compare mode, into ``workdir/<name>``;
  otherwise the config itself without ``hparams_by_model``, which it does
  not use)."""
  if config.compare:
    return [(config_lib.network_config(config, name, overrides),
             os.path.join(workdir, name)) for name in config.compare]
  single = copy.deepcopy(config)
  with single.unlocked():
    single.hparams_by_model = ml_collections.ConfigDict()
  return [(single, workdir)]


def _hparams(config) -> dict[str, Any]:
  name, value = objectives.weight(config.objective)
  return {"objective": config.objective.name,
          "alpha": float(config.optim.alpha), name: value}


def run_network(config: ml_collections.ConfigDict, workdir: str
                ) -> tuple[dict[str, Any] | None, list[str]]:
  """Search, evaluation, metrics, figures and report for one network.

  Returns:
    ``(row, failures)``: the report row (None while the search is not
    finished) and the concepts stopped on non-finite values, described.
  """
  start = time.perf_counter()
  with workdir_lock.WorkdirLock(workdir, jax.process_index()):
    model, variables, dataset, concept_ids = load_inputs(config, workdir)
    stored = None
    if config.mode == "analyze":
      with errors.user_input("reading the finished search (mode=analyze)"):
        result = analyze.load_search_result(
            workdir, model.gate_sites(),
            None if str(config.data.classes).strip().lower() in ("", "all")
            else concept_ids)
        concept_ids = [int(c) for c in result.concept_ids]
        stored = analyze.stored_accuracies(
            workdir, concept_ids,
            next(iter(result.gate_logits.values())).shape[1])
    else:
      result = search_paths(config, workdir, model, variables, dataset,
                            concept_ids)
    if result is None:
      return None, []
    failures = [f.describe(dataset.class_names) for f in result.failures]
    result, concept_ids = _without_failed(result, concept_ids)
    if not concept_ids:
      _remove_outputs(workdir)
      logging.error("%s: every concept stopped on non-finite values; no "
                    "outputs written.", config.model.name)
      return None, failures
    class_names = [dataset.class_names[c] for c in concept_ids]
    if stored is not None:
      logging.info("=== %s: accuracies read from metrics.json",
                   config.model.name)
      original_acc, path_acc = stored
    else:
      original_acc, path_acc = evaluate_paths(config, model, variables,
                                              dataset, concept_ids,
                                              result.paths)
    if jax.process_index() != 0:  # of several processes, process 0 writes
      logging.info("[process %d/%d] done; process 0 writes the outputs.",
                   jax.process_index(), jax.process_count())
      return None, failures
    _check_accuracy(config, original_acc)
    with _writing(workdir):
      export_paths(workdir, result, class_names)
      row = write_outputs(config, workdir, dataset, concept_ids, result,
                          original_acc, path_acc, failures, model=model,
                          variables=variables)
  logging.info("%s: I = %s, path accuracy %.1f%% (original %.1f%%), "
               "mean usage %.2f; done in %.0f s. Outputs in %s",
               config.model.name,
               "n/a (one concept)" if len(concept_ids) < 2
               else f"{row['interpretability']:.4g}",
               100 * row["mean_path_accuracy"],
               100 * row["original_accuracy"], row["mean_usage"],
               time.perf_counter() - start, workdir)
  return row, failures


def _without_failed(result: search.SearchResult, concept_ids: list[int]):
  """The result and concept ids without the concepts that failed."""
  keep = ~result.failed
  if keep.all():
    return result, concept_ids
  trajectory = result.trajectory
  if trajectory:
    trajectory = dict(trajectory, **{
        key: {s: v[keep] for s, v in trajectory[key].items()}
        for key in ("flips", "usage")})
  kept = search.SearchResult(
      concept_ids=result.concept_ids[keep],
      gate_logits={s: v[keep] for s, v in result.gate_logits.items()},
      steps_done=result.steps_done[keep], done=result.done[keep],
      trajectory=trajectory)
  return kept, [c for c, k in zip(concept_ids, keep) if k]


# The files run_network writes (removed when no concept has a result, so
# that no stale result contradicts the log).
OUTPUT_FILES = ("paths.npz", "paths.json", "trajectory.npz", "metrics.json",
                "report.md", "report.json", "report.html", "config.json",
                "path_similarity.png", "unit_usage.png",
                "precision_histogram.png", analyze.ANALYSES_JSON,
                analyze.ANALYSES_NPZ, "scores.csv", "per_class.csv")


def _remove_outputs(workdir: str) -> None:
  for name in OUTPUT_FILES:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)


@contextlib.contextmanager
def _writing(workdir: str) -> Iterator[None]:
  """Turns a full disk (or a read-only workdir) while writing outputs into
  a one-line SaveError; the search is checkpointed, a rerun writes them."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except
    reason = errors.storage_reason(error)
    if reason is None:
      raise
    raise errors.SaveError(
        f"writing the outputs to {workdir} failed: {reason}. The search is "
        f"checkpointed; fix that and rerun with the same --workdir to write "
        f"them.") from error


def load_inputs(config: ml_collections.ConfigDict, workdir: str):
  """``(model, variables, dataset, concept_ids)`` that ``config`` names."""
  name = config.model.name
  logging.info("=== %s: loading the model and the data", name)
  with errors.user_input(f"{name}: loading the model"):
    model, variables = models.load_model(config.model)
  with errors.user_input("loading the data"):
    dataset = data_lib.get_dataset(config, cache_dir=workdir)
  with errors.user_input("selecting the classes (config.data.classes)"):
    concept_ids = data_lib.selected_classes(config, dataset)
  check_labels(config, dataset, concept_ids)
  site_channels = model.gate_sites()
  logging.info("%s: %d gate sites (%d units), %d concepts, %d seeds each",
               name, len(site_channels), sum(site_channels.values()),
               len(concept_ids), config.search.num_seeds)
  return model, variables, dataset, concept_ids


def search_paths(config: ml_collections.ConfigDict, workdir: str, model,
                 variables, dataset,
                 concept_ids: list[int]) -> search.SearchResult | None:
  """The search (resuming from ``workdir``); None if it stopped early."""
  name = config.model.name
  logging.info("=== %s: searching concept feature paths", name)
  meta = search.search_meta(
      name, model.gate_sites(), concept_ids, seed=config.seed,
      num_seeds=config.search.num_seeds, batch_size=config.search.batch_size,
      hparams=_hparams(config))
  with errors.user_input("preparing the batches (config.data.pipeline)"):
    batches = batch_source.from_config(config, dataset)
  try:
    result = search.disentangle(
        model, variables, dataset, concept_ids,
        objective=objectives.get_objective(config.objective),
        optimizer=optim.nad_optimizer(config.optim.alpha),
        num_steps=config.search.num_steps,
        batch_size=config.search.batch_size,
        concepts_per_step=config.search.concepts_per_step,
        num_seeds=config.search.num_seeds, patience=config.search.patience,
        seed=config.seed, workdir=workdir, meta=meta,
        checkpoint_every=config.search.checkpoint_every,
        log_every=config.search.log_every,
        stop_after_steps=config.search.stop_after_steps, batches=batches,
        compute_dtype=config.search.compute_dtype,
        remat=config.search.remat,
        memory_limit_gb=config.search.memory_limit_gb)
  finally:
    batches.close()
  if not np.all(result.done | result.failed):
    logging.info("%s: search stopped early with %d of %d concepts done; "
                 "rerun with the same --workdir to resume.", name,
                 int(np.sum(result.done)), len(result.done))
    return None
  return result


def evaluate_paths(config: ml_collections.ConfigDict, model, variables,
                   dataset, concept_ids: list[int],
                   paths: dict[str, np.ndarray]):
  """``(original accuracy [N], path accuracy [N, S])`` on val images.

  Several processes evaluate every P-th concept each and gather.
  """
  logging.info("=== %s: evaluating paths on validation images",
               config.model.name)
  rows = distributed.process_share(range(len(concept_ids)))
  original, path_acc = evaluate.class_accuracies(
      model, variables, dataset, [concept_ids[i] for i in rows],
      {site: p[rows] for site, p in paths.items()},
      batch_size=config.eval.batch_size,
      max_images=config.eval.max_images_per_class)
  return (distributed.gather_shares(original, len(concept_ids)),
          distributed.gather_shares(path_acc, len(concept_ids)))


def write_outputs(config: ml_collections.ConfigDict, workdir: str, dataset,
                  concept_ids: list[int], result: search.SearchResult,
                  original_acc: np.ndarray, path_acc: np.ndarray,
                  failures: list[str] = (), model=None,
                  variables=None) -> dict[str, Any]:
  """Metrics, figures, ``metrics.json``, ``config.json``, the analyses
  (with ``model`` and ``variables``, when ``config.analysis.enabled``) and
  the reports; returns the row. With one concept the analyses that compare
  concepts (similarity, I, clustering) are left out and the report says
  so."""
  name = config.model.name
  class_names = [dataset.class_names[c] for c in concept_ids]
  paths = result.paths  # {site: [N, S, C]}
  primary_of, primary_names = _primaries(dataset, concept_ids)
  seed_paths = {site: np.swapaxes(p, 0, 1) for site, p in paths.items()}
  similarity = metrics.path_similarity(seed_paths)  # [S, N, N]
  notes = []
  if len(concept_ids) < 2:
    notes.append(
        "Only one concept was disentangled: path similarity, the "
        "interpretability I and the hierarchy scores compare concepts and "
        "need at least two, so they are not computed.")
  figure_paths = {}
  if config.report.figures and len(concept_ids) >= 2:
    figure_paths["similarity"] = figures.similarity_heatmap(
        similarity.mean(0), class_names, primary_of, primary_names,
        os.path.join(workdir, "path_similarity.png"),
        title=f"{name}: path similarity M").path
  if config.report.figures:
    figure_paths["unit_usage"] = figures.unit_usage_plot(
        {name: metrics.unit_usage(seed_paths)},
        os.path.join(workdir, "unit_usage.png"))
    figure_paths["precision"] = figures.precision_histogram_plot(
        original_acc, path_acc.mean(1),
        os.path.join(workdir, "precision_histogram.png"),
        title=f"{name}: per-class precision")
  row = metrics.summary_row(
      name, similarity, metrics.unit_usage(seed_paths), path_acc.T,
      original_acc, steps=int(np.max(result.steps_done)),
      primary_of=primary_of)
  row["figures"] = figure_paths
  skipped = list(dataset.skipped_files)
  _write_json(os.path.join(workdir, "config.json"), config.to_dict())
  _write_json(os.path.join(workdir, "metrics.json"), {
      "row": row,
      "concept_ids": [int(c) for c in concept_ids],
      "class_names": class_names,
      "primary_of": None if primary_of is None else primary_of.tolist(),
      "primary_names": primary_names,
      "original_accuracy": original_acc.tolist(),
      "path_accuracy": path_acc.T.tolist(),
      "similarity": similarity.tolist(),
      "steps_done": result.steps_done.tolist(),
      "skipped_files": skipped,
      "stopped_concepts": list(failures),
      "notes": notes,
  })
  summary_md = ""
  if config.analysis.enabled and model is not None:
    logging.info("=== %s: analyses", name)
    analysis = analyze.analyze_network(
        config, workdir, model, variables, dataset, concept_ids, paths,
        similarity=similarity, row=row, class_names=class_names,
        primary_of=primary_of, primary_names=primary_names)
    if analysis is not None:
      summary_md = html_report.summary_markdown(row, analysis)
  report.write_report([row], os.path.join(workdir, "report.md"),
                      os.path.join(workdir, "report.json"),
                      extra_md=summary_md
                      + _notes_md(notes, skipped, failures)
                      + _settings_md(config),
                      title=f"NAD report: {name}")
  html_report.write_network_report(workdir)
  return row


def _primaries(dataset, concept_ids):
  """``(primary_of [N] or None, primary names)`` of the chosen concepts."""
  hierarchy = dataset.hierarchy
  if not hierarchy:
    return None, None
  primary_names = list(hierarchy)
  primary_of_class = {}
  for index, primary in enumerate(primary_names):
    for class_id in hierarchy[primary]:
      primary_of_class[int(class_id)] = index
  if not all(int(c) in primary_of_class for c in concept_ids):
    logging.info("Not every concept has a primary concept in the hierarchy; "
                 "hierarchy scores are skipped.")
    return None, None
  return np.asarray([primary_of_class[int(c)] for c in concept_ids]), \
      primary_names


def export_paths(workdir: str, result: search.SearchResult,
                 class_names: list[str]) -> None:
  """``paths.npz``, ``paths.json`` and ``trajectory.npz``, written atomically.

  ``trajectory.npz``: ``steps [T]``, ``concept_ids [N]`` and per site
  ``flips/<site> int32 [N, S, T]`` and ``usage/<site> float32 [N, S, T]``
  (see ``search.SearchResult.trajectory``).
  """
  arrays = {"concept_ids": result.concept_ids,
            "class_names": np.asarray(class_names),
            "steps_done": np.asarray(result.steps_done)}
  for site, logits in result.gate_logits.items():
    arrays[f"path/{site}"] = logits > 0
    arrays[f"gate_logits/{site}"] = logits
  _write_npz(os.path.join(workdir, "paths.npz"), arrays)
  if result.trajectory:
    trajectory = {"steps": result.trajectory["steps"],
                  "concept_ids": result.concept_ids}
    for key in ("flips", "usage"):
      for site, values in result.trajectory[key].items():
        trajectory[f"{key}/{site}"] = values
    _write_npz(os.path.join(workdir, "trajectory.npz"), trajectory)
  concepts = []
  num_seeds = next(iter(result.gate_logits.values())).shape[1]
  for i, (class_id, name) in enumerate(zip(result.concept_ids, class_names)):
    concepts.append({
        "id": int(class_id), "name": name,
        "paths": [{site: np.flatnonzero(logits[i, s] > 0).tolist()
                   for site, logits in result.gate_logits.items()}
                  for s in range(num_seeds)]})
  _write_json(os.path.join(workdir, "paths.json"), {
      "sites": {site: int(v.shape[-1]) for site, v in
                result.gate_logits.items()},
      "concepts": concepts})


def _write_npz(path, arrays):
  tmp = path[:-len(".npz")] + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=_json_default, allow_nan=True)
  os.replace(tmp, path)


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def _notes_md(notes, skipped, failures) -> str:
  lines = []
  if failures:
    lines.append(f"{len(failures)} concepts stopped on non-finite values "
                 f"and are left out of every result: " + "; ".join(failures)
                 + ".")
  if skipped:
    lines.append(f"{len(skipped)} images were skipped as unreadable or "
                 f"non-finite (listed in metrics.json): "
                 + ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5
                                             else "") + ".")
  lines += list(notes)
  if not lines:
    return ""
  return "\n## Notes\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"


def _settings_md(config) -> str:
  """The settings this network ran with (also in ``config.json``)."""
  lines = ["", "## Settings", "",
           "The config this network ran with (also in config.json):", "",
           "```", config.to_json_best_effort(indent=1), "```"]
  return "\n".join(lines) + "\n"


def check_labels(config: ml_collections.ConfigDict, dataset,
                 concept_ids: list[int]) -> None:
  """Refuses labels outside the network's outputs; warns (with the
  numbers) when the data's classes cannot be the network's."""
  num_outputs = int(config.model.num_classes)
  label_of = dataset.label_of
  labels = (np.asarray(concept_ids) if label_of is None
            else np.asarray(label_of)[np.asarray(concept_ids)])
  outside = [int(c) for c, l in zip(concept_ids, labels) if l >= num_outputs]
  if outside:
    raise errors.DataError(
        f"classes {outside[:10]} have labels outside the {num_outputs} "
        f"outputs of {config.model.name} (config.model.num_classes); the "
        f"data's classes are not the network's")
  num_data = len(dataset.class_names)
  if label_of is None and num_data != num_outputs:
    logging.warning(
        "The data has %d classes but %s has %d outputs; each class's label "
        "is its position (0..%d), so accuracies mean something only if "
        "those are the network's classes in the same order.", num_data,
        config.model.name, num_outputs, num_data - 1)


def _check_accuracy(config, original_acc: np.ndarray) -> None:
  """Warns when the network is at or below chance on its own data."""
  chance = 1.0 / int(config.model.num_classes)
  accuracy = float(np.mean(original_acc))
  if config.model.num_classes > 1 and accuracy <= chance:
    logging.warning(
        "%s classifies %.1f%% of these validation images correctly (chance: "
        "%.1f%%): the data's classes are probably not the network's, or "
        "the images are not preprocessed as the network expects.",
        config.model.name, 100 * accuracy, 100 * chance)
