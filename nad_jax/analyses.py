"""Analyses of concept feature paths that need no network, and their controls.

Everything here takes paths (``{site: bool [..., K, C]}``), similarity
matrices or accuracies that a run already holds, and returns plain numpy
arrays and floats. The analyses that run the network (activation maps, hit
rates, ablations) are in ``nad_jax.probes``.

* ``top_k_similar`` / ``top_k_confused`` / ``top_k_agreement``: each class's
  k most similar paths next to the classifier's k most confused classes
  (the authors' top-3 script), with chance level and a permutation p-value.
* ``random_paths_like``: the random-path control, paths with exactly the
  same number of units per concept and site, drawn uniformly.
* ``seed_stability``: how alike the paths of one concept are across random
  initialisations, next to how alike different concepts' paths are.
* ``seed_spread``: mean and standard deviation over seeds of per-seed scores.
* ``hierarchy_test``: how well clustering M recovers a hierarchy (adjusted
  Rand index, cophenetic correlation, within - across similarity), with
  permutation p-values; ``mantel_test`` correlates M with any reference
  similarity (``wordnet_similarity`` for ImageNet classes).
* ``trajectory_summary``: what ``workdir/trajectory.npz`` (written by the
  search) says about convergence.

Permutation tests relabel the concepts at random and recompute the score;
the p-value is ``(1 + #{null >= observed}) / (1 + permutations)`` (one
sided: the alternative is "more structure than chance").

Cost for K = 1000 concepts: the similarity of one set of random paths is
one ``metrics.path_similarity`` call (K x K float64, 8 MB); a permutation of
a K x K pair score touches the K(K-1)/2 = 5e5 pairs, so 1000 permutations
take a few seconds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.cluster import hierarchy as scipy_hierarchy
from scipy.spatial import distance as scipy_distance

from nad_jax import metrics


# --------------------------------------------------------------------------
# Top-k similar paths vs. top-k confused classes.
# --------------------------------------------------------------------------


def _top_k_excluding_self(scores: np.ndarray, k: int) -> np.ndarray:
  """Columns of the k largest scores per row, the diagonal left out.

  Ties go to the lower column index (a stable sort), so the result does not
  depend on the platform.
  """
  scores = np.array(scores, np.float64, copy=True)
  num_rows = scores.shape[0]
  if scores.shape != (num_rows, num_rows):
    raise ValueError(f"scores must be square [K, K]; got {scores.shape}")
  if not 1 <= k <= num_rows - 1:
    raise ValueError(f"k must be in [1, {num_rows - 1}] for {num_rows} "
                     f"concepts; got {k}")
  np.fill_diagonal(scores, -np.inf)
  order = np.argsort(-scores, axis=1, kind="stable")
  return order[:, :k]


def top_k_similar(similarity: np.ndarray, k: int = 3) -> np.ndarray:
  """The k concepts whose paths are most similar to each concept's path.

  Args:
    similarity: ``[K, K]`` path similarity M.
    k: how many.

  Returns:
    int ``[K, k]`` concept indices (not class ids), most similar first; a
    concept is never its own neighbour.
  """
  return _top_k_excluding_self(similarity, k)


def top_k_confused(probabilities: np.ndarray, output_of_concept: Sequence[int],
                   k: int = 3) -> np.ndarray:
  """The k classes the classifier most confuses each concept with.

  Only the K searched concepts compete (so the answer lives in the same set
  as ``top_k_similar``'s), and a concept is never its own confusion.

  Args:
    probabilities: ``[K, num_outputs]`` the original network's softmax for
      each concept's images (e.g. the mean over its validation images, or
      one image's).
    output_of_concept: ``[K]`` the network output index (label) of each
      concept.
    k: how many.

  Returns:
    int ``[K, k]`` concept indices, most confused first.
  """
  probabilities = np.asarray(probabilities, np.float64)
  output_of_concept = np.asarray(output_of_concept, np.int64)
  if probabilities.ndim != 2 or probabilities.shape[0] != len(
      output_of_concept):
    raise ValueError(f"probabilities must be [K, outputs] with K = "
                     f"{len(output_of_concept)}; got {probabilities.shape}")
  return _top_k_excluding_self(probabilities[:, output_of_concept], k)


def _overlap_counts(first: np.ndarray, second: np.ndarray) -> np.ndarray:
  """``|first[i] n second[i]|`` per row of two ``[K, k]`` index arrays."""
  return np.sum(first[:, :, None] == second[:, None, :], axis=(1, 2))


def top_k_agreement(similar: np.ndarray, confused: np.ndarray,
                    permutations: int = 999,
                    rng: np.random.Generator | None = None
                    ) -> dict[str, Any]:
  """How often the k most similar paths are the k most confused classes.

  Chance: two independent uniformly random k-subsets of the other K - 1
  concepts share ``k * k / (K - 1)`` concepts on average. The permutation
  test relabels the concepts of the similarity side (concept i takes the
  neighbours of concept p(i), renamed through p), which keeps M's structure
  and breaks only its link with the classifier.

  Args:
    similar: ``[K, k]`` from :func:`top_k_similar`.
    confused: ``[K, k]`` from :func:`top_k_confused`.
    permutations: number of random relabellings (0: no test).
    rng: numpy generator for the permutations.

  Returns:
    ``overlap [K]`` (shared concepts per class), ``mean_overlap``,
    ``mean_fraction`` (mean overlap / k), ``chance_overlap``,
    ``chance_fraction``, ``null_mean_overlap``, ``p_value`` (NaN without
    permutations), ``k``.
  """
  similar = np.asarray(similar, np.int64)
  confused = np.asarray(confused, np.int64)
  if similar.shape != confused.shape or similar.ndim != 2:
    raise ValueError(f"similar {similar.shape} and confused {confused.shape} "
                     f"must both be [K, k]")
  num_concepts, k = similar.shape
  overlap = _overlap_counts(similar, confused)
  observed = float(overlap.mean())
  null = np.zeros(0)
  if permutations > 0:
    rng = rng if rng is not None else np.random.default_rng(0)
    null = np.empty(permutations)
    for index in range(permutations):
      perm = rng.permutation(num_concepts)
      inverse = np.empty_like(perm)
      inverse[perm] = np.arange(num_concepts)
      relabelled = inverse[similar[perm]]
      null[index] = _overlap_counts(relabelled, confused).mean()
  return {
      "k": int(k),
      "overlap": overlap,
      "mean_overlap": observed,
      "mean_fraction": observed / k,
      "chance_overlap": k * k / (num_concepts - 1),
      "chance_fraction": k / (num_concepts - 1),
      "null_mean_overlap": float(null.mean()) if null.size else float("nan"),
      "p_value": _p_value(observed, null),
  }


def _p_value(observed: float, null: np.ndarray) -> float:
  if null.size == 0 or not np.isfinite(observed):
    return float("nan")
  # A tolerance so that a null value equal to the observed one (up to float
  # rounding of an identical computation) counts as "at least as large".
  return float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size))


# --------------------------------------------------------------------------
# The random-path control.
# --------------------------------------------------------------------------


def random_paths_like(paths: Mapping[str, np.ndarray],
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random paths with exactly as many units per concept and site.

  For every leading index (concept, seed) and site, the selected units are
  a uniformly random subset of the site's channels of the same size as the
  given path's; so the unit usage of each concept at each site, and hence
  every usage rate, is unchanged, and only *which* units are selected is
  random.

  Args:
    paths: site -> bool ``[..., channels]``.
    rng: numpy generator.

  Returns:
    site -> bool array of the same shape.
  """
  out = {}
  for site, masks in paths.items():
    masks = np.asarray(masks, bool)
    counts = masks.sum(-1, keepdims=True)
    keys = rng.random(masks.shape)
    ranks = np.argsort(np.argsort(keys, axis=-1), axis=-1)
    out[site] = ranks < counts
  return out


# --------------------------------------------------------------------------
# Seeds.
# --------------------------------------------------------------------------


def seed_stability(paths: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """How alike one concept's paths are across seeds.

  Stability of concept c = the mean over seed pairs s < t of M between its
  seed-s and seed-t paths (site-mean Jaccard, ``metrics`` conventions).
  Its yardstick is how alike *different* concepts' paths are within one
  seed (the off-diagonal mean of M, averaged over seeds): a path is stable
  when the first clearly exceeds the second.

  Args:
    paths: site -> bool ``[N, S, C]`` with S >= 2 seeds.

  Returns:
    ``per_concept [N]``, ``mean``, ``std`` (over concepts),
    ``across_concepts`` (mean M between different concepts, same seed).
  """
  first = next(iter(paths.values()))
  num_concepts, num_seeds = first.shape[:2]
  if num_seeds < 2:
    raise ValueError(f"seed stability needs at least 2 seeds; got {num_seeds}")
  within = metrics.path_similarity(paths)  # [N, S, S]
  rows, cols = np.triu_indices(num_seeds, k=1)
  per_concept = within[:, rows, cols].mean(-1)
  across = metrics.path_similarity(
      {site: np.swapaxes(masks, 0, 1) for site, masks in paths.items()})
  off = ~np.eye(num_concepts, dtype=bool)
  across_mean = float(across[:, off].mean()) if num_concepts > 1 else float(
      "nan")
  return {"per_concept": per_concept, "mean": float(per_concept.mean()),
          "std": float(per_concept.std()), "across_concepts": across_mean}


def seed_spread(per_seed: Mapping[str, Sequence[float]]
                ) -> dict[str, dict[str, Any]]:
  """Mean and standard deviation over seeds of each score.

  Args:
    per_seed: score name -> one value per seed (NaNs are left out).

  Returns:
    name -> ``{"mean", "std", "values"}`` (population std; 0 for one seed).
  """
  out = {}
  for name, values in per_seed.items():
    values = np.asarray(values, np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    out[name] = {
        "mean": float(finite.mean()) if finite.size else float("nan"),
        "std": float(finite.std()) if finite.size else float("nan"),
        "values": values.tolist(),
    }
  return out


# --------------------------------------------------------------------------
# Hierarchy agreement.
# --------------------------------------------------------------------------


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Pearson r of ``x [P]`` with each row of ``y [R, P]`` (NaN if constant)."""
  x = x - x.mean()
  y = y - y.mean(-1, keepdims=True)
  denominator = np.sqrt(np.sum(x * x) * np.sum(y * y, axis=-1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denominator > 0, (y @ x) / np.where(denominator > 0,
                                                       denominator, 1.0),
                    np.nan)


def hierarchy_test(similarity: np.ndarray, primary_of: Sequence[int],
                   permutations: int = 999,
                   rng: np.random.Generator | None = None
                   ) -> dict[str, Any]:
  """Hierarchy recovery scores with permutation p-values.

  The scores of ``metrics.hierarchy_recovery`` (ARI of the tree cut into as
  many clusters as primaries, cophenetic correlation) plus the gap
  ``within - across`` (mean M over pairs of one primary minus over pairs of
  different primaries). The null relabels the concepts at random (a
  permutation of ``primary_of``, so group sizes stay), keeping the tree
  and M fixed.

  Args:
    similarity: ``[K, K]`` path similarity.
    primary_of: ``[K]`` integer primary of each concept (>= 2 primaries and
      at least one pair within a primary for a meaningful test).
    permutations: number of relabellings (0: no test).
    rng: numpy generator.

  Returns:
    For each score in ``("adjusted_rand_index", "cophenetic_correlation",
    "within_minus_across")``: ``{"observed", "null_mean", "null_std",
    "p_value", "null"}``.
  """
  similarity = np.asarray(similarity, np.float64)
  primary_of = np.asarray(primary_of).reshape(-1)
  num_concepts = similarity.shape[0]
  if primary_of.shape[0] != num_concepts:
    raise ValueError(f"primary_of has {primary_of.shape[0]} entries, "
                     f"similarity has {num_concepts} concepts")
  linkage = metrics.similarity_linkage(similarity)
  num_primaries = len(np.unique(primary_of))
  cut = metrics.cut_linkage(linkage, num_primaries)
  cophenetic = scipy_hierarchy.cophenet(linkage)
  rows, cols = np.triu_indices(num_concepts, k=1)
  pair_similarity = similarity[rows, cols]

  # Full [K, K, 2] matrices (zero diagonal) of the cophenetic distance and
  # M: the sum of a pair value over same-primary pairs is half the sum of
  # its within-group blocks, K^2 / P reads per relabelling.
  full = np.stack([scipy_distance.squareform(cophenetic),
                   similarity * (1.0 - np.eye(num_concepts))], -1)
  totals = np.stack([cophenetic.sum(), pair_similarity.sum()])
  num_pairs = len(rows)
  cophenetic_mean = cophenetic.mean()
  cophenetic_var = cophenetic.var()

  def scores(labels: np.ndarray) -> np.ndarray:
    """One relabelling -> ``[ARI, cophenetic r, gap]``.

    The cophenetic correlation with the planted 0/1 distance and the gap
    need only the sums of the pair values over same-primary pairs.
    """
    sums = np.zeros(2)
    num_same = 0
    for group in np.unique(labels):
      members = np.flatnonzero(labels == group)
      sums += full[np.ix_(members, members)].sum((0, 1)) / 2
      num_same += len(members) * (len(members) - 1) // 2
    different = 1.0 - num_same / num_pairs  # mean planted distance
    spread = np.sqrt(cophenetic_var * different * (1.0 - different))
    covariance = ((totals[0] - sums[0]) / num_pairs
                  - cophenetic_mean * different)
    cophenetic_r = covariance / spread if spread > 0 else float("nan")
    if 0 < num_same < num_pairs:
      gap = sums[1] / num_same - (totals[1] - sums[1]) / (num_pairs - num_same)
    else:
      gap = float("nan")
    ari = metrics.adjusted_rand_index(cut, labels)
    return np.asarray([ari, cophenetic_r, gap])

  observed = scores(primary_of)
  null = np.zeros((0, 3))
  if permutations > 0:
    rng = rng if rng is not None else np.random.default_rng(0)
    null = np.stack([scores(rng.permutation(primary_of))
                     for _ in range(permutations)])
  out = {}
  names = ("adjusted_rand_index", "cophenetic_correlation",
           "within_minus_across")
  for index, name in enumerate(names):
    values = null[:, index]
    finite = values[np.isfinite(values)]
    out[name] = {
        "observed": float(observed[index]),
        "null_mean": float(finite.mean()) if finite.size else float("nan"),
        "null_std": float(finite.std()) if finite.size else float("nan"),
        "p_value": _p_value(float(observed[index]), finite),
        "null": values,
    }
  return out


def mantel_test(similarity: np.ndarray, reference: np.ndarray,
                permutations: int = 999,
                rng: np.random.Generator | None = None
                ) -> dict[str, Any]:
  """Pearson r between M and a reference similarity over concept pairs.

  The Mantel test: the null relabels the concepts of ``reference`` (rows
  and columns together).

  Args:
    similarity: ``[K, K]`` path similarity.
    reference: ``[K, K]`` symmetric reference similarity (e.g.
      :func:`wordnet_similarity`).
    permutations: number of relabellings (0: no test).
    rng: numpy generator.

  Returns:
    ``{"observed", "null_mean", "null_std", "p_value", "null"}``.
  """
  similarity = np.asarray(similarity, np.float64)
  reference = np.asarray(reference, np.float64)
  if similarity.shape != reference.shape:
    raise ValueError(f"similarity {similarity.shape} and reference "
                     f"{reference.shape} differ in shape")
  num_concepts = similarity.shape[0]
  rows, cols = np.triu_indices(num_concepts, k=1)
  observed = float(_pearson_rows(similarity[rows, cols],
                                 reference[rows, cols][None])[0])
  null = np.zeros(0)
  if permutations > 0:
    rng = rng if rng is not None else np.random.default_rng(0)
    # Pearson over the off-diagonal entries (each pair twice) with the
    # reference relabelled: only sum(M_c * R_p) changes, K^2 per relabelling.
    off = ~np.eye(num_concepts, dtype=bool)
    centred = np.where(off, similarity - similarity[off].mean(), 0.0)
    reference_off = reference[off]
    scale = np.sqrt(np.sum(centred**2) * np.sum(
        (reference_off - reference_off.mean())**2))
    null = np.empty(permutations)
    for index in range(permutations):
      perm = rng.permutation(num_concepts)
      product = np.einsum("ij,ij->", centred, reference[np.ix_(perm, perm)])
      null[index] = product / scale if scale > 0 else np.nan
  finite = null[np.isfinite(null)]
  return {"observed": observed,
          "null_mean": float(finite.mean()) if finite.size else float("nan"),
          "null_std": float(finite.std()) if finite.size else float("nan"),
          "p_value": _p_value(observed, finite), "null": null}


def wordnet_similarity(wnids: Sequence[str]) -> np.ndarray:
  """Wu-Palmer similarity of ImageNet classes in WordNet 3.0.

  ``2 d(lcs) / (d(a) + d(b))``, where d is the depth below ``entity``
  (entity = 0; a synset's depth is its largest position on any hypernym
  path of the 1000 ImageNet classes) and lcs the deepest common ancestor.
  1 on the diagonal. Vectorised over depth levels: one ``[K, V] @ [V, K]``
  product per level.

  Args:
    wnids: K ImageNet wnids.

  Returns:
    float64 ``[K, K]`` in (0, 1].
  """
  from nad_jax.data import classes  # pylint: disable=g-import-not-at-top
  hypernym_paths = classes.imagenet_wordnet()["classes"]
  unknown = [w for w in wnids if w not in hypernym_paths]
  if unknown:
    raise ValueError(f"not ImageNet wnids: {unknown[:5]}")
  # Depths over all 1000 classes' paths, so that a pair's similarity does
  # not depend on which other classes are compared.
  depth: dict[str, int] = {}
  for paths_of_class in hypernym_paths.values():
    for path in paths_of_class:
      for position, node in enumerate(path):
        depth[node] = max(depth.get(node, 0), position)
  nodes = sorted({node for wnid in wnids for path in hypernym_paths[wnid]
                  for node in path})
  column = {node: index for index, node in enumerate(nodes)}
  incidence = np.zeros((len(wnids), len(nodes)), np.float32)
  for row, wnid in enumerate(wnids):
    for path in hypernym_paths[wnid]:
      incidence[row, [column[node] for node in path]] = 1.0
  node_depth = np.asarray([depth[node] for node in nodes])
  lcs_depth = np.full((len(wnids), len(wnids)), -1.0)
  for level in sorted(set(node_depth.tolist()), reverse=True):
    at_level = incidence[:, node_depth == level]
    common = (at_level @ at_level.T) > 0
    lcs_depth = np.where((lcs_depth < 0) & common, float(level), lcs_depth)
  class_depth = np.asarray([depth[w] for w in wnids], np.float64)
  total = class_depth[:, None] + class_depth[None, :]
  result = np.where(total > 0, 2 * np.maximum(lcs_depth, 0) /
                    np.where(total > 0, total, 1.0), 1.0)
  np.fill_diagonal(result, 1.0)
  return result


# --------------------------------------------------------------------------
# Path trajectories (workdir/trajectory.npz, written by the search).
# --------------------------------------------------------------------------

TRAJECTORY_FILE = "trajectory.npz"


def load_trajectory(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """``workdir/trajectory.npz`` as a dict, or None if it was not recorded.

  Format: ``steps`` int32 ``[T]``, ``concept_ids`` int32 ``[N]``, and per
  gate site ``flips/<site>`` int32 ``[N, S, T]`` (units whose binary value
  changed since the previous record; the first record compares with the
  initial gates) and ``usage/<site>`` float32 ``[N, S, T]``.

  Raises:
    ValueError: the file lacks a field or its shapes disagree (named).
  """
  path = os.path.join(os.fspath(workdir), TRAJECTORY_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as data:
    arrays = {key: data[key] for key in data.files}
  for key in ("steps", "concept_ids"):
    if key not in arrays:
      raise ValueError(f"{path} has no {key!r} array")
  sites = sorted(key.split("/", 1)[1] for key in arrays
                 if key.startswith("flips/"))
  if not sites:
    raise ValueError(f"{path} has no flips/<site> arrays")
  shape = (len(arrays["concept_ids"]), None, len(arrays["steps"]))
  for site in sites:
    for kind in ("flips", "usage"):
      key = f"{kind}/{site}"
      if key not in arrays:
        raise ValueError(f"{path} has flips/{site} but no {key!r}")
      value = arrays[key]
      if value.ndim != 3 or value.shape[0] != shape[0] or (
          value.shape[2] != shape[2]):
        raise ValueError(f"{path}: {key} has shape {value.shape}, expected "
                         f"[{shape[0]}, seeds, {shape[2]}]")
  return {"path": path, "steps": arrays["steps"].astype(np.int64),
          "concept_ids": arrays["concept_ids"], "sites": sites,
          "flips": {site: arrays[f"flips/{site}"] for site in sites},
          "usage": {site: arrays[f"usage/{site}"] for site in sites}}


def trajectory_summary(trajectory: Mapping[str, Any],
                       site_channels: Mapping[str, int]) -> dict[str, Any]:
  """Share of units that changed per record and site, and the usage.

  Args:
    trajectory: :func:`load_trajectory` output.
    site_channels: site -> channels (the model's ``gate_sites()``).

  Returns:
    ``steps [T]``; ``flip_fraction {site: [T]}``: units that changed since
    the previous record, as a share of the site's units, averaged over
    concepts and seeds; ``usage {site: [T]}`` likewise; ``final_flip_fraction``
    (all sites together, last record), ``last_change_step`` (the last
    record with any change, or None) and ``steps_between_records`` at the
    end.
  """
  steps = np.asarray(trajectory["steps"])
  flip_fraction, usage = {}, {}
  total_flips = np.zeros(len(steps))
  total_units = 0
  for site in trajectory["sites"]:
    if site not in site_channels:
      raise ValueError(f"trajectory site {site!r} is not a gate site of the "
                       f"model ({sorted(site_channels)})")
    channels = int(site_channels[site])
    flips = np.asarray(trajectory["flips"][site], np.float64)
    flip_fraction[site] = flips.mean((0, 1)) / channels
    usage[site] = np.asarray(trajectory["usage"][site], np.float64).mean(
        (0, 1))
    total_flips += flips.sum((0, 1))
    total_units += channels * flips.shape[0] * flips.shape[1]
  changed = np.flatnonzero(total_flips > 0)
  return {
      "steps": steps,
      "flip_fraction": flip_fraction,
      "usage": usage,
      "final_flip_fraction": float(total_flips[-1] / max(total_units, 1)),
      "last_change_step": int(steps[changed[-1]]) if changed.size else None,
      "steps_between_records": int(steps[-1] - steps[-2]) if len(steps) > 1
                               else int(steps[-1]),
  }
