"""Images per second decoded and preprocessed by the folder dataset.

  PYTHONPATH=. python3 benchmarks/bench_data.py [--images 64] [--repeats 3] \
      [--workers 2]

Builds a temporary image folder of real JPEG photos at ImageNet-like sizes
(scikit-image's photos re-encoded at 500x375 / 375x500, quality 90, with
random crops so no two files are equal), then times, on one thread and on
the dataset's thread pool:

* decode only (PIL open + RGB);
* decode + eval transform (Resize 256, CenterCrop 224, normalise);
* decode + search augmentation (RandomResizedCrop 224 + flip, normalise);
* ``FolderDataset.concept_batch`` (K=4 concepts x B=16, augmented).

Prints a markdown table (best of ``--repeats``) and the CPU model. Needs
scikit-image's data files (``pip install --no-deps scikit-image``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import tempfile
import time

import numpy as np
from PIL import Image

from nad_jax.data import folder
from nad_jax.data import preprocess

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
          "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg",
          "color.png"]


def cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return platform.processor() or "unknown"


def make_folder(root: str, num_images: int, num_classes: int = 4) -> None:
  spec = importlib.util.find_spec("skimage")
  if spec is None:
    raise SystemExit("needs scikit-image's photos: pip install --no-deps "
                     "scikit-image")
  data_dir = os.path.join(list(spec.submodule_search_locations)[0], "data")
  photos = [Image.open(os.path.join(data_dir, p)).convert("RGB")
            for p in PHOTOS]
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for c in range(num_classes):
      os.makedirs(os.path.join(root, split, f"class{c}"))
    for n in range(num_images):
      photo = photos[n % len(photos)]
      w, h = photo.size
      box_w, box_h = int(w * rng.uniform(0.7, 1)), int(h * rng.uniform(0.7, 1))
      left = int(rng.integers(0, w - box_w + 1))
      top = int(rng.integers(0, h - box_h + 1))
      size = (500, 375) if n % 3 else (375, 500)
      image = photo.crop((left, top, left + box_w, top + box_h)).resize(
          size, Image.BICUBIC)
      image.save(os.path.join(root, split, f"class{n % num_classes}",
                              f"{n:05d}.jpg"), quality=90)


def best_rate(fn, count: int, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return count / best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    make_folder(root, args.images)
    paths = sorted(os.path.join(dp, f) for dp, _, fs in
                   os.walk(os.path.join(root, "train")) for f in fs)
    mean_bytes = np.mean([os.path.getsize(p) for p in paths])
    rng = np.random.default_rng(0)

    def decode():
      for p in paths:
        folder.decode_image(p)

    def eval_all():
      for p in paths:
        preprocess.eval_transform(folder.decode_image(p))

    def augment_all():
      for p in paths:
        preprocess.augment_transform(folder.decode_image(p), rng)

    rows = [("decode only", 1, best_rate(decode, len(paths), args.repeats)),
            ("decode + eval transform", 1,
             best_rate(eval_all, len(paths), args.repeats)),
            ("decode + augment (RRC + flip)", 1,
             best_rate(augment_all, len(paths), args.repeats))]
    for workers in sorted({0, args.workers}):
      for augment in ("none", "random_resized_crop"):
        dataset = folder.FolderDataset(root, augment=augment, seed=0,
                                       num_workers=workers)
        steps = max(1, args.images // 64)
        rate = best_rate(
            lambda: [dataset.concept_batch([0, 1, 2, 3], s, 16)  # pylint: disable=cell-var-from-loop
                     for s in range(steps)], steps * 64, args.repeats)
        rows.append((f"concept_batch 4x16, augment={augment}",
                     max(1, workers), rate))
        dataset.close()
  print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores visible)")
  print(f"{len(paths)} JPEGs, 500x375 / 375x500, mean {mean_bytes / 1e3:.0f} "
        f"kB; best of {args.repeats}\n")
  print("| what | threads | images/s | images/s per thread |")
  print("|---|---|---|---|")
  for what, threads, rate in rows:
    print(f"| {what} | {threads} | {rate:.0f} | {rate / threads:.0f} |")


if __name__ == "__main__":
  main()
