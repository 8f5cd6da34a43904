"""tfds datasets under ``tfds.testing.mock_data`` (no TensorFlow installed).

The mock serves random images and labels, generated deterministically per
record, for ``imagenet2012`` and ``places365_small`` from the datasets'
code (``MockPolicy.USE_CODE``); ``tfds.data_source`` works under it.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from nad_jax import config_lib
from nad_jax import data
from nad_jax.data import base
from nad_jax.data import preprocess
from nad_jax.data import tfds_source

tfds = pytest.importorskip("tensorflow_datasets",
                           reason="tfds is a core dependency")
NUM_RECORDS = 60


def _mock():
  return tfds.testing.mock_data(num_examples=NUM_RECORDS,
                                policy=tfds.testing.MockPolicy.USE_CODE)


def _config(name: str) -> config_lib.ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.data.source = "tfds"
  config.data.name = name
  config.data.data_dir = "/nonexistent/tfds"
  config.seed = 11
  return config


def _records(name: str, split: str) -> list[tuple[int, np.ndarray]]:
  """(label, eval-transformed image) of every mock record, read directly."""
  source = tfds.data_source(name, split=split, data_dir="/nonexistent/tfds",
                            download=False)
  return [(int(source[i]["label"]), preprocess.eval_transform(
      np.asarray(source[i]["image"]))) for i in range(len(source))]


def test_imagenet_concept_batches_hold_only_their_class(tmp_path):
  with _mock():
    dataset = data.get_dataset(_config("imagenet2012"),
                               cache_dir=str(tmp_path))
    records = _records("imagenet2012", "train")
  assert len(dataset.class_names) == 1000
  assert dataset.class_names[281] == "tabby"
  assert dataset.wnids[281] == "n02123045"
  by_label = collections.defaultdict(list)
  for label, image in records:
    by_label[label].append(image)
  # The two classes with the most mock records.
  class_ids = [c for c, _ in collections.Counter(
      label for label, _ in records).most_common(2)]
  for class_id in class_ids:
    assert dataset.num_images("train", class_id) == len(by_label[class_id])
  with _mock():
    images, labels = dataset.concept_batch(class_ids, step=2, batch_size=3)
  assert images.shape == (2, 3, 224, 224, 3)
  np.testing.assert_array_equal(labels, np.array(class_ids)[:, None] *
                                np.ones((1, 3), np.int32))
  for row, class_id in enumerate(class_ids):
    want = base.sample_indices(len(by_label[class_id]), 11, class_id, 2, 3)
    for b in range(3):
      # records of a class are in record order: index i = i-th record.
      np.testing.assert_array_equal(images[row, b],
                                    by_label[class_id][want[b]])
  empty = next(c for c in range(1000) if c not in by_label)
  with _mock(), pytest.raises(ValueError, match=f"class {empty} .*no train"):
    dataset.concept_batch([empty], 0, 2)


def test_label_index_cached_and_reused(tmp_path, monkeypatch):
  with _mock():
    first = data.get_dataset(_config("imagenet2012"), cache_dir=str(tmp_path))
  files = sorted(os.listdir(tmp_path))
  assert files == ["label_index_imagenet2012_5.1.0_train.npz",
                   "label_index_imagenet2012_5.1.0_validation.npz"]

  def no_scan(*args, **kwargs):
    raise AssertionError("the cached label index was not reused")

  monkeypatch.setattr(tfds_source, "scan_labels", no_scan)
  with _mock():
    again = data.get_dataset(_config("imagenet2012"), cache_dir=str(tmp_path))
  for split in ("train", "val"):
    for a, b in zip(first.index[split], again.index[split]):
      np.testing.assert_array_equal(a, b)
  # A stale index (other record count) is rebuilt.
  np.savez(tmp_path / files[0], order=np.arange(3), offsets=np.zeros(1001))
  monkeypatch.undo()
  with _mock():
    rebuilt = data.get_dataset(_config("imagenet2012"),
                               cache_dir=str(tmp_path))
  assert len(rebuilt.index["train"][0]) == NUM_RECORDS


def test_places365_eval_batches(tmp_path):
  config = _config("places365_small")
  config.data.classes = "airfield, 3"
  with _mock():
    dataset = data.get_dataset(config, cache_dir=str(tmp_path))
    records = _records("places365_small", "validation")
    assert len(dataset.class_names) == 365
    assert dataset.class_names[0] == "airfield"
    assert data.selected_classes(config, dataset) == [0, 3]
    class_id = collections.Counter(l for l, _ in records).most_common(1)[0][0]
    want = [image for label, image in records if label == class_id]
    batches = list(dataset.eval_batches(class_id, batch_size=1))
  assert len(batches) == len(want) >= 1
  for (images, labels), image in zip(batches, want):
    assert labels.tolist() == [class_id]
    np.testing.assert_array_equal(images[0], image)


def test_augmented_tfds_batches_deterministic(tmp_path):
  config = _config("places365_small")
  config.data.augment = "random_resized_crop"
  with _mock():
    one = data.get_dataset(config, cache_dir=str(tmp_path))
    class_id = int(np.argmax(np.diff(one.index["train"][1])))
    a, _ = one.concept_batch([class_id], 0, 4)
    config.data.num_workers = 2
    b, _ = data.get_dataset(config, cache_dir=str(tmp_path)).concept_batch(
        [class_id], 0, 4)
  np.testing.assert_array_equal(a, b)


def test_missing_dataset_says_how_to_prepare(tmp_path):
  config = _config("imagenet2012")
  config.data.data_dir = str(tmp_path)
  config.data.manual_dir = "/data/imagenet_tars"
  with pytest.raises(FileNotFoundError) as info:
    data.get_dataset(config, cache_dir=str(tmp_path))
  message = str(info.value)
  assert "ILSVRC2012_img_train.tar" in message
  assert (f"tfds build imagenet2012 --manual_dir=/data/imagenet_tars "
          f"--data_dir={tmp_path} --file_format=array_record") in message
  config = _config("places365_small")
  config.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError,
                     match="tfds build places365_small --data_dir="):
    data.get_dataset(config, cache_dir=str(tmp_path))
  config.data.name = ""
  with pytest.raises(ValueError, match="config.data.name"):
    data.get_dataset(config, cache_dir=str(tmp_path))


class NadTestPhotos(tfds.core.GeneratorBasedBuilder):
  """A real (unmocked) array_record tfds dataset of foolbox's ImageNet
  photos, built without TensorFlow from already-encoded JPEG bytes; record
  ``BROKEN`` of the train split holds bytes that are no image."""

  VERSION = tfds.core.Version("1.0.0")
  BROKEN = 3

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=["even", "odd"])}))

  def _split_generators(self, dl_manager):
    from tests import data_photos  # pylint: disable=g-import-not-at-top
    photos = sorted(data_photos.foolbox_imagenet().items())
    return {"train": self._generate_examples(photos[:12], self.BROKEN),
            "validation": self._generate_examples(photos[12:], None)}

  def _generate_examples(self, photos, broken):
    for n, (path, imagenet_label) in enumerate(photos):
      with open(path, "rb") as f:
        encoded = f.read()
      if n == broken:
        encoded = b"no image here" * 20
      yield n, {"image": encoded, "label": imagenet_label % 2}


def test_real_array_record_dataset_without_tensorflow(tmp_path):
  data_dir = str(tmp_path / "tfds")
  NadTestPhotos(data_dir=data_dir,
                file_format="array_record").download_and_prepare()
  config = _config("nad_test_photos")
  config.data.data_dir = data_dir
  config.data.classes = "odd"
  raw = tfds_source._label_source(  # pylint: disable=protected-access
      "nad_test_photos", "train", data_dir, None)
  assert isinstance(raw[0]["image"], bytes)  # the fast label pass works
  # tfds shuffles records when preparing: find the broken one.
  broken = [i for i in range(len(raw))
            if raw[i]["image"].startswith(b"no image")]
  assert len(broken) == 1
  broken_label = int(raw[broken[0]]["label"])
  dataset = data.get_dataset(config, cache_dir=str(tmp_path))
  assert dataset.class_names == ["even", "odd"]
  assert data.selected_classes(config, dataset) == [1]
  source = tfds.data_source("nad_test_photos", split="train",
                            data_dir=data_dir, download=False)
  readable = [(int(source[i]["label"]),
               preprocess.eval_transform(np.asarray(source[i]["image"])))
              for i in range(len(source)) if i != broken[0]]
  count = sum(label == broken_label for label, _ in readable) + 1
  assert dataset.num_images("train", broken_label) == count
  images, _ = dataset.concept_batch([broken_label], 0, count)  # one epoch
  assert dataset.skipped_files == [f"nad_test_photos/train[{broken[0]}]"]
  for image in images[0]:
    assert any(label == broken_label and np.array_equal(image, ref)
               for label, ref in readable)
  val = sum(len(x) for x, _ in dataset.eval_batches(1 - broken_label, 3))
  assert val == dataset.num_images("val", 1 - broken_label) > 0
