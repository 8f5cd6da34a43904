"""A ConceptDataset over a tfds dataset, read without TensorFlow.

Reads ``imagenet2012`` or ``places365_small`` (any tfds image
classification dataset with features ``image`` and ``label`` should work)
prepared in the ``array_record`` format, through ``tfds.data_source``
(random access by record index; tfds decodes the stored JPEG to uint8 HWC
with OpenCV or PIL). Splits: ``train`` and ``val`` (= tfds ``validation``).

Per-concept sampling needs each class's record indices. They come from one
pass over the labels (threaded with grain, images not decoded where tfds
allows it) and are cached in ``cache_dir`` (the run's workdir) as
``label_index_<name>_<version>_<split>.npz``: ``order`` (record indices
sorted by label) and ``offsets`` (class c = ``order[offsets[c]:offsets[c+1]]``),
reused while the record count matches.

Preparing a dataset needs TensorFlow once (tfds' builders use it), reading it
does not; :func:`prepare_help` gives the commands.

Memory: the label index is 8 bytes per record (10 MB for ImageNet train);
one batch of decoded images.
"""

from __future__ import annotations

import os
import tempfile

from absl import logging
import numpy as np

from nad_jax.data import classes
from nad_jax.data import indexed

TFDS_SPLITS = {"train": "train", "val": "validation"}


def prepare_help(name: str, data_dir: str, manual_dir: str = "") -> str:
  """The commands that prepare tfds dataset ``name`` as array_record."""
  data_dir = data_dir or "~/tensorflow_datasets"
  common = (
      "Reading needs no TensorFlow, but tfds' builders do: prepare it once in "
      "any Python environment with `pip install tensorflow "
      "tensorflow-datasets`, then point config.data.data_dir at the result.")
  if name == "imagenet2012":
    manual_dir = manual_dir or os.path.join(data_dir, "downloads", "manual")
    return (
        f"{common}\n"
        f"  1. Register at https://image-net.org/download-images and put "
        f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (optionally "
        f"ILSVRC2012_img_test.tar) into {manual_dir} (config.data.manual_dir)."
        f"\n  2. tfds build imagenet2012 --manual_dir={manual_dir} "
        f"--data_dir={data_dir} --file_format=array_record")
  if name == "places365_small":
    return (
        f"{common}\n"
        f"  tfds build places365_small --data_dir={data_dir} "
        f"--file_format=array_record\n"
        f"  (downloads the 256x256 images from places2.csail.mit.edu, about "
        f"30 GB)")
  return (f"{common}\n  tfds build {name} --data_dir={data_dir} "
          f"--file_format=array_record")


def open_source(name: str, split: str, data_dir: str, manual_dir: str = "",
                decoders=None):
  """``tfds.data_source`` with ``download=False`` and a clear error.

  Raises:
    FileNotFoundError: the dataset is not prepared (or not as array_record)
      in ``data_dir``; the message says how to prepare it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None,
                            download=False, decoders=decoders)
  except Exception as e:  # pylint: disable=broad-except
    try:
      builder = tfds.builder(name, data_dir=data_dir or None)
      prepared = builder.is_prepared()
      where = builder.data_dir
    except Exception:  # pylint: disable=broad-except
      prepared, where = False, data_dir
    if prepared:
      state = (f"tfds dataset {name!r} in {where} cannot be read by index "
               f"({e}); it must be prepared with --file_format=array_record "
               f"(or converted: tfds convert_format --dataset_version_dir="
               f"{where} --out_file_format=array_record).")
    else:
      state = (f"tfds dataset {name!r} split {split!r} is not prepared in "
               f"{where} (config.data.data_dir={data_dir!r}; nothing is "
               f"downloaded).")
    raise FileNotFoundError(
        f"{state}\n{prepare_help(name, data_dir, manual_dir)}") from None


def _label_source(name: str, split: str, data_dir: str, full_source):
  """A source whose records keep the image undecoded (fast label pass).

  Falls back to ``full_source`` (decodes every image: slow on ImageNet) where
  skipping fails, e.g. under tfds' ``mock_data``, which encodes images with
  TensorFlow as soon as decoders are set.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None,
                              download=False,
                              decoders={"image": tfds.decode.SkipDecoding()})
    if len(source):
      int(source[0]["label"])
    return source
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("%s/%s: reading labels without decoding images failed "
                    "(%s: %s); the label pass decodes every image",
                    name, split, type(e).__name__, e)
    return full_source


def scan_labels(source, num_threads: int = 8) -> np.ndarray:
  """Every record's label, in record order (one threaded pass with grain)."""
  import grain  # pylint: disable=g-import-not-at-top
  dataset = grain.MapDataset.source(source).map(
      lambda record: int(record["label"]))
  dataset = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=max(1, num_threads),
                        prefetch_buffer_size=256))
  return np.fromiter(dataset, dtype=np.int64, count=len(source))


def label_index(labels: np.ndarray, num_classes: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """``(order, offsets)``: record indices grouped by class, each in record
  order; class c has ``order[offsets[c]:offsets[c + 1]]``."""
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels outside 0..{num_classes - 1}: "
                     f"{labels[(labels < 0) | (labels >= num_classes)][:5]}")
  order = np.argsort(labels, kind="stable")
  counts = np.bincount(labels, minlength=num_classes)
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  return order.astype(np.int64), offsets


def cached_label_index(path: str, num_records: int, num_classes: int,
                       compute) -> tuple[np.ndarray, np.ndarray]:
  """Loads ``path`` if it matches the record and class counts, else calls
  ``compute() -> labels`` and writes it."""
  if os.path.exists(path):
    with np.load(path) as cached:
      order, offsets = cached["order"], cached["offsets"]
    if len(order) == num_records and len(offsets) == num_classes + 1:
      return order, offsets
    logging.warning("label index %s is stale (%d records, %d classes); "
                    "rebuilding", path, len(order), len(offsets) - 1)
  order, offsets = label_index(compute(), num_classes)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=os.path.dirname(path) or ".",
                                   suffix=".npz", delete=False) as f:
    np.savez(f, order=order, offsets=offsets)
  os.replace(f.name, path)
  return order, offsets


class TfdsDataset(indexed.IndexedConceptDataset):
  """A tfds dataset as a ConceptDataset; see the module docstring.

  Args:
    name: tfds name, e.g. ``'imagenet2012'``, ``'places365_small'``.
    data_dir: tfds data dir (``''`` = tfds' default).
    manual_dir: only for the instructions when the dataset is missing.
    cache_dir: where the label index is cached (the run's workdir).
    image_size, augment, seed, num_workers: as ``FolderDataset``.

  Raises:
    FileNotFoundError: the dataset is not prepared; says how to prepare it.
    ValueError: the dataset has no ``label`` / ``image`` feature.
  """

  def __init__(self, name: str, *, data_dir: str = "", manual_dir: str = "",
               cache_dir: str, image_size: int = 224, augment: str = "none",
               seed: int = 0, num_workers: int = 0):
    self.name = name
    self.sources = {split: open_source(name, tfds_split, data_dir, manual_dir)
                    for split, tfds_split in TFDS_SPLITS.items()}
    info = self.sources["train"].dataset_info
    features = info.features
    if "label" not in features or "image" not in features:
      raise ValueError(f"tfds dataset {name!r} needs features 'image' and "
                       f"'label'; it has {list(features)}")
    label_names = list(features["label"].names)
    wnids = None
    if name == "imagenet2012":
      wnids = label_names
      if wnids != classes.imagenet_wnids():
        raise ValueError(f"{name}: tfds labels are not the 1000 ImageNet "
                         f"wnids in the usual order")
      class_names = classes.imagenet_names()
    else:
      class_names = [n.replace("_", " ") for n in label_names]
    super().__init__(class_names, image_size=image_size, augment=augment,
                     seed=seed, num_workers=num_workers)
    self.wnids = wnids
    self.aliases = {n: i for i, n in enumerate(label_names)}
    self.index = {}
    for split, tfds_split in TFDS_SPLITS.items():
      source = self.sources[split]
      path = os.path.join(
          cache_dir, f"label_index_{name}_{info.version}_{tfds_split}.npz")
      self.index[split] = cached_label_index(
          path, len(source), len(class_names),
          lambda: scan_labels(  # pylint: disable=cell-var-from-loop
              _label_source(name, tfds_split, data_dir, source),
              num_threads=max(1, self.num_workers)))

  def records(self, split: str, class_id: int) -> np.ndarray:
    """The record indices of a class in ``split``, in record order."""
    order, offsets = self.index[split]
    return order[offsets[class_id]:offsets[class_id + 1]]

  def _count(self, split: str, class_id: int) -> int:
    _, offsets = self.index[split]
    return int(offsets[class_id + 1] - offsets[class_id])

  def _read(self, split: str, class_id: int, index: int) -> np.ndarray:
    record = self.sources[split][int(self.records(split, class_id)[index])]
    return np.asarray(record["image"])

  def _describe(self, split: str, class_id: int, index: int) -> str:
    record_id = int(self.records(split, class_id)[index])
    return f"{self.name}/{TFDS_SPLITS[split]}[{record_id}]"
