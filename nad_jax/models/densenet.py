"""DenseNet121 (torchvision ``densenet121``) in Flax, eval mode, NHWC.

Layer for layer the torchvision network: 7x7/2 ``conv0`` (padding 3),
``norm0``, ReLU, 3x3/2 ``pool0`` (padding 1, pads with -inf); dense blocks of
(6, 12, 24, 16) layers (BN-ReLU-1x1 conv to ``bn_size * growth`` = 128,
BN-ReLU-3x3 conv to growth 32, concatenated to the block input) with
transitions (BN-ReLU-1x1 conv halving the channels, 2x2/2 average pool)
between them; ``norm5``, ReLU, global average pool, ``classifier``.
BatchNorm uses running statistics, eps 1e-5; dropout rate 0.

Flax module names mirror the torchvision keys without the ``features.``
prefix (``features.denseblock2.denselayer3.norm1`` ->
``denseblock2/denselayer3/norm1``, ``features.transition1.conv`` ->
``transition1/conv``).

Gate sites (authors' code, 8): after pool0 (64); dense block 1 (256);
transition 1's avg-pool (128); block 2 (512); transition 2 (256); block 3
(1024); transition 3 (512); after norm5 + ReLU (1024). Dense block 4 has no
site of its own.

Memory: 8.0M float32 parameters (32 MB). The forward pass keeps every gate
site's activation: about 7 MB per 224x224 image on top of the plain
forward (whose dense-block concatenations dominate).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from nad_jax.models import base
from nad_jax.models import torch_layers

GROWTH_RATE = 32
BLOCK_CONFIG = (6, 12, 24, 16)
BN_SIZE = 4
NUM_INIT_FEATURES = 64


class DenseLayer(nn.Module):
  """torchvision ``_DenseLayer``: returns only the ``growth_rate`` new maps."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(torch_layers.batch_norm("norm1")(x))
    x = nn.Conv(BN_SIZE * GROWTH_RATE, (1, 1), use_bias=False, name="conv1")(x)
    x = nn.relu(torch_layers.batch_norm("norm2")(x))
    return nn.Conv(GROWTH_RATE, (3, 3), padding=((1, 1), (1, 1)),
                   use_bias=False, name="conv2")(x)


class DenseBlock(nn.Module):
  """torchvision ``_DenseBlock``: every layer sees all earlier maps."""
  num_layers: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = [x]
    for i in range(self.num_layers):
      new = DenseLayer(name=f"denselayer{i + 1}")(
          jnp.concatenate(features, axis=-1))
      features.append(new)
    return jnp.concatenate(features, axis=-1)


class Transition(nn.Module):
  """torchvision ``_Transition``: BN, ReLU, 1x1 conv, 2x2/2 average pool."""
  out_channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(torch_layers.batch_norm("norm")(x))
    x = nn.Conv(self.out_channels, (1, 1), use_bias=False, name="conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def site_channels() -> list[int]:
  """Channels of the 8 gate sites, in order."""
  channels = [NUM_INIT_FEATURES]
  features = NUM_INIT_FEATURES
  for i, num_layers in enumerate(BLOCK_CONFIG):
    features += num_layers * GROWTH_RATE
    if i != len(BLOCK_CONFIG) - 1:
      channels.append(features)  # after dense block i + 1
      features //= 2
      channels.append(features)  # after transition i + 1
  channels.append(features)  # after norm5 + ReLU
  return channels


class DenseNet121(nn.Module):
  """torchvision DenseNet121 with the authors' 8 gate sites (eval mode only)."""
  num_classes: int = 1000

  def gate_sites(self) -> dict[str, int]:
    """``site00`` .. ``site07`` -> 64, 256, 128, 512, 256, 1024, 512, 1024."""
    return {base.site_name(i): c for i, c in enumerate(site_channels())}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(logits, activations)``; see ``models/base.py``."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"DenseNet121 expects NHWC images with 3 channels, got "
                       f"shape {images.shape}")
    activations: dict[str, jax.Array] = {}
    site = 0

    def gate(x):
      nonlocal site
      x = base.gate_site(x, gates, base.site_name(site), activations)
      site += 1
      return x

    x = nn.Conv(NUM_INIT_FEATURES, (7, 7), strides=(2, 2),
                padding=((3, 3), (3, 3)), use_bias=False, name="conv0")(images)
    x = nn.relu(torch_layers.batch_norm("norm0")(x))
    x = gate(torch_layers.max_pool_3x3_s2(x))
    for i, num_layers in enumerate(BLOCK_CONFIG):
      x = DenseBlock(num_layers, name=f"denseblock{i + 1}")(x)
      if i != len(BLOCK_CONFIG) - 1:
        x = gate(x)
        x = gate(Transition(x.shape[-1] // 2, name=f"transition{i + 1}")(x))
    x = gate(nn.relu(torch_layers.batch_norm("norm5")(x)))
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="classifier")(x)
    return logits, activations


MODELS = {"densenet121": DenseNet121}
