"""Per-class accuracy of the original network and of each concept's path.

Path accuracy a_c (paper Sec. 4): top-1 accuracy on the validation images
of class c when the network runs with the hard path of c (all classes
compete in the argmax). Original accuracy: the same images, no gates. The
paper's per-class "precision" (Fig. 3) is this same number.

Memory: one eval batch through S gated forward passes at a time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nad_jax import errors
from nad_jax.data import base as data_base


def make_predict_fn(model):
  """Jitted ``(variables, images, path_gates {site: [S, C]} | None)`` ->
  top-1 predictions ``[S, B]`` (or ``[B]`` without gates)."""

  def predict(variables, images, path_gates):
    if path_gates is None:
      logits, _ = model.apply(variables, images)
      return jnp.argmax(logits, axis=-1)

    def one_seed(gates):
      logits, _ = model.apply(variables, images, gates=gates)
      return jnp.argmax(logits, axis=-1)

    return jax.vmap(one_seed)(path_gates)

  return jax.jit(predict)


def class_accuracies(model, variables, dataset: data_base.ConceptDataset,
                     concept_ids: Sequence[int],
                     paths: Mapping[str, np.ndarray] | None,
                     *, batch_size: int, max_images: int | None = None,
                     predict_fn=None, log_every_classes: int = 0,
                     log_every_seconds: float = 30.0
                     ) -> tuple[np.ndarray, np.ndarray | None]:
  """Top-1 accuracy per class, original and with each concept's path.

  Args:
    model, variables: the frozen network.
    dataset: serves each class's validation images (``eval_batches``).
    concept_ids: N class ids.
    paths: ``{site: bool [N, S, C]}`` hard paths (row i belongs to
      ``concept_ids[i]``), or None for the original network only.
    batch_size: evaluation batch size; the last batch is padded so the
      predict function compiles once.
    max_images: at most this many validation images per class.
    predict_fn: a prebuilt :func:`make_predict_fn`.
    log_every_classes, log_every_seconds: a progress line after the first
      class, then every this many classes (0: a tenth of them) or seconds,
      whichever comes first, and after the last one.

  Returns:
    ``(original [N], path [N, S] or None)`` accuracies in [0, 1].

  Raises:
    ValueError: a class has no validation images (named).
  """
  predict_fn = predict_fn or make_predict_fn(model)
  progress = _Progress(len(concept_ids), log_every_classes,
                       log_every_seconds)
  original = np.zeros(len(concept_ids))
  path_acc = None
  if paths is not None:
    num_seeds = next(iter(paths.values())).shape[1]
    path_acc = np.zeros((len(concept_ids), num_seeds))
  for i, class_id in enumerate(concept_ids):
    gates = None
    if paths is not None:
      gates = {site: jnp.asarray(p[i], jnp.float32) for site, p in paths.items()}
    hits, hits_path, count = 0, 0, 0
    for images, labels in dataset.eval_batches(int(class_id), batch_size,
                                               max_images):
      n = len(labels)
      if n < batch_size:  # pad to one shape
        pad = batch_size - n
        images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
      images = jnp.asarray(images, jnp.float32)
      pred = np.asarray(predict_fn(variables, images, None))[:n]
      hits += int(np.sum(pred == labels))
      if gates is not None:
        pred = np.asarray(predict_fn(variables, images, gates))[:, :n]
        hits_path = hits_path + np.sum(pred == labels[None], axis=1)
      count += n
    if count == 0:
      name = dataset.class_names[int(class_id)]
      raise errors.DataError(f"class {class_id} ({name!r}) has no usable "
                             f"validation images to evaluate")
    original[i] = hits / count
    if path_acc is not None:
      path_acc[i] = hits_path / count
    progress.update(i + 1, count)
  return original, path_acc


class _Progress:
  """``evaluated 12/100 classes (1536 images, 310 images/s, ETA 0:00:28)``
  after the first class, every ``every`` classes or ``seconds`` seconds,
  and after the last."""

  def __init__(self, total: int, every: int, seconds: float):
    self.total = total
    self.every = every or max(1, total // 10)
    self.seconds = seconds
    self.start = self.last = time.perf_counter()
    self.last_done = 0
    self.images = 0

  def update(self, done: int, images: int) -> None:
    self.images += images
    now = time.perf_counter()
    if not (done == 1 or done == self.total or done - self.last_done >=
            self.every or now - self.last >= self.seconds):
      return
    elapsed = max(now - self.start, 1e-9)
    left = elapsed / done * (self.total - done)
    logging.info("  evaluated %d/%d classes (%d images, %.0f images/s, ETA "
                 "%d:%02d:%02d)", done, self.total, self.images,
                 self.images / elapsed, left // 3600, left % 3600 // 60,
                 left % 60)
    self.last, self.last_done = now, done
