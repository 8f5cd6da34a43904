"""Batching shared by the datasets that read one image by (split, class, index).

:class:`IndexedConceptDataset` implements the ``ConceptDataset`` interface
(``nad_jax/data/base.py``) on top of three methods a subclass provides:
``_count(split, class_id)``, ``_read(split, class_id, index)`` (a PIL image
or a uint8 array) and ``_describe(split, class_id, index)`` (a file name or
record id for messages). It draws each concept's images epoch by epoch with
:func:`base.sample_indices`, applies the eval transform or the seeded
search-time augmentation (:mod:`preprocess`), decodes on a thread pool when
``num_workers > 0`` (PIL releases the GIL while decoding and resizing), and
skips unreadable images and images with a non-finite value after the
transform: each is logged once with a warning naming it and listed in
``skipped_files``; in a search batch its slot is filled by the
next readable image of the same class (deterministic for a given set of bad
files), in ``eval_batches`` it is left out.

Memory: one batch of K * B float32 images (0.6 MB each at 224x224) plus
``num_workers`` decoded photos in flight.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Iterator, Sequence

from absl import logging
import numpy as np
from PIL import Image

from nad_jax import errors
from nad_jax.data import base
from nad_jax.data import preprocess

SPLITS = ("train", "val")
# What a broken image raises from PIL (or tfds' decoding) when read.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError,
                 Image.DecompressionBombError)


class IndexedConceptDataset:
  """A ConceptDataset over images addressed by (split, class id, index).

  Attributes:
    class_names: readable class names, id = position.
    hierarchy: ``None`` or ``{primary: [class ids]}`` (set by ``get_dataset``).
    aliases: extra names -> class id accepted in class selections (wnids,
      folder names).
    wnids: ImageNet wnids of the classes in id order, or ``None``.
    skipped_files: descriptions of the images skipped as unreadable or
      non-finite, in the order met (for the run summary).
  """

  def __init__(self, class_names: Sequence[str], *, image_size: int,
               augment: str, seed: int, num_workers: int):
    preprocess.check_augment(augment)
    self.class_names = list(class_names)
    self.hierarchy: dict[str, list[int]] | None = None
    self.aliases: dict[str, int] = {}
    self.wnids: list[str] | None = None
    self.skipped_files: list[str] = []
    self.image_size = int(image_size)
    self.augment = augment
    self.seed = int(seed)
    self.num_workers = int(num_workers)
    self._bad: set[tuple[str, int, int]] = set()
    # The network's output index of each class id (None: the class id
    # itself). A folder of ImageNet wnid folders sets it so that a subset of
    # ImageNet classes is labelled with ImageNet indices.
    self.label_of: np.ndarray | None = None
    self._lock = threading.Lock()
    self._pool = None
    # Optional fixed crops: (class id, step, b, height, width) -> (top,
    # left, h, w, flip) replaces the random box and flip of search batches
    # (to compare with the device pipeline given the same boxes).
    self.box_source = None

  # Subclasses provide these three.
  def _count(self, split: str, class_id: int) -> int:
    raise NotImplementedError

  def _read(self, split: str, class_id: int, index: int):
    raise NotImplementedError

  def _describe(self, split: str, class_id: int, index: int) -> str:
    raise NotImplementedError

  @property
  def num_skipped(self) -> int:
    return len(self.skipped_files)

  def num_images(self, split: str, class_id: int) -> int:
    """Images of ``class_id`` in ``split`` (``'train'`` or ``'val'``),
    counting any not yet found unreadable."""
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    base.check_class_ids([class_id], len(self.class_names))
    return self._count(split, class_id)

  def decode(self, split: str, class_id: int,
             index: int) -> Image.Image | None:
    """One image as PIL RGB; None (logged once, listed in ``skipped_files``)
    if it cannot be read. Thread-safe; the decode-once cache uses it too."""
    key = (split, class_id, index)
    if key in self._bad:
      return None
    try:
      return preprocess.to_pil_rgb(self._read(split, class_id, index))
    except DECODE_ERRORS as e:
      return self.skip(split, class_id, index, f"unreadable: {e}")

  def skip(self, split: str, class_id: int, index: int,
           reason: str) -> None:
    """Records an image as skipped (once, thread-safe), logs it with
    ``reason`` and returns None. The decode-once cache calls it too."""
    key = (split, class_id, index)
    name = self._describe(split, class_id, index)
    with self._lock:
      if key in self._bad:
        return None
      self._bad.add(key)
      self.skipped_files.append(name)
    logging.warning("skipping image %s (class %d %r): %s", name, class_id,
                    self.class_names[class_id], reason)
    return None

  def _load(self, split: str, class_id: int, index: int, augment: str,
            rng: np.random.Generator | None) -> np.ndarray | None:
    """One image read and transformed; None (logged, counted) if unreadable
    or if a value of the transformed image is not finite."""
    image = self.decode(split, class_id, index)
    if image is None:
      return None
    if augment == "none":
      out = preprocess.eval_transform(image, self.image_size)
    elif callable(rng):  # a fixed box and flip (box_source)
      *box, flip = rng(image.height, image.width)
      out = preprocess.crop_flip_normalize(image, box, flip, self.image_size)
    else:
      out = preprocess.augment_transform(image, rng, self.image_size)
    if not base.is_finite_image(out):
      return self.skip(split, class_id, index, "non-finite pixel values")
    return out

  def _map(self, tasks: list[tuple]) -> list[np.ndarray | None]:
    if self.num_workers <= 0 or len(tasks) <= 1:
      return [self._load(*task) for task in tasks]
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(
          self.num_workers, thread_name_prefix="nad_data")
    return list(self._pool.map(lambda task: self._load(*task), tasks))

  def concept_batch(self, class_ids: Sequence[int], step: int,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The search batch of one step (see ``base.py``).

    Returns:
      ``images [K, B, S, S, 3] float32`` and ``labels [K, B] int32``.
    """
    base.check_class_ids(class_ids, len(self.class_names), self.class_names)
    tasks, counts = [], []
    for class_id in class_ids:
      class_id = int(class_id)
      count = self._count("train", class_id)
      if count == 0:
        raise ValueError(f"class {class_id} {self.class_names[class_id]!r} "
                         f"has no train images")
      indices = base.sample_indices(count, self.seed, class_id, step,
                                    batch_size)
      for b, index in enumerate(indices):
        if self.box_source is not None:
          rng = functools.partial(self.box_source, class_id, step, b)
        else:
          rng = preprocess.image_rng(self.seed, class_id,
                                     step * batch_size + b)
        tasks.append(("train", class_id, int(index), self.augment, rng))
        counts.append(count)
    images = self._map(tasks)
    for n, image in enumerate(images):
      if image is None:  # unreadable: the next readable image of the class
        split, class_id, index, augment, rng = tasks[n]  # rng still unused
        count = counts[n]
        for offset in range(1, count):
          image = self._load(split, class_id, (index + offset) % count,
                             augment, rng)
          if image is not None:
            break
        if image is None:
          raise errors.DataError(
              f"class {class_id} {self.class_names[class_id]!r} has no "
              f"readable train image (all {count} skipped as unreadable or "
              f"non-finite)")
        images[n] = image
    size = self.image_size
    images = np.stack(images).reshape(len(class_ids), batch_size, size, size,
                                      3)
    labels = np.repeat(self._labels(class_ids)[:, None], batch_size, axis=1)
    return images, labels

  def labels(self, class_ids) -> np.ndarray:
    """The network's label of each class id (``[K] int32``)."""
    return self._labels(class_ids)

  def _labels(self, class_ids) -> np.ndarray:
    class_ids = np.asarray(class_ids, np.int32)
    if self.label_of is None:
      return class_ids
    return np.asarray(self.label_of, np.int32)[class_ids]

  def eval_batches(self, class_id: int, batch_size: int,
                   max_images: int | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The class's val images in a fixed order, eval transform, unreadable
    ones left out; ``(images [b, S, S, 3], labels [b])`` per batch."""
    base.check_class_ids([class_id], len(self.class_names))
    class_id = int(class_id)
    count = self._count("val", class_id)
    if count == 0:
      raise ValueError(f"class {class_id} {self.class_names[class_id]!r} has "
                       f"no val images")
    if max_images is not None:
      count = min(count, int(max_images))
    for start in range(0, count, batch_size):
      tasks = [("val", class_id, index, "none", None)
               for index in range(start, min(start + batch_size, count))]
      images = [image for image in self._map(tasks) if image is not None]
      if images:
        yield (np.stack(images),
               np.full((len(images),), self._labels([class_id])[0],
                       np.int32))

  def close(self) -> None:
    """Stops the decoding threads (if any)."""
    if self._pool is not None:
      self._pool.shutdown()
      self._pool = None
