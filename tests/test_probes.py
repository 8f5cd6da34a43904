"""Network probes against closed forms: planted mosaics, known ablations."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from nad_jax import analyses
from nad_jax import probes
from nad_jax.models import base


class ChannelNet(nn.Module):
  """Test network: site00 is the input image itself (one unit per input
  channel); the logits are the site's spatial mean (class = channel)."""

  def gate_sites(self):
    return {"site00": 4}

  @nn.compact
  def __call__(self, images, gates=None):
    activations = {}
    x = base.gate_site(images, gates, "site00", activations)
    return jnp.mean(x, axis=(1, 2)), activations


def test_top_pixels_and_quadrant_shares_by_hand():
  maps = np.zeros((1, 4, 4))
  maps[0, 0, 0], maps[0, 3, 3], maps[0, 3, 2] = 0.9, 1.0, 0.8
  # mask_rate 0.2 of 16 pixels: k = 3 -> the three set pixels.
  top = probes.top_pixels(maps, 0.2)
  assert top.sum() == 3 and top[0, 0, 0] and top[0, 3, 3] and top[0, 3, 2]
  # One of the three in quadrant 0 (top-left), two in quadrant 3.
  np.testing.assert_allclose(probes.quadrant_shares(maps, 0.2),
                             [[1 / 3, 0, 0, 2 / 3]])
  # Ties at the threshold are all kept: a constant map keeps every pixel.
  np.testing.assert_allclose(probes.quadrant_shares(np.ones((4, 4)), 0.1),
                             [0.25] * 4)


def test_activation_maps_match_an_independent_computation():
  # Channel sum, min-max scaling, bicubic resize to the input (PIL's
  # BICUBIC, Keys a = -0.5), top 10%: computed here with numpy and PIL on
  # the activations the model returns.
  model = ChannelNet()
  variables = {}
  rng = np.random.default_rng(0)
  image = rng.random((1, 6, 6, 4)).astype(np.float32)
  # The site has the input's resolution, so the resize is the identity
  # here; test_activation_map_resize_is_pils_bicubic covers a coarse site.
  path = {"site00": np.array([1, 0, 1, 0], np.float32)}
  maps, masks = probes.activation_maps(model, variables, image, [None, path],
                                       mask_rate=0.1)
  for row, gates in enumerate([np.ones(4), path["site00"]]):
    summed = (image[0] * gates).sum(-1)
    scaled = (summed - summed.min()) / (summed.max() - summed.min())
    np.testing.assert_allclose(maps["site00"][row, 0], scaled, atol=1e-5)
    k = round(0.1 * 36)
    expected = scaled >= np.sort(scaled.ravel())[-k]
    np.testing.assert_array_equal(masks["site00"][row, 0], expected)


class PooledNet(nn.Module):
  """site00 = 4x4 average pool of the input (a coarse map to resize)."""

  def gate_sites(self):
    return {"site00": 3}

  @nn.compact
  def __call__(self, images, gates=None):
    activations = {}
    x = nn.avg_pool(images, (4, 4), strides=(4, 4))
    x = base.gate_site(x, gates, "site00", activations)
    return jnp.mean(x, axis=(1, 2)), activations


def test_activation_map_resize_is_pils_bicubic():
  rng = np.random.default_rng(1)
  image = rng.random((1, 16, 16, 3)).astype(np.float32)
  maps, _ = probes.activation_maps(PooledNet(), {}, image, [None])
  pooled = image[0].reshape(4, 4, 4, 4, 3).mean((1, 3)).sum(-1)
  scaled = (pooled - pooled.min()) / (pooled.max() - pooled.min())
  expected = np.asarray(Image.fromarray(scaled.astype(np.float32), "F")
                        .resize((16, 16), Image.BICUBIC))
  np.testing.assert_allclose(maps["site00"][0, 0], expected, atol=1e-5)


def test_shrink_mosaics_is_pil_bilinear_with_antialiasing():
  # The authors shrink the 2S mosaic to S with torchvision's Resize on a PIL
  # image, i.e. PIL BILINEAR (antialiased).
  rng = np.random.default_rng(2)
  mosaic = rng.random((1, 16, 16, 2)).astype(np.float32)
  shrunk = probes.shrink_mosaics(mosaic, (8, 8))
  for channel in range(2):
    expected = np.asarray(Image.fromarray(mosaic[0, ..., channel], "F")
                          .resize((8, 8), Image.BILINEAR))
    np.testing.assert_allclose(shrunk[0, ..., channel], expected, atol=1e-5)


def _planted_tiles(size=8):
  """Tile of class k: channel k = 1 on a central blob, 0 elsewhere."""
  tiles = np.zeros((4, size, size, 4), np.float32)
  low, high = size // 4, size - size // 4
  for k in range(4):
    tiles[k, low:high, low:high, k] = 1.0
  return tiles


def test_hit_rate_on_a_planted_mosaic():
  # Class k's path keeps channel k only, so its activation map is the
  # shrunk blob of its own tile: every top pixel lies in its quadrant. A
  # random path of the same size (one channel) keeps channel j: its top
  # pixels lie in quadrant of class j, i.e. in the own quadrant with
  # probability 1/4.
  model = ChannelNet()
  tiles = _planted_tiles()
  order = [2, 0, 3, 1]  # quadrant q shows class order[q]
  mosaic = probes.tile_mosaic(tiles[order])[None]
  assert mosaic.shape == (1, 16, 16, 4)
  inputs = probes.shrink_mosaics(mosaic, (8, 8))  # the authors' 2S -> S
  paths = {"site00": np.eye(4, dtype=bool)[:, None]}  # [N=4, 1, C]
  rng = np.random.default_rng(3)
  random = analyses.random_paths_like(
      {"site00": np.repeat(paths["site00"], 64, 1)}, rng)["site00"]
  variants = {"site00": np.concatenate([paths["site00"], random], 1)}
  result = probes.mosaic_hit_rates(model, {}, inputs, np.array([order]),
                                   variants, mask_rate=0.1, batch_size=32)
  hits = result["hits"]  # [1, 4, 65, 1]
  assert result["sites"] == ["site00"]
  np.testing.assert_allclose(hits[0, :, 0, 0], 1.0)
  # The random variants: hit = 1 exactly when the drawn channel is the
  # quadrant's class, else 0.
  drawn = np.argmax(random, -1)  # [4 classes, 64 draws]
  for q, concept in enumerate(order):
    np.testing.assert_allclose(hits[0, q, 1:, 0],
                               (drawn[concept] == concept).astype(float))
  assert hits[0, :, 1:, 0].mean() == pytest.approx(0.25, abs=0.08)


def test_hit_rate_uses_the_input_resolution_quadrants():
  # A blob at the top-left corner of the bottom-right tile: after the 2x
  # shrink it sits at rows/cols 4..5 of the 8x8 input, just inside
  # quadrant 3 (rows, cols >= 4), so its share is 1 there; in a 4-px
  # coarser convention it would straddle quadrants.
  model = ChannelNet()
  tiles = np.zeros((4, 8, 8, 4), np.float32)
  tiles[3, 0:4, 0:4, 3] = 1.0
  inputs = probes.shrink_mosaics(probes.tile_mosaic(tiles)[None], (8, 8))
  paths = {"site00": np.eye(4, dtype=bool)[:, None]}
  result = probes.mosaic_hit_rates(model, {}, inputs, np.array([[0, 1, 2, 3]]),
                                   paths, mask_rate=4 / 64)
  assert result["hits"][0, 3, 0, 0] == pytest.approx(1.0)


class LinearChannelNet(nn.Module):
  """site00 = the image's per-channel mean (3 units); logits = site00."""

  def gate_sites(self):
    return {"site00": 3}

  @nn.compact
  def __call__(self, images, gates=None):
    activations = {}
    x = jnp.mean(images, axis=(1, 2))
    x = base.gate_site(x, gates, "site00", activations)
    return x, activations


class ThreeClassData:
  """Class c: images with channel values 1 + 2 * [channel == c]."""

  class_names = ["a", "b", "c"]
  hierarchy = None

  def eval_batches(self, class_id, batch_size, max_images=None):
    count = 5 if max_images is None else min(5, max_images)
    image = np.ones((2, 2, 3), np.float32)
    image[..., class_id] = 3.0
    images = np.repeat(image[None], count, 0)
    for start in range(0, count, batch_size):
      chunk = images[start:start + batch_size]
      yield chunk, np.full(len(chunk), class_id, np.int32)


def test_ablations_closed_form():
  # Logits of a class-c image are 1 + 2 e_c. Path of c = {unit c}:
  # kept -> logits 3 e_c -> c (accuracy 1); removed -> logits 1 except 0 at
  # c -> argmax is another class (0). A random one-unit path {j} predicts j
  # (accuracy [j == c]); removing {j} keeps c's unit unless j == c
  # (accuracy [j != c]).
  model = LinearChannelNet()
  data = ThreeClassData()
  paths = {"site00": np.eye(3, dtype=bool)[:, None]}
  random = {"site00": np.stack([np.eye(3, dtype=bool)[[1, 1, 2]],
                                np.eye(3, dtype=bool)[[0, 2, 0]]], 1)}
  result = probes.class_ablations(model, {}, data, [0, 1, 2], paths, random,
                                  batch_size=4)
  np.testing.assert_allclose(result["original"], 1.0)
  np.testing.assert_allclose(result["kept"], 1.0)
  np.testing.assert_allclose(result["removed"], 0.0)
  # Draw 0 picks units 1, 1, 2 for classes 0, 1, 2; draw 1 picks 0, 2, 0.
  np.testing.assert_allclose(result["random_kept"], [[0, 1], [1, 0], [1, 0]])
  np.testing.assert_allclose(result["random_removed"],
                             [[1, 0], [0, 1], [0, 1]])
  expected = np.exp([1.0, 1.0, 1.0]) * np.array([[np.e**2, 1, 1]])
  np.testing.assert_allclose(result["mean_probabilities"][0],
                             expected[0] / expected.sum(), rtol=1e-5)
  np.testing.assert_array_equal(result["output_of_concept"], [0, 1, 2])
  np.testing.assert_array_equal(result["num_images"], [5, 5, 5])
  # Class d's images through path {c}: logits value at c only -> predicted
  # c always: correct iff c == d; always "predicted as the path's class".
  cross = probes.cross_class(model, {}, data, [0, 1, 2],
                             {"site00": np.eye(3, dtype=bool)},
                             np.arange(3), batch_size=4, images_per_class=3)
  np.testing.assert_allclose(cross["accuracy"], np.eye(3))
  np.testing.assert_allclose(cross["predicted_as_path"], 1.0)


def test_build_mosaics_tiles_four_different_concepts():
  data = ThreeClassData()
  data.class_names = ["a", "b", "c", "d", "e"]

  def eval_batches(class_id, batch_size, max_images=None):
    images = np.full((3, 2, 2, 3), float(class_id), np.float32)
    yield images[:max_images], np.full(len(images[:max_images]), class_id)

  data.eval_batches = eval_batches
  mosaics, quadrants = probes.build_mosaics(
      data, [10, 11, 12, 13, 14], 6, np.random.default_rng(4),
      images_per_class=2)
  assert mosaics.shape == (6, 4, 4, 3)
  for mosaic, row in zip(mosaics, quadrants):
    assert len(set(row.tolist())) == 4
    masks = probes.quadrant_masks(4, 4)
    for q in range(4):
      np.testing.assert_array_equal(mosaic[masks[q]][:, 0], 10 + row[q])
  with pytest.raises(ValueError, match="at least 4 concepts"):
    probes.build_mosaics(data, [1, 2, 3], 1, np.random.default_rng(0))


def test_spatial_sites_skip_pooled_outputs():
  class Mixed(nn.Module):

    def gate_sites(self):
      return {"site00": 3, "site01": 3}

    @nn.compact
    def __call__(self, images, gates=None):
      activations = {}
      x = base.gate_site(images, gates, "site00", activations)
      x = base.gate_site(jnp.mean(x, axis=(1, 2)), gates, "site01",
                         activations)
      return x, activations

  maps, masks = probes.activation_maps(
      Mixed(), {}, np.ones((1, 4, 4, 3), np.float32), [None])
  assert list(maps) == ["site00"] and list(masks) == ["site00"]
