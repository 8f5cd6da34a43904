"""The device data pipeline: cache build rate, cache size, augmentation rate.

  PYTHONPATH=. python3 benchmarks/bench_device_data.py [--root DIR] \
      [--classes 4] [--per_class 64] [--workers 2] [--repeats 3] \
      [--concepts 4] [--batch 16] [--build_classes 2] [--skip_cap]

Reads an ImageNet-shaped folder (``--root``; by default one is written to a
temporary directory with ``make_synthetic_imagenet.py``: ``--classes``
classes of ``--per_class`` JPEGs of 500x375 and other ImageNet sizes,
quality 90) and prints markdown tables of:

1. decode-once cache build (``DecodeCache.build`` of ``--build_classes``
   classes, host threads) in images per second, with 1 thread and with
   ``--workers``, for
   ``random_resized_crop`` (decode + store on the canvas, Lanczos downscale
   where needed) and ``none`` (decode + eval crop);
2. cache bytes per image and per ImageNet class (1300 images);
3. device augmentation throughput: the jitted, concept-vmapped
   ``device_concept_batch`` (K=``--concepts`` x B=``--batch`` at 224 px)
   from a device-resident cache, images per second on the default JAX
   backend (on an accelerator also with the resize in TF32,
   ``Precision.DEFAULT``), and the host path
   (``FolderDataset.concept_batch``, same threads) for comparison;
4. (unless ``--skip_cap``) what the canvas cap does to the pixels: mean
   absolute difference, in 8-bit levels, between a crop drawn from the
   capped cache and torchvision's PIL ``resized_crop`` of the original,
   over random boxes, per canvas size; next to it, what JPEG quality 90
   itself changes in lossless photos.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_synthetic_imagenet  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench_data import cpu_model  # pylint: disable=g-import-not-at-top,wrong-import-position

from nad_jax.data import decode_cache  # pylint: disable=wrong-import-position
from nad_jax.data import device_augment  # pylint: disable=wrong-import-position
from nad_jax.data import folder  # pylint: disable=wrong-import-position
from nad_jax.data import preprocess  # pylint: disable=wrong-import-position

IMAGENET_PER_CLASS = 1300
CANVASES = ((224, 299), (256, 341), (288, 384), (320, 427), (384, 512))


def commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def best_seconds(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def build_rates(root: str, classes: list[int], workers: int, repeats: int):
  rows = []
  for augment in ("random_resized_crop", "none"):
    for threads in sorted({0, workers}):
      dataset = folder.FolderDataset(root, augment=augment)
      builder = decode_cache.DecodeCache(dataset, image_size=224,
                                         augment=augment,
                                         num_workers=threads,
                                         placement="host")
      caches = [None]

      def build():
        caches[0] = None  # free the previous build first
        caches[0] = builder.build(classes)  # pylint: disable=cell-var-from-loop

      seconds = best_seconds(build, repeats)
      builder.close()
      cache = caches[0]
      rate = cache.decoded / seconds
      rows.append((augment, max(threads, 1), rate, cache))
  return rows


def augment_rate(root: str, classes: list[int], batch: int, repeats: int,
                 workers: int, steps: int = 4,
                 precision=jax.lax.Precision.HIGHEST):
  dataset = folder.FolderDataset(root, augment="random_resized_crop")
  cache = decode_cache.DecodeCache(
      dataset, image_size=224, augment="random_resized_crop",
      num_workers=workers, placement="device").build(classes)
  table = jnp.asarray(decode_cache.index_table(cache, 0, 0, steps, batch))
  ids = jnp.asarray(cache.class_ids)

  device_augment.RESIZE_PRECISION = precision

  @jax.jit
  def one_step(arrays, table, step):
    keys = jax.vmap(lambda c: device_augment.batch_key(0, c, step))(ids)
    return jax.vmap(lambda row, slots, key: device_augment.device_concept_batch(
        row, slots, key, size=224, augment="random_resized_crop"))(
            arrays, table[:, step], keys)

  start = time.perf_counter()
  jax.block_until_ready(one_step(cache.arrays, table, 0))
  compile_seconds = time.perf_counter() - start

  def run():
    for step in range(steps):
      jax.block_until_ready(one_step(cache.arrays, table, step))

  seconds = best_seconds(run, repeats)
  device_augment.RESIZE_PRECISION = jax.lax.Precision.HIGHEST
  return len(classes) * batch * steps / seconds, compile_seconds


def host_rate(root: str, classes: list[int], batch: int, workers: int,
              repeats: int, steps: int = 4):
  out = []
  for threads in sorted({0, workers}):
    dataset = folder.FolderDataset(root, augment="random_resized_crop",
                                   num_workers=threads)
    seconds = best_seconds(
        lambda: [dataset.concept_batch(classes, s, batch)  # pylint: disable=cell-var-from-loop
                 for s in range(steps)], repeats)
    dataset.close()
    out.append((max(threads, 1), len(classes) * batch * steps / seconds))
  return out


def cap_effect(root: str, photos: int = 24, boxes_per_photo: int = 8):
  from torchvision.transforms import functional  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(root, "train", "*", "*.JPEG")))
  step = max(1, len(files) // photos)
  images = [Image.open(f).convert("RGB") for f in files[::step][:photos]]
  rng = np.random.default_rng(0)
  boxes = [np.array([preprocess.random_resized_crop_params(
      im.height, im.width, rng) for _ in range(boxes_per_photo)], np.int32)
           for im in images]
  refs = [[np.asarray(functional.resized_crop(im, *map(int, b), [224, 224]),
                      np.float32) for b in bs] for im, bs in zip(images, boxes)]
  crops = jax.jit(jax.vmap(device_augment.resized_crop,
                           in_axes=(None, None, None, None, 0, None)),
                  static_argnums=5)
  rows = []
  for canvas in CANVASES:
    errors, downscaled = [], 0
    for image, bs, ref in zip(images, boxes, refs):
      pixels, orig_hw, transposed = decode_cache.store_photo(image, canvas)
      downscaled += pixels.shape[0] < min(image.size)
      padded = np.zeros(canvas + (3,), np.uint8)
      padded[:pixels.shape[0], :pixels.shape[1]] = pixels
      out = np.asarray(crops(padded, jnp.asarray(pixels.shape[:2]),
                             jnp.asarray(orig_hw), jnp.asarray(transposed),
                             jnp.asarray(bs), 224))
      errors += [np.abs(o - r).mean() for o, r in zip(out, ref)]
    errors = np.asarray(errors)
    rows.append((canvas, downscaled / len(images), errors.mean(),
                 np.percentile(errors, 90), errors.max()))
  jpeg = []
  spec = importlib.util.find_spec("skimage")
  data_dir = os.path.join(list(spec.submodule_search_locations)[0], "data")
  for name in ("astronaut.png", "chelsea.png", "coffee.png",
               "motorcycle_left.png"):
    original = Image.open(os.path.join(data_dir, name)).convert("RGB")
    buffer = io.BytesIO()
    original.save(buffer, "JPEG", quality=90)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), np.float32)
    jpeg.append(np.abs(decoded - np.asarray(original, np.float32)).mean())
  return rows, float(np.mean(jpeg))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="")
  parser.add_argument("--classes", type=int, default=4)
  parser.add_argument("--per_class", type=int, default=64)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--concepts", type=int, default=4)
  parser.add_argument("--build_classes", type=int, default=2,
                      help="classes decoded per cache-build measurement")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--skip_cap", action="store_true")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = args.root
    if not root:
      root = tmp
      make_synthetic_imagenet.write_folder(root, args.classes,
                                           args.per_class, 1,
                                           workers=args.workers)
    num_classes = len([d for d in os.listdir(os.path.join(root, "train"))
                       if not d.startswith(".")])
    classes = list(range(min(args.concepts, num_classes)))
    print(f"{cpu_model()} ({os.cpu_count()} logical cores visible), JAX "
          f"{jax.__version__} on {jax.devices()[0].device_kind}; "
          f"{datetime.date.today()}, commit {commit()}, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    files = glob.glob(os.path.join(root, "train", "*", "*.JPEG"))
    print(f"{len(files)} train JPEGs, mean "
          f"{np.mean([os.path.getsize(f) for f in files]) / 1e3:.0f} kB\n")

    print("| cache build | threads | images/s | images/s per thread | "
          "bytes per image | MB per ImageNet class (1300) |")
    print("|---|---|---|---|---|---|")
    for augment, threads, rate, cache in build_rates(
        root, classes[:args.build_classes], args.workers, args.repeats):
      per_image = cache.nbytes / np.prod(cache.arrays["images"].shape[:2])
      print(f"| {augment} | {threads} | {rate:.0f} | {rate / threads:.0f} | "
            f"{per_image:.0f} | {per_image * IMAGENET_PER_CLASS / 1e6:.0f} |")

    print(f"\n| augmentation (K={len(classes)} x B={args.batch}, 224 px) | "
          f"threads | images/s |")
    print("|---|---|---|")
    precisions = ["HIGHEST"]
    if jax.default_backend() != "cpu":  # TF32 exists only on accelerators
      precisions.append("DEFAULT")
    for name in precisions:
      rate, compile_seconds = augment_rate(
          root, classes, args.batch, args.repeats, args.workers,
          precision=getattr(jax.lax.Precision, name))
      print(f"| device: device_concept_batch, jitted, on "
            f"{jax.devices()[0].platform}, resize precision {name} "
            f"(compile {compile_seconds:.1f} s) | - | {rate:.0f} |")
    for threads, host in host_rate(root, classes, args.batch, args.workers,
                                   args.repeats):
      print(f"| host: decode + RRC + flip + normalise (concept_batch) | "
            f"{threads} | {host:.0f} |")

    if not args.skip_cap:
      rows, jpeg = cap_effect(root)
      print("\n| canvas (rows x cols) | photos downscaled | mean abs diff "
            "(levels) | p90 | max | MB per ImageNet class |")
      print("|---|---|---|---|---|---|")
      for canvas, share, mean, p90, worst in rows:
        mb = canvas[0] * canvas[1] * 3 * IMAGENET_PER_CLASS / 1e6
        print(f"| {canvas[0]} x {canvas[1]} | {100 * share:.0f}% | "
              f"{mean:.2f} | {p90:.2f} | {worst:.2f} | {mb:.0f} |")
      print(f"\nJPEG quality 90 of lossless scikit-image photos: mean abs "
            f"diff {jpeg:.2f} levels")


if __name__ == "__main__":
  main()
