"""The decode-once cache: same images, order and skips as the host path."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from nad_jax.data import base
from nad_jax.data import decode_cache
from nad_jax.data import demo
from nad_jax.data import device_augment
from nad_jax.data import folder
from nad_jax.data import indexed
from tests import data_photos


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
  """train/{mixed,imagenet}/ and val/ of real photos. train/mixed holds an
  RGB PNG, a greyscale PNG, an RGBA PNG, a palette GIF, a CMYK JPEG, a
  portrait JPEG and a garbage file."""
  root = str(tmp_path_factory.mktemp("cache_photos"))
  mixed = os.path.join(root, "train", "mixed")
  net = os.path.join(root, "train", "imagenet")
  for split in ("train", "val"):
    for name in ("mixed", "imagenet"):
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
  for name in ("chelsea.png", "camera.png", "logo.png",
               "no_time_for_that_tiny.gif"):
    shutil.copy(data_photos.skimage_photo(name), mixed)
  coffee = Image.open(data_photos.skimage_photo("coffee.png"))
  coffee.convert("CMYK").save(os.path.join(mixed, "d_coffee_cmyk.jpg"))
  coffee.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(
      os.path.join(mixed, "e_portrait.jpg"), quality=90)
  with open(os.path.join(mixed, "b_garbage.jpg"), "wb") as f:
    f.write(b"this is not a jpeg" * 10)
  for path in list(data_photos.foolbox_imagenet())[:3]:
    shutil.copy(path, net)
  for name in ("mixed", "imagenet"):
    shutil.copy(data_photos.skimage_photo("astronaut.png"),
                os.path.join(root, "val", name))
  return root


def test_index_table_equals_sample_indices():
  cache = decode_cache.ChunkCache(
      class_ids=np.asarray([3, 5]), arrays={}, counts=np.asarray([7, 4]),
      slot_of=[np.arange(7, dtype=np.int32), np.asarray([0, 2, 2, 3])],
      placement="host", augment="none", image_size=8)
  table = decode_cache.index_table(cache, seed=9, first_step=2, num_steps=5,
                                   batch_size=3)
  assert table.shape == (2, 5, 3)
  for step in range(2, 7):
    np.testing.assert_array_equal(
        table[0, step - 2], base.sample_indices(7, 9, 3, step, 3))
    want = base.sample_indices(4, 9, 5, step, 3)
    np.testing.assert_array_equal(table[1, step - 2],
                                  cache.slot_of[1][want])


def _device_batches(cache, table, steps, seed=0, boxes=None):
  """Every step's [K, B, S, S, 3] batch from the cache, on the device."""

  @jax.jit
  def one_step(arrays, slots, step):
    keys = jax.vmap(lambda c: device_augment.batch_key(seed, c, step))(
        jnp.asarray(cache.class_ids))
    return jax.vmap(lambda row, s, k: device_augment.device_concept_batch(
        row, s, k, size=cache.image_size, augment=cache.augment))(
            arrays, slots, keys)

  return [one_step(cache.arrays, table[:, t], t) for t in range(steps)]


def test_eval_crops_equal_the_host_path_with_skips_and_modes(photo_root):
  # augment='none': the device pipeline must feed exactly the host's
  # images, in the same order, with the same skipped file, after the same
  # greyscale / RGBA / palette / CMYK conversions.
  host = folder.FolderDataset(photo_root, augment="none", seed=4)
  device_ds = folder.FolderDataset(photo_root, augment="none", seed=4)
  chunk = [1, 0, 1]  # a padded chunk repeats a class
  with decode_cache.DecodeCache(device_ds, image_size=224, augment="none",
                                num_workers=2) as builder:
    cache = builder.build(chunk)
  assert cache.decoded == 7 + 3  # the repeated class once
  assert cache.placement == "device"  # CPU: the device is host memory
  garbage = os.path.join(photo_root, "train", "mixed", "b_garbage.jpg")
  assert device_ds.skipped_files == [garbage]
  assert host.class_dirs[1] == "mixed"
  bad = host.class_files("train", 1).index(garbage)
  assert cache.slot_of[0][bad] == bad + 1  # -> the next readable image
  assert np.all(cache.slot_of[0][:bad] == np.arange(bad))
  steps, batch = 3, 5  # 15 draws of 7 images: two epochs
  table = decode_cache.index_table(cache, 4, 0, steps, batch)
  device = _device_batches(cache, table, steps)
  for step in range(steps):
    images, labels = host.concept_batch(chunk, step, batch)
    np.testing.assert_allclose(np.asarray(device[step][0]), images,
                               atol=1e-5)
    np.testing.assert_array_equal(np.asarray(device[step][1]), labels)
  assert host.skipped_files == [garbage]


def test_crop_cache_stores_photos_exactly_or_downscaled(photo_root):
  dataset = folder.FolderDataset(photo_root, augment="random_resized_crop")
  builder = decode_cache.DecodeCache(dataset, image_size=224,
                                     augment="random_resized_crop",
                                     placement="host")
  cache = builder.build([1])
  assert cache.placement == "host"
  arrays = cache.arrays
  assert arrays["images"].shape == (1, 7, 288, 384, 3)
  assert cache.nbytes > 7 * 288 * 384 * 3
  files = dataset.class_files("train", 1)
  for index, path in enumerate(files):
    if path.endswith("b_garbage.jpg"):
      assert not arrays["stored_hw"][0, index].any()
      continue
    image = Image.open(path).convert("RGB")
    height, width = image.height, image.width
    np.testing.assert_array_equal(arrays["orig_hw"][0, index],
                                  [height, width])
    assert arrays["transposed"][0, index] == (height > width)
    rows, cols = arrays["stored_hw"][0, index]
    stored = arrays["images"][0, index, :rows, :cols]
    if arrays["transposed"][0, index]:
      stored = stored.transpose(1, 0, 2)
    if min(height, width) <= 288 and max(height, width) <= 384:
      np.testing.assert_array_equal(stored, np.asarray(image))
    else:  # downscaled to fit, aspect kept
      assert rows <= 288 and cols <= 384 and max(rows / 288, cols / 384) > .99
      assert abs(cols / rows - max(height, width) / min(height, width)) < .02


def test_host_placement_equals_device_placement(photo_root):
  dataset = folder.FolderDataset(photo_root, augment="random_resized_crop")
  chunk = [0, 1]
  small = (90, 120)  # a small canvas compiles faster
  on_host = decode_cache.DecodeCache(
      dataset, image_size=64, augment="random_resized_crop", max_size=small,
      placement="host").build(chunk)
  builder = decode_cache.DecodeCache(
      dataset, image_size=64, augment="random_resized_crop", max_size=small,
      placement="device")
  future = builder.prefetch(chunk)  # built on a background thread
  on_device = future.result()
  builder.close()
  assert isinstance(on_device.arrays["images"], jax.Array)
  assert isinstance(on_host.arrays["images"], np.ndarray)
  table = decode_cache.index_table(on_host, 0, 0, 2, 4)
  want = _device_batches(on_device, table, 2)
  for step in range(2):
    # A host cache ships only the step's images; slots are then 0..B-1.
    rows = decode_cache.gather_rows(on_host, table[:, step])
    keys = jax.vmap(lambda c: device_augment.batch_key(0, c, step))(
        jnp.asarray(chunk))
    got = jax.jit(jax.vmap(lambda r, k: device_augment.device_concept_batch(
        r, jnp.arange(4), k, size=64, augment="random_resized_crop")))(
            rows, keys)
    np.testing.assert_array_equal(np.asarray(got[0]),
                                  np.asarray(want[step][0]))
  assert np.abs(np.asarray(want[0][0]) - np.asarray(want[1][0])).max() > .1


class _ArrayDataset(indexed.IndexedConceptDataset):
  """Two classes of in-memory arrays, as tfds' ``_read`` returns them."""

  def __init__(self, arrays):
    super().__init__(["arrays", "broken"], image_size=32, augment="none",
                     seed=1, num_workers=0)
    self.arrays = arrays

  def _count(self, split, class_id):
    return len(self.arrays) if class_id == 0 else 2

  def _read(self, split, class_id, index):
    if class_id == 1:
      raise OSError("unreadable record")
    return self.arrays[index]

  def _describe(self, split, class_id, index):
    return f"arrays/{split}[{class_id}, {index}]"


def test_bad_arrays_and_unreadable_classes_like_the_host():
  rng = np.random.default_rng(0)
  nan = np.full((40, 50, 3), np.nan, np.float32)  # not uint8: skipped
  grey = rng.integers(0, 256, (40, 50), dtype=np.uint8)
  rgba = rng.integers(0, 256, (50, 40, 4), dtype=np.uint8)
  rgb = rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)
  arrays = [nan, grey, rgba, rgb]
  host = _ArrayDataset(arrays)
  device_ds = _ArrayDataset(arrays)
  cache = decode_cache.DecodeCache(device_ds, image_size=32,
                                   augment="none").build([0])
  assert device_ds.skipped_files == ["arrays/train[0, 0]"]
  np.testing.assert_array_equal(cache.slot_of[0], [1, 1, 2, 3])
  table = decode_cache.index_table(cache, 1, 0, 2, 4)
  for step, (images, _) in enumerate(_device_batches(cache, table, 2)):
    want, _ = host.concept_batch([0], step, 4)
    np.testing.assert_allclose(np.asarray(images), want, atol=1e-5)
  assert np.all(np.isfinite(np.asarray(images)))
  with pytest.raises(ValueError, match="class 1 'broken' has no readable"):
    decode_cache.DecodeCache(device_ds, image_size=32,
                             augment="none").build([0, 1])
  with pytest.raises(ValueError, match="class 1 'broken' has no readable"):
    host.concept_batch([1], 0, 2)


def test_tfds_source_equals_the_host_path(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from nad_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  from tests import test_data_tfds  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / "tfds")
  test_data_tfds.NadTestPhotos(
      data_dir=data_dir, file_format="array_record").download_and_prepare()
  del tfds
  make = lambda: tfds_source.TfdsDataset(
      "nad_test_photos", data_dir=data_dir, cache_dir=str(tmp_path),
      image_size=64, augment="none", seed=2)
  host, device_ds = make(), make()
  cache = decode_cache.DecodeCache(device_ds, image_size=64, augment="none",
                                   num_workers=2).build([0, 1])
  assert len(device_ds.skipped_files) == 1  # the broken record
  table = decode_cache.index_table(cache, 2, 3, 2, 6)
  for t, (images, labels) in enumerate(_device_batches(cache, table, 2)):
    want_images, want_labels = host.concept_batch([0, 1], 3 + t, 6)
    np.testing.assert_allclose(np.asarray(images), want_images, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(labels), want_labels)
  assert host.skipped_files == device_ds.skipped_files


def test_demo_images_are_cached_as_they_are():
  dataset = demo.DemoDataset(classes_per_primary=2, num_primaries=2,
                             train_per_class=12, val_per_class=2,
                             order_seed=3)
  cache = decode_cache.DecodeCache(dataset, image_size=32,
                                   augment="none").build([2, 0, 3])
  assert cache.arrays["images"].dtype == jnp.float32
  assert cache.nbytes >= 3 * 12 * 32 * 32 * 3 * 4
  table = decode_cache.index_table(cache, dataset.order_seed, 5, 2, 8)
  for t, (images, labels) in enumerate(_device_batches(cache, table, 2)):
    want_images, want_labels = dataset.concept_batch([2, 0, 3], 5 + t, 8)
    np.testing.assert_array_equal(np.asarray(images), want_images)
    np.testing.assert_array_equal(np.asarray(labels), want_labels)
  with pytest.raises(ValueError, match="no augmentation"):
    decode_cache.DecodeCache(dataset, image_size=32,
                             augment="random_resized_crop")


def test_bad_settings_are_named(photo_root):
  dataset = folder.FolderDataset(photo_root)
  with pytest.raises(ValueError, match="cache_placement"):
    decode_cache.DecodeCache(dataset, image_size=32, augment="none",
                             placement="gpu")
  with pytest.raises(ValueError, match="cache_max_size"):
    decode_cache.DecodeCache(dataset, image_size=32,
                             augment="random_resized_crop", max_size=(0, 4))
  with pytest.raises(ValueError, match="out of range"):
    decode_cache.DecodeCache(dataset, image_size=32,
                             augment="none").build([5])


def test_synthetic_imagenet_script_writes_readable_folder_and_tfds(tmp_path):
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..",
                                  "benchmarks"))
  try:
    import make_synthetic_imagenet  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  from nad_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "synth")
  assert make_synthetic_imagenet.write_folder(root, 2, 3, 1) == 8
  dataset = folder.FolderDataset(root)
  assert dataset.class_names == ["tench", "goldfish"]
  sizes = set()
  for path in dataset.class_files("train", 0) + dataset.class_files("val", 1):
    with Image.open(path) as image:
      assert image.format == "JPEG"
      sizes.add(image.size)
  assert sizes <= set(make_synthetic_imagenet.SIZES)
  make_synthetic_imagenet.write_tfds(root, str(tmp_path / "tfds"))
  records = tfds_source.TfdsDataset(
      "synthetic_imagenet", data_dir=str(tmp_path / "tfds"),
      cache_dir=str(tmp_path))
  assert records.class_names == ["n01440764", "n01443537"]
  assert records.num_images("train", 1) == 3
  assert records.num_images("val", 0) == 1
