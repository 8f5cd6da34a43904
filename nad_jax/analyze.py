"""The analysis stage: every analysis of one network's paths, into its workdir.

``analyze_network`` runs after the evaluation (the pipeline calls it, and
``--config.mode=analyze`` runs it on an existing workdir without searching
again) and writes

* ``analyses.json``: every score, its control and p-value, the run facts,
  the per-class numbers and the figure names (what ``nad_jax.html_report``
  and ``nad_jax.compare`` read);
* ``analyses.npz``: the arrays behind them (random-path similarities,
  ablation accuracies, confusions, hit rates, cross-class matrices, null
  distributions);
* ``scores.csv`` and ``per_class.csv``;
* the figures (PNG).

What it computes (``nad_jax.analyses`` for path-only analyses,
``nad_jax.probes`` for those that run the network): sufficiency and
necessity ablations with random same-size paths as control; the
random-path control of I and M; cross-class accuracy; top-k similar paths
vs. top-k confusions (ours and the authors' variant); hierarchy recovery
with permutation p-values (and the Mantel test against WordNet for ImageNet
classes); seed spread and stability; the authors' mosaic hit rate with a
random-path control; activation maps; the search trajectory.

Config fields (``config.analysis``, defaults in
``nad_jax.config_lib.analysis_config``): ``enabled``, ``seed``, ``mask_rate``,
``num_mosaics``, ``mosaic_images_per_class``, ``mosaic_full_size``,
``random_draws``, ``permutations``, ``top_k``, ``authors_top_k_classes``,
``cross_max_classes``, ``cross_images_per_class``,
``max_images_per_class``, ``map_classes``, ``images``.

Cost: the forward passes (batched, jitted) dominate: per validation image
``2 (S + D) + 1`` passes for the ablations, ``num_mosaics * 4 * (S + D)``
one-image passes for the hit rate, ``X^2 * cross_images_per_class`` for the
cross-class matrix. The rest is numpy: for 1000 concepts a few seconds per
K x K similarity and about 10 s per 1000 permutations.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from nad_jax import analyses
from nad_jax import figures
from nad_jax import metrics
from nad_jax import probes
from nad_jax import search
from nad_jax.data import classes as classes_lib
from nad_jax.data import preprocess

ANALYSES_JSON = "analyses.json"
ANALYSES_NPZ = "analyses.npz"
MODES = ("search", "analyze")
CHANCE_HIT_RATE = 0.25
LAST_SITES = 3  # the authors' hit-rate summary: mean over the last 3 sites


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the field for bad ``mode`` / ``analysis``."""
  mode = config.get("mode", "search")
  if mode not in MODES:
    raise ValueError(f"config.mode must be one of {MODES}, got {mode!r}")
  if "analysis" not in config:
    return
  analysis = config.analysis
  if not 0 < float(analysis.mask_rate) <= 1:
    raise ValueError(f"config.analysis.mask_rate must be in (0, 1], got "
                     f"{analysis.mask_rate}")
  for field in ("num_mosaics", "mosaic_images_per_class", "random_draws",
                "top_k", "authors_top_k_classes", "cross_max_classes",
                "cross_images_per_class"):
    if int(analysis[field]) < 1:
      raise ValueError(f"config.analysis.{field} must be at least 1, got "
                       f"{analysis[field]}")
  if int(analysis.permutations) < 0:
    raise ValueError(f"config.analysis.permutations must be >= 0, got "
                     f"{analysis.permutations}")
  if analysis.max_images_per_class is not None and int(
      analysis.max_images_per_class) < 1:
    raise ValueError(f"config.analysis.max_images_per_class must be at "
                     f"least 1, got {analysis.max_images_per_class}")
  for image_file in _split_list(analysis.images):
    if not os.path.isfile(image_file):
      raise ValueError(f"config.analysis.images: no such file {image_file!r}")


def _split_list(value) -> list[str]:
  if not value:
    return []
  if isinstance(value, str):
    return [item.strip() for item in value.split(",") if item.strip()]
  return [str(item) for item in value]


# --------------------------------------------------------------------------
# --config.mode=analyze: the search result stored in a workdir.
# --------------------------------------------------------------------------


def load_search_result(workdir: str, site_channels: Mapping[str, int],
                       concept_ids: Sequence[int] | None = None
                       ) -> search.SearchResult:
  """The finished search stored in ``workdir`` (``paths.npz``).

  Args:
    workdir: a run's workdir.
    site_channels: the model's gate sites (checked against the file).
    concept_ids: the concepts to return, in this order (None: all stored).

  Raises:
    FileNotFoundError: no finished search in ``workdir`` (the message says
      whether a checkpoint of an unfinished one is there).
    ValueError: the stored paths belong to another network (named), or a
      requested concept is missing.
  """
  path = os.path.join(workdir, "paths.npz")
  if not os.path.exists(path):
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise FileNotFoundError(
          f"{workdir} holds the checkpoint of a search that has not "
          f"finished (no paths.npz); rerun without --config.mode=analyze to "
          f"finish it")
    raise FileNotFoundError(f"no NAD search in {workdir} (no paths.npz): "
                            f"run the search first")
  with np.load(path) as data:
    stored_ids = data["concept_ids"].astype(np.int64)
    gate_logits = {site: data[f"gate_logits/{site}"] for site in site_channels
                   if f"gate_logits/{site}" in data.files}
    stored_sites = sorted(key.split("/", 1)[1] for key in data.files
                          if key.startswith("gate_logits/"))
    steps_done = (data["steps_done"] if "steps_done" in data.files else
                  None)
  if stored_sites != sorted(site_channels) or any(
      gate_logits[site].shape[-1] != channels
      for site, channels in site_channels.items()):
    stored = {site: int(gate_logits[site].shape[-1]) if site in gate_logits
              else "?" for site in stored_sites}
    raise ValueError(f"{path} holds paths for gate sites {stored}, but the "
                     f"model has {dict(site_channels)}: it belongs to another "
                     f"network")
  if steps_done is None:
    steps_done = _steps_from_metrics(workdir, stored_ids)
  if concept_ids is None:
    index = np.arange(len(stored_ids))
  else:
    position = {int(c): i for i, c in enumerate(stored_ids)}
    missing = [int(c) for c in concept_ids if int(c) not in position]
    if missing:
      raise ValueError(f"concepts {missing} were not searched in {workdir}; "
                       f"it holds {sorted(position)}")
    index = np.asarray([position[int(c)] for c in concept_ids], np.int64)
  return search.SearchResult(
      concept_ids=stored_ids[index],
      gate_logits={site: logits[index] for site, logits in
                   gate_logits.items()},
      steps_done=np.asarray(steps_done)[index],
      done=np.ones(len(index), bool))


def _steps_from_metrics(workdir, stored_ids) -> np.ndarray:
  stored = read_json(os.path.join(workdir, "metrics.json"))
  if stored and stored.get("concept_ids") == [int(c) for c in stored_ids]:
    return np.asarray(stored["steps_done"], np.int64)
  return np.full(len(stored_ids), -1, np.int64)  # unknown


def stored_accuracies(workdir: str, concept_ids: Sequence[int],
                      num_seeds: int
                      ) -> tuple[np.ndarray, np.ndarray] | None:
  """``(original [N], path [N, S])`` from ``metrics.json`` if it holds these
  concepts, else None (then the pipeline evaluates)."""
  stored = read_json(os.path.join(workdir, "metrics.json"))
  if not stored or stored.get("concept_ids") != [int(c) for c in concept_ids]:
    return None
  path_accuracy = np.asarray(stored["path_accuracy"], np.float64).T
  if path_accuracy.shape != (len(concept_ids), num_seeds):
    return None
  return np.asarray(stored["original_accuracy"], np.float64), path_accuracy


def read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as file:
    return json.load(file)


# --------------------------------------------------------------------------
# The analyses of one network.
# --------------------------------------------------------------------------


def _mean_std(values) -> dict[str, float]:
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()), "std": float(values.std())}


def _display_image(image: np.ndarray, dataset) -> np.ndarray:
  """A normalised network input back to [0, 1] RGB for figures."""
  mean = np.asarray(getattr(dataset, "mean", preprocess.IMAGENET_MEAN))
  std = np.asarray(getattr(dataset, "std", preprocess.IMAGENET_STD))
  return np.clip(image * std + mean, 0.0, 1.0)


def load_image(path: str, dataset, image_size: int) -> np.ndarray:
  """A user's image file as a network input ``[H, W, 3]``.

  Datasets with their own normalisation (the demo: ``mean``/``std``
  attributes) get a plain resize to ``image_size`` and that normalisation;
  others the eval transform (resize, centre crop, ImageNet statistics).
  """
  with Image.open(path) as image:
    image = preprocess.to_pil_rgb(image)
    if hasattr(dataset, "mean") and hasattr(dataset, "std"):
      image = image.resize((image_size, image_size), Image.BILINEAR)
      array = np.asarray(image, np.float32) / 255.0
      return ((array - np.asarray(dataset.mean)) / np.asarray(dataset.std)
              ).astype(np.float32)
    return preprocess.eval_transform(image, image_size)


def _map_concepts(config, dataset, concept_ids, primary_of, rng) -> list[int]:
  """Indices of the (up to) four concepts of the activation-map figure."""
  ids = [int(c) for c in concept_ids]
  chosen = _split_list(config.analysis.map_classes)
  if chosen:
    wanted = classes_lib.resolve_classes(
        chosen, dataset.class_names, getattr(dataset, "aliases", None))
    missing = [c for c in wanted if c not in ids]
    if missing:
      raise ValueError(f"config.analysis.map_classes: classes {missing} "
                       f"were not searched")
    return [ids.index(c) for c in wanted][:probes.NUM_QUADRANTS]
  if primary_of is not None and len(np.unique(primary_of)) >= 4:
    # One class of each of four primaries: the planted structure shows.
    firsts = [int(np.flatnonzero(primary_of == p)[0])
              for p in np.unique(primary_of)]
    return sorted(rng.choice(firsts, probes.NUM_QUADRANTS, replace=False))
  return list(range(min(probes.NUM_QUADRANTS, len(ids))))


def analyze_network(config: ml_collections.ConfigDict, workdir: str, model,
                    variables, dataset, concept_ids: Sequence[int],
                    paths: Mapping[str, np.ndarray], *,
                    similarity: np.ndarray, row: Mapping[str, Any],
                    class_names: Sequence[str],
                    primary_of: np.ndarray | None,
                    primary_names: Sequence[str] | None) -> dict[str, Any]:
  """Runs every analysis of one network and writes them into ``workdir``.

  Args:
    config: the run's config (``config.analysis``, ``config.eval``, ...).
    workdir: the network's workdir.
    model, variables: the frozen network.
    dataset: its dataset.
    concept_ids: the N searched class ids.
    paths: site -> bool ``[N, S, C]`` hard paths.
    similarity: ``[S, N, N]`` path similarity (already computed).
    row: the network's ``metrics.summary_row``.
    class_names: N readable names.
    primary_of: ``[N]`` primary concept of each class, or None.
    primary_names: names of the primaries, or None.

  Returns:
    The content of ``analyses.json`` (also written), or None for fewer than
    two concepts (nothing to compare; nothing is written).
  """
  if len(concept_ids) < 2:
    logging.info("%s: the analyses need at least 2 concepts; skipped.",
                 row["model"])
    return None
  acfg = config.analysis
  rng = np.random.default_rng([int(acfg.seed), 1])
  concept_ids = [int(c) for c in concept_ids]
  num_concepts = len(concept_ids)
  num_seeds = next(iter(paths.values())).shape[1]
  site_channels = model.gate_sites()
  name = row["model"]
  batch_size = int(config.eval.batch_size)
  max_images = acfg.max_images_per_class
  if max_images is None:
    max_images = config.eval.max_images_per_class
  arrays: dict[str, np.ndarray] = {}
  figure_files: dict[str, str] = {}
  skipped: dict[str, str] = {}
  result: dict[str, Any] = {"model": name}

  def figure(key, path):
    figure_files[key] = os.path.basename(path)

  def out(file_name):
    return os.path.join(workdir, file_name)

  # Random paths: per concept and site as many units as its seed-0 path.
  seed0 = {site: p[:, 0] for site, p in paths.items()}
  draws = int(acfg.random_draws)
  random_sets = [analyses.random_paths_like(seed0, rng) for _ in range(draws)]
  random_paths = {site: np.stack([r[site] for r in random_sets], 1)
                  for site in paths}  # [N, D, C]

  # ---- Sufficiency, necessity and their random controls (network).
  logging.info("%s: ablations (path kept / removed, %d random draws)", name,
               draws)
  ablation = probes.class_ablations(
      model, variables, dataset, concept_ids, paths, random_paths,
      batch_size=batch_size, max_images=max_images)
  for key in ("original", "kept", "removed", "random_kept", "random_removed",
              "mean_probabilities", "first_probabilities",
              "output_of_concept"):
    arrays[f"ablation/{key}"] = ablation[key]
  result["ablation"] = {
      "original": float(ablation["original"].mean()),
      "kept": _mean_std(ablation["kept"].mean(0)),
      "removed": _mean_std(ablation["removed"].mean(0)),
      "random_kept": _mean_std(ablation["random_kept"].mean(0)),
      "random_removed": _mean_std(ablation["random_removed"].mean(0)),
      "images_per_class": int(np.median(ablation["num_images"])),
  }
  figure("ablation", figures.ablation_plot(
      class_names, {key: ablation[key].mean(-1) if ablation[key].ndim == 2
                    else ablation[key] for key in
                    ("original", "kept", "random_kept", "removed",
                     "random_removed")},
      out("ablation.png"),
      title=f"{name}: sufficiency and necessity of each class's path"))

  # ---- The random-path control of M and I.
  random_similarity = np.stack([metrics.path_similarity(r)
                                for r in random_sets])  # [D, N, N]
  arrays["random/similarity"] = random_similarity
  random_i = np.atleast_1d(metrics.interpretability(
      random_similarity, ablation["random_kept"].T))
  random_i_nad_accuracy = np.atleast_1d(metrics.interpretability(
      random_similarity, np.broadcast_to(ablation["kept"][:, 0],
                                         (draws, num_concepts))))
  off = ~np.eye(num_concepts, dtype=bool)
  result["random_control"] = {
      "draws": draws,
      "interpretability": _mean_std(random_i),
      "interpretability_nad_accuracy": _mean_std(random_i_nad_accuracy),
      "mean_similarity": float(random_similarity[:, off].mean()),
      "nad_mean_similarity": float(similarity[:, off].mean()),
      "usage_per_site": metrics.unit_usage(random_paths),
  }
  if primary_of is not None and len(np.unique(primary_of)) >= 2:
    random_recovery = [metrics.hierarchy_recovery(m, primary_of)
                       for m in random_similarity]
    result["random_control"]["adjusted_rand_index"] = _mean_std(
        [r["adjusted_rand_index"] for r in random_recovery])

  # ---- Cross-class: does a path serve only its class?
  if num_concepts >= 2:
    if num_concepts <= int(acfg.cross_max_classes):
      subset = np.arange(num_concepts)
    else:
      subset = np.sort(rng.choice(num_concepts, int(acfg.cross_max_classes),
                                  replace=False))
    logging.info("%s: cross-class accuracy on %d classes", name, len(subset))
    cross = probes.cross_class(
        model, variables, dataset, [concept_ids[i] for i in subset],
        {site: p[subset] for site, p in seed0.items()},
        ablation["output_of_concept"][subset], batch_size=batch_size,
        images_per_class=int(acfg.cross_images_per_class))
    arrays["cross/subset"] = subset
    arrays["cross/accuracy"] = cross["accuracy"]
    arrays["cross/predicted_as_path"] = cross["predicted_as_path"]
    sub_off = ~np.eye(len(subset), dtype=bool)
    result["cross_class"] = {
        "num_classes": int(len(subset)),
        "images_per_class": int(acfg.cross_images_per_class),
        "own_accuracy": float(np.diag(cross["accuracy"]).mean()),
        "other_accuracy": float(cross["accuracy"][sub_off].mean()),
        "other_predicted_as_path": float(
            cross["predicted_as_path"][sub_off].mean()),
        "original_accuracy": float(ablation["original"][subset].mean()),
    }
    subset_names = [class_names[i] for i in subset]
    figure("cross_class", figures.cross_class_heatmap(
        cross["accuracy"], subset_names, out("cross_class.png"),
        title=f"{name}: accuracy of class d's images (columns)\nthrough "
        f"class c's path (rows)"))
    figure("cross_class_predicted", figures.cross_class_heatmap(
        cross["predicted_as_path"], subset_names,
        out("cross_class_predicted.png"),
        title=f"{name}: share of class d's images (columns)\npredicted as "
        f"class c through c's path (rows)", colorbar_label="share"))

  # ---- Top-k similar paths vs. top-k confusions.
  top_k = int(acfg.top_k)
  mean_similarity = similarity.mean(0)
  if num_concepts > top_k:
    similar = analyses.top_k_similar(mean_similarity, top_k)
    confused = analyses.top_k_confused(ablation["mean_probabilities"],
                                       ablation["output_of_concept"], top_k)
    ours = analyses.top_k_agreement(similar, confused,
                                    int(acfg.permutations), rng)
    authors_n = min(int(acfg.authors_top_k_classes), num_concepts)
    top = {"k": top_k, "ours": _plain_test(ours),
           "similar": similar, "confused": confused}
    overlaps = {"all classes, mean confusion over val images":
                ours["overlap"]}
    if authors_n > top_k:
      authors = analyses.top_k_agreement(
          analyses.top_k_similar(similarity[0][:authors_n, :authors_n], top_k),
          analyses.top_k_confused(
              ablation["first_probabilities"][:authors_n],
              ablation["output_of_concept"][:authors_n], top_k),
          int(acfg.permutations), rng)
      top["authors"] = _plain_test(authors)
      top["authors_num_classes"] = authors_n
      overlaps[f"authors: first {authors_n} classes, one image"] = authors[
          "overlap"]
    arrays["top_k/similar"] = similar
    arrays["top_k/confused"] = confused
    result["top_k"] = {key: value for key, value in top.items()
                       if key not in ("similar", "confused")}
    result["top_k"]["table"] = [
        {"class": class_names[i],
         "similar": [[class_names[j], float(mean_similarity[i, j])]
                     for j in similar[i]],
         "confused": [[class_names[j], float(ablation["mean_probabilities"][
             i, ablation["output_of_concept"][j]])] for j in confused[i]],
         "overlap": int(ours["overlap"][i])}
        for i in range(num_concepts)]
    figure("top_k", figures.top_k_overlap_plot(
        overlaps, top_k, num_concepts, out("top_k_overlap.png"),
        title=f"{name}: top-{top_k} similar paths vs. top-{top_k} "
        f"confusions"))
  else:
    skipped["top_k"] = (f"needs more than {top_k} concepts; the run has "
                        f"{num_concepts}")

  # ---- Hierarchy agreement with permutation tests.
  tests = {}
  if primary_of is not None and 2 <= len(np.unique(primary_of)) < \
      num_concepts:
    hierarchy = analyses.hierarchy_test(mean_similarity, primary_of,
                                        int(acfg.permutations), rng)
    result["hierarchy"] = {key: _plain_test(value) for key, value in
                           hierarchy.items()}
    result["hierarchy"]["num_primaries"] = int(len(np.unique(primary_of)))
    result["hierarchy"]["primary_names"] = list(primary_names or [])
    for key, value in hierarchy.items():
      arrays[f"hierarchy/{key}/null"] = value["null"]
    tests["ARI of the tree cut"] = hierarchy["adjusted_rand_index"]
    tests["cophenetic correlation"] = hierarchy["cophenetic_correlation"]
    tests["M within - across primaries"] = hierarchy["within_minus_across"]
  else:
    skipped["hierarchy"] = ("no hierarchy (config.data.hierarchy) with at "
                            "least two primaries covering the concepts")
  wnids = getattr(dataset, "wnids", None)
  if wnids and num_concepts >= 3:
    reference = analyses.wordnet_similarity([wnids[c] for c in concept_ids])
    mantel = analyses.mantel_test(mean_similarity, reference,
                                  int(acfg.permutations), rng)
    result["wordnet"] = _plain_test(mantel)
    arrays["wordnet/null"] = mantel["null"]
    tests["r(M, WordNet similarity)"] = mantel
  if tests and int(acfg.permutations) > 0:
    figure("permutation_tests", figures.null_distribution_plot(
        {label: (t["observed"], t["null"], t["p_value"])
         for label, t in tests.items()}, out("permutation_tests.png"),
        title=f"{name}: agreement with the hierarchy vs. random relabelling"))

  # ---- Seeds.
  per_seed = dict(row.get("per_seed") or {})
  per_seed["sufficiency"] = ablation["kept"].mean(0).tolist()
  per_seed["necessity"] = ablation["removed"].mean(0).tolist()
  per_seed["mean_usage"] = [
      metrics.mean_unit_usage(metrics.unit_usage(
          {site: p[:, s] for site, p in paths.items()}))
      for s in range(num_seeds)]
  if num_seeds > 1:
    stability = analyses.seed_stability(paths)
    random_stability = analyses.seed_stability(
        analyses.random_paths_like(paths, rng))
    result["seed_stability"] = {
        "mean": stability["mean"], "std": stability["std"],
        "across_concepts": stability["across_concepts"],
        "random_same_size": random_stability["mean"]}
    arrays["seeds/stability"] = stability["per_concept"]
    figure("seed_stability", figures.seed_stability_plot(
        stability["per_concept"], stability["across_concepts"],
        out("seed_stability.png"), random_level=random_stability["mean"],
        title=f"{name}: path stability across {num_seeds} seeds"))
  else:
    skipped["seed_stability"] = ("one seed; set config.search.num_seeds > 1 "
                                 "for the spread over seeds and path "
                                 "stability")

  # ---- Mosaic hit rate (the authors' analysis) and activation maps.
  if num_concepts >= probes.NUM_QUADRANTS:
    hit_seeds = _hit_rates(config, model, variables, dataset, concept_ids,
                           paths, random_paths, rng, result, arrays, skipped,
                           figure, out, name)
    if hit_seeds is not None:
      per_seed["hit_rate_last_sites"] = hit_seeds
    _activation_figures(config, model, variables, dataset, concept_ids,
                        paths, random_paths, primary_of, class_names, rng,
                        figure, out, name, skipped)
  else:
    skipped["hit_rate"] = ("mosaics need at least 4 concepts; the run has "
                           f"{num_concepts}")
  result["seeds"] = analyses.seed_spread(per_seed)

  # ---- Trajectory.
  trajectory = analyses.load_trajectory(workdir)
  if trajectory is None:
    skipped["trajectory"] = (f"not recorded: the search wrote no "
                             f"{analyses.TRAJECTORY_FILE}")
  else:
    summary = analyses.trajectory_summary(trajectory, site_channels)
    result["trajectory"] = {
        "final_flip_fraction": summary["final_flip_fraction"],
        "last_change_step": summary["last_change_step"],
        "steps_between_records": summary["steps_between_records"],
        "last_step": int(summary["steps"][-1]),
        "final_flip_fraction_per_site": {
            site: float(v[-1]) for site, v in summary["flip_fraction"].items()},
    }
    figure("trajectory", figures.trajectory_plot(
        summary["steps"], summary["flip_fraction"], summary["usage"],
        out("trajectory.png"), title=f"{name}: paths during the search"))

  result["skipped"] = skipped
  result["figures"] = figure_files
  result["run"] = run_facts(config, row, dataset, concept_ids)
  result["per_class"] = per_class_rows(class_names, concept_ids, row,
                                       ablation, result, arrays)
  result["scores"] = score_table(row, result)
  _write_outputs(workdir, result, arrays)
  return result


def _plain_test(test: Mapping[str, Any]) -> dict[str, Any]:
  """A test result without its big arrays."""
  return {key: value for key, value in test.items()
          if key not in ("null", "overlap")}


def _hit_rates(config, model, variables, dataset, concept_ids, paths,
               random_paths, rng, result, arrays, skipped, figure, out, name):
  """The mosaic hit rate (shrunk as the authors, and optionally full size).

  Returns the per-seed mean hit rate over the last sites (authors' mosaics).
  """
  acfg = config.analysis
  num_seeds = next(iter(paths.values())).shape[1]
  mosaics, quadrant_concepts = probes.build_mosaics(
      dataset, concept_ids, int(acfg.num_mosaics), rng,
      images_per_class=int(acfg.mosaic_images_per_class))
  arrays["hit_rate/quadrant_concepts"] = quadrant_concepts
  size = (mosaics.shape[1] // 2, mosaics.shape[2] // 2)
  variants = {site: np.concatenate([paths[site], random_paths[site]], 1)
              for site in paths}  # [N, S + D, C]
  inputs = {"authors": probes.shrink_mosaics(mosaics, size)}
  if acfg.mosaic_full_size:
    inputs["full_size"] = mosaics
  result["hit_rate"] = {"mask_rate": float(acfg.mask_rate),
                        "num_mosaics": int(acfg.num_mosaics),
                        "chance": CHANCE_HIT_RATE}
  curves = {}
  per_seed = None
  for variant, images in inputs.items():
    logging.info("%s: hit rate on %d mosaics (%s)", name, len(images),
                 variant)
    try:
      scored = probes.mosaic_hit_rates(
          model, variables, images, quadrant_concepts, variants,
          mask_rate=float(acfg.mask_rate),
          batch_size=int(config.eval.batch_size))
    except Exception as error:  # pylint: disable=broad-except
      if variant == "authors":
        raise
      skipped["hit_rate_full_size"] = (f"the network does not take "
                                       f"{images.shape[1]} px inputs: "
                                       f"{error}".splitlines()[0][:300])
      continue
    sites = scored["sites"]
    if not sites:
      skipped["hit_rate"] = "no gate site has a spatial output"
      return None
    hits = scored["hits"].mean(1)  # [M, G, sites]: mean over quadrants
    nad = hits[:, :num_seeds].mean(1)  # [M, sites]
    control = hits[:, num_seeds:].mean(1)
    last = slice(max(0, len(sites) - LAST_SITES), len(sites))
    arrays[f"hit_rate/{variant}"] = scored["hits"]
    result["hit_rate"][variant] = {
        "sites": sites,
        "input_size": list(images.shape[1:3]),
        "per_site_mean": nad.mean(0).tolist(),
        "per_site_std": nad.std(0).tolist(),
        "random_per_site_mean": control.mean(0).tolist(),
        "random_per_site_std": control.std(0).tolist(),
        "last_sites": sites[last],
        "last_sites_mean": float(nad[:, last].mean()),
        "last_sites_std": float(nad[:, last].mean(1).std()),
        "random_last_sites_mean": float(control[:, last].mean()),
        "random_last_sites_std": float(control[:, last].mean(1).std()),
    }
    if variant == "authors":
      per_seed = hits[:, :num_seeds, last].mean((0, 2)).tolist()
    label = ("mosaic shrunk to the input (authors)" if variant == "authors"
             else "mosaic at full size")
    curves[f"NAD paths, {label}"] = (nad.mean(0), nad.std(0))
    curves[f"random same-size paths, {label}"] = (control.mean(0),
                                                  control.std(0))
  figure("hit_rate", figures.hit_rate_plot(
      result["hit_rate"]["authors"]["sites"], curves, out("hit_rate.png"),
      chance=CHANCE_HIT_RATE,
      title=f"{name}: hit rate on {int(acfg.num_mosaics)} 2x2 mosaics (top "
      f"{100 * float(acfg.mask_rate):g}% pixels)"))
  return per_seed


def _activation_figures(config, model, variables, dataset, concept_ids, paths,
                        random_paths, primary_of, class_names, rng, figure,
                        out, name, skipped):
  """Fig. 1/5: maps of a mosaic of four classes (and of the user's images)."""
  acfg = config.analysis
  chosen = _map_concepts(config, dataset, concept_ids, primary_of, rng)
  tiles = []
  for index in chosen:
    images, _ = next(iter(dataset.eval_batches(concept_ids[index], 1, 1)))
    tiles.append(images[0])
  gate_sets = [None] + [{site: p[i, 0] for site, p in paths.items()}
                        for i in chosen]
  labels = ["original network"] + [f"path: {class_names[i]}" for i in chosen]
  gate_sets.append({site: p[chosen[0], 0] for site, p in
                    random_paths.items()})
  labels.append("random same-size path")
  inputs = []
  if len(tiles) == probes.NUM_QUADRANTS:
    mosaic = probes.tile_mosaic(np.stack(tiles))[None]
    size = tiles[0].shape[:2]
    quadrant_labels = [class_names[i] for i in chosen]
    inputs.append(("activation_maps", probes.shrink_mosaics(mosaic, size)[0],
                   "mosaic shrunk to the input size (authors)",
                   quadrant_labels))
    if acfg.mosaic_full_size and "hit_rate_full_size" not in skipped:
      inputs.append(("activation_maps_full", mosaic[0],
                     "mosaic at full size", quadrant_labels))
  image_size = int(config.model.image_size)
  for number, image_file in enumerate(_split_list(acfg.images)):
    inputs.append((f"activation_maps_image{number}",
                   load_image(image_file, dataset, image_size),
                   os.path.basename(image_file), None))
  for key, image, description, quadrant_labels in inputs:
    _, masks = probes.activation_maps(model, variables, image[None],
                                      gate_sets,
                                      mask_rate=float(acfg.mask_rate))
    masks = {site: m[:, 0] for site, m in masks.items()}
    figure(key, figures.activation_map_grid(
        _display_image(image, dataset), masks, labels, out(f"{key}.png"),
        title=f"{name}: {description}, top "
        f"{100 * float(acfg.mask_rate):g}% pixels",
        quadrant_labels=quadrant_labels))


def run_facts(config, row, dataset, concept_ids) -> dict[str, Any]:
  """What the report rests on: network, dataset, concepts, seeds, steps."""
  data = config.data
  if data.source == "tfds":
    dataset_text = f"tfds {data.name}"
  elif data.source == "folder":
    dataset_text = f"image folder {data.root}"
  else:
    dataset_text = f"{data.source} dataset"
  hparams = {"objective": config.objective.name,
             "alpha": float(config.optim.alpha)}
  hparams["lambda" if config.objective.name == "paper" else "beta"] = float(
      config.objective.lam if config.objective.name == "paper" else
      config.objective.beta)
  return {
      "model": row["model"],
      "checkpoint": config.model.checkpoint or "(shipped weights)",
      "dataset": dataset_text,
      "num_dataset_classes": len(dataset.class_names),
      "num_concepts": len(concept_ids),
      "num_seeds": int(row["num_seeds"]),
      "steps": int(row["steps"]),
      "step_budget": int(config.search.num_steps),
      "batch_size": int(config.search.batch_size),
      "patience": int(config.search.patience),
      "seed": int(config.seed),
      "hparams": hparams,
      "eval_images_per_class": config.eval.max_images_per_class,
      "config_json": config.to_json_best_effort(indent=1),
  }


def per_class_rows(class_names, concept_ids, row, ablation, result, arrays
                   ) -> list[dict[str, Any]]:
  """One dict per concept: its accuracies under every condition."""
  rows = []
  for i, (class_name, class_id) in enumerate(zip(class_names, concept_ids)):
    entry = {"class_id": int(class_id), "class": class_name,
             "original": float(ablation["original"][i]),
             "path_kept": float(ablation["kept"][i].mean()),
             "path_removed": float(ablation["removed"][i].mean()),
             "random_kept": float(ablation["random_kept"][i].mean()),
             "random_removed": float(ablation["random_removed"][i].mean())}
    if "top_k/similar" in arrays:
      entry["top_k_similar"] = [class_names[j] for j in
                                arrays["top_k/similar"][i]]
      entry["top_k_confused"] = [class_names[j] for j in
                                 arrays["top_k/confused"][i]]
    if "seeds/stability" in arrays:
      entry["seed_stability"] = float(arrays["seeds/stability"][i])
    rows.append(entry)
  return rows


def score_table(row: Mapping[str, Any], result: Mapping[str, Any]
                ) -> list[dict[str, Any]]:
  """Every score of one network next to its control.

  Each entry: ``key``, ``label``, ``value``, ``std`` (over seeds or
  mosaics, or None), ``control`` (the value under the control, or None),
  ``control_label``, ``p_value`` (or None), ``unit`` (``"percent"``,
  ``"fixed"`` or ``"I"``).
  """
  seeds = result.get("seeds", {})

  def seed_std(key):
    entry = seeds.get(key)
    return entry["std"] if entry and row.get("num_seeds", 1) > 1 else None

  scores = []

  def add(key, label, value, unit, control=None, control_label=None,
          std=None, p_value=None):
    scores.append({"key": key, "label": label, "value": value, "std": std,
                   "control": control, "control_label": control_label,
                   "p_value": p_value, "unit": unit})

  random_control = result["random_control"]
  ablation = result["ablation"]
  add("interpretability", "interpretability I (Eq. 12)",
      row["interpretability"], "I",
      random_control["interpretability"]["mean"],
      "random same-size paths", row.get("interpretability_std")
      if row.get("num_seeds", 1) > 1 else None)
  add("mean_path_accuracy", "path accuracy (sufficiency: only the path)",
      row["mean_path_accuracy"], "percent",
      ablation["random_kept"]["mean"], "random same-size path kept",
      seed_std("mean_path_accuracy"))
  add("original_accuracy", "original network accuracy",
      row["original_accuracy"], "percent")
  add("necessity", "accuracy with the path removed (necessity)",
      ablation["removed"]["mean"], "percent",
      ablation["random_removed"]["mean"], "random same-size path removed",
      seed_std("necessity"))
  add("interpretability_random_similarity",
      "control: I of random same-size paths' M with the paths' own "
      "accuracies", random_control["interpretability_nad_accuracy"]["mean"],
      "I")
  add("mean_usage", "mean unit usage", row["mean_usage"], "fixed",
      std=seed_std("mean_usage"))
  add("mean_similarity", "mean path similarity M between classes",
      random_control["nad_mean_similarity"], "fixed",
      random_control["mean_similarity"], "random same-size paths")
  cross = result.get("cross_class")
  if cross:
    add("cross_class_accuracy",
        "accuracy of other classes through a class's path",
        cross["other_accuracy"], "percent", cross["original_accuracy"],
        "original network on those classes")
    add("cross_class_predicted_as_path",
        "other classes' images predicted as the path's class",
        cross["other_predicted_as_path"], "percent")
  top = result.get("top_k")
  if top:
    ours = top["ours"]
    add("top_k_agreement",
        f"top-{top['k']} similar paths among top-{top['k']} confusions",
        ours["mean_fraction"], "fixed", ours["chance_fraction"], "chance",
        p_value=ours["p_value"])
    if "authors" in top:
      authors = top["authors"]
      add("top_k_agreement_authors",
          f"the same, authors' variant (first {top['authors_num_classes']} "
          f"classes, one image)", authors["mean_fraction"], "fixed",
          authors["chance_fraction"], "chance", p_value=authors["p_value"])
  hierarchy = result.get("hierarchy")
  if hierarchy:
    for key, label in (("adjusted_rand_index", "ARI of the tree cut vs. the "
                        "hierarchy"),
                       ("cophenetic_correlation", "cophenetic correlation "
                        "with the hierarchy"),
                       ("within_minus_across", "M within minus across "
                        "primaries")):
      test = hierarchy[key]
      add(f"hierarchy_{key}", label, test["observed"], "fixed",
          test["null_mean"], "random relabelling", p_value=test["p_value"])
  if result.get("wordnet"):
    test = result["wordnet"]
    add("wordnet_correlation", "Pearson r of M with WordNet similarity",
        test["observed"], "fixed", test["null_mean"], "random relabelling",
        p_value=test["p_value"])
  hit = result.get("hit_rate", {})
  for variant, label in (("authors", "hit rate, last 3 sites (authors' "
                          "mosaics)"),
                         ("full_size", "hit rate, last 3 sites (full-size "
                          "mosaics)")):
    if variant in hit:
      entry = hit[variant]
      add(f"hit_rate_{variant}", label, entry["last_sites_mean"], "fixed",
          entry["random_last_sites_mean"], "random same-size paths (chance "
          "0.25)", std=entry["last_sites_std"])
  stability = result.get("seed_stability")
  if stability:
    add("seed_stability", "M between two seeds of one class",
        stability["mean"], "fixed", stability["across_concepts"],
        "two classes, one seed", std=stability["std"])
  trajectory = result.get("trajectory")
  if trajectory:
    add("final_flip_fraction", "units changed in the last record interval",
        trajectory["final_flip_fraction"], "percent")
  return scores


def _json_ready(value):
  if isinstance(value, Mapping):
    return {str(k): _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if isinstance(value, np.ndarray):
    return _json_ready(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _write_outputs(workdir, result, arrays):
  tmp = os.path.join(workdir, ANALYSES_JSON + ".tmp")
  with open(tmp, "w") as file:
    json.dump(_json_ready(result), file, indent=1, allow_nan=False)
  os.replace(tmp, os.path.join(workdir, ANALYSES_JSON))
  tmp = os.path.join(workdir, "analyses.tmp.npz")
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, os.path.join(workdir, ANALYSES_NPZ))
  _write_csv(os.path.join(workdir, "scores.csv"), result["scores"],
             ["key", "label", "value", "std", "control", "control_label",
              "p_value", "unit"])
  per_class = [{key: (";".join(value) if isinstance(value, list) else value)
                for key, value in entry.items()}
               for entry in result["per_class"]]
  _write_csv(os.path.join(workdir, "per_class.csv"), per_class,
             list(per_class[0]) if per_class else ["class"])


def _write_csv(path, rows, fields):
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as file:
    writer = csv.DictWriter(file, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for entry in rows:
      writer.writerow({key: ("" if entry.get(key) is None else entry.get(key))
                       for key in fields})
  os.replace(tmp, path)
