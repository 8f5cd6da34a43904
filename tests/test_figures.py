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
