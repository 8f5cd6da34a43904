"""Where the search step's images come from: the host or the device pipeline.

:func:`nad_jax.search.disentangle` asks a *batch source* for each step's
batch and hands it to the jitted step, which turns it into
``images [K, B, S, S, 3]`` and ``labels [K, B]`` with the source's
``make_batch`` (traced inside the step). Two sources
(``config.data.pipeline``, see :func:`from_config`):

* :class:`HostBatches` (``'host'``): ``dataset.concept_batch`` on host
  threads every step, the float32 images sent to the device; the batch is
  ``(images, labels)`` and ``make_batch`` is the identity.
* :class:`DeviceBatches` (``'device'``): at the start of a chunk its
  decode-once cache (:mod:`nad_jax.data.decode_cache`, built in the
  background while the previous chunk ran) and the chunk's index table go
  to the device (with several processes each reads and sends only the
  rows on its own devices); a step's batch is then a small pytree (the cache, the
  table, the step number) and ``make_batch`` gathers, crops, flips and
  normalises on the device (:mod:`nad_jax.data.device_augment`). Images
  are drawn in the host path's order (:func:`base.sample_indices`);
  augmentation keys come from (seed, class id, step), so a resumed search
  equals an uninterrupted one.

A source's life: ``start(concept_ids, sharding)`` once,
``start_chunk(chunk_ids, first_step, num_steps, upcoming)`` per chunk
(``upcoming``: the next chunk's ids, to prefetch), ``batch(step)`` per
step, ``close()``.

Memory: host, one float32 batch (0.6 MB per image at 224 px); device, two
chunks' caches (see ``decode_cache``) and the index table (4 bytes per
image draw).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nad_jax.data import decode_cache
from nad_jax.data import device_augment

# (class id, step, b, height, width) -> (top, left, h, w, flip): fixed crop
# boxes for both pipelines (tests; comparing the pipelines).
BoxSource = Callable[[int, int, int, int, int], tuple[int, int, int, int,
                                                        bool]]


class HostBatches:
  """Today's path: ``dataset.concept_batch`` on the host every step."""

  def __init__(self, dataset, batch_size: int):
    self.dataset = dataset
    self.batch_size = int(batch_size)
    self.sharding = None
    self.chunk_ids = None

  make_batch = None  # the step takes (images, labels) as they are

  def start(self, concept_ids: Sequence[int], sharding) -> None:
    del concept_ids
    self.sharding = sharding

  def start_chunk(self, chunk_ids: Sequence[int], first_step: int,
                  num_steps: int, upcoming: Sequence[int] | None = None
                  ) -> None:
    del first_step, num_steps, upcoming
    self.chunk_ids = np.asarray(chunk_ids)

  def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
    if jax.process_count() > 1:
      return self._local_batch(step)
    images, labels = self.dataset.concept_batch(self.chunk_ids, step,
                                                self.batch_size)
    return (jax.device_put(np.asarray(images, np.float32), self.sharding),
            jax.device_put(np.asarray(labels, np.int32), self.sharding))

  def _local_batch(self, step: int) -> tuple[jax.Array, jax.Array]:
    """Several processes (``nad_jax.distributed``): each reads only the
    concepts that land on its own devices."""
    k = len(self.chunk_ids)
    loaded = {}
    for index in self.sharding.addressable_devices_indices_map((k,)).values():
      rows = range(k)[index[0]]
      if (rows.start, rows.stop) not in loaded:
        images, labels = self.dataset.concept_batch(
            self.chunk_ids[rows.start:rows.stop], step, self.batch_size)
        loaded[rows.start, rows.stop] = (np.asarray(images, np.float32),
                                         np.asarray(labels, np.int32))
    first = next(iter(loaded.values()))

    def put(which):
      def shard(index):
        rows = range(k)[index[0]]
        return loaded[rows.start, rows.stop][which][
            (slice(None),) + tuple(index[1:])]

      return jax.make_array_from_callback((k,) + first[which].shape[1:],
                                          self.sharding, shard)

    return put(0), put(1)

  def close(self) -> None:
    pass


def _order_seed(dataset) -> int:
  """The seed of the dataset's image order (``base.sample_indices``)."""
  for name in ("order_seed", "seed"):
    if hasattr(dataset, name):
      return int(getattr(dataset, name))
  raise TypeError(f"{type(dataset).__name__} has no order seed")


class DeviceBatches:
  """Draws every step's batch on the device from the chunk's cache.

  Args:
    dataset: a folder or tfds dataset (``IndexedConceptDataset``) or the
      demo dataset.
    batch_size: B.
    seed: seeds the augmentation keys (``device_augment.batch_key``).
    image_size, augment, max_size, placement, num_workers: as
      :class:`decode_cache.DecodeCache`.
    box_source: optional fixed boxes (see :data:`BoxSource`); the same
      function set as ``dataset.box_source`` makes the host path crop the
      same boxes.
  """

  def __init__(self, dataset, *, batch_size: int, seed: int, image_size: int,
               augment: str,
               max_size: tuple[int, int] = decode_cache.DEFAULT_MAX_SIZE,
               placement: str = "auto", num_workers: int = 0,
               box_source: BoxSource | None = None):
    self.dataset = dataset
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.order_seed = _order_seed(dataset)
    self.box_source = box_source
    self.builder = decode_cache.DecodeCache(
        dataset, image_size=image_size, augment=augment, max_size=max_size,
        num_workers=num_workers, placement=placement, put=self._put)
    self.sharding = None
    self.num_slots = None
    self.cache: decode_cache.ChunkCache | None = None
    self._next: tuple[tuple[int, ...],
                      concurrent.futures.Future] | None = None
    self._table = None
    self._chunk = None

  def _put(self, arrays):
    """To the devices, concept axis sharded. With several processes each
    process's arrays hold only its own rows (the others are zero), so each
    sends just its addressable shards."""
    if jax.process_count() == 1:
      return jax.device_put(arrays, self.sharding)

    def put(value):
      value = np.asarray(value)
      return jax.make_array_from_callback(value.shape, self.sharding,
                                          lambda index: value[index])

    return jax.tree.map(put, arrays)

  def start(self, concept_ids: Sequence[int], sharding) -> None:
    """Fixes the cache's slot count for the run (one compiled shape)."""
    self.sharding = sharding
    self.num_slots = max(int(self.dataset.num_images("train", int(c)))
                         for c in concept_ids)

  def start_chunk(self, chunk_ids: Sequence[int], first_step: int,
                  num_steps: int, upcoming: Sequence[int] | None = None
                  ) -> None:
    """Makes the chunk's cache and index table ready; prefetches the next.

    Args:
      chunk_ids: the chunk's K class ids (padded).
      first_step: the chunk's next step.
      num_steps: the step budget (the table covers ``first_step`` to it).
      upcoming: the next chunk's ids if this chunk runs to its end; its
        cache is built in the background meanwhile.
    """
    ids = tuple(int(c) for c in chunk_ids)
    if self._next is not None and self._next[0] == ids:
      cache = self._next[1].result()
    else:
      if self._next is not None:
        self._next[1].result()  # a mispredicted prefetch: let it finish
      cache = self.builder.build(ids, self.num_slots, self._local_rows(ids))
    self._next = None
    self.cache = cache
    steps = max(int(num_steps) - int(first_step), 1)
    table = decode_cache.index_table(cache, self.order_seed, first_step,
                                     steps, self.batch_size)
    chunk = {"class_ids": np.asarray(ids, np.int32)}
    if self.box_source is not None:
      chunk["boxes"], chunk["flips"] = self._fixed_boxes(cache, table,
                                                         first_step)
    if cache.placement == "device":
      chunk["table"] = table
      chunk = jax.device_put(chunk, self.sharding)
    self._table = table
    self._chunk = chunk
    self._first_step = int(first_step)
    if upcoming is not None:
      upcoming = tuple(int(c) for c in upcoming)
      self._next = (upcoming, self.builder.prefetch(
          upcoming, self.num_slots, self._local_rows(upcoming)))

  def _local_rows(self, ids: Sequence[int]) -> list[bool] | None:
    """Several processes: the chunk rows on this process's devices (only
    their images are read; ``jax.device_put`` sends each process's own
    rows). One process: ``None``, every row."""
    if jax.process_count() == 1:
      return None
    rows = [False] * len(ids)
    for index in self.sharding.addressable_devices_indices_map(
        (len(ids),)).values():
      for row in range(len(ids))[index[0]]:
        rows[row] = True
    return rows

  def _fixed_boxes(self, cache, table, first_step):
    orig_hw = np.asarray(cache.arrays["orig_hw"])
    k, steps, batch = table.shape
    boxes = np.zeros((k, steps, batch, 4), np.int32)
    flips = np.zeros((k, steps, batch), bool)
    for row in range(k):
      for t in range(steps):
        for b in range(batch):
          height, width = orig_hw[row, table[row, t, b]]
          if not height:  # another process's row (never read here)
            continue
          *box, flip = self.box_source(int(cache.class_ids[row]),
                                       first_step + t, b, int(height),
                                       int(width))
          boxes[row, t, b], flips[row, t, b] = box, flip
    return boxes, flips

  def batch(self, step: int) -> tuple[dict[str, Any]]:
    """The step's batch: one pytree for :meth:`make_batch`."""
    index = int(step) - self._first_step
    data = dict(self._chunk, step=np.int32(step))
    if self.cache.placement == "device":
      return (dict(data, cache=self.cache.arrays, index=np.int32(index)),)
    # Host-memory cache: send only this step's stored images.
    rows = decode_cache.gather_rows(self.cache, self._table[:, index])
    k = len(self.cache.class_ids)
    slots = np.arange(self.batch_size, dtype=np.int32)
    data = dict(data, cache=rows, index=np.int32(0),
                table=np.broadcast_to(slots, (k, 1, self.batch_size)).copy())
    for name in ("boxes", "flips"):
      if name in data:
        data[name] = data[name][:, index:index + 1]
    data = {name: (value if np.ndim(value) == 0 else self._put(value))
            for name, value in data.items()}
    return (data,)

  def make_batch(self, data: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
    """``(images [K, B, S, S, 3], labels [K, B])`` from :meth:`batch`'s
    pytree (jittable; runs inside the search step)."""
    size, augment = self.builder.image_size, self.builder.augment
    fixed = "boxes" in data

    def one_concept(row, table, class_id, boxes, flips):
      slots = jax.lax.dynamic_index_in_dim(table, data["index"], 0,
                                           keepdims=False)
      key = device_augment.batch_key(self.seed, class_id, data["step"])
      if fixed:
        boxes = jax.lax.dynamic_index_in_dim(boxes, data["index"], 0,
                                             keepdims=False)
        flips = jax.lax.dynamic_index_in_dim(flips, data["index"], 0,
                                             keepdims=False)
      else:
        boxes = flips = None
      return device_augment.device_concept_batch(
          row, slots, key, size=size, augment=augment, boxes=boxes,
          flips=flips)

    k = data["class_ids"].shape[0]
    none = jnp.zeros((k,), bool)
    return jax.vmap(one_concept)(
        data["cache"], data["table"], data["class_ids"],
        data["boxes"] if fixed else none, data["flips"] if fixed else none)

  def close(self) -> None:
    """Stops a prefetch in progress and frees the cache."""
    self.builder.close()
    self._next = None
    self.cache = self._chunk = None


def from_config(config: ml_collections.ConfigDict, dataset):
  """The batch source ``config.data.pipeline`` names (``'auto'`` resolved
  by :func:`decode_cache.resolve_pipeline`)."""
  pipeline = decode_cache.resolve_pipeline(
      config.data.get("pipeline", "host"))
  if pipeline == "host":
    return HostBatches(dataset, config.search.batch_size)
  workers = int(config.data.num_workers) or (os.cpu_count() or 1)
  return DeviceBatches(
      dataset, batch_size=config.search.batch_size, seed=config.seed,
      image_size=config.model.image_size,
      augment=config.data.get("augment", "none"),
      max_size=tuple(config.data.get("cache_max_size",
                                     decode_cache.DEFAULT_MAX_SIZE)),
      placement=config.data.get("cache_placement", "auto"),
      num_workers=workers)
