"""Preprocessing: parity with torchvision on real photos, seeded augmentation."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest

from nad_jax.data import preprocess
from tests import data_photos

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "camera.png",
          "rocket.jpg", "logo.png"]  # RGB, greyscale (camera), RGBA (logo)


def _torchvision():
  return pytest.importorskip(
      "torchvision", reason="torchvision is the reference for the parity "
      "tests (pip install nad-jax[torch])")


@pytest.mark.parametrize("image_size", [224, 160])
def test_eval_transform_matches_torchvision(image_size):
  tv = _torchvision()
  import torch  # pylint: disable=g-import-not-at-top
  t = tv.transforms
  resize = int(round(image_size * 256 / 224))
  ref_pil = t.Compose([t.Resize(resize), t.CenterCrop(image_size),
                       t.ToTensor(),
                       t.Normalize(preprocess.IMAGENET_MEAN.tolist(),
                                   preprocess.IMAGENET_STD.tolist())])
  ref_tensor = t.Compose([t.Resize(resize, antialias=True),
                          t.CenterCrop(image_size)])
  for name in PHOTOS:
    path = data_photos.skimage_photo(name)
    ours = preprocess.eval_transform(Image.open(path), image_size)
    assert ours.shape == (image_size, image_size, 3)
    assert ours.dtype == np.float32
    rgb = Image.open(path).convert("RGB")
    want = ref_pil(rgb).permute(1, 2, 0).numpy()
    # Same PIL resampling: equal up to float rounding.
    assert np.abs(ours - want).max() < 1e-5, name
    # torchvision's tensor path (antialias=True) rounds its uint8 resize a
    # little differently: at most one 8-bit level, 1/255/0.224 = 0.0175
    # after normalisation.
    tensor = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
    want = ref_tensor(tensor).permute(1, 2, 0).numpy() / np.float32(255)
    want = (want - preprocess.IMAGENET_MEAN) / preprocess.IMAGENET_STD
    assert np.abs(ours - want).max() < 0.018, name


def test_eval_transform_of_uint8_array_equals_pil():
  path = data_photos.skimage_photo("chelsea.png")
  array = np.asarray(Image.open(path).convert("RGB"))
  np.testing.assert_array_equal(preprocess.eval_transform(array),
                                preprocess.eval_transform(Image.open(path)))
  grey = np.asarray(Image.open(data_photos.skimage_photo("camera.png")))
  out = preprocess.eval_transform(grey[..., None])
  pixels = out * preprocess.IMAGENET_STD + preprocess.IMAGENET_MEAN
  np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-6)


def test_resized_crop_matches_torchvision():
  tv = _torchvision()
  functional = tv.transforms.functional
  image = Image.open(data_photos.skimage_photo("coffee.png")).convert("RGB")
  rng = np.random.default_rng(0)
  for _ in range(5):
    top, left, h, w = preprocess.random_resized_crop_params(
        image.height, image.width, rng)
    ours = np.asarray(preprocess.resized_crop(image, top, left, h, w, 224))
    want = np.asarray(functional.resized_crop(image, top, left, h, w,
                                              [224, 224]))
    np.testing.assert_array_equal(ours, want)


def test_random_resized_crop_params_in_bounds():
  rng = np.random.default_rng(1)
  areas = []
  for height, width in [(375, 500), (500, 375), (224, 224), (30, 700)]:
    for _ in range(200):
      top, left, h, w = preprocess.random_resized_crop_params(height, width,
                                                              rng)
      assert 0 < h <= height and 0 < w <= width
      assert 0 <= top <= height - h and 0 <= left <= width - w
      if height != 30:  # 30 x 700 often falls back to a 30 x 40 crop
        areas.append(h * w / (height * width))
  # scale=(0.08, 1.25): areas below 8% only from rounding.
  assert min(areas) > 0.07


def test_random_resized_crop_fallback_hand_computed():
  # 10 x 1000: every try needs h >= sqrt(0.08 * 1e4 * 3/4) = 24.5 > 10, so
  # all ten fail; the fallback clamps the ratio to 4/3: h = 10,
  # w = round(10 * 4/3) = 13, centred: left = (1000 - 13) // 2 = 493.
  rng = np.random.default_rng(0)
  assert preprocess.random_resized_crop_params(10, 1000, rng) == (0, 493, 10,
                                                                  13)
  # Tall: w = 10, h = round(10 / (3/4)) = 13, top = (1000 - 13) // 2.
  assert preprocess.random_resized_crop_params(1000, 10, rng) == (493, 0, 13,
                                                                  10)


def test_augment_transform_reproducible_and_in_range():
  image = Image.open(data_photos.skimage_photo("astronaut.png"))
  first = preprocess.augment_transform(image, np.random.default_rng(7))
  again = preprocess.augment_transform(image, np.random.default_rng(7))
  other = preprocess.augment_transform(image, np.random.default_rng(8))
  assert first.shape == (224, 224, 3) and first.dtype == np.float32
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other).max() > 0.1
  pixels = first * preprocess.IMAGENET_STD + preprocess.IMAGENET_MEAN
  assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
  small = preprocess.augment_transform(image, np.random.default_rng(7), 96)
  assert small.shape == (96, 96, 3)


def test_flip_happens_about_half_the_time():
  image = Image.open(data_photos.skimage_photo("astronaut.png"))
  flips = 0
  for seed in range(40):
    rng = np.random.default_rng(seed)
    params = preprocess.random_resized_crop_params(512, 512, rng)
    flips += rng.random() < 0.5
    out = preprocess.augment_transform(image, np.random.default_rng(seed))
    crop = preprocess.normalize(preprocess.resized_crop(
        image.convert("RGB"), *params, 224))
    flipped = not np.array_equal(out, crop)
    if flipped:
      np.testing.assert_array_equal(out, crop[:, ::-1])
  assert 10 <= flips <= 30


def test_unknown_augment_is_an_error():
  with pytest.raises(ValueError, match="random_crop"):
    preprocess.check_augment("random_crop")


def test_random_resized_crop_distribution_matches_torchvision():
  tv = _torchvision()
  import torch  # pylint: disable=g-import-not-at-top
  from scipy import stats  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  image = Image.new("RGB", (500, 375))
  get_params = tv.transforms.RandomResizedCrop.get_params
  theirs = np.array([get_params(image, list(preprocess.RRC_SCALE),
                                list(preprocess.RRC_RATIO))
                     for _ in range(3000)], np.float64)
  rng = np.random.default_rng(0)
  ours = np.array([preprocess.random_resized_crop_params(375, 500, rng)
                   for _ in range(3000)], np.float64)
  # (top, left, h, w): compare area, aspect ratio and offsets; scale up to
  # 1.25 makes the 10-try loop and the fallback matter.
  for name, f in [("area", lambda p: p[:, 2] * p[:, 3]),
                  ("ratio", lambda p: p[:, 3] / p[:, 2]),
                  ("top", lambda p: p[:, 0]), ("left", lambda p: p[:, 1])]:
    assert stats.ks_2samp(f(ours), f(theirs)).pvalue > 1e-3, name
  full = lambda p: np.mean((p[:, 2] == 375) & (p[:, 3] == 500))
  assert abs(full(ours) - full(theirs)) < 0.03  # fallback share
