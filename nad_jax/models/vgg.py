"""VGG16 (torchvision ``vgg16``, config D) in Flax, eval mode, NHWC.

Layer for layer the torchvision network: 13 3x3 convs (padding 1) with ReLU,
five 2x2 max-pools, ``AdaptiveAvgPool2d((7, 7))`` with PyTorch's bin edges
for any input size, and the classifier 25088-4096-4096-``num_classes``
(dropout is the identity in eval mode). The first classifier layer consumes
a channel-major (NCHW) flatten, as in PyTorch, so converted weights are used
unchanged apart from the (out, in) -> (in, out) transpose.

Flax module names mirror the torchvision keys with ``.`` -> ``_``
(``features.0`` -> ``features_0``, ``classifier.6`` -> ``classifier_6``).

Gate sites (authors' code, 13): after each conv+ReLU; where a max-pool
follows, after the pool; the 13th after the adaptive average pool.

Memory: 138M float32 parameters (553 MB). The forward pass keeps every gate
site's activation: about 36 MB per 224x224 image (``site00`` alone is
12.8 MB), on top of the plain forward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nad_jax.models import base

# torchvision feature index of each conv, its output channels, and whether a
# max-pool follows it (the pool's index is conv index + 2).
_CONVS = (
    (0, 64, False), (2, 64, True),
    (5, 128, False), (7, 128, True),
    (10, 256, False), (12, 256, False), (14, 256, True),
    (17, 512, False), (19, 512, False), (21, 512, True),
    (24, 512, False), (26, 512, False), (28, 512, True),
)
POOL_SIZE = 7  # AdaptiveAvgPool2d((7, 7)).


def _adaptive_bins(in_size: int, out_size: int) -> np.ndarray:
  """The ``[out_size, in_size]`` averaging matrix of PyTorch's adaptive pool.

  Output ``i`` averages inputs ``floor(i * in / out)`` to
  ``ceil((i + 1) * in / out) - 1``, PyTorch's bin edges.
  """
  matrix = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = math.ceil((i + 1) * in_size / out_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
  """``nn.AdaptiveAvgPool2d(out_size)`` on an NHWC array, PyTorch bin edges."""
  _, height, width, _ = x.shape
  if height == out_size and width == out_size:
    return x  # Every bin holds one element: the identity, exactly.
  rows = jnp.asarray(_adaptive_bins(height, out_size))
  cols = jnp.asarray(_adaptive_bins(width, out_size))
  return jnp.einsum("ih,jw,nhwc->nijc", rows, cols, x,
                    precision=jax.lax.Precision.HIGHEST)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """``nn.MaxPool2d(2, 2)``: no padding, floor mode."""
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class VGG16(nn.Module):
  """torchvision VGG16 with the authors' 13 gate sites (eval mode only)."""
  num_classes: int = 1000

  def gate_sites(self) -> dict[str, int]:
    """``site00`` .. ``site12`` -> channels (64, 64, 128, ..., 512)."""
    return {base.site_name(i): channels
            for i, (_, channels, _) in enumerate(_CONVS)}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(logits, activations)``; see ``models/base.py``.

    Raises:
      ValueError: images not NHWC with 3 channels, or smaller than 32x32
        (five max-pools would leave no pixel).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"VGG16 expects NHWC images with 3 channels, got shape "
                       f"{images.shape}")
    if min(images.shape[1:3]) < 32:
      raise ValueError(f"VGG16 needs images of at least 32x32, got "
                       f"{images.shape[1]}x{images.shape[2]}")
    activations: dict[str, jax.Array] = {}
    x = images
    for site, (index, channels, pool_follows) in enumerate(_CONVS):
      x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)),
                  name=f"features_{index}")(x)
      x = nn.relu(x)
      if pool_follows:
        x = _max_pool_2x2(x)
      if site == len(_CONVS) - 1:
        x = adaptive_avg_pool(x, POOL_SIZE)
      x = base.gate_site(x, gates, base.site_name(site), activations)
    # PyTorch flattens NCHW: channel-major.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(4096, name="classifier_0")(x))
    x = nn.relu(nn.Dense(4096, name="classifier_3")(x))
    logits = nn.Dense(self.num_classes, name="classifier_6")(x)
    return logits, activations


MODELS = {"vgg16": VGG16}
