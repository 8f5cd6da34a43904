"""Decode once per chunk: every train image of K concepts, kept as uint8.

The search visits each class's images epoch after epoch (the authors: 21
epochs of ~1300 ImageNet images at batch 16 = 1700 steps). The host
pipeline decodes and augments every image again at every visit; the device
pipeline (``config.data.pipeline='device'``) instead decodes each train
image of a chunk's K classes once, here, on host threads (PIL releases the
GIL), keeps the pixels as uint8 and draws every step's crops from them on
the accelerator (:mod:`nad_jax.data.device_augment`).

What is stored per image depends on the augmentation:

* ``'random_resized_crop'``: the decoded photo on a fixed canvas of
  ``max_size = (rows, cols)`` pixels (default 288 x 384), landscape: a
  portrait photo is stored transposed (a flag per image), so 4:3 photos of
  either orientation fill it. A photo larger than the canvas is downscaled
  (PIL Lanczos, aspect kept) to fit; crop boxes are still drawn in the
  original's pixel coordinates and mapped onto the stored copy, so the box
  distribution is torchvision's exactly, and only the pixels lose detail:
  1.6 levels of 8 bits on average for 500x375 photos (JPEG quality 90
  itself changes photos by 2.5; benchmarks/RESULTS.md "Device data
  pipeline"). Photos that fit are stored exactly and their crops match
  PIL's to 2 levels.
* ``'none'``: the eval crop itself (Resize 256 + CenterCrop 224 with PIL, as
  the host path), ``[S, S, 3] uint8``; the device only normalises it, so
  both pipelines feed the same pixels.
* the demo dataset: its in-memory float32 images (already normalised).

Unreadable images are handled as in the host path
(:meth:`IndexedConceptDataset.decode`): logged once, listed in the dataset's
``skipped_files``, and every draw of one takes the next readable image of
the class (``ChunkCache.slot_of``).

Memory per concept: ``N * rows * cols * 3`` bytes for N train images: 432 MB
for 1300 ImageNet photos on the default 288 x 384 canvas (332 kB each), 196
MB with ``'none'`` at 224 px. The cache of a chunk sits in host memory while
it is built, then on the device (``placement``); with prefetching two
chunks' caches exist at once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging
import jax
import numpy as np
from PIL import Image

from nad_jax.data import base
from nad_jax.data import preprocess

# The default canvas (rows, cols): a 4:3 landscape of 288 rows; see the
# module docstring and benchmarks/RESULTS.md "Device data pipeline".
DEFAULT_MAX_SIZE = (288, 384)
# The filter that shrinks photos larger than the canvas: Lanczos loses less
# than bilinear (benchmarks/RESULTS.md "Device data pipeline").
DOWNSCALE_FILTER = Image.LANCZOS
PIPELINES = ("auto", "host", "device")
PLACEMENTS = ("auto", "device", "host")
# 'auto' keeps a chunk's cache on the accelerator while two chunks' caches
# (the running one and the next, prefetched) take at most this share of
# its memory; else in host memory, gathered per step.
DEVICE_SHARE = 0.25


def resolve_pipeline(pipeline: str, backend: str | None = None) -> str:
  """``config.data.pipeline`` as ``'host'`` or ``'device'``.

  ``'auto'`` is ``'device'`` on an accelerator and ``'host'`` on the CPU
  backend (there the step is compute-bound and the host path exact).
  """
  if pipeline not in PIPELINES:
    raise ValueError(f"unknown config.data.pipeline {pipeline!r}; known: "
                     f"{list(PIPELINES)}")
  if pipeline != "auto":
    return pipeline
  backend = backend or jax.default_backend()
  return "host" if backend == "cpu" else "device"


def stored_shape(height: int, width: int,
                 max_size: tuple[int, int]) -> tuple[int, int, bool]:
  """``(rows, cols, transposed)`` of a ``height x width`` photo on the canvas.

  Landscape storage: rows = the shorter side. Downscaled (aspect kept) only
  if it does not fit ``max_size = (max_rows, max_cols)``.
  """
  transposed = height > width
  short, long = (width, height) if transposed else (height, width)
  factor = min(1.0, max_size[0] / short, max_size[1] / long)
  if factor >= 1.0:
    return short, long, transposed
  return (min(max_size[0], max(1, int(round(short * factor)))),
          min(max_size[1], max(1, int(round(long * factor)))), transposed)


def store_photo(image: Image.Image, max_size: tuple[int, int]
                ) -> tuple[np.ndarray, tuple[int, int], bool]:
  """A PIL RGB photo as the cache stores it.

  Returns:
    ``(pixels [rows, cols, 3] uint8, (height, width) of the original,
    transposed)``.
  """
  width, height = image.size
  rows, cols, transposed = stored_shape(height, width, max_size)
  if transposed:
    image = image.transpose(Image.Transpose.TRANSPOSE)
  if image.size != (cols, rows):
    image = image.resize((cols, rows), DOWNSCALE_FILTER)
  return np.asarray(image, np.uint8), (height, width), transposed


def eval_crop(image: Image.Image, image_size: int) -> np.ndarray:
  """The host path's eval transform before normalisation (``[S, S, 3]``
  uint8)."""
  image = preprocess.resize_shorter(image,
                                    preprocess.resize_size(image_size))
  return np.asarray(preprocess.center_crop(image, image_size), np.uint8)


@dataclasses.dataclass
class ChunkCache:
  """The decoded train images of one chunk of K concepts.

  Attributes:
    class_ids: ``[K]`` the chunk's class ids (a padded chunk repeats one).
    arrays: what the jitted step reads, each with a leading ``[K]`` axis:
      ``images [K, N, Hc, Wc, 3]`` (uint8 canvases or crops; float32 for
      the demo), ``stored_hw [K, N, 2]`` and ``orig_hw [K, N, 2]`` int32,
      ``transposed [K, N]`` bool, ``label [K]`` int32. numpy arrays in host
      memory, or ``jax.Array`` on the device (``placement``).
    counts: ``[K]`` train images of each class in the dataset (readable or
      not): the ``num_images`` of :func:`base.sample_indices`.
    slot_of: per concept, ``[count]`` int32: the cache slot an image index
      is drawn from (itself, or the next readable image of the class).
    placement: ``'device'`` or ``'host'``.
    augment, image_size: what the step makes of it.
    build_seconds: wall time of the build (decoding and transfer).
    decoded: images decoded (each class of a padded chunk once).
  """
  class_ids: np.ndarray
  arrays: dict[str, Any]
  counts: np.ndarray
  slot_of: list[np.ndarray]
  placement: str
  augment: str
  image_size: int
  build_seconds: float = 0.0
  decoded: int = 0

  @property
  def nbytes(self) -> int:
    """Bytes of the cached arrays."""
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize
                   for a in self.arrays.values()))


def index_table(cache: ChunkCache, seed: int, first_step: int,
                num_steps: int, batch_size: int) -> np.ndarray:
  """Cache slots of every image the chunk's steps draw: ``[K, steps, B]``.

  Row ``[k, t]`` holds the slots of :func:`base.sample_indices` of class k
  at step ``first_step + t`` (the host path's images), mapped through
  ``slot_of`` (unreadable images -> the next readable one). 4 bytes per
  image draw: 7 MB for 64 concepts x 1700 steps x 16 images.
  """
  k = len(cache.class_ids)
  table = np.empty((k, num_steps, batch_size), np.int32)
  positions = (first_step * batch_size
               + np.arange(num_steps * batch_size, dtype=np.int64))
  for row, class_id in enumerate(cache.class_ids):
    count = int(cache.counts[row])
    epochs = positions // count
    indices = np.empty_like(positions)
    for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):
      sel = epochs == epoch
      order = base.epoch_order(count, seed, int(class_id), epoch)
      indices[sel] = order[positions[sel] % count]
    table[row] = cache.slot_of[row][indices].reshape(num_steps, batch_size)
  return table


def gather_rows(cache: ChunkCache, slots: np.ndarray) -> dict[str, Any]:
  """The stored images of one step, ``{name: [K, B, ...]}`` (host caches).

  With a host-memory cache the step receives these instead of the whole
  cache; pass ``slots = arange(B)`` per row to
  :func:`device_augment.device_concept_batch`.
  """
  rows = np.arange(len(cache.class_ids))[:, None]
  out = {name: np.asarray(value)[rows, slots]
         for name, value in cache.arrays.items() if name != "label"}
  out["label"] = np.asarray(cache.arrays["label"])
  return out


def next_readable(readable: np.ndarray) -> np.ndarray:
  """For each index the first readable index at or after it (cyclic)."""
  count = len(readable)
  good = np.flatnonzero(readable)
  if not len(good):
    raise ValueError("no readable image")
  after = np.searchsorted(good, np.arange(count))
  return good[after % len(good)].astype(np.int32)


def device_memory_bytes(device: jax.Device) -> int | None:
  """The memory limit of an accelerator, or None (CPU, unknown)."""
  if device.platform == "cpu":
    return None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats \
      else None


class DecodeCache:
  """Builds :class:`ChunkCache` es for a dataset, in the background if asked.

  Args:
    dataset: an ``IndexedConceptDataset`` (folder, tfds) or the demo's
      ``DemoDataset``.
    image_size: the crop side S.
    augment: ``'random_resized_crop'`` or ``'none'`` (the demo: ``'none'``).
    max_size: canvas ``(rows, cols)`` for ``'random_resized_crop'``.
    num_workers: decoding threads (0: decode in the building thread).
    placement: ``'device'``, ``'host'`` or ``'auto'`` (device while two
      chunks' caches take at most ``DEVICE_SHARE`` of the accelerator's
      memory; a CPU backend's "device" is host memory, so always device).
    put: places a cache's arrays on the device, e.g. a ``jax.device_put``
      with the search's concept sharding (default: ``jax.device_put``).
  """

  def __init__(self, dataset, *, image_size: int, augment: str,
               max_size: tuple[int, int] = DEFAULT_MAX_SIZE,
               num_workers: int = 0, placement: str = "auto",
               put: Callable[[dict[str, np.ndarray]], dict[str, Any]]
               | None = None):
    preprocess.check_augment(augment)
    if placement not in PLACEMENTS:
      raise ValueError(f"unknown cache placement {placement!r} "
                       f"(config.data.cache_placement); known: "
                       f"{list(PLACEMENTS)}")
    max_size = tuple(int(v) for v in max_size)
    if len(max_size) != 2 or min(max_size) < 1:
      raise ValueError(f"cache canvas size must be (rows, cols) >= 1, got "
                       f"{max_size} (config.data.cache_max_size)")
    self.dataset = dataset
    self.image_size = int(image_size)
    self.augment = augment
    self.is_demo = hasattr(dataset, "train_images")
    if self.is_demo and augment != "none":
      raise ValueError("the demo dataset has no augmentation; use "
                       "augment='none'")
    if not self.is_demo and not hasattr(dataset, "decode"):
      raise TypeError(f"{type(dataset).__name__} cannot be cached: the "
                      f"device pipeline reads datasets built on "
                      f"IndexedConceptDataset (folder, tfds) or the demo")
    if augment == "none" or self.is_demo:
      max_size = (self.image_size, self.image_size)
    self.max_size = max_size
    self.num_workers = int(num_workers)
    self.placement = placement
    self.put = put or jax.device_put
    self._pool = None
    self._builder = None
    self._lock = threading.Lock()
    self._closing = threading.Event()

  def bytes_per_image(self) -> int:
    """Cache bytes of one image (its canvas or crop)."""
    rows, cols = self.max_size
    itemsize = 4 if self.is_demo else 1
    return rows * cols * 3 * itemsize

  def choose_placement(self, nbytes: int) -> str:
    """``'device'`` or ``'host'`` for a cache of ``nbytes`` (see class doc)."""
    if self.placement != "auto":
      return self.placement
    limit = device_memory_bytes(jax.devices()[0])
    if limit is None:
      return "device"
    total = limit * len(jax.devices())
    return "device" if 2 * nbytes <= DEVICE_SHARE * total else "host"

  def _map(self, fn, items):
    if self.num_workers <= 0 or len(items) <= 1:
      return [fn(item) for item in items]
    with self._lock:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.num_workers, thread_name_prefix="nad_cache")
    return list(self._pool.map(fn, items))

  def build(self, class_ids: Sequence[int],
            num_slots: int | None = None,
            rows: Sequence[bool] | None = None) -> ChunkCache:
    """Decodes every train image of ``class_ids`` (repeats decoded once).

    Args:
      class_ids: the chunk's classes.
      num_slots: images per class the arrays hold (at least the largest
        class; default: exactly that). A run fixes it so that every chunk
        has the same shape and the step compiles once.
      rows: which of the chunk's rows this process needs (several
        processes: the rows on its own devices); the other rows' classes
        are not read and their arrays stay zero. ``None``: every row.

    Raises:
      ValueError: a class has no (readable) train image, naming it, or has
        more than ``num_slots``.
    """
    start = time.perf_counter()
    class_ids = np.asarray([int(c) for c in class_ids], np.int64)
    dataset = self.dataset
    base.check_class_ids(class_ids, len(dataset.class_names),
                         dataset.class_names)
    unique = list(dict.fromkeys(int(c) for c in class_ids))
    wanted = set(unique) if rows is None else {
        int(c) for c, row in zip(class_ids, rows) if row}
    counts = {c: int(dataset.num_images("train", c)) for c in unique}
    for c in unique:
      if counts[c] == 0:
        raise ValueError(f"class {c} {dataset.class_names[c]!r} has no "
                         f"train images")
    n_max = max(counts.values())
    if num_slots is not None:
      if num_slots < n_max:
        raise ValueError(f"num_slots={num_slots} < {n_max} train images of "
                         f"a class of {class_ids.tolist()}")
      n_max = int(num_slots)
    rows, cols = self.max_size
    k = len(unique)
    dtype = np.float32 if self.is_demo else np.uint8
    images = np.zeros((k, n_max, rows, cols, 3), dtype)
    stored_hw = np.zeros((k, n_max, 2), np.int32)
    orig_hw = np.zeros((k, n_max, 2), np.int32)
    transposed = np.zeros((k, n_max), bool)
    readable = [np.zeros(counts[c], bool) for c in unique]

    for row, c in enumerate(unique):
      if c not in wanted:  # another process's row: left zero, never read
        readable[row][:] = True
    if self.is_demo:
      for row, c in enumerate(unique):
        if c not in wanted:
          continue
        pixels = dataset.train_images(c)
        images[row, :len(pixels)] = pixels
        stored_hw[row, :len(pixels)] = pixels.shape[1:3]
        # A non-finite image is skipped like an unreadable file.
        readable[row][:] = np.isfinite(pixels).all(axis=(1, 2, 3))
        for index in np.flatnonzero(~readable[row]):
          dataset.skip("train", int(c), int(index))
      orig_hw[:] = stored_hw
      labels = np.asarray(unique, np.int32)
    else:
      def load(task):
        if self._closing.is_set():
          return
        row, c, index = task
        image = dataset.decode("train", c, index)
        if image is None:
          return
        if self.augment == "none":
          pixels = eval_crop(image, self.image_size)
          hw, flip = pixels.shape[:2], False
        else:
          pixels, hw, flip = store_photo(image, self.max_size)
        images[row, index, :pixels.shape[0], :pixels.shape[1]] = pixels
        stored_hw[row, index] = pixels.shape[:2]
        orig_hw[row, index] = hw
        transposed[row, index] = flip
        readable[row][index] = True

      self._map(load, [(row, c, i) for row, c in enumerate(unique)
                       if c in wanted for i in range(counts[c])])
      if self._closing.is_set():
        raise concurrent.futures.CancelledError("decode cache closed")
      labels = np.asarray(dataset.labels(unique), np.int32)

    slot_of = {}
    for row, c in enumerate(unique):
      if not readable[row].any():
        raise ValueError(f"class {c} {dataset.class_names[c]!r} has no "
                         f"readable train image (all {counts[c]} skipped)")
      slot_of[c] = next_readable(readable[row])
    position = {c: row for row, c in enumerate(unique)}
    take = np.asarray([position[int(c)] for c in class_ids])
    arrays = {"images": images, "stored_hw": stored_hw, "orig_hw": orig_hw,
              "transposed": transposed, "label": labels}
    if len(unique) != len(class_ids):
      arrays = {name: value[take] for name, value in arrays.items()}
    cache = ChunkCache(
        class_ids=class_ids, arrays=arrays,
        counts=np.asarray([counts[int(c)] for c in class_ids], np.int64),
        slot_of=[slot_of[int(c)] for c in class_ids], placement="host",
        augment=self.augment, image_size=self.image_size,
        decoded=int(sum(counts[c] for c in wanted)))
    cache.placement = self.choose_placement(cache.nbytes)
    if cache.placement == "device":
      cache.arrays = self.put(cache.arrays)
      jax.block_until_ready(cache.arrays)
    cache.build_seconds = time.perf_counter() - start
    logging.info(
        "Decoded %d train images of %d classes in %.1f s (%.0f images/s); "
        "cache %.0f MB in %s memory.", cache.decoded, k, cache.build_seconds,
        cache.decoded / max(cache.build_seconds, 1e-9), cache.nbytes / 1e6,
        cache.placement)
    return cache

  def prefetch(self, class_ids: Sequence[int], num_slots: int | None = None,
               rows: Sequence[bool] | None = None
               ) -> concurrent.futures.Future[ChunkCache]:
    """Starts :meth:`build` on a background thread; returns its future.

    For overlapping the next chunk's decoding with the current chunk's
    steps. One build runs at a time (a second waits for the first).
    """
    with self._lock:
      if self._builder is None:
        self._builder = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="nad_cache_build")
    return self._builder.submit(self.build, list(class_ids), num_slots,
                                rows)

  def close(self) -> None:
    """Stops the threads; a build in progress stops early (its future
    raises ``CancelledError``)."""
    self._closing.set()
    for pool in (self._builder, self._pool):
      if pool is not None:
        pool.shutdown(cancel_futures=True)
    self._builder = self._pool = None
    self._closing.clear()

  def __enter__(self) -> DecodeCache:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
