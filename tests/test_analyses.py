"""Path-only analyses against hand calculations and closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from nad_jax import analyses
from nad_jax import metrics


def _masks(sets, channels):
  out = np.zeros((len(sets), channels), bool)
  for row, members in enumerate(sets):
    out[row, list(members)] = True
  return out


def test_top_k_similar_and_confused_by_hand():
  similarity = np.array([[1.0, 0.2, 0.7, 0.5],
                         [0.2, 1.0, 0.1, 0.9],
                         [0.7, 0.1, 1.0, 0.3],
                         [0.5, 0.9, 0.3, 1.0]])
  np.testing.assert_array_equal(analyses.top_k_similar(similarity, 2),
                                [[2, 3], [3, 0], [0, 3], [1, 0]])
  # Concepts 0..3 are network outputs 7, 2, 5, 0 of a 9-way classifier;
  # columns of other outputs (1, 3, ...) must be ignored.
  outputs = [7, 2, 5, 0]
  probabilities = np.zeros((4, 9))
  probabilities[0, [7, 2, 5, 0, 1]] = [0.5, 0.1, 0.3, 0.05, 0.9]
  probabilities[1, [7, 2, 5, 0]] = [0.2, 0.6, 0.2, 0.0]   # tie 0 vs 2
  probabilities[2, [7, 2, 5, 0]] = [0.0, 0.0, 0.9, 0.1]
  probabilities[3, [7, 2, 5, 0]] = [0.3, 0.3, 0.3, 0.1]
  confused = analyses.top_k_confused(probabilities, outputs, 2)
  # Ties go to the lower concept index; a concept is never its own.
  np.testing.assert_array_equal(confused, [[2, 1], [0, 2], [3, 0], [0, 1]])
  with pytest.raises(ValueError, match="k must be in"):
    analyses.top_k_similar(similarity, 4)


def test_top_k_agreement_counts_and_chance():
  similar = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
  confused = np.array([[2, 3], [2, 3], [0, 1], [1, 2]])
  # Overlaps: {1,2}&{2,3} = 1, {0,3}&{2,3} = 1, {3,0}&{0,1} = 1,
  # {2,1}&{1,2} = 2 -> mean 5/4.
  result = analyses.top_k_agreement(similar, confused, permutations=0)
  np.testing.assert_array_equal(result["overlap"], [1, 1, 1, 2])
  assert result["mean_overlap"] == pytest.approx(1.25)
  assert result["mean_fraction"] == pytest.approx(0.625)
  # Two random 2-subsets of the other 3 concepts share 2*2/3 on average.
  assert result["chance_overlap"] == pytest.approx(4 / 3)
  assert math.isnan(result["p_value"])


def test_top_k_agreement_permutation_null_matches_chance():
  # Under relabelling, the mean overlap of unrelated top-k sets is the
  # hypergeometric mean k^2 / (K - 1); a perfect agreement gets p = 1/(R+1).
  rng = np.random.default_rng(0)
  num, k = 40, 3
  similarity = rng.random((num, num))
  similarity = (similarity + similarity.T) / 2
  similar = analyses.top_k_similar(similarity, k)
  perfect = analyses.top_k_agreement(similar, similar, 199, rng)
  assert perfect["mean_overlap"] == k
  assert perfect["p_value"] == pytest.approx(1 / 200)
  assert perfect["null_mean_overlap"] == pytest.approx(k * k / (num - 1),
                                                       abs=0.05)
  unrelated = analyses.top_k_agreement(
      similar, analyses.top_k_similar(rng.random((num, num)), k), 199, rng)
  assert unrelated["p_value"] > 0.01


def test_random_paths_keep_each_concepts_usage_exactly():
  rng = np.random.default_rng(1)
  paths = {"site00": rng.random((2, 30, 12)) < 0.3,
           "site01": rng.random((2, 30, 50)) < 0.6}
  paths["site01"][0, 0] = False   # an empty selection stays empty
  paths["site01"][0, 1] = True    # a full one stays full
  random = analyses.random_paths_like(paths, rng)
  for site in paths:
    np.testing.assert_array_equal(random[site].sum(-1), paths[site].sum(-1))
  assert metrics.unit_usage(random) == metrics.unit_usage(paths)
  assert not random["site01"][0, 0].any() and random["site01"][0, 1].all()
  assert not np.array_equal(random["site00"], paths["site00"])


def test_random_paths_are_uniform_and_their_jaccard_is_hypergeometric():
  # Each unit is selected with probability a / C; and the Jaccard index of
  # two random subsets of sizes a and b of C units has the closed-form mean
  # sum_i P(|A n B| = i) * i / (a + b - i), |A n B| ~ Hypergeom(C, a, b).
  channels, a, b, draws = 20, 6, 9, 4000
  rng = np.random.default_rng(2)
  paths = {"s": _masks([range(a), range(b)], channels)}
  tiled = {"s": np.repeat(paths["s"][None], draws, 0)}  # [draws, 2, C]
  random = analyses.random_paths_like(tiled, rng)["s"]
  frequency = random[:, 0].mean(0)
  np.testing.assert_allclose(frequency, a / channels, atol=0.035)
  jaccard = metrics.jaccard_matrix(random[:, :1], random[:, 1:])[:, 0, 0]
  overlap = np.arange(0, min(a, b) + 1)
  pmf = stats.hypergeom(channels, a, b).pmf(overlap)
  expected = float(np.sum(pmf * overlap / (a + b - overlap)))
  assert jaccard.mean() == pytest.approx(expected, abs=0.01)


def test_seed_stability_by_hand():
  # Concept 0: seeds {0,1} and {1,2} at site a (J = 1/3), identical {3} at
  # site b (J = 1) -> M = 2/3. Concept 1: seeds {0} and {0} (1), {3} and {}
  # (0) -> 1/2.
  paths = {"a": np.stack([_masks([{0, 1}, {1, 2}], 4),
                          _masks([{0}, {0}], 4)]),
           "b": np.stack([_masks([{3}, {3}], 4), _masks([{3}, set()], 4)])}
  result = analyses.seed_stability(paths)
  np.testing.assert_allclose(result["per_concept"], [2 / 3, 1 / 2])
  assert result["mean"] == pytest.approx(7 / 12)
  # Across concepts: seed 0: J_a({0,1},{0}) = 1/2, J_b = 1 -> 3/4;
  # seed 1: J_a({1,2},{0}) = 0, J_b({3},{}) = 0 -> 0. Mean 3/8.
  assert result["across_concepts"] == pytest.approx(3 / 8)
  with pytest.raises(ValueError, match="2 seeds"):
    analyses.seed_stability({"a": paths["a"][:, :1]})


def test_seed_spread():
  spread = analyses.seed_spread({"I": [1.0, 3.0], "ari": [0.5, float("nan")]})
  assert spread["I"]["mean"] == 2.0 and spread["I"]["std"] == 1.0
  assert spread["ari"]["mean"] == 0.5 and spread["ari"]["std"] == 0.0


def test_hierarchy_test_observed_values_and_exact_null():
  # Four concepts, primaries {0,1} and {2,3}; M clusters them perfectly.
  similarity = np.array([[1.0, 0.8, 0.1, 0.2],
                         [0.8, 1.0, 0.2, 0.1],
                         [0.1, 0.2, 1.0, 0.7],
                         [0.2, 0.1, 0.7, 1.0]])
  primary_of = np.array([0, 0, 1, 1])
  result = analyses.hierarchy_test(similarity, primary_of, 600,
                                   np.random.default_rng(3))
  recovery = metrics.hierarchy_recovery(similarity, primary_of)
  assert result["adjusted_rand_index"]["observed"] == pytest.approx(
      recovery["adjusted_rand_index"])
  assert result["cophenetic_correlation"]["observed"] == pytest.approx(
      recovery["cophenetic_correlation"])
  # within = (0.8 + 0.7) / 2 = 0.75, across = (0.1+0.2+0.2+0.1) / 4 = 0.15.
  assert result["within_minus_across"]["observed"] == pytest.approx(0.6)
  # Relabelling 4 concepts into two pairs gives one of 3 partitions with
  # equal probability; only the true one reaches the observed scores, so
  # P(null >= observed) = 1/3 and p ~ (1 + R/3) / (1 + R).
  for key in ("adjusted_rand_index", "within_minus_across"):
    assert result[key]["p_value"] == pytest.approx(1 / 3, abs=0.06)
  # The other two partitions: within pairs (0,2),(1,3) or (0,3),(1,2), both
  # with within-mean 0.15 and across-mean (0.8+0.7+0.2+0.1)/4 = 0.45:
  # gap -0.3. Null mean = (0.6 - 0.3 - 0.3) / 3 = 0.
  assert result["within_minus_across"]["null_mean"] == pytest.approx(0.0,
                                                                     abs=0.05)


def test_hierarchy_test_large_planted_structure_is_significant():
  rng = np.random.default_rng(4)
  primary_of = np.repeat(np.arange(5), 8)
  planted = np.where(primary_of[:, None] == primary_of[None], 0.6, 0.3)
  noise = rng.normal(0, 0.05, planted.shape)
  similarity = np.clip(planted + (noise + noise.T) / 2, 0, 1)
  np.fill_diagonal(similarity, 1)
  result = analyses.hierarchy_test(similarity, primary_of, 199, rng)
  for key in ("adjusted_rand_index", "cophenetic_correlation",
              "within_minus_across"):
    assert result[key]["p_value"] == pytest.approx(1 / 200)
    assert abs(result[key]["null_mean"]) < 0.05
  # With M unrelated to the labels, no significance.
  shuffled = analyses.hierarchy_test(similarity, rng.permutation(primary_of),
                                     199, rng)
  assert shuffled["within_minus_across"]["p_value"] > 0.01


def test_mantel_test():
  rng = np.random.default_rng(5)
  points = rng.random((12, 2))
  reference = 1 - np.hypot(*(points[:, None] - points[None]).transpose(2, 0,
                                                                        1))
  result = analyses.mantel_test(reference, reference, 199, rng)
  assert result["observed"] == pytest.approx(1.0)
  assert result["p_value"] == pytest.approx(1 / 200)
  # The null relabels concepts: by hand for one permutation.
  perm = rng.permutation(12)
  rows, cols = np.triu_indices(12, k=1)
  by_hand = np.corrcoef(reference[rows, cols],
                        reference[perm][:, perm][rows, cols])[0, 1]
  fixed = analyses.mantel_test(reference, reference[perm][:, perm], 0)
  assert fixed["observed"] == pytest.approx(by_hand)


def test_wordnet_similarity_by_hand():
  # Hypernym paths (WordNet 3.0): Chihuahua and Japanese spaniel are both
  # at depth 15 under "toy dog" (depth 14): 2 * 14 / 30. The tench (depth
  # 16) meets them at "vertebrate" (depth 8): 2 * 8 / 31.
  similarity = analyses.wordnet_similarity(
      ["n02085620", "n02085782", "n01440764"])
  np.testing.assert_allclose(similarity, [[1, 28 / 30, 16 / 31],
                                          [28 / 30, 1, 16 / 31],
                                          [16 / 31, 16 / 31, 1]])
  with pytest.raises(ValueError, match="not ImageNet wnids"):
    analyses.wordnet_similarity(["n99999999"])


def test_wordnet_similarity_matches_brute_force():
  from nad_jax.data import classes  # pylint: disable=g-import-not-at-top
  wordnet = classes.imagenet_wordnet()["classes"]
  wnids = classes.imagenet_wnids()[::97]
  depth = {}
  for paths in wordnet.values():
    for path in paths:
      for position, node in enumerate(path):
        depth[node] = max(depth.get(node, 0), position)
  expected = np.ones((len(wnids), len(wnids)))
  for i, j in itertools.combinations(range(len(wnids)), 2):
    ancestors_i = {n for p in wordnet[wnids[i]] for n in p}
    ancestors_j = {n for p in wordnet[wnids[j]] for n in p}
    lcs = max(depth[n] for n in ancestors_i & ancestors_j)
    expected[i, j] = expected[j, i] = 2 * lcs / (depth[wnids[i]]
                                                 + depth[wnids[j]])
  np.testing.assert_allclose(analyses.wordnet_similarity(wnids), expected)


def _write_trajectory(path, steps, flips, usage, concept_ids=(3, 5)):
  arrays = {"steps": np.asarray(steps, np.int32),
            "concept_ids": np.asarray(concept_ids, np.int32)}
  for site in flips:
    arrays[f"flips/{site}"] = np.asarray(flips[site], np.int32)
    arrays[f"usage/{site}"] = np.asarray(usage[site], np.float32)
  np.savez(path / "trajectory.npz", **arrays)


def test_trajectory_summary_by_hand(tmp_path):
  assert analyses.load_trajectory(tmp_path) is None
  # 2 concepts, 1 seed, 3 records at steps 10, 20, 25 (the last step).
  # site00 (4 units): concept 0 flips 2, 1, 0; concept 1 flips 4, 0, 0
  # (stopped early). site01 (10 units): 5, 2, 1 and 3, 1, 0.
  flips = {"site00": [[[2, 1, 0]], [[4, 0, 0]]],
           "site01": [[[5, 2, 1]], [[3, 1, 0]]]}
  usage = {"site00": [[[0.5, 0.5, 0.5]], [[0.25, 0.5, 0.5]]],
           "site01": [[[0.4, 0.3, 0.3]], [[0.2, 0.2, 0.2]]]}
  _write_trajectory(tmp_path, [10, 20, 25], flips, usage)
  trajectory = analyses.load_trajectory(tmp_path)
  summary = analyses.trajectory_summary(trajectory,
                                        {"site00": 4, "site01": 10})
  # site00 mean flips per concept / 4 units: (3, 0.5, 0) / 4.
  np.testing.assert_allclose(summary["flip_fraction"]["site00"],
                             [0.75, 0.125, 0.0])
  np.testing.assert_allclose(summary["flip_fraction"]["site01"],
                             [0.4, 0.15, 0.05])
  np.testing.assert_allclose(summary["usage"]["site00"], [0.375, 0.5, 0.5])
  # Last record: 0 + 0 + 1 + 0 changed of 2 * (4 + 10) units.
  assert summary["final_flip_fraction"] == pytest.approx(1 / 28)
  assert summary["last_change_step"] == 25
  assert summary["steps_between_records"] == 5
  with pytest.raises(ValueError, match="not a gate site"):
    analyses.trajectory_summary(trajectory, {"site00": 4})


def test_trajectory_file_errors(tmp_path):
  _write_trajectory(tmp_path, [10, 20], {"site00": [[[1, 0, 0]]]},
                    {"site00": [[[0.5, 0.5, 0.5]]]}, concept_ids=[1])
  with pytest.raises(ValueError, match=r"flips/site00 has shape"):
    analyses.load_trajectory(tmp_path)
  np.savez(tmp_path / "trajectory.npz", steps=np.arange(2),
           concept_ids=np.arange(1), **{"flips/site00": np.zeros((1, 1, 2))})
  with pytest.raises(ValueError, match="usage/site00"):
    analyses.load_trajectory(tmp_path)


def test_summary_row_keeps_per_seed_scores():
  paths = {"a": np.stack([_masks([{0, 1}, {1, 2}, {3}], 4),
                          _masks([{0}, {1, 2}, {3}], 4)])}
  similarity = metrics.path_similarity(paths)  # [2, 3, 3]
  row = metrics.summary_row("net", similarity, metrics.unit_usage(paths),
                            np.array([[1.0, 0.5, 1.0], [1.0, 1.0, 1.0]]),
                            np.ones(3), steps=7, primary_of=[0, 0, 1])
  per_seed_i = metrics.interpretability(
      similarity, np.array([[1.0, 0.5, 1.0], [1.0, 1.0, 1.0]]))
  np.testing.assert_allclose(row["per_seed"]["interpretability"], per_seed_i)
  assert row["interpretability"] == pytest.approx(per_seed_i.mean())
  np.testing.assert_allclose(row["per_seed"]["mean_path_accuracy"],
                             [2.5 / 3, 1.0])
  assert len(row["per_seed"]["adjusted_rand_index"]) == 2
  with pytest.raises(ValueError, match="path_accuracy of model 'net'"):
    metrics.summary_row("net", similarity, metrics.unit_usage(paths),
                        np.ones(3), np.ones(3), steps=1)
