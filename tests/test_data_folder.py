"""The image-folder dataset on a folder of real photos built in the test."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from nad_jax import config_lib
from nad_jax import data
from nad_jax.data import base
from nad_jax.data import folder
from nad_jax.data import preprocess
from tests import data_photos

# class -> split -> photos (skimage names or foolbox ImageNet class ids).
LAYOUT = {
    "animal": {"train": ["chelsea.png", "horse.png", 243, 129, 99, 251],
               "val": [22, 305, 317]},
    "grey": {"train": ["camera.png", "coins.png", "moon.png"],
             "val": ["text.png", "brick.png"]},
    "thing": {"train": ["coffee.png", "rocket.jpg", 609, 438],
              "val": [559, 915, 455, 541]},
}


def _copy_photo(photo, dst_dir: str, foolbox: dict[int, str]) -> str:
  src = foolbox[photo] if isinstance(photo, int) else (
      data_photos.skimage_photo(photo))
  dst = os.path.join(dst_dir, os.path.basename(src))
  shutil.copy(src, dst)
  return dst


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
  """root/{train,val}/{animal,grey,thing}/ of real photos, plus: a PNG with
  alpha (horse.png), greyscale PNGs, a palette GIF and a CMYK JPEG in
  val/grey and val/thing, a garbage file in train/animal, a truncated JPEG
  in val/thing and a README that is not an image."""
  foolbox = {}
  for path, label in data_photos.foolbox_imagenet().items():
    foolbox.setdefault(label, path)
  root = str(tmp_path_factory.mktemp("photos"))
  for name, splits in LAYOUT.items():
    for split, photos in splits.items():
      class_dir = os.path.join(root, split, name)
      os.makedirs(class_dir)
      for photo in photos:
        _copy_photo(photo, class_dir, foolbox)
  with open(os.path.join(root, "train", "animal", "garbage.jpg"), "wb") as f:
    f.write(b"this is not a jpeg" * 10)
  with open(foolbox[609], "rb") as f:
    head = f.read(600)
  with open(os.path.join(root, "val", "thing", "truncated.jpg"), "wb") as f:
    f.write(head)
  Image.open(data_photos.skimage_photo("coffee.png")).convert("CMYK").save(
      os.path.join(root, "val", "thing", "coffee_cmyk.jpg"))
  shutil.copy(data_photos.skimage_photo("no_time_for_that_tiny.gif"),
              os.path.join(root, "val", "grey"))
  with open(os.path.join(root, "train", "thing", "README.txt"), "w") as f:
    f.write("not an image")
  return root


def _reference(path: str) -> np.ndarray:
  return preprocess.eval_transform(Image.open(path).convert("RGB"))


def test_layout_classes_and_counts(photo_root):
  dataset = folder.FolderDataset(photo_root)
  assert dataset.class_names == ["animal", "grey", "thing"]
  assert dataset.num_images("train", 0) == 7  # incl. garbage.jpg
  assert dataset.num_images("train", 2) == 4  # README.txt ignored
  assert dataset.num_images("val", 1) == 3
  assert dataset.hierarchy is None


def test_concept_batch_rows_hold_only_their_class(photo_root):
  dataset = folder.FolderDataset(photo_root, seed=3)
  refs = {c: [_reference(p) for p in dataset.class_files("train", c)
              if not p.endswith("garbage.jpg")] for c in (1, 2)}
  images, labels = dataset.concept_batch([2, 1], step=1, batch_size=5)
  assert images.shape == (2, 5, 224, 224, 3) and images.dtype == np.float32
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [[2] * 5, [1] * 5])
  for row, class_id in enumerate([2, 1]):
    files = dataset.class_files("train", class_id)
    want = base.sample_indices(len(files), 3, class_id, 1, 5)
    for b in range(5):
      matches = [i for i, ref in enumerate(refs[class_id])
                 if np.array_equal(images[row, b], ref)]
      assert matches == [want[b]], (row, b)
  # The grey class holds greyscale photos: R = G = B.
  pixels = images[1] * preprocess.IMAGENET_STD + preprocess.IMAGENET_MEAN
  np.testing.assert_allclose(pixels[..., 0], pixels[..., 1], atol=1e-6)
  assert not np.allclose(images[0, ..., 0] * 0.229 + 0.485,
                         images[0, ..., 1] * 0.224 + 0.456, atol=1e-2)


def test_epochs_visit_every_image_once(photo_root):
  dataset = folder.FolderDataset(photo_root, seed=0)
  refs = [_reference(p) for p in dataset.class_files("train", 2)]
  seen = []
  for step in range(2):  # 4 images, batch 2: steps 0-1 = epoch 0
    images, _ = dataset.concept_batch([2], step, 2)
    for image in images[0]:
      seen += [i for i, ref in enumerate(refs) if np.array_equal(image, ref)]
  assert sorted(seen) == [0, 1, 2, 3]


def test_corrupt_file_skipped_with_warning_and_counted(photo_root, caplog):
  dataset = folder.FolderDataset(photo_root, seed=1)
  files = dataset.class_files("train", 0)
  garbage = [f for f in files if f.endswith("garbage.jpg")]
  refs = [_reference(f) for f in files if f not in garbage]
  with caplog.at_level(logging.WARNING):
    images, _ = dataset.concept_batch([0], step=0, batch_size=7)  # 1 epoch
    dataset.concept_batch([0], step=1, batch_size=7)
  assert dataset.skipped_files == garbage
  assert dataset.num_skipped == 1
  assert sum("garbage.jpg" in r.getMessage() for r in caplog.records) == 1
  for image in images[0]:  # the slot is filled by a readable animal photo
    assert any(np.array_equal(image, ref) for ref in refs)


def test_eval_batches_convert_modes_and_skip_truncated(photo_root):
  dataset = folder.FolderDataset(photo_root)
  batches = list(dataset.eval_batches(2, batch_size=4))
  files = dataset.class_files("val", 2)
  assert len(files) == 6  # 4 foolbox + CMYK + truncated
  assert [len(x) for x, _ in batches] == [4, 1]  # truncated one left out
  assert all((y == 2).all() and y.dtype == np.int32 for _, y in batches)
  assert [f for f in dataset.skipped_files if "truncated" in f]
  readable = [f for f in files if "truncated" not in f]
  got = np.concatenate([x for x, _ in batches])
  for image, path in zip(got, readable):
    np.testing.assert_array_equal(image, _reference(path))
  grey = np.concatenate([x for x, _ in dataset.eval_batches(1, 2)])
  assert grey.shape == (3, 224, 224, 3)  # greyscale PNGs + palette GIF
  assert len(list(dataset.eval_batches(1, 2, max_images=1))) == 1


def test_seeded_order_and_augmentation_are_deterministic(photo_root):
  one = folder.FolderDataset(photo_root, seed=5,
                             augment="random_resized_crop")
  two = folder.FolderDataset(photo_root, seed=5,
                             augment="random_resized_crop", num_workers=2)
  other = folder.FolderDataset(photo_root, seed=6,
                               augment="random_resized_crop")
  a, _ = one.concept_batch([1, 2], 3, 3)
  b, _ = two.concept_batch([1, 2], 3, 3)  # threads: same result
  c, _ = other.concept_batch([1, 2], 3, 3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  d, _ = one.concept_batch([1, 2], 4, 3)
  assert not np.array_equal(a, d)
  two.close()


def test_errors_name_the_problem(tmp_path, photo_root):
  with pytest.raises(FileNotFoundError, match="root/train/<class>"):
    folder.FolderDataset(str(tmp_path / "nowhere"))
  (tmp_path / "train" / "cat").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="val"):
    folder.FolderDataset(str(tmp_path))
  (tmp_path / "val" / "cat").mkdir(parents=True)
  shutil.copy(data_photos.skimage_photo("chelsea.png"), tmp_path / "val" /
              "cat")
  with pytest.raises(ValueError, match="'cat' has no images"):
    folder.FolderDataset(str(tmp_path))
  (tmp_path / "val" / "dog").mkdir()
  with pytest.raises(ValueError, match=r"only in val \['dog'\]"):
    folder.FolderDataset(str(tmp_path))
  dataset = folder.FolderDataset(photo_root)
  with pytest.raises(ValueError, match=r"\[7\]"):
    dataset.concept_batch([0, 7], 0, 2)


def test_wnid_folders_get_imagenet_names(tmp_path):
  foolbox = data_photos.foolbox_imagenet()
  by_label = {label: path for path, label in foolbox.items()}
  # foolbox labels: 609 = jeep (n03594945), 251 = dalmatian (n02110341).
  for wnid, label in [("n03594945", 609), ("n02110341", 251)]:
    for split in ("train", "val"):
      (tmp_path / split / wnid).mkdir(parents=True)
      shutil.copy(by_label[label], tmp_path / split / wnid)
  config = config_lib.base_config()
  config.data.source = "folder"
  config.data.root = str(tmp_path)
  config.data.classes = "jeep, n02110341"
  dataset = data.get_dataset(config, cache_dir=str(tmp_path))
  assert dataset.class_names == ["dalmatian", "jeep"]
  assert dataset.wnids == ["n02110341", "n03594945"]
  assert data.selected_classes(config, dataset) == [1, 0]
  config.data.hierarchy = "wordnet:n02084071"  # dog
  dataset = data.get_dataset(config, cache_dir=str(tmp_path))
  assert dataset.hierarchy == {"dog": [0]}
  config.data.classes = "jeep, poodle"
  with pytest.raises(ValueError, match="poodle"):
    data.selected_classes(config, dataset)


def test_get_dataset_errors(tmp_path):
  config = config_lib.base_config()
  config.data.source = "lmdb"
  with pytest.raises(ValueError, match=r"'folder'.*'tfds'"):
    data.get_dataset(config, cache_dir=str(tmp_path))
  config.data.source = "folder"
  with pytest.raises(ValueError, match="config.data.root"):
    data.get_dataset(config, cache_dir=str(tmp_path))
