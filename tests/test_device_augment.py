"""Device augmentation vs torchvision: box distribution, pixels, flips."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from nad_jax.data import decode_cache
from nad_jax.data import device_augment
from nad_jax.data import preprocess
from tests import data_photos

torch = pytest.importorskip("torch", reason="torchvision is the reference "
                            "(pip install nad-jax[torch])")
torchvision = pytest.importorskip("torchvision")
stats = pytest.importorskip("scipy.stats")

# Two-sample Kolmogorov-Smirnov tests at this significance level; seeds are
# fixed, so the outcome is deterministic.
ALPHA = 1e-3
DRAWS = 2000
# (height, width): ImageNet-like, smaller than the 224 crop, and extreme
# aspect ratios where torchvision's fallback fires often or always.
# Measured fallback shares (torchvision): 0 for 375x500, 11% for 60x200,
# 100% for 30x700 and 10x1000.
SHAPES = [(375, 500), (500, 375), (120, 90), (60, 200), (200, 60),
          (30, 700), (700, 30), (10, 1000)]


def _torch_boxes(height, width, draws, scale=preprocess.RRC_SCALE,
                 ratio=preprocess.RRC_RATIO):
  torch.manual_seed(height * 7919 + width)
  image = Image.new("RGB", (width, height))
  get_params = torchvision.transforms.RandomResizedCrop.get_params
  return np.array([get_params(image, list(scale), list(ratio))
                   for _ in range(draws)], np.float64)


@jax.jit
def _our_boxes(keys, height, width):
  return jax.vmap(lambda k: device_augment.rrc_box(k, height, width))(keys)


def _keys(seed, draws):
  return jax.random.split(jax.random.key(seed), draws)


def _features(boxes):
  return {"area": boxes[:, 2] * boxes[:, 3],
          "ratio": boxes[:, 3] / boxes[:, 2],
          "top": boxes[:, 0], "left": boxes[:, 1]}


@pytest.mark.parametrize("shape", SHAPES)
def test_box_distribution_matches_torchvision(shape):
  height, width = shape
  theirs = _torch_boxes(height, width, DRAWS)
  ours = np.asarray(_our_boxes(_keys(height + width, DRAWS), height, width),
                    np.float64)
  assert np.all(ours[:, 2:] > 0)
  assert np.all(ours[:, 0] + ours[:, 2] <= height)
  assert np.all(ours[:, 1] + ours[:, 3] <= width)
  their_f, our_f = _features(theirs), _features(ours)
  for name in their_f:
    if np.ptp(their_f[name]) == 0:  # always the fallback: equal values
      np.testing.assert_array_equal(our_f[name], their_f[name])
    else:
      assert stats.ks_2samp(our_f[name], their_f[name]).pvalue > ALPHA, name
  # The fallback's share (it crops the whole image, ratio clamped).
  fallback = lambda b: np.mean((b[:, 0] == (height - b[:, 2]) // 2)
                               & (b[:, 1] == (width - b[:, 3]) // 2)
                               & ((b[:, 2] == height) | (b[:, 3] == width)))
  assert abs(fallback(ours) - fallback(theirs)) < 0.03


def test_box_test_has_power():
  # The same test rejects boxes drawn with another aspect-ratio range.
  ours = np.asarray(_our_boxes(_keys(1, DRAWS), 375, 500), np.float64)
  theirs = _torch_boxes(375, 500, DRAWS, ratio=(0.6, 1.6))
  assert stats.ks_2samp(_features(ours)["ratio"],
                        _features(theirs)["ratio"]).pvalue < ALPHA


def test_fallback_box_hand_computed():
  # 10 x 1000: every try needs h >= sqrt(0.08 * 1e4 * 3/4) = 24.5 > 10; the
  # fallback: h = 10, w = round(10 * 4/3) = 13, left = (1000 - 13) // 2.
  boxes = _our_boxes(_keys(0, 2), 10, 1000)
  np.testing.assert_array_equal(boxes, [[0, 493, 10, 13]] * 2)
  boxes = _our_boxes(_keys(0, 2), 1000, 10)
  np.testing.assert_array_equal(boxes, [[493, 0, 13, 10]] * 2)


def _canvas(pixels, rows, cols):
  canvas = np.zeros((rows, cols, 3), np.uint8)
  canvas[:pixels.shape[0], :pixels.shape[1]] = pixels
  return canvas


@jax.jit
def _crops(canvas, stored_hw, orig_hw, transposed, boxes):
  return jax.vmap(device_augment.resized_crop,
                  in_axes=(None, None, None, None, 0, None))(
                      canvas, stored_hw, orig_hw, transposed, boxes, 224)


def _photos():
  paths = [data_photos.skimage_photo(n) for n in
           ("chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg")]
  paths += list(data_photos.foolbox_imagenet())[:2]
  images = [Image.open(p).convert("RGB") for p in paths]
  # A portrait photo: stored transposed.
  images.append(images[0].transpose(Image.Transpose.ROTATE_90))
  return images


def test_fixed_box_pixels_match_torchvision_pil():
  functional = torchvision.transforms.functional
  rng = np.random.default_rng(0)
  diffs = []
  images = _photos()
  side = max(max(image.size) for image in images)  # one compiled shape
  for image in images:
    pixels, orig_hw, transposed = decode_cache.store_photo(image,
                                                           (side, side))
    assert transposed == (image.height > image.width)
    assert pixels.shape[:2] == tuple(sorted(image.size))  # stored exactly
    canvas = _canvas(pixels, side + 3, side + 5)
    boxes = np.array([preprocess.random_resized_crop_params(
        image.height, image.width, rng) for _ in range(6)], np.int32)
    ours = np.asarray(_crops(canvas, jnp.asarray(pixels.shape[:2]),
                             jnp.asarray(orig_hw), jnp.asarray(transposed),
                             boxes))
    for out, box in zip(ours, boxes):
      want = np.asarray(functional.resized_crop(image, *map(int, box),
                                                [224, 224]), np.float32)
      diffs.append(np.abs(out - want))
  diffs = np.stack(diffs)
  # Measured on these photos: at most 2 levels of 8 bits, about 1.5% of
  # the values off by one (PIL's fixed-point weights and float32 sample
  # positions round differently near .5).
  assert diffs.max() <= 2
  assert np.mean(diffs > 0) < 0.05
  assert np.mean(diffs) < 0.05


def test_downscaled_store_maps_boxes_onto_the_original():
  # A smooth 1200 x 900 image (larger than the 288 x 384 canvas): a crop
  # of the downscaled copy equals PIL's crop of the original within 2
  # levels; a wrong box mapping would be off by far more.
  functional = torchvision.transforms.functional
  y, x = np.mgrid[0:900, 0:1200].astype(np.float32)
  pixels = np.stack([x / 1200 * 255, y / 900 * 255,
                     127 + 100 * np.sin(x / 150) * np.cos(y / 120)], -1)
  rng = np.random.default_rng(1)
  for image in (Image.fromarray(pixels.astype(np.uint8)),
                Image.fromarray(pixels.astype(np.uint8).transpose(1, 0, 2))):
    stored, orig_hw, transposed = decode_cache.store_photo(
        image, decode_cache.DEFAULT_MAX_SIZE)
    assert stored.shape[:2] == (288, 384)
    canvas = _canvas(stored, *decode_cache.DEFAULT_MAX_SIZE)
    boxes = np.array([preprocess.random_resized_crop_params(
        image.height, image.width, rng) for _ in range(4)], np.int32)
    ours = np.asarray(_crops(canvas, jnp.asarray(stored.shape[:2]),
                             jnp.asarray(orig_hw), jnp.asarray(transposed),
                             boxes))
    for out, box in zip(ours, boxes):
      want = np.asarray(functional.resized_crop(image, *map(int, box),
                                                [224, 224]), np.float32)
      assert np.abs(out - want).max() <= 2, box


def _stored_batch(image, batch):
  """``batch`` copies of ``image``, stored exactly (not downscaled)."""
  side = max(image.size)
  pixels, orig_hw, transposed = decode_cache.store_photo(image, (side, side))
  canvas = _canvas(pixels, side, side)
  return (jnp.asarray(np.repeat(canvas[None], batch, 0)),
          jnp.asarray(np.repeat([pixels.shape[:2]], batch, 0)),
          jnp.asarray(np.repeat([orig_hw], batch, 0)),
          jnp.asarray(np.repeat(transposed, batch)))


def test_injected_boxes_flips_and_normalisation():
  image = Image.open(data_photos.skimage_photo("coffee.png")).convert("RGB")
  stored = _stored_batch(image, 2)
  boxes = jnp.asarray([[10, 20, 300, 400], [50, 60, 200, 150]], jnp.int32)
  key = device_augment.batch_key(0, 3, 5)
  run = jax.jit(lambda flips: device_augment.augment_stored(
      *stored, key, size=96, augment="random_resized_crop", boxes=boxes,
      flips=flips))
  plain = np.asarray(run(jnp.asarray([False, False])))
  mixed = np.asarray(run(jnp.asarray([True, False])))
  np.testing.assert_array_equal(mixed[0], plain[0][:, ::-1])
  np.testing.assert_array_equal(mixed[1], plain[1])
  # Normalisation as the host path's: PIL crop -> preprocess.normalize.
  functional = torchvision.transforms.functional
  for out, box in zip(plain, np.asarray(boxes)):
    want = preprocess.normalize(functional.resized_crop(
        image, *map(int, box), [96, 96]))
    assert np.abs(out - want).max() <= 2 / 255 / 0.224 + 1e-5


def test_flips_and_determinism_from_the_key():
  image = Image.open(data_photos.skimage_photo("astronaut.png"))
  stored = _stored_batch(image.convert("RGB").resize((120, 90)), 8)
  batch = jax.jit(lambda key: device_augment.augment_stored(
      *stored, key, size=32, augment="random_resized_crop"))
  first = np.asarray(batch(device_augment.batch_key(4, 7, 100)))
  again = np.asarray(batch(device_augment.batch_key(4, 7, 100)))
  np.testing.assert_array_equal(first, again)
  for other in (device_augment.batch_key(4, 7, 101),
                device_augment.batch_key(4, 8, 100),
                device_augment.batch_key(5, 7, 100)):
    assert np.abs(np.asarray(batch(other)) - first).max() > 0.1
  # Images of one batch get different boxes.
  assert np.abs(first[0] - first[1]).max() > 0.1
  flips = jax.jit(jax.vmap(lambda k: device_augment.augment_params(
      k, 300, 400)[1]))(_keys(3, 400))
  assert 160 <= int(flips.sum()) <= 240  # binomial(400, 1/2): +-4 sigma


def test_none_normalises_eval_crops_like_the_host():
  image = Image.open(data_photos.skimage_photo("chelsea.png"))
  crop = decode_cache.eval_crop(image.convert("RGB"), 224)
  out = device_augment.augment_stored(
      jnp.asarray(crop[None]), None, None, None, jax.random.key(0),
      size=224, augment="none")
  np.testing.assert_allclose(np.asarray(out[0]),
                             preprocess.eval_transform(image), atol=1e-5)
  floats = np.ones((1, 8, 8, 3), np.float32)  # already normalised (demo)
  np.testing.assert_array_equal(
      device_augment.augment_stored(floats, None, None, None,
                                    jax.random.key(0), size=8,
                                    augment="none"), floats)
