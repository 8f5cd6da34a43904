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
  scores), figures (PNG) and ``report.md`` / ``report.json``;
* the analyses (``nad_jax.analyze``: ``analyses.json``, ``analyses.npz``,
  ``scores.csv``, ``per_class.csv``, figures) and ``report.html``.

With ``config.compare`` (the demo) each named network runs into
``workdir/<name>`` and ``nad_jax.compare`` compares the workdirs into
``workdir/report.{html,md,json}``. ``config.mode='analyze'`` skips the
search and analyses the finished search already in the workdir.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from nad_jax import analyze
from nad_jax import compare
from nad_jax import data as data_lib
from nad_jax import distributed
from nad_jax import evaluate
from nad_jax import figures
from nad_jax import html_report
from nad_jax import metrics
from nad_jax import models
from nad_jax import objectives
from nad_jax import optim
from nad_jax import report
from nad_jax import search
from nad_jax.data import batch_source
from nad_jax.data import decode_cache


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field for a config that cannot run.

  Runs before anything is read or written.
  """
  names = list(config.compare) or [config.model.name]
  for name in names:
    if name not in models.MODELS:
      raise ValueError(f"config.model.name: unknown model {name!r}; known "
                       f"models: {sorted(models.MODELS)}")
  for name in config.compare:
    if name not in config.hparams_by_model:
      raise ValueError(f"config.compare names {name!r} but "
                       f"config.hparams_by_model has no entry for it")
  if config.objective.name not in objectives.OBJECTIVES:
    raise ValueError(f"config.objective.name: unknown objective "
                     f"{config.objective.name!r}; known objectives: "
                     f"{sorted(objectives.OBJECTIVES)}")
  concepts_per_step = config.search.concepts_per_step
  if concepts_per_step != "auto" and not (
      isinstance(concepts_per_step, int) and concepts_per_step > 0):
    raise ValueError(f"config.search.concepts_per_step must be a positive "
                     f"integer or 'auto', got {concepts_per_step!r}")
  if config.search.compute_dtype not in search.COMPUTE_DTYPES:
    raise ValueError(f"config.search.compute_dtype: unknown dtype "
                     f"{config.search.compute_dtype!r}; use one of "
                     f"{search.COMPUTE_DTYPES}")
  if config.search.memory_limit_gb < 0:
    raise ValueError(f"config.search.memory_limit_gb must be >= 0, got "
                     f"{config.search.memory_limit_gb}")
  for field in ("num_steps", "batch_size", "num_seeds"):
    if int(config.search[field]) <= 0:
      raise ValueError(f"config.search.{field} must be positive, got "
                       f"{config.search[field]}")
  for field in ("patience", "checkpoint_every", "log_every"):
    if int(config.search[field]) < 0:
      raise ValueError(f"config.search.{field} must be >= 0, got "
                       f"{config.search[field]}")
  decode_cache.resolve_pipeline(config.data.get("pipeline", "host"))
  if config.eval.batch_size <= 0:
    raise ValueError(f"config.eval.batch_size must be positive, got "
                     f"{config.eval.batch_size}")
  analyze.validate_config(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs the job described by ``config`` into ``workdir``.

  Returns:
    One report row per network (``nad_jax.report.summarize_model``); a
    network whose search stopped early (``search.stop_after_steps``) has no
    row yet: rerun to resume it.
  """
  # Before anything touches a JAX backend (validation resolves
  # data.pipeline='auto' from it).
  distributed.initialize(config.distributed)
  validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  logging.info("JAX devices: %s", jax.devices())
  if not config.compare:
    rows = [row for row in [run_network(config, workdir)] if row]
  else:
    rows = []
    for name in config.compare:
      network_config = config_for_network(config, name)
      row = run_network(network_config, os.path.join(workdir, name))
      if row:
        rows.append(row)
  if rows and config.compare and jax.process_index() == 0:
    outputs = compare.compare_workdirs(
        [os.path.join(workdir, row["model"]) for row in rows], workdir,
        title="NAD report: demo networks compared",
        figures_enabled=config.report.figures)
    logging.info("Report: %s", outputs["html"])
  return rows


def config_for_network(config: ml_collections.ConfigDict,
                       name: str) -> ml_collections.ConfigDict:
  """``config`` for one network of ``config.compare``."""
  network_config = copy.deepcopy(config)
  with network_config.unlocked():
    network_config.compare = ()
    network_config.model.name = name
    hparams = config.hparams_by_model[name]
    for key, value in hparams.items():
      if key == "alpha":
        network_config.optim.alpha = value
      elif key in ("lam", "beta"):
        network_config.objective[key] = value
      else:
        raise ValueError(f"config.hparams_by_model.{name}.{key}: unknown "
                         f"hyperparameter (alpha, lam, beta)")
  return network_config


def _hparams(config) -> dict[str, Any]:
  hparams = {"objective": config.objective.name,
             "alpha": float(config.optim.alpha)}
  if config.objective.name == "paper":
    hparams["lam"] = float(config.objective.lam)
  else:
    hparams["beta"] = float(config.objective.beta)
  return hparams


def run_network(config: ml_collections.ConfigDict,
                workdir: str) -> dict[str, Any] | None:
  """Search, evaluation, metrics, figures and report for one network."""
  start = time.perf_counter()
  model, variables, dataset, concept_ids = load_inputs(config, workdir)
  stored = None
  if config.mode == "analyze":
    result = analyze.load_search_result(
        workdir, model.gate_sites(),
        None if str(config.data.classes).strip().lower() in ("", "all")
        else concept_ids)
    concept_ids = [int(c) for c in result.concept_ids]
    stored = analyze.stored_accuracies(
        workdir, concept_ids, next(iter(result.gate_logits.values())).shape[1])
  else:
    result = search_paths(config, workdir, model, variables, dataset,
                          concept_ids)
  if result is None:
    return None
  class_names = [dataset.class_names[c] for c in concept_ids]
  writer = jax.process_index() == 0  # of several processes, one writes
  if writer:
    export_paths(workdir, result, class_names)
  if stored is not None:
    logging.info("=== %s: accuracies read from metrics.json",
                 config.model.name)
    original_acc, path_acc = stored
  else:
    original_acc, path_acc = evaluate_paths(config, model, variables,
                                            dataset, concept_ids,
                                            result.paths)
  if not writer:
    logging.info("[process %d/%d] done; process 0 writes the outputs.",
                 jax.process_index(), jax.process_count())
    return None
  row = write_outputs(config, workdir, dataset, concept_ids, result,
                      original_acc, path_acc, model=model,
                      variables=variables)
  logging.info("%s: I = %.4g, path accuracy %.1f%% (original %.1f%%), "
               "mean usage %.2f; done in %.0f s. Outputs in %s",
               config.model.name, row["interpretability"],
               100 * row["mean_path_accuracy"],
               100 * row["original_accuracy"], row["mean_usage"],
               time.perf_counter() - start, workdir)
  return row


def load_inputs(config: ml_collections.ConfigDict, workdir: str):
  """``(model, variables, dataset, concept_ids)`` that ``config`` names."""
  name = config.model.name
  logging.info("=== %s: loading the model and the data", name)
  model, variables = models.load_model(config.model)
  dataset = data_lib.get_dataset(config, cache_dir=workdir)
  concept_ids = data_lib.selected_classes(config, dataset)
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
  if not np.all(result.done):
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
                  model=None, variables=None) -> dict[str, Any]:
  """Metrics, figures, ``metrics.json``, the analyses (with ``model`` and
  ``variables``, when ``config.analysis.enabled``) and the reports; returns
  the row."""
  name = config.model.name
  class_names = [dataset.class_names[c] for c in concept_ids]
  paths = result.paths  # {site: [N, S, C]}
  primary_of, primary_names = _primaries(dataset, concept_ids)
  seed_paths = {site: np.swapaxes(p, 0, 1) for site, p in paths.items()}
  similarity = metrics.path_similarity(seed_paths)  # [S, N, N]
  figure_paths = {}
  if config.report.figures:
    figure_paths["similarity"] = figures.similarity_heatmap(
        similarity.mean(0), class_names, primary_of, primary_names,
        os.path.join(workdir, "path_similarity.png"),
        title=f"{name}: path similarity M").path
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
  skipped = list(getattr(dataset, "skipped_files", []) or [])
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
                      extra_md=summary_md + _settings_md(config, skipped),
                      title=f"NAD report: {name}")
  html_report.write_network_report(workdir)
  return row


def _primaries(dataset, concept_ids):
  """``(primary_of [N] or None, primary names)`` of the chosen concepts."""
  hierarchy = getattr(dataset, "hierarchy", None)
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


def _settings_md(config, skipped=()) -> str:
  lines = ["", "## Settings", "", "```", config.to_json_best_effort(indent=1),
           "```"]
  if skipped:
    lines += ["", f"{len(skipped)} unreadable images were skipped; see "
              f"metrics.json."]
  return "\n".join(lines) + "\n"
