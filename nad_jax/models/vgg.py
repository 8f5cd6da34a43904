"""torchvision VGG 11/13/16/19, with and without BatchNorm, in Flax (NHWC).

Layer for layer the torchvision networks (``torchvision.models.vgg11`` ..
``vgg19_bn``): 3x3 convs (padding 1), each followed by ReLU (by BatchNorm
and ReLU in the ``_bn`` variants, eps 1e-5, running statistics), five 2x2
max-pools, ``AdaptiveAvgPool2d((7, 7))`` with PyTorch's bin edges for any
input size, and the classifier 25088-4096-4096-``num_classes`` (dropout is
the identity in eval mode). The first classifier layer consumes a
channel-major (NCHW) flatten, as in PyTorch, so converted weights are used
unchanged apart from the (out, in) -> (in, out) transpose.

Flax module names mirror the torchvision keys with ``.`` -> ``_``
(``features.0`` -> ``features_0``, ``classifier.6`` -> ``classifier_6``); a
conv's BatchNorm is the next feature index (``features_1`` after
``features_0`` in ``vgg11_bn``).

Gate sites (the authors' rule for VGG16, applied to every variant): one per
conv, after its ReLU; where a max-pool follows, after the pool; the last
after the adaptive average pool. vgg11: 8, vgg13: 10, vgg16: 13, vgg19: 16
sites (the ``_bn`` variants the same); docs/networks.md lists the channels.

Memory: 133M (vgg11) to 144M (vgg19) float32 parameters, 0.53-0.58 GB, 120M
of them in the classifier. The forward pass keeps every gate site's
activation: per 224x224 image about 11 MB for vgg11 (its first site is
after a pool), 31 MB for vgg13, 36 MB for vgg16 (``site00`` alone is 12.8
MB) and 41 MB for vgg19, on top of the plain forward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nad_jax.models import base
from nad_jax.models import torch_layers

# torchvision's ``cfgs``: conv output channels, "M" = 2x2 max-pool.
LAYER_CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512,
          "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512,
          512, "M", 512, 512, 512, 512, "M"),
}
# torchvision function name -> (layer config, batch_norm).
VARIANTS = {
    "vgg11": ("A", False), "vgg11_bn": ("A", True),
    "vgg13": ("B", False), "vgg13_bn": ("B", True),
    "vgg16": ("D", False), "vgg16_bn": ("D", True),
    "vgg19": ("E", False), "vgg19_bn": ("E", True),
}
POOL_SIZE = 7  # AdaptiveAvgPool2d((7, 7)).
CLASSIFIER = (0, 3, 6)  # torchvision indices of the three Linear layers.


class Conv(NamedTuple):
  """One conv of ``features`` and the torchvision indices around it.

  ``index`` is the conv's, ``batch_norm`` its BatchNorm's (``None`` without
  BatchNorm), ``relu`` its ReLU's and ``pool`` the following max-pool's
  (``None`` if another conv follows).
  """
  index: int
  channels: int
  batch_norm: int | None
  relu: int
  pool: int | None


def check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"unknown VGG variant {variant!r}; known: "
                     f"{sorted(VARIANTS)}")


def conv_layout(variant: str = "vgg16") -> list[Conv]:
  """The convs of ``features`` in order, with torchvision's indices."""
  check_variant(variant)
  config, batch_norm = VARIANTS[variant]
  convs: list[Conv] = []
  index = 0
  for i, entry in enumerate(LAYER_CONFIGS[config]):
    if entry == "M":
      index += 1
      continue
    norm = index + 1 if batch_norm else None
    relu = index + (2 if batch_norm else 1)
    pool = relu + 1 if (i + 1 < len(LAYER_CONFIGS[config]) and
                        LAYER_CONFIGS[config][i + 1] == "M") else None
    convs.append(Conv(index, entry, norm, relu, pool))
    index = relu + 1
  return convs


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


class VGG(nn.Module):
  """A torchvision VGG with one gate site per conv (eval mode only).

  Attributes:
    num_classes: the classifier's size.
    variant: torchvision's function name, a key of ``VARIANTS``.
  """
  num_classes: int = 1000
  variant: str = "vgg16"

  def gate_sites(self) -> dict[str, int]:
    """``site00``, ``site01``, ... -> channels, one site per conv."""
    return {base.site_name(i): conv.channels
            for i, conv in enumerate(conv_layout(self.variant))}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(logits, activations)``; see ``models/base.py``.

    Raises:
      ValueError: images not NHWC with 3 channels, or smaller than 32x32
        (five max-pools would leave no pixel).
    """
    convs = conv_layout(self.variant)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"{self.variant} expects NHWC images with 3 channels, "
                       f"got shape {images.shape}")
    if min(images.shape[1:3]) < 32:
      raise ValueError(f"{self.variant} needs images of at least 32x32, got "
                       f"{images.shape[1]}x{images.shape[2]}")
    activations: dict[str, jax.Array] = {}
    x = images
    for site, conv in enumerate(convs):
      x = nn.Conv(conv.channels, (3, 3), padding=((1, 1), (1, 1)),
                  name=f"features_{conv.index}")(x)
      if conv.batch_norm is not None:
        x = torch_layers.batch_norm(f"features_{conv.batch_norm}")(x)
      x = nn.relu(x)
      if conv.pool is not None:
        x = _max_pool_2x2(x)
      if site == len(convs) - 1:
        x = adaptive_avg_pool(x, POOL_SIZE)
      x = base.gate_site(x, gates, base.site_name(site), activations)
    # PyTorch flattens NCHW: channel-major.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(4096, name=f"classifier_{CLASSIFIER[0]}")(x))
    x = nn.relu(nn.Dense(4096, name=f"classifier_{CLASSIFIER[1]}")(x))
    logits = nn.Dense(self.num_classes, name=f"classifier_{CLASSIFIER[2]}")(x)
    return logits, activations


def _variant_class(class_name: str, variant: str) -> type[VGG]:
  """A subclass of :class:`VGG` whose ``variant`` defaults to ``variant``."""
  check_variant(variant)
  config, batch_norm = VARIANTS[variant]
  doc = (f"torchvision ``{variant}`` (config {config}"
         f"{', BatchNorm' if batch_norm else ''}) with "
         f"{len(conv_layout(variant))} gate sites (eval mode only).")
  return base.variant_class(VGG, class_name, variant, doc)


VGG11 = _variant_class("VGG11", "vgg11")
VGG11BN = _variant_class("VGG11BN", "vgg11_bn")
VGG13 = _variant_class("VGG13", "vgg13")
VGG13BN = _variant_class("VGG13BN", "vgg13_bn")
VGG16 = _variant_class("VGG16", "vgg16")
VGG16BN = _variant_class("VGG16BN", "vgg16_bn")
VGG19 = _variant_class("VGG19", "vgg19")
VGG19BN = _variant_class("VGG19BN", "vgg19_bn")

MODELS = {"vgg11": VGG11, "vgg11_bn": VGG11BN, "vgg13": VGG13,
          "vgg13_bn": VGG13BN, "vgg16": VGG16, "vgg16_bn": VGG16BN,
          "vgg19": VGG19, "vgg19_bn": VGG19BN}
