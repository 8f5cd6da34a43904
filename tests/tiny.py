"""A tiny model and dataset, for tests only.

``TinyNet`` follows the model contract (two conv sites and a pooled site);
``TinyDataset`` serves random images whose mean depends on the class.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nad_jax.data import base as data_base
from nad_jax.models import base


class TinyNet(nn.Module):
  """conv3x3(3->4)+ReLU | site00 | conv3x3 s2 (4->6)+ReLU | site01 |
  mean pool | site02 | dense(num_classes)."""
  num_classes: int = 5

  def gate_sites(self):
    return {"site00": 4, "site01": 6, "site02": 6}

  @nn.compact
  def __call__(self, images, gates=None):
    acts = {}
    x = nn.relu(nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv0")(
        images))
    x = base.gate_site(x, gates, "site00", acts)
    x = nn.relu(nn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        name="conv1")(x))
    x = base.gate_site(x, gates, "site01", acts)
    x = jnp.mean(x, axis=(1, 2))
    x = base.gate_site(x, gates, "site02", acts)
    return nn.Dense(self.num_classes, name="head")(x), acts


def tiny_variables(num_classes=5, seed=0, image_size=8):
  return TinyNet(num_classes).init(
      jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))


class TinyDataset:
  """In-memory dataset of the ConceptDataset interface."""

  def __init__(self, num_classes=5, per_class=12, image_size=8, seed=0):
    rng = np.random.default_rng(seed)
    self.class_names = [f"class{i}" for i in range(num_classes)]
    self.hierarchy = None
    self.aliases = {}
    self.wnids = None
    self.label_of = None
    self.skipped_files = []
    self.seed = seed
    self.images = {
        split: [(rng.normal(size=(per_class, image_size, image_size, 3))
                 + c * 0.5).astype(np.float32) for c in range(num_classes)]
        for split in ("train", "val")
    }

  def num_images(self, split, class_id):
    return len(self.images[split][class_id])

  def concept_batch(self, class_ids, step, batch_size):
    images, labels = [], []
    for c in class_ids:
      idx = data_base.sample_indices(self.num_images("train", c), self.seed,
                                     int(c), step, batch_size)
      images.append(self.images["train"][c][idx])
      labels.append(np.full(batch_size, c, np.int32))
    return np.stack(images), np.stack(labels)

  def eval_batches(self, class_id, batch_size, max_images=None):
    images = self.images["val"][class_id][:max_images]
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      yield chunk, np.full(len(chunk), class_id, np.int32)
