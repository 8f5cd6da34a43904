"""Tests of the demo dataset (nad_jax/data/demo.py)."""

from __future__ import annotations

import colorsys

import ml_collections
import numpy as np
import pytest

from nad_jax.data import base
from nad_jax.data import demo

TRAIN, VAL = 12, 5


@pytest.fixture(scope="module")
def dataset():
  return demo.DemoDataset(seed=0, train_per_class=TRAIN, val_per_class=VAL)


def _index_in_class(dataset, class_id, image):
  """Which train image of ``class_id`` equals ``image`` (-1 if none)."""
  images, labels = dataset.split_arrays("train")
  class_images = images[labels == class_id]
  matches = np.flatnonzero(
      np.all(class_images == image[None], axis=(1, 2, 3)))
  return int(matches[0]) if len(matches) == 1 else -1


def test_same_seed_same_images_other_seed_other_images(dataset):
  again = demo.DemoDataset(seed=0, train_per_class=TRAIN, val_per_class=VAL)
  other = demo.DemoDataset(seed=1, train_per_class=TRAIN, val_per_class=VAL)
  for split in ("train", "val"):
    images, labels = dataset.split_arrays(split)
    np.testing.assert_array_equal(images, again.split_arrays(split)[0])
    np.testing.assert_array_equal(labels, again.split_arrays(split)[1])
    assert not np.allclose(images, other.split_arrays(split)[0])
  # The val images do not depend on how many train images there are.
  more_train = demo.DemoDataset(seed=0, train_per_class=TRAIN + 3,
                                val_per_class=VAL)
  raw_val = dataset.split_arrays("val")[0] * dataset.std + dataset.mean
  raw_val_more = (more_train.split_arrays("val")[0] * more_train.std
                  + more_train.mean)
  np.testing.assert_allclose(raw_val, raw_val_more, atol=1e-5)


def test_shapes_dtypes_and_normalisation(dataset):
  images, labels = dataset.split_arrays("train")
  assert images.shape == (16 * TRAIN, 32, 32, 3)
  assert images.dtype == np.float32 and labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(labels), [TRAIN] * 16)
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
  raw = images * dataset.std + dataset.mean
  assert raw.min() >= -1e-5 and raw.max() <= 1.0 + 1e-5
  val_images, val_labels = dataset.split_arrays("val")
  assert val_images.shape == (16 * VAL, 32, 32, 3)
  assert dataset.num_images("train", 3) == TRAIN
  assert dataset.num_images("val", 15) == VAL


def test_hierarchy_covers_every_class_once(dataset):
  assert len(dataset.class_names) == 16 == len(set(dataset.class_names))
  ids = sorted(i for members in dataset.hierarchy.values() for i in members)
  assert ids == list(range(16))
  assert list(dataset.hierarchy) == ["round", "polygons", "stripes",
                                     "checker"]
  for primary, members in dataset.hierarchy.items():
    assert len(members) == 4
    for class_id in members:
      assert dataset.class_names[class_id].startswith(primary + "/")
  assert dataset.class_names[0] == "round/red-disc"


def test_counts_are_parameters():
  small = demo.DemoDataset(num_primaries=2, classes_per_primary=3,
                           train_per_class=2, val_per_class=1, image_size=16)
  assert small.class_names == [
      "round/red-disc", "round/green-disc", "round/blue-disc",
      "polygons/triangle", "polygons/square", "polygons/star"]
  assert small.hierarchy == {"round": [0, 1, 2], "polygons": [3, 4, 5]}
  assert small.split_arrays("train")[0].shape == (12, 16, 16, 3)


def test_hsv_matches_colorsys():
  rng = np.random.default_rng(0)
  hsv = rng.uniform(0.0, 1.0, (50, 3))
  rgb = demo._hsv_to_rgb(hsv[:, 0], hsv[:, 1], hsv[:, 2])
  expected = np.array([colorsys.hsv_to_rgb(*row) for row in hsv])
  np.testing.assert_allclose(rgb, expected, atol=1e-6)


def test_stripes_have_the_planted_orientation(dataset):
  # stripes/0deg varies along x (vertical stripes), stripes/90deg along y.
  images, labels = dataset.split_arrays("train")
  names = dataset.class_names
  for name, along_x in (("stripes/0deg", True), ("stripes/90deg", False)):
    gray = images[labels == names.index(name)].mean(-1)
    energy_x = np.mean(np.diff(gray, axis=2) ** 2)
    energy_y = np.mean(np.diff(gray, axis=1) ** 2)
    assert (energy_x > 1.3 * energy_y) if along_x else (
        energy_y > 1.3 * energy_x), (name, energy_x, energy_y)


def test_round_discs_have_their_hue(dataset):
  # The most saturated pixels of round/red-disc have red as their largest
  # channel; those of round/cyan-disc (hue 180 deg) red as their smallest.
  images, labels = dataset.split_arrays("train")
  raw = images * dataset.std + dataset.mean
  for name, reduce in (("round/red-disc", np.argmax),
                       ("round/cyan-disc", np.argmin)):
    pixels = raw[labels == dataset.class_names.index(name)].reshape(-1, 3)
    saturation = pixels.max(-1) - pixels.min(-1)
    top = pixels[saturation > np.quantile(saturation, 0.95)]
    assert np.mean(reduce(top, -1) == 0) > 0.8, name


def test_concept_batch_rows_hold_only_their_class(dataset):
  class_ids = [3, 7, 12]
  images, labels = dataset.concept_batch(class_ids, step=2, batch_size=5)
  assert images.shape == (3, 5, 32, 32, 3) and images.dtype == np.float32
  assert labels.shape == (3, 5) and labels.dtype == np.int32
  for row, class_id in enumerate(class_ids):
    np.testing.assert_array_equal(labels[row], class_id)
    for image in images[row]:
      assert _index_in_class(dataset, class_id, image) >= 0


def test_concept_batch_follows_sample_indices_epoch_by_epoch(dataset):
  class_id, batch_size = 5, 4  # TRAIN = 12: 3 steps per epoch
  seen = []
  for step in range(6):
    images, _ = dataset.concept_batch([class_id], step, batch_size)
    seen += [_index_in_class(dataset, class_id, image) for image in images[0]]
    np.testing.assert_array_equal(
        seen[-batch_size:],
        base.sample_indices(TRAIN, dataset.order_seed, class_id, step,
                            batch_size))
  # Every train image of the class once per epoch, in a new order.
  assert sorted(seen[:TRAIN]) == list(range(TRAIN))
  assert sorted(seen[TRAIN:]) == list(range(TRAIN))
  assert seen[:TRAIN] != seen[TRAIN:]
  # A batch that straddles two epochs (step 2 of batch 5: positions 10..14).
  images, _ = dataset.concept_batch([class_id], 2, 5)
  straddle = [_index_in_class(dataset, class_id, image) for image in images[0]]
  assert straddle[:2] == seen[10:12] and straddle[2:] == seen[12:15]


def test_concept_batch_order_seed():
  first = demo.DemoDataset(train_per_class=TRAIN, val_per_class=1,
                           order_seed=7)
  second = demo.DemoDataset(train_per_class=TRAIN, val_per_class=1,
                            order_seed=7)
  third = demo.DemoDataset(train_per_class=TRAIN, val_per_class=1,
                           order_seed=8)
  a = first.concept_batch([0, 1], 1, 6)[0]
  np.testing.assert_array_equal(a, second.concept_batch([0, 1], 1, 6)[0])
  assert not np.array_equal(a, third.concept_batch([0, 1], 1, 6)[0])


def test_eval_batches_fixed_order(dataset):
  batches = list(dataset.eval_batches(9, batch_size=2))
  assert [len(labels) for _, labels in batches] == [2, 2, 1]
  images = np.concatenate([images for images, _ in batches])
  val_images, val_labels = dataset.split_arrays("val")
  np.testing.assert_array_equal(images, val_images[val_labels == 9])
  assert all(np.all(labels == 9) for _, labels in batches)
  limited = list(dataset.eval_batches(9, batch_size=2, max_images=3))
  assert sum(len(labels) for _, labels in limited) == 3


def test_bad_input_errors(dataset):
  with pytest.raises(ValueError, match=r"\[16\]"):
    dataset.concept_batch([0, 16], 0, 4)
  with pytest.raises(ValueError, match="-1"):
    next(dataset.eval_batches(-1, 4))
  with pytest.raises(ValueError, match="'test'"):
    dataset.split_arrays("test")
  with pytest.raises(ValueError, match="num_primaries"):
    demo.DemoDataset(num_primaries=5)
  with pytest.raises(ValueError, match="classes_per_primary"):
    demo.DemoDataset(classes_per_primary=7)


def _config(**demo_fields):
  config = ml_collections.ConfigDict()
  config.seed = 233
  config.model = ml_collections.ConfigDict({"image_size": 32})
  config.data = ml_collections.ConfigDict({"augment": "none"})
  config.data.demo = demo.demo_data_config()
  config.data.demo.train_per_class = 4
  config.data.demo.val_per_class = 2
  config.data.demo.update(demo_fields)
  return config


def test_build_demo_dataset_reads_the_config():
  dataset = demo.build_demo_dataset(_config(seed=3, classes_per_primary=2))
  assert dataset.seed == 3 and dataset.order_seed == 233
  assert len(dataset.class_names) == 8
  assert dataset.num_images("train", 0) == 4

  config = _config()
  config.model.image_size = 224
  with pytest.raises(ValueError, match="image_size"):
    demo.build_demo_dataset(config)
  config = _config()
  config.data.augment = "random_resized_crop"
  with pytest.raises(ValueError, match="augment"):
    demo.build_demo_dataset(config)
  config = _config()
  config.data.demo.sead = 1
  with pytest.raises(ValueError, match="sead"):
    demo.build_demo_dataset(config)
