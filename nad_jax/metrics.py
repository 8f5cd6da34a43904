"""Metrics on concept feature paths (paper Sec. 4 and 5).

Pure numpy functions: arrays in, numpy arrays or plain Python floats out.
A *path* is one boolean vector per gate site, so the paths of K concepts are
``paths = {site: bool array [K, channels]}``; search results with several
random initialisations carry a leading seed axis, ``[S, K, channels]``.

* ``binarize``: gate logits -> paths (Eq. 9).
* ``jaccard_matrix`` / ``path_similarity``: the concept-by-concept path
  similarity M (Eq. 10, 11), with 0/0 (two empty selections) defined as 1.
* ``interpretability``: I, the variance of a_i a_j M_ij over pairs (Eq. 12).
* ``unit_usage``: share of selected units per site (Fig. 4).
* ``precision_histogram``: per-class precision in ten 10% bins (Fig. 3).
* ``hierarchy_recovery``: how well average-linkage clustering of M recovers
  a planted two-level concept hierarchy (cophenetic correlation, adjusted
  Rand index).
* ``summary_row``: one network's scores (I, accuracies, usage, hierarchy
  scores; each per seed, then mean and standard deviation over seeds) from
  the similarity, usage and accuracies a run already computed.

Several seeds: ``jaccard_matrix``, ``path_similarity`` and
``interpretability`` accept any leading axes and return one value per
leading index, e.g. ``path_similarity`` of ``[S, K, C]`` paths is
``[S, K, K]`` and ``interpretability`` of that with ``[S, K]`` accuracies is
``[S]``. The project's convention is to compute every metric per seed and
report the mean (and the standard deviation) over seeds; ``unit_usage``
averages over seeds and concepts at once, which is the same thing.
``hierarchy_recovery`` takes one ``[K, K]`` matrix: call it per seed.

Memory: ``jaccard_matrix`` builds float64 ``[..., K, L]`` intersection and
union matrices from ``[..., K, C]`` float64 copies of the masks; for
K = 1000 concepts and C = 2048 channels that is about 16 MB per copy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial import distance

# Fig. 3 bins in percent: [0, 10], (10, 20], ..., (90, 100].
PRECISION_BIN_LABELS = tuple(
    ["[0,10]"] + [f"({lo},{lo + 10}]" for lo in range(10, 100, 10)])


def binarize(gate_logits: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Hard paths from gate logits: p = 1 where sigmoid(s) > 0.5, i.e. s > 0.

  Paper Eq. 9. A logit of exactly 0 (sigmoid = 0.5) is not selected.

  Args:
    gate_logits: site -> real array ``[..., channels]`` (numpy or jax).

  Returns:
    site -> bool numpy array of the same shape.
  """
  paths = {}
  for site, logits in gate_logits.items():
    logits = np.asarray(logits)
    if not np.all(np.isfinite(logits)):
      raise ValueError(f"gate logits of site {site!r} are not all finite")
    paths[site] = logits > 0
  return paths


def _as_masks(masks: np.ndarray, name: str) -> np.ndarray:
  masks = np.asarray(masks)
  if masks.dtype != bool:
    if not np.all((masks == 0) | (masks == 1)):
      raise ValueError(f"{name} must be boolean or 0/1; got values "
                       f"{np.unique(masks)[:5]}")
    masks = masks.astype(bool)
  if masks.ndim < 2:
    raise ValueError(f"{name} must be [..., concepts, channels]; got shape "
                     f"{masks.shape}")
  return masks


def jaccard_matrix(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
  """Jaccard index of every row of ``masks_a`` with every row of ``masks_b``.

  J(Y, Z) = |Y n Z| / |Y u Z| (paper Eq. 10), computed with matrix products:
  intersections ``A @ B^T`` and unions ``|A| + |B| - intersections``.

  Empty sets: the paper leaves 0/0 undefined. Here J(empty, empty) = 1.0:
  two concepts that select no unit at a site have *identical* selections
  there, and the Jaccard index of identical sets is 1 everywhere else; it
  also keeps M(c, c) = 1 for every concept, so M stays a similarity with a
  unit diagonal. One empty and one non-empty set give 0 (empty
  intersection, non-empty union), as the formula says.

  Args:
    masks_a: bool ``[..., K, C]``.
    masks_b: bool ``[..., L, C]``; leading axes broadcast with ``masks_a``.

  Returns:
    float64 ``[..., K, L]`` in [0, 1].
  """
  masks_a = _as_masks(masks_a, "masks_a")
  masks_b = _as_masks(masks_b, "masks_b")
  if masks_a.shape[-1] != masks_b.shape[-1]:
    raise ValueError(f"masks_a has {masks_a.shape[-1]} channels, masks_b has "
                     f"{masks_b.shape[-1]}")
  a = masks_a.astype(np.float64)
  b = masks_b.astype(np.float64)
  intersection = a @ np.swapaxes(b, -1, -2)
  union = a.sum(-1)[..., :, None] + b.sum(-1)[..., None, :] - intersection
  safe_union = np.where(union > 0, union, 1.0)
  return np.where(union > 0, intersection / safe_union, 1.0)


def path_similarity(paths: Mapping[str, np.ndarray]) -> np.ndarray:
  """Concept-by-concept path similarity M (paper Eq. 11).

  M(c1, c2) = mean over the n sites of J(p_i^c1, p_i^c2), with
  J(empty, empty) = 1 (see ``jaccard_matrix``). Every site counts equally,
  whatever its number of channels.

  Args:
    paths: site -> bool ``[..., K, channels]``; all sites share the leading
      shape ``[..., K]`` (e.g. ``[S, K]`` for S seeds).

  Returns:
    float64 ``[..., K, K]``, symmetric, unit diagonal.
  """
  if not paths:
    raise ValueError("paths has no gate sites")
  leading = None
  total = None
  for site, masks in paths.items():
    masks = _as_masks(masks, f"paths[{site!r}]")
    if leading is None:
      leading = masks.shape[:-1]
    elif masks.shape[:-1] != leading:
      raise ValueError(f"paths[{site!r}] has leading shape {masks.shape[:-1]}, "
                       f"the first site has {leading}")
    jaccard = jaccard_matrix(masks, masks)
    total = jaccard if total is None else total + jaccard
  return total / len(paths)


def interpretability(similarity: np.ndarray,
                     path_accuracy: np.ndarray) -> float | np.ndarray:
  """Interpretability I (paper Eq. 12).

  With v_ij = a_i a_j M_ij over the K(K-1)/2 pairs i < j,
  ``I = mean_{i<j} (v_ij - mu)^2`` with ``mu = mean_{i<j} v_ij``: the
  (population) variance of the accuracy-weighted pair similarities. The
  diagonal of M is not used. Larger means more interpretable.

  Args:
    similarity: ``[..., K, K]`` path similarity M.
    path_accuracy: ``[..., K]`` per-concept path accuracy in [0, 1].

  Returns:
    A float for ``[K, K]`` input, else an array of the leading shape
    (e.g. one I per seed; average them for the report).
  """
  similarity = np.asarray(similarity, np.float64)
  path_accuracy = np.asarray(path_accuracy, np.float64)
  if similarity.ndim < 2 or similarity.shape[-1] != similarity.shape[-2]:
    raise ValueError(f"similarity must be [..., K, K]; got {similarity.shape}")
  num_concepts = similarity.shape[-1]
  if num_concepts < 2:
    raise ValueError(f"interpretability needs at least 2 concepts; got "
                     f"{num_concepts}")
  if path_accuracy.shape != similarity.shape[:-1]:
    raise ValueError(f"path_accuracy has shape {path_accuracy.shape}, expected "
                     f"{similarity.shape[:-1]} to match similarity "
                     f"{similarity.shape}")
  if not (np.all(np.isfinite(similarity))
          and np.all(np.isfinite(path_accuracy))):
    raise ValueError("similarity and path_accuracy must be finite")
  rows, cols = np.triu_indices(num_concepts, k=1)
  pair_values = (path_accuracy[..., rows] * path_accuracy[..., cols]
                 * similarity[..., rows, cols])
  mu = pair_values.mean(-1, keepdims=True)
  result = ((pair_values - mu) ** 2).mean(-1)
  return float(result) if result.ndim == 0 else result


def unit_usage(paths: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Unit usage rate per site: mean over concepts of |p_i^c|_1 / channels.

  Leading axes (seeds, concepts) are all averaged over.

  Args:
    paths: site -> bool ``[..., K, channels]``.

  Returns:
    site -> usage rate in [0, 1], in the order of ``paths``.
  """
  if not paths:
    raise ValueError("paths has no gate sites")
  usage = {}
  for site, masks in paths.items():
    masks = _as_masks(masks, f"paths[{site!r}]")
    usage[site] = float(masks.mean(-1).mean())
  return usage


def mean_unit_usage(usage: Mapping[str, float]) -> float:
  """Mean of the per-site usage rates; every site counts equally."""
  if not usage:
    raise ValueError("usage has no gate sites")
  return float(np.mean(list(usage.values())))


def precision_histogram(precision: np.ndarray) -> np.ndarray:
  """Counts of per-class precisions in the ten bins of paper Fig. 3.

  Bins in percent: [0, 10], (10, 20], ..., (90, 100]; the first is closed on
  both sides, the others open on the left. To keep values that sit on an
  edge (0.1, 0.7, 7/70, ...) in the right bin despite float rounding, the
  precision is rounded to integer units of 1e-9 percent before binning, so
  values within ~1e-11 of an edge count as on the edge.

  Args:
    precision: ``[K]`` per-class top-1 precision in [0, 1].

  Returns:
    int64 ``[10]`` counts (labels in ``PRECISION_BIN_LABELS``).
  """
  precision = np.asarray(precision, np.float64).reshape(-1)
  bad = ~np.isfinite(precision) | (precision < -1e-12) | (precision > 1 + 1e-12)
  if np.any(bad):
    raise ValueError(f"precision values must lie in [0, 1]; got "
                     f"{precision[bad][:5]} at indices "
                     f"{np.flatnonzero(bad)[:5]}")
  unit = 10**9  # integer units per percent
  scaled = np.rint(precision * 100 * unit).astype(np.int64)
  bin_width = 10 * unit
  index = -(-scaled // bin_width) - 1  # ceil(scaled / width) - 1
  index = np.clip(index, 0, 9)
  return np.bincount(index, minlength=10).astype(np.int64)


def adjusted_rand_index(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
  """Adjusted Rand index of two partitions (Hubert and Arabie, 1985).

  From the contingency table n_ij (items in cluster i of ``labels_a`` and
  cluster j of ``labels_b``), with row sums a_i, column sums b_j and
  N = C(n, 2):
  ``index = sum C(n_ij, 2)``, ``expected = sum C(a_i, 2) sum C(b_j, 2) / N``,
  ``max = (sum C(a_i, 2) + sum C(b_j, 2)) / 2``,
  ``ARI = (index - expected) / (max - expected)``.
  The denominator is 0 only when both partitions are a single cluster or
  both are all singletons, i.e. identical: ARI = 1 then.

  Args:
    labels_a: ``[n]`` cluster labels (any hashable integers).
    labels_b: ``[n]`` cluster labels.

  Returns:
    ARI: 1 for identical partitions (up to relabelling), about 0 for chance.
  """
  labels_a = np.asarray(labels_a).reshape(-1)
  labels_b = np.asarray(labels_b).reshape(-1)
  if labels_a.shape != labels_b.shape:
    raise ValueError(f"label arrays differ in length: {labels_a.shape[0]} vs "
                     f"{labels_b.shape[0]}")
  _, a_index = np.unique(labels_a, return_inverse=True)
  _, b_index = np.unique(labels_b, return_inverse=True)
  contingency = np.zeros((a_index.max(initial=-1) + 1,
                          b_index.max(initial=-1) + 1), np.int64)
  np.add.at(contingency, (a_index, b_index), 1)

  def pairs(counts):
    counts = counts.astype(np.float64)
    return float(np.sum(counts * (counts - 1) / 2))

  index = pairs(contingency)
  sum_a = pairs(contingency.sum(1))
  sum_b = pairs(contingency.sum(0))
  n = labels_a.shape[0]
  total_pairs = n * (n - 1) / 2
  if total_pairs == 0:
    return 1.0
  expected = sum_a * sum_b / total_pairs
  maximum = (sum_a + sum_b) / 2
  if maximum == expected:
    return 1.0
  return float((index - expected) / (maximum - expected))


def similarity_linkage(similarity: np.ndarray) -> np.ndarray:
  """Average-linkage clustering of concepts on the distance 1 - M.

  The distance is symmetrised, its diagonal set to 0 and clipped to >= 0.

  Args:
    similarity: ``[K, K]`` path similarity, K >= 2.

  Returns:
    The scipy linkage matrix ``[K - 1, 4]``.
  """
  similarity = np.asarray(similarity, np.float64)
  if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
    raise ValueError(f"similarity must be [K, K]; got {similarity.shape}")
  if similarity.shape[0] < 2:
    raise ValueError(f"clustering needs at least 2 concepts; got "
                     f"{similarity.shape[0]}")
  if not np.all(np.isfinite(similarity)):
    raise ValueError("similarity has non-finite entries")
  if not np.allclose(similarity, similarity.T, atol=1e-9):
    raise ValueError("similarity is not symmetric")
  dist = np.clip(1.0 - (similarity + similarity.T) / 2, 0.0, None)
  np.fill_diagonal(dist, 0.0)
  return hierarchy.linkage(distance.squareform(dist, checks=False),
                           method="average")


def cut_linkage(linkage: np.ndarray, num_clusters: int) -> np.ndarray:
  """Flat clusters from the first K - ``num_clusters`` merges of a linkage.

  Replays the merges in order, so it always returns exactly
  ``num_clusters`` clusters (scipy's ``cut_tree`` can return fewer for some
  linkages, scipy issue #8063).

  Args:
    linkage: scipy linkage matrix ``[K - 1, 4]``.
    num_clusters: 1 <= num_clusters <= K.

  Returns:
    int ``[K]`` cluster labels 0..num_clusters-1, numbered by first leaf.
  """
  num_leaves = linkage.shape[0] + 1
  if not 1 <= num_clusters <= num_leaves:
    raise ValueError(f"num_clusters must be in [1, {num_leaves}]; got "
                     f"{num_clusters}")
  members = {leaf: [leaf] for leaf in range(num_leaves)}
  for step in range(num_leaves - num_clusters):
    left, right = int(linkage[step, 0]), int(linkage[step, 1])
    members[num_leaves + step] = members.pop(left) + members.pop(right)
  labels = np.empty(num_leaves, np.int64)
  clusters = sorted(members.values(), key=min)
  for label, leaves in enumerate(clusters):
    labels[leaves] = label
  return labels


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  x = x - x.mean()
  y = y - y.mean()
  denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
  if denom == 0:
    return float("nan")
  return float(np.sum(x * y) / denom)


def hierarchy_recovery(similarity: np.ndarray,
                       primary_of: np.ndarray) -> dict[str, float]:
  """How well clustering the path similarity recovers planted primaries.

  Average-linkage clustering on the distance 1 - M (``similarity_linkage``),
  then:

  * ``cophenetic_correlation``: Pearson correlation, over the K(K-1)/2
    pairs, between the tree's cophenetic distances and the planted distance
    (0 for two classes of one primary, 1 across primaries). 1 = the tree
    merges every primary before any cross-primary merge and merges all
    primaries at one height; NaN when either distance is constant (e.g. a
    single primary, or all similarities equal).
  * ``adjusted_rand_index``: ARI of the tree cut into as many clusters as
    there are primaries vs. the planted primaries (1 = exact recovery,
    about 0 = chance).
  * ``within_primary_similarity`` / ``across_primary_similarity``: mean M
    over pairs i < j of the same / of different primaries (NaN if there is
    no such pair).

  Args:
    similarity: ``[K, K]`` path similarity (one seed, or a seed mean).
    primary_of: ``[K]`` integer primary concept of each class.

  Returns:
    Plain floats under the four keys above.
  """
  similarity = np.asarray(similarity, np.float64)
  primary_of = np.asarray(primary_of).reshape(-1)
  linkage = similarity_linkage(similarity)
  num_concepts = similarity.shape[0]
  if primary_of.shape[0] != num_concepts:
    raise ValueError(f"primary_of has {primary_of.shape[0]} entries, "
                     f"similarity has {num_concepts} concepts")
  rows, cols = np.triu_indices(num_concepts, k=1)
  same = primary_of[rows] == primary_of[cols]
  # hierarchy.cophenet returns condensed distances in the same i < j order.
  cophenetic = hierarchy.cophenet(linkage)
  planted = (~same).astype(np.float64)
  num_primaries = len(np.unique(primary_of))
  cut = cut_linkage(linkage, num_primaries)
  pair_similarity = similarity[rows, cols]
  nan = float("nan")
  return {
      "cophenetic_correlation": _pearson(cophenetic, planted),
      "adjusted_rand_index": adjusted_rand_index(cut, primary_of),
      "within_primary_similarity":
          float(pair_similarity[same].mean()) if same.any() else nan,
      "across_primary_similarity":
          float(pair_similarity[~same].mean()) if (~same).any() else nan,
  }


HIERARCHY_KEYS = ("cophenetic_correlation", "adjusted_rand_index",
                  "within_primary_similarity", "across_primary_similarity")


def summary_row(model: str,
                similarity: np.ndarray,
                usage: Mapping[str, float],
                path_accuracy: np.ndarray,
                original_accuracy: np.ndarray,
                steps: int,
                primary_of: np.ndarray | None = None) -> dict:
  """One network's scores, from what a run already computed.

  Every score is computed per seed; the row holds the mean over seeds, the
  standard deviation of I (``interpretability_std``) and, in
  ``per_seed``, every per-seed value (so the spread of any score can be
  reported).

  Args:
    model: network name.
    similarity: ``[K, K]`` or ``[S, K, K]`` path similarity M.
    usage: site -> unit usage rate (``unit_usage``).
    path_accuracy: ``[K]`` or ``[S, K]`` per-class accuracy with the path.
    original_accuracy: ``[K]`` per-class accuracy of the original network.
    steps: search steps per concept.
    primary_of: ``[K]`` primary concept of each class, or None (then the
      hierarchy scores are NaN).

  Returns:
    A dict of plain Python values: ``model``, ``num_concepts``,
    ``num_seeds``, ``steps``, ``interpretability`` (+ ``_std``),
    ``mean_path_accuracy``, ``original_accuracy``, ``mean_usage``,
    ``usage_per_site``, the ``HIERARCHY_KEYS``, ``num_primaries`` and
    ``per_seed`` (score -> list over seeds).
  """
  similarity = np.asarray(similarity, np.float64)
  if similarity.ndim not in (2, 3):
    raise ValueError(f"similarity of model {model!r} must be [K, K] or "
                     f"[S, K, K]; got shape {similarity.shape}")
  if similarity.ndim == 2:
    similarity = similarity[None]
  num_seeds, num_concepts = similarity.shape[0], similarity.shape[1]
  path_accuracy = np.asarray(path_accuracy, np.float64)
  if path_accuracy.ndim == 1:
    path_accuracy = path_accuracy[None]
  if path_accuracy.shape != (num_seeds, num_concepts):
    raise ValueError(f"path_accuracy of model {model!r} has shape "
                     f"{path_accuracy.shape}, expected ({num_concepts},) or "
                     f"({num_seeds}, {num_concepts})")
  original_accuracy = np.asarray(original_accuracy, np.float64).reshape(-1)
  if original_accuracy.shape != (num_concepts,):
    raise ValueError(f"original_accuracy of model {model!r} has "
                     f"{original_accuracy.shape[0]} entries, expected "
                     f"{num_concepts}")
  # I and the hierarchy scores compare concepts: NaN for a single one.
  comparable = num_concepts >= 2
  per_seed_i = (np.atleast_1d(interpretability(similarity, path_accuracy))
                if comparable else np.full(num_seeds, np.nan))
  per_seed = {"interpretability": per_seed_i.tolist(),
              "mean_path_accuracy": path_accuracy.mean(-1).tolist()}
  row = {
      "model": model,
      "num_concepts": int(num_concepts),
      "num_seeds": int(num_seeds),
      "steps": int(steps),
      "interpretability": float(np.mean(per_seed_i)),
      "interpretability_std": float(np.std(per_seed_i)),
      "mean_path_accuracy": float(path_accuracy.mean()),
      "original_accuracy": float(original_accuracy.mean()),
      "mean_usage": mean_unit_usage(usage),
      "usage_per_site": dict(usage),
  }
  if primary_of is None or not comparable:
    row.update({key: float("nan") for key in HIERARCHY_KEYS})
    row["num_primaries"] = 0
  else:
    primary_of = np.asarray(primary_of).reshape(-1)
    scores = [hierarchy_recovery(seed_similarity, primary_of)
              for seed_similarity in similarity]
    for key in HIERARCHY_KEYS:
      per_seed[key] = [score[key] for score in scores]
      row[key] = float(np.mean(per_seed[key]))
    row["num_primaries"] = int(len(np.unique(primary_of)))
  row["per_seed"] = per_seed
  return row
