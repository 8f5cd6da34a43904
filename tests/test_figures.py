"""Figures: each writes a readable PNG; the heatmap follows the dendrogram."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.cluster import hierarchy
from scipy.spatial import distance

from nad_jax import figures


def _block_similarity(primary_of, seed=0):
  rng = np.random.default_rng(seed)
  num_concepts = len(primary_of)
  noise = rng.uniform(0, 0.1, (num_concepts, num_concepts))
  similarity = np.where(primary_of[:, None] == primary_of[None, :], 0.7, 0.3)
  similarity = similarity + (noise + noise.T) / 2
  np.fill_diagonal(similarity, 1.0)
  return similarity


def _assert_png(path, min_width=300, min_height=200):
  with Image.open(path) as image:
    assert image.format == "PNG"
    image.load()  # decodes the whole file: fails on a truncated PNG
    width, height = image.size
    pixels = np.asarray(image.convert("L"))
  assert width >= min_width and height >= min_height
  assert pixels.std() > 1  # not a blank canvas
  return width, height


def test_similarity_heatmap_follows_dendrogram(tmp_path):
  # 16 classes in 4 primaries, interleaved so the order is not the input's.
  primary_of = np.tile(np.arange(4), 4)
  similarity = _block_similarity(primary_of)
  names = [f"class {index:02d}" for index in range(16)]
  result = figures.similarity_heatmap(
      similarity, names, primary_of, ["round", "striped", "square", "dotted"],
      tmp_path / "heat" / "m.png")
  assert result.path == str(tmp_path / "heat" / "m.png")
  _assert_png(result.path, 600, 600)
  # Independent order: scipy's average linkage on the condensed 1 - M.
  linkage = hierarchy.linkage(
      distance.squareform(1 - similarity, checks=False), "average")
  expected = hierarchy.dendrogram(linkage, no_plot=True)["leaves"]
  np.testing.assert_array_equal(result.leaf_order, expected)
  # The planted blocks come out contiguous: 4 runs of one primary each.
  ordered_primaries = primary_of[result.leaf_order]
  assert np.count_nonzero(np.diff(ordered_primaries)) == 3
  assert sorted(result.leaf_order.tolist()) == list(range(16))


def test_similarity_heatmap_grows_with_classes_and_without_primaries(tmp_path):
  primary_of = np.repeat(np.arange(6), 5)
  names = [f"{primary_of[i]}-secondary class {i}" for i in range(30)]
  small = figures.similarity_heatmap(
      _block_similarity(primary_of[:16]), names[:16], primary_of[:16], None,
      tmp_path / "small.png", dpi=40)
  large = figures.similarity_heatmap(
      _block_similarity(primary_of), names, None, None, tmp_path / "large.png",
      dpi=40)
  _, small_height = _assert_png(small.path, 200, 200)
  _, large_height = _assert_png(large.path, 200, 200)
  assert large_height > small_height


def test_similarity_heatmap_bad_input(tmp_path):
  with pytest.raises(ValueError, match="class_names"):
    figures.similarity_heatmap(np.eye(3), ["a", "b"], [0, 0, 1], None,
                               tmp_path / "x.png")
  with pytest.raises(ValueError, match="primary_names"):
    figures.similarity_heatmap(np.eye(3), ["a", "b", "c"], [0, 1, 2],
                               ["only one"], tmp_path / "x.png")
  assert not (tmp_path / "x.png").exists()


def test_unit_usage_plot(tmp_path):
  usage = {
      "vgg": {f"site{i:02d}": 0.9 - 0.05 * i for i in range(8)},
      "resnet": {f"site{i:02d}": 0.4 - 0.02 * i for i in range(10)},
  }
  path = figures.unit_usage_plot(usage, tmp_path / "usage.png")
  assert path == str(tmp_path / "usage.png")
  _assert_png(path, 500, 300)
  with pytest.raises(ValueError, match="empty"):
    figures.unit_usage_plot({}, tmp_path / "none.png")


def test_precision_histogram_plot(tmp_path):
  rng = np.random.default_rng(1)
  path = figures.precision_histogram_plot(
      rng.uniform(0.4, 0.8, 20), rng.uniform(0.8, 1.0, 20),
      tmp_path / "precision.png", "demo")
  _assert_png(path, 500, 300)
  with pytest.raises(ValueError, match="precision"):
    figures.precision_histogram_plot([0.5, 2.0], [0.5, 0.5],
                                     tmp_path / "bad.png", "bad")


def test_interpretability_vs_accuracy_plot(tmp_path):
  points = [{"model": "vgg", "interpretability": 0.02,
             "interpretability_std": 0.003, "original_accuracy": 0.9,
             "random_interpretability": 0.001},
            {"model": "resnet", "interpretability": 0.005,
             "original_accuracy": 0.95}]
  path = figures.interpretability_vs_accuracy(points, tmp_path / "f6.png")
  _assert_png(path, 500, 350)
  with pytest.raises(ValueError, match="at least one point"):
    figures.interpretability_vs_accuracy([], tmp_path / "none.png")


def test_trajectory_and_analysis_plots(tmp_path):
  steps = np.array([10, 20, 30])
  flips = {f"site{i:02d}": np.array([0.5, 0.05, 0.0]) / (i + 1)
           for i in range(13)}
  usage = {site: np.array([0.6, 0.5, 0.5]) for site in flips}
  _assert_png(figures.trajectory_plot(steps, flips, usage,
                                      tmp_path / "t.png"), 800, 300)
  _assert_png(figures.seed_stability_plot(
      np.random.default_rng(0).uniform(0.5, 0.9, 30), 0.3,
      tmp_path / "s.png", random_level=0.2), 500, 300)
  _assert_png(figures.null_distribution_plot(
      {"ARI": (0.5, np.random.default_rng(1).normal(0, 0.1, 99), 0.01)},
      tmp_path / "n.png"), 300, 250)
  many = [f"class {i}" for i in range(60)]
  _assert_png(figures.ablation_plot(
      many, {"kept": np.ones(60), "removed": np.zeros(60)},
      tmp_path / "box.png"), 600, 300)


def test_activation_map_grid_checks_rows(tmp_path):
  image = np.zeros((8, 8, 3))
  masks = {"site00": np.zeros((2, 8, 8), bool)}
  with pytest.raises(ValueError, match="row_labels has 3"):
    figures.activation_map_grid(image, masks, ["a", "b", "c"],
                                tmp_path / "x.png")
  masks["site00"][1, :4, :4] = True
  _assert_png(figures.activation_map_grid(image + 0.5, masks, ["a", "b"],
                                          tmp_path / "ok.png",
                                          quadrant_labels=list("wxyz")),
              250, 200)


def test_similarity_heatmap_of_many_classes_stays_a_few_megapixels(tmp_path):
  primary_of = np.arange(300) % 6
  result = figures.similarity_heatmap(
      _block_similarity(primary_of), [f"class {i}" for i in range(300)],
      primary_of, None, tmp_path / "big.png", dpi=50)
  width, height = _assert_png(result.path, 500, 500)
  assert width * height < 2e6  # 0.28 in per class would be ~18 MP here
  assert sorted(result.leaf_order.tolist()) == list(range(300))
