"""The data interface the search and the evaluation read from.

A *concept dataset* serves images per class (a class is a concept):

* ``class_names``: list of readable class names, index = class id.
* ``hierarchy``: ``None`` or a dict primary concept -> list of class ids
  (paper Fig. 7; the demo's planted structure, WordNet, or a user's JSON).
* ``aliases``: extra names -> class id accepted in class selections and
  hierarchy files (wnids, folder names); may be empty.
* ``wnids``: the ImageNet wnids of the classes in id order, or ``None``
  (needed by ``config.data.hierarchy='wordnet:...'``).
* ``label_of``: the network's output index of each class id (an int
  array), or ``None`` when it is the class id itself.
* ``skipped_files``: the images left out so far as unreadable or
  non-finite, each named (file, record or index), in the order met; the
  run's report lists them.
* ``num_images(split, class_id)``: images of that class in ``'train'`` or
  ``'val'``.
* ``concept_batch(class_ids, step, batch_size)``: the search's batch for one
  step, ``images [K, B, H, W, 3] float32`` (normalised, NHWC) and
  ``labels [K, B] int32``, row k holding only images of ``class_ids[k]``
  from the train split, every value finite: an image that cannot be read
  or holds a non-finite value is skipped (a warning names it, it joins
  ``skipped_files``) and its slot gets the next usable image of the class.
  Deterministic in ``(seed, class_id, step)``: the b-th image at step t is
  number ``t * B + b`` in the class's epoch-by-epoch shuffled order (see
  :func:`sample_indices`), so a resumed search sees the same images as an
  uninterrupted one.
* ``eval_batches(class_id, batch_size, max_images=None)``: iterator over
  ``(images [b, H, W, 3], labels [b])`` of the class's val split, in a fixed
  order, without augmentation; skipped images are left out.

Memory: a concept batch holds K * B images; at 224x224 float32 that is
0.6 MB per image.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np


class ConceptDataset(Protocol):
  """See the module docstring."""

  class_names: Sequence[str]
  hierarchy: dict[str, list[int]] | None
  aliases: Mapping[str, int]
  wnids: Sequence[str] | None
  label_of: np.ndarray | None
  skipped_files: list[str]

  def num_images(self, split: str, class_id: int) -> int:
    ...

  def concept_batch(self, class_ids: Sequence[int], step: int,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    ...

  def eval_batches(self, class_id: int, batch_size: int,
                   max_images: int | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    ...


def epoch_order(num_images: int, seed: int, class_id: int,
                epoch: int) -> np.ndarray:
  """The shuffled order of a class's images in one epoch."""
  rng = np.random.default_rng([seed, class_id, epoch])
  return rng.permutation(num_images)


def sample_indices(num_images: int, seed: int, class_id: int, step: int,
                   batch_size: int) -> np.ndarray:
  """Image indices (within the class) of one search step's batch.

  The class's images are visited epoch by epoch, each epoch in its own
  shuffled order; step ``t`` takes positions ``t*B .. t*B+B-1`` of that
  endless sequence, so a batch may straddle two epochs.
  """
  if num_images <= 0:
    raise ValueError(f"class {class_id} has no images to sample from")
  positions = step * batch_size + np.arange(batch_size)
  epochs = positions // num_images
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    order = epoch_order(num_images, seed, class_id, int(epoch))
    sel = epochs == epoch
    out[sel] = order[positions[sel] % num_images]
  return out


def is_finite_image(image: np.ndarray) -> bool:
  """Whether every value of an image (or a batch of them) is finite."""
  return bool(np.isfinite(image).all())


def check_class_ids(class_ids: Sequence[int], num_classes: int,
                    class_names: Sequence[str] | None = None) -> None:
  """Raises a ValueError naming every class id outside ``[0, num_classes)``."""
  bad = [int(c) for c in class_ids if not 0 <= int(c) < num_classes]
  if bad:
    raise ValueError(f"concept ids {bad} are out of range: the dataset has "
                     f"{num_classes} classes (ids 0..{num_classes - 1})")
