"""Metrics against hand-computed values (arithmetic written in comments)."""

from __future__ import annotations

import numpy as np
import pytest

from nad_jax import metrics


def _masks(sets, channels):
  """Bool [K, channels] from a list of index sets."""
  out = np.zeros((len(sets), channels), bool)
  for row, members in enumerate(sets):
    out[row, list(members)] = True
  return out


# Two sites, three concepts.
# site00 (4 channels): c0 = {0, 1}, c1 = {1, 2}, c2 = {}
# site01 (3 channels): c0 = {0, 1, 2}, c1 = {0}, c2 = {2}
PATHS = {
    "site00": _masks([{0, 1}, {1, 2}, set()], 4),
    "site01": _masks([{0, 1, 2}, {0}, {2}], 3),
}


def test_binarize_is_logit_above_zero():
  logits = {"site00": np.array([[-1.0, 0.0, 1e-6, 3.0]]),
            "site01": np.array([[0.2, -0.2]])}
  paths = metrics.binarize(logits)
  np.testing.assert_array_equal(paths["site00"], [[False, False, True, True]])
  np.testing.assert_array_equal(paths["site01"], [[True, False]])
  assert paths["site00"].dtype == bool


def test_binarize_rejects_nan():
  with pytest.raises(ValueError, match="site01"):
    metrics.binarize({"site00": np.zeros(3), "site01": np.array([np.nan])})


def test_jaccard_small_sets():
  a = _masks([{0, 1, 2}, set(), {3}], 5)
  b = _masks([{1, 2, 4}, set()], 5)
  # {0,1,2} vs {1,2,4}: |n| = 2, |u| = 4 -> 0.5
  # {0,1,2} vs {}: 0 / 3 = 0
  # {} vs {1,2,4}: 0 / 3 = 0      (one empty -> 0)
  # {} vs {}: 0/0 defined as 1    (both empty -> 1)
  # {3} vs {1,2,4}: 0 / 4 = 0;  {3} vs {}: 0 / 1 = 0
  expected = np.array([[0.5, 0.0], [0.0, 1.0], [0.0, 0.0]])
  np.testing.assert_allclose(metrics.jaccard_matrix(a, b), expected)


def test_jaccard_accepts_zero_one_ints_and_rejects_other_values():
  a = np.array([[1, 1, 0]])
  np.testing.assert_allclose(metrics.jaccard_matrix(a, a), [[1.0]])
  with pytest.raises(ValueError, match="0/1"):
    metrics.jaccard_matrix(np.array([[0.5, 1.0]]), a[:, :2])
  with pytest.raises(ValueError, match="channels"):
    metrics.jaccard_matrix(a, np.array([[1, 0]]))


def test_path_similarity_by_hand():
  # site00: J(c0,c1) = |{1}| / |{0,1,2}| = 1/3; J(c0,c2) = 0/2 = 0;
  #         J(c1,c2) = 0/2 = 0; J(c2,c2) = 0/0 := 1.
  # site01: J(c0,c1) = |{0}| / |{0,1,2}| = 1/3; J(c0,c2) = |{2}| / 3 = 1/3;
  #         J(c1,c2) = 0 / |{0,2}| = 0.
  # M = mean of the two sites:
  #   M01 = (1/3 + 1/3)/2 = 1/3; M02 = (0 + 1/3)/2 = 1/6; M12 = 0;
  #   diagonal = 1 (M22 = (1 + 1)/2).
  expected = np.array([[1, 1 / 3, 1 / 6],
                       [1 / 3, 1, 0],
                       [1 / 6, 0, 1]])
  np.testing.assert_allclose(metrics.path_similarity(PATHS), expected)


def test_path_similarity_per_seed_axis():
  # Seed 1 has c1 and c2 swapped at every site, so its M is M with rows and
  # columns 1 and 2 swapped.
  swapped = {site: masks[[0, 2, 1]] for site, masks in PATHS.items()}
  stacked = {site: np.stack([PATHS[site], swapped[site]]) for site in PATHS}
  similarity = metrics.path_similarity(stacked)
  assert similarity.shape == (2, 3, 3)
  expected_seed1 = np.array([[1, 1 / 6, 1 / 3],
                             [1 / 6, 1, 0],
                             [1 / 3, 0, 1]])
  np.testing.assert_allclose(similarity[1], expected_seed1)


def test_path_similarity_rejects_mismatched_sites():
  with pytest.raises(ValueError, match="site01"):
    metrics.path_similarity({"site00": np.zeros((3, 4), bool),
                             "site01": np.zeros((2, 4), bool)})


def test_interpretability_by_hand():
  similarity = np.array([[1.0, 0.5, 0.2],
                         [0.5, 1.0, 0.8],
                         [0.2, 0.8, 1.0]])
  accuracy = np.array([1.0, 0.5, 1.0])
  # v01 = 1 * 0.5 * 0.5 = 1/4 = 15/60
  # v02 = 1 * 1 * 0.2   = 1/5 = 12/60
  # v12 = 0.5 * 1 * 0.8 = 2/5 = 24/60
  # mu = 51/180 = 17/60; deviations -2/60, -5/60, 7/60
  # I = (4 + 25 + 49) / 3600 / 3 = 26/3600 = 13/1800
  assert metrics.interpretability(similarity, accuracy) == pytest.approx(
      13 / 1800, rel=1e-12)


def test_interpretability_per_seed_and_errors():
  similarity = np.array([[1.0, 0.5, 0.2],
                         [0.5, 1.0, 0.8],
                         [0.2, 0.8, 1.0]])
  # Seed 1: all accuracies 1, v = 0.5, 0.2, 0.8 -> mu = 0.5,
  # I = (0 + 0.09 + 0.09) / 3 = 0.06.
  result = metrics.interpretability(np.stack([similarity, similarity]),
                                    np.array([[1.0, 0.5, 1.0], [1, 1, 1]]))
  np.testing.assert_allclose(result, [13 / 1800, 0.06])
  with pytest.raises(ValueError, match="at least 2"):
    metrics.interpretability(np.ones((1, 1)), np.ones(1))
  with pytest.raises(ValueError, match="path_accuracy"):
    metrics.interpretability(similarity, np.ones(4))
  with pytest.raises(ValueError, match="finite"):
    metrics.interpretability(similarity, np.array([1.0, np.nan, 1.0]))


def test_unit_usage_by_hand():
  # site00: 2/4, 2/4, 0/4 -> mean 1/3.  site01: 3/3, 1/3, 1/3 -> 5/9.
  usage = metrics.unit_usage(PATHS)
  assert list(usage) == ["site00", "site01"]
  assert usage["site00"] == pytest.approx(1 / 3)
  assert usage["site01"] == pytest.approx(5 / 9)
  # Mean over sites: (1/3 + 5/9) / 2 = 4/9.
  assert metrics.mean_unit_usage(usage) == pytest.approx(4 / 9)


def test_precision_histogram_edges():
  precision = np.array([0.0, 0.1, 0.1000001, 0.95, 1.0, 0.7, 7 / 70, 0.07,
                        0.3, 0.61])
  # 0, 0.1, 7/70, 0.07 -> [0,10];  0.1000001 -> (10,20];  0.3 -> (20,30];
  # 0.61 and 0.7 -> (60,70];  0.95, 1.0 -> (90,100].
  expected = [4, 1, 1, 0, 0, 0, 2, 0, 0, 2]
  np.testing.assert_array_equal(metrics.precision_histogram(precision),
                                expected)
  assert len(metrics.PRECISION_BIN_LABELS) == 10
  assert metrics.PRECISION_BIN_LABELS[0] == "[0,10]"
  assert metrics.PRECISION_BIN_LABELS[6] == "(60,70]"


def test_precision_histogram_rejects_out_of_range():
  with pytest.raises(ValueError, match="1.5"):
    metrics.precision_histogram([0.2, 1.5])
  with pytest.raises(ValueError, match="nan"):
    metrics.precision_histogram([np.nan])


def test_adjusted_rand_index_hand_contingency():
  # true = [0,0,0,1,1,1], pred = [0,0,1,1,2,2]
  # contingency rows (true) x cols (pred): [[2,1,0],[0,1,2]]
  # index = C(2,2)+C(2,2) = 2; rows 3,3 -> 3+3 = 6; cols 2,2,2 -> 3;
  # N = C(6,2) = 15; expected = 6*3/15 = 1.2; max = (6+3)/2 = 4.5
  # ARI = (2 - 1.2) / (4.5 - 1.2) = 0.8 / 3.3 = 8/33
  ari = metrics.adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2])
  assert ari == pytest.approx(8 / 33)


def test_adjusted_rand_index_known_values():
  # Values from the scikit-learn user guide (adjusted_rand_score examples):
  # [0,0,1,1] vs [0,0,1,2] -> 0.5714... (= 4/7 by hand: index 1, rows 2,
  # cols 1, N 6, expected 1/3, max 3/2); a full split -> 0.
  assert metrics.adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == \
      pytest.approx(4 / 7)
  assert metrics.adjusted_rand_index([0, 0, 0, 0], [0, 1, 2, 3]) == 0.0
  # Identical partitions up to relabelling -> 1, incl. the degenerate ones.
  assert metrics.adjusted_rand_index([0, 0, 1, 2, 2], [7, 7, 3, 5, 5]) == 1.0
  assert metrics.adjusted_rand_index([1, 1, 1], [4, 4, 4]) == 1.0
  assert metrics.adjusted_rand_index([0, 1, 2], [2, 0, 1]) == 1.0
  with pytest.raises(ValueError, match="length"):
    metrics.adjusted_rand_index([0, 1], [0, 1, 2])


def _block_similarity(primary_of, within=0.8, across=0.2):
  similarity = np.where(primary_of[:, None] == primary_of[None, :], within,
                        across)
  np.fill_diagonal(similarity, 1.0)
  return similarity


def test_hierarchy_recovery_block_diagonal_is_perfect():
  # Classes of one primary interleaved, so recovery does not rely on order.
  primary_of = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
  rng = np.random.default_rng(0)
  noise = rng.uniform(0, 0.05, (12, 12))
  similarity = _block_similarity(primary_of) + (noise + noise.T) / 2
  np.fill_diagonal(similarity, 1.0)
  scores = metrics.hierarchy_recovery(similarity, primary_of)
  assert scores["adjusted_rand_index"] == pytest.approx(1.0)
  assert scores["cophenetic_correlation"] > 0.99
  assert 0.8 < scores["within_primary_similarity"] < 0.85
  assert 0.2 < scores["across_primary_similarity"] < 0.25
  assert all(type(value) is float for value in scores.values())


def test_hierarchy_recovery_exact_blocks_values():
  primary_of = np.array([0, 0, 1, 1, 1])
  scores = metrics.hierarchy_recovery(_block_similarity(primary_of),
                                      primary_of)
  # The tree merges within primaries at distance 0.2 and across at 0.8:
  # cophenetic distances are an affine map of the planted 0/1 -> r = 1.
  assert scores["cophenetic_correlation"] == pytest.approx(1.0)
  assert scores["adjusted_rand_index"] == pytest.approx(1.0)
  assert scores["within_primary_similarity"] == pytest.approx(0.8)
  assert scores["across_primary_similarity"] == pytest.approx(0.2)


def test_hierarchy_recovery_shuffled_labels_is_worse():
  structure = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
  similarity = _block_similarity(structure)
  # Planted primaries that do not match the similarity's blocks.
  planted = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
  scores = metrics.hierarchy_recovery(similarity, planted)
  assert scores["adjusted_rand_index"] < 0.5
  assert scores["cophenetic_correlation"] < 0.5
  # Planted primary {0,3,6,9} holds one similar pair (0,3): within mean =
  # (0.8 + 5 * 0.2) / 6 = 0.3; across = (24 - 3 * 1.8) / 48 = 0.3875.
  assert scores["within_primary_similarity"] == pytest.approx(0.3)
  assert scores["across_primary_similarity"] == pytest.approx(0.3875)


def test_hierarchy_recovery_errors():
  with pytest.raises(ValueError, match="symmetric"):
    metrics.hierarchy_recovery(np.array([[1.0, 0.2], [0.5, 1.0]]), [0, 1])
  with pytest.raises(ValueError, match="primary_of"):
    metrics.hierarchy_recovery(np.eye(3), [0, 1])


def test_cut_linkage_returns_requested_clusters():
  primary_of = np.array([0, 0, 1, 1, 1, 2])
  linkage = metrics.similarity_linkage(_block_similarity(primary_of))
  for num_clusters in range(1, 7):
    labels = metrics.cut_linkage(linkage, num_clusters)
    assert len(np.unique(labels)) == num_clusters
  np.testing.assert_array_equal(metrics.cut_linkage(linkage, 3), primary_of)
