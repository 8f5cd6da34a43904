"""Writes an ImageNet-shaped synthetic image folder (and optionally tfds).

  PYTHONPATH=. python3 benchmarks/make_synthetic_imagenet.py --out DIR \
      [--classes 1000] [--train_per_class 64] [--val_per_class 2] \
      [--workers 8] [--tfds]

Layout: ``DIR/train/<wnid>/<wnid>_<n>.JPEG`` and ``DIR/val/<wnid>/...`` for
the first ``--classes`` ImageNet wnids (in ImageNet order), readable by
``nad_jax.data.folder.FolderDataset`` (``config.data.source='folder'``,
``config.data.root=DIR``; wnid folders get ImageNet names and labels).
Every file is a JPEG (quality ``--quality``, default 90) of a real photo
shipped with scikit-image, randomly cropped (60-100% of each side),
resized to an ImageNet-like size (500x375 landscape most often, also
375x500, 500x333, 333x500, 500x500 and 640x480), colour-shifted (a random
gain per channel), given film grain (std 8 levels) and sometimes mirrored,
so no two files are alike. Files average about 80 kB (ImageNet's train
JPEGs: about 110 kB, at a similar mean size of about 400 x 350).

``--tfds`` also writes the same images as an array_record tfds dataset
``synthetic_imagenet`` into ``DIR/tfds`` (features ``image``, ``label``
with the wnids as label names; splits ``train`` and ``validation``), read
by ``config.data.source='tfds'``, ``config.data.name='synthetic_imagenet'``,
``config.data.data_dir=DIR/tfds`` (tfds builds the reader from the written
files; no TensorFlow needed).

Cost (measured on this project's 2-core CPU): about 10 ms of CPU per image
and 78 kB of disk; 1000 classes x 66 images is 5 GB and about 11 CPU
minutes (under a minute on 16 worker processes). Realistic per-class counts
for the cache (ImageNet: up to 1300 train images per class) on fewer
classes: ``--classes 16 --train_per_class 1300`` (1.6 GB).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import time

import numpy as np
from PIL import Image

from nad_jax.data import classes

# Colour photos of scikit-image (greyscale ones would make a grey dataset).
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
          "motorcycle_left.png", "motorcycle_right.png",
          "hubble_deep_field.jpg", "retina.jpg", "color.png", "horse.png",
          "ihc.png")
# (width, height) and how often: ImageNet's photos are mostly 500 px on the
# long side, 4:3 landscape most often.
SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500),
         (640, 480))
SIZE_WEIGHTS = (0.45, 0.2, 0.15, 0.05, 0.1, 0.05)

_photos: list[Image.Image] = []


def _load_photos() -> list[Image.Image]:
  if not _photos:
    spec = importlib.util.find_spec("skimage")
    if spec is None:
      raise SystemExit("needs scikit-image's photos: pip install --no-deps "
                       "scikit-image")
    data_dir = os.path.join(list(spec.submodule_search_locations)[0], "data")
    for name in PHOTOS:
      path = os.path.join(data_dir, name)
      if os.path.exists(path):
        _photos.append(Image.open(path).convert("RGB"))
  return _photos


def synthetic_photo(rng: np.random.Generator) -> Image.Image:
  """One random ImageNet-sized photo made from a scikit-image photo."""
  photos = _load_photos()
  photo = photos[int(rng.integers(len(photos)))]
  w, h = photo.size
  box_w = int(w * rng.uniform(0.6, 1.0))
  box_h = int(h * rng.uniform(0.6, 1.0))
  left = int(rng.integers(0, w - box_w + 1))
  top = int(rng.integers(0, h - box_h + 1))
  size = SIZES[int(rng.choice(len(SIZES), p=SIZE_WEIGHTS))]
  image = photo.crop((left, top, left + box_w, top + box_h)).resize(
      size, Image.BICUBIC)
  gains = rng.uniform(0.75, 1.25, 3).astype(np.float32)
  pixels = np.asarray(image, np.float32) * gains
  # Grain (std 8 levels): real photos are not as smooth as upscaled crops,
  # and their JPEGs are larger.
  pixels += rng.normal(0.0, 8.0, pixels.shape[:2] + (1,)).astype(np.float32)
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  if rng.random() < 0.5:
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return image


def _write_class(task: tuple[str, int, str, int, int, int]) -> int:
  out, class_index, wnid, train, val, quality = task
  total = 0
  for split_index, (split, count) in enumerate((("train", train),
                                                ("val", val))):
    class_dir = os.path.join(out, split, wnid)
    os.makedirs(class_dir, exist_ok=True)
    rng = np.random.default_rng([class_index, split_index])
    for n in range(count):
      path = os.path.join(class_dir, f"{wnid}_{n}.JPEG")
      if not os.path.exists(path):
        synthetic_photo(rng).save(path, quality=quality)
      total += 1
  return total


def write_folder(out: str, num_classes: int, train_per_class: int,
                 val_per_class: int, quality: int = 90,
                 workers: int = 1) -> int:
  """Writes the folder; returns the number of images (existing files kept)."""
  wnids = classes.imagenet_wnids()[:num_classes]
  tasks = [(out, i, wnid, train_per_class, val_per_class, quality)
           for i, wnid in enumerate(wnids)]
  if workers <= 1:
    return sum(map(_write_class, tasks))
  with multiprocessing.Pool(workers) as pool:
    return sum(pool.imap_unordered(_write_class, tasks, chunksize=4))


def _tfds_builder_class():
  """The tfds builder of the synthetic folder (defined lazily: tfds import)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # Not registered: readers (tfds.data_source by name) then build it from
  # the written files instead of calling this class without a folder.
  class SyntheticImagenet(tfds.core.GeneratorBasedBuilder,
                          skip_registration=True):
    """The synthetic folder as an array_record tfds dataset."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, folder: str = "", **kwargs):
      self.folder = folder
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(
                  names=sorted(os.listdir(os.path.join(self.folder,
                                                       "train"))))}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples("train"),
              "validation": self._generate_examples("val")}

    def _generate_examples(self, split):
      split_dir = os.path.join(self.folder, split)
      for wnid in sorted(os.listdir(split_dir)):
        for name in sorted(os.listdir(os.path.join(split_dir, wnid))):
          with open(os.path.join(split_dir, wnid, name), "rb") as f:
            yield f"{wnid}/{name}", {"image": f.read(), "label": wnid}

  return SyntheticImagenet


def write_tfds(folder: str, data_dir: str) -> None:
  """Writes ``synthetic_imagenet`` (array_record) from the folder."""
  builder = _tfds_builder_class()(folder=folder, data_dir=data_dir,
                                  file_format="array_record")
  builder.download_and_prepare()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--train_per_class", type=int, default=64)
  parser.add_argument("--val_per_class", type=int, default=2)
  parser.add_argument("--quality", type=int, default=90)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--tfds", action="store_true",
                      help="also write an array_record tfds dataset")
  args = parser.parse_args()
  if not 1 <= args.classes <= 1000:
    raise SystemExit("--classes must be in 1..1000")
  start = time.perf_counter()
  count = write_folder(args.out, args.classes, args.train_per_class,
                       args.val_per_class, args.quality, args.workers)
  seconds = time.perf_counter() - start
  size = sum(os.path.getsize(os.path.join(dp, f))
             for dp, _, fs in os.walk(args.out) for f in fs)
  print(f"{count} images in {args.out} ({size / 1e9:.2f} GB, "
        f"{size / max(count, 1) / 1e3:.0f} kB each) in {seconds:.0f} s")
  if args.tfds:
    start = time.perf_counter()
    write_tfds(args.out, os.path.join(args.out, "tfds"))
    print(f"tfds synthetic_imagenet in {os.path.join(args.out, 'tfds')} in "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
