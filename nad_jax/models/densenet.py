"""torchvision DenseNet 121/161/169/201 in Flax, eval mode, NHWC.

Layer for layer the torchvision networks: 7x7/2 ``conv0`` (padding 3),
``norm0``, ReLU, 3x3/2 ``pool0`` (padding 1, pads with -inf); four dense
blocks (each layer BN-ReLU-1x1 conv to ``bn_size * growth`` = 4 x growth,
BN-ReLU-3x3 conv to ``growth`` new maps, concatenated to the layer's input)
with transitions (BN-ReLU-1x1 conv halving the channels, 2x2/2 average pool)
between them; ``norm5``, ReLU, global average pool, ``classifier``.
BatchNorm uses running statistics, eps 1e-5; dropout rate 0.

======================  ======  ===============  =============
variant                 growth  dense blocks     initial maps
======================  ======  ===============  =============
densenet121             32      (6, 12, 24, 16)  64
densenet161             48      (6, 12, 36, 24)  96
densenet169             32      (6, 12, 32, 32)  64
densenet201             32      (6, 12, 48, 32)  64
======================  ======  ===============  =============

Flax module names mirror the torchvision keys without the ``features.``
prefix (``features.denseblock2.denselayer3.norm1`` ->
``denseblock2/denselayer3/norm1``, ``features.transition1.conv`` ->
``transition1/conv``).

Gate sites (the authors' rule for DenseNet121, applied to every variant; 8
each): after pool0; after dense blocks 1-3 and after each transition's
avg-pool; after norm5 + ReLU. Dense block 4 has no site of its own (norm5 +
ReLU follows it directly). densenet121: 64, 256, 128, 512, 256, 1024, 512,
1024 channels; docs/networks.md lists the others.

Memory: 8.0M (densenet121, 32 MB), 14.1M (169), 20.0M (201), 28.7M (161,
115 MB) float32 parameters. The forward pass keeps every gate site's
activation: per 224x224 image about 7 MB for densenet121, 8 MB for 169 and
201, 12 MB for 161, on top of the plain forward, whose dense-block
concatenations dominate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nad_jax.models import base
from nad_jax.models import torch_layers

BN_SIZE = 4


class Spec(NamedTuple):
  """One torchvision DenseNet builder's arguments."""
  growth_rate: int
  block_config: tuple[int, ...]
  num_init_features: int


# torchvision function name -> its builder's arguments.
VARIANTS = {
    "densenet121": Spec(32, (6, 12, 24, 16), 64),
    "densenet161": Spec(48, (6, 12, 36, 24), 96),
    "densenet169": Spec(32, (6, 12, 32, 32), 64),
    "densenet201": Spec(32, (6, 12, 48, 32), 64),
}
# densenet121's, kept for code that reads them.
GROWTH_RATE, BLOCK_CONFIG, NUM_INIT_FEATURES = VARIANTS["densenet121"]


def check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"unknown DenseNet variant {variant!r}; known: "
                     f"{sorted(VARIANTS)}")


class DenseLayer(nn.Module):
  """torchvision ``_DenseLayer``: returns only the ``growth_rate`` new maps."""
  growth_rate: int = GROWTH_RATE

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(torch_layers.batch_norm("norm1")(x))
    x = nn.Conv(BN_SIZE * self.growth_rate, (1, 1), use_bias=False,
                name="conv1")(x)
    x = nn.relu(torch_layers.batch_norm("norm2")(x))
    return nn.Conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)),
                   use_bias=False, name="conv2")(x)


class DenseBlock(nn.Module):
  """torchvision ``_DenseBlock``: every layer sees all earlier maps."""
  num_layers: int
  growth_rate: int = GROWTH_RATE

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = [x]
    for i in range(self.num_layers):
      new = DenseLayer(self.growth_rate, name=f"denselayer{i + 1}")(
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


def site_channels(variant: str = "densenet121") -> list[int]:
  """Channels of the 8 gate sites of ``variant``, in order."""
  check_variant(variant)
  spec = VARIANTS[variant]
  channels = [spec.num_init_features]
  features = spec.num_init_features
  for i, num_layers in enumerate(spec.block_config):
    features += num_layers * spec.growth_rate
    if i != len(spec.block_config) - 1:
      channels.append(features)  # after dense block i + 1
      features //= 2
      channels.append(features)  # after transition i + 1
  channels.append(features)  # after norm5 + ReLU
  return channels


class DenseNet(nn.Module):
  """A torchvision DenseNet with 8 gate sites (eval mode only).

  Attributes:
    num_classes: the classifier's size.
    variant: torchvision's function name, a key of ``VARIANTS``.
  """
  num_classes: int = 1000
  variant: str = "densenet121"

  def gate_sites(self) -> dict[str, int]:
    """``site00`` .. ``site07`` -> channels (``site_channels``)."""
    return {base.site_name(i): c
            for i, c in enumerate(site_channels(self.variant))}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(logits, activations)``; see ``models/base.py``."""
    check_variant(self.variant)
    spec = VARIANTS[self.variant]
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"{self.variant} expects NHWC images with 3 channels, "
                       f"got shape {images.shape}")
    activations: dict[str, jax.Array] = {}
    site = 0

    def gate(x):
      nonlocal site
      x = base.gate_site(x, gates, base.site_name(site), activations)
      site += 1
      return x

    x = nn.Conv(spec.num_init_features, (7, 7), strides=(2, 2),
                padding=((3, 3), (3, 3)), use_bias=False, name="conv0")(images)
    x = nn.relu(torch_layers.batch_norm("norm0")(x))
    x = gate(torch_layers.max_pool_3x3_s2(x))
    for i, num_layers in enumerate(spec.block_config):
      x = DenseBlock(num_layers, spec.growth_rate,
                     name=f"denseblock{i + 1}")(x)
      if i != len(spec.block_config) - 1:
        x = gate(x)
        x = gate(Transition(x.shape[-1] // 2, name=f"transition{i + 1}")(x))
    x = gate(nn.relu(torch_layers.batch_norm("norm5")(x)))
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="classifier")(x)
    return logits, activations


def _variant_class(class_name: str, variant: str) -> type[DenseNet]:
  """A subclass of :class:`DenseNet` whose ``variant`` is ``variant``."""
  check_variant(variant)
  doc = (f"torchvision ``{variant}`` with 8 gate sites "
         f"{tuple(site_channels(variant))} (eval mode only).")
  return base.variant_class(DenseNet, class_name, variant, doc)


DenseNet121 = _variant_class("DenseNet121", "densenet121")
DenseNet161 = _variant_class("DenseNet161", "densenet161")
DenseNet169 = _variant_class("DenseNet169", "densenet169")
DenseNet201 = _variant_class("DenseNet201", "densenet201")

MODELS = {"densenet121": DenseNet121, "densenet161": DenseNet161,
          "densenet169": DenseNet169, "densenet201": DenseNet201}
