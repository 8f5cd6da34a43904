"""torchvision ResNet, ResNeXt and Wide ResNet in Flax, eval mode, NHWC.

Layer for layer the torchvision networks (``resnet18`` .. ``resnet152``,
``resnext50_32x4d``, ``resnext101_32x8d``, ``resnext101_64x4d``,
``wide_resnet50_2``, ``wide_resnet101_2``): 7x7/2 stem conv (padding 3), BN,
ReLU, 3x3/2 max-pool (padding 1, pads with -inf), four stages of residual
blocks with 64, 128, 256, 512 planes, the first block of stages 2-4 strided,
a 1x1 conv + BN shortcut where the shape changes, global average pool and
``fc``. BatchNorm uses running statistics, eps 1e-5.

* ``resnet18`` / ``resnet34``: ``BasicBlock`` (two 3x3 convs, expansion 1),
  stages of (2, 2, 2, 2) / (3, 4, 6, 3) blocks.
* The others: ``Bottleneck`` v1.5 (1x1, 3x3 with the stride and ``groups``,
  1x1 to ``4 * planes``), width ``planes * width_per_group / 64 * groups``;
  stages (3, 4, 6, 3) for the 50s, (3, 4, 23, 3) for the 101s, (3, 8, 36, 3)
  for resnet152. ResNeXt ``32x4d`` is 32 groups of width 4 per 64 planes;
  Wide ResNet ``_2`` doubles the 3x3 width (``width_per_group`` 128).

Flax module names mirror the torchvision keys with ``.`` -> ``_`` at the
block level (``layer2.0.conv1`` -> ``layer2_0/conv1``,
``layer2.0.downsample.1`` -> ``layer2_0/downsample_1``).

Gate sites (the authors' rule for ResNet50, applied to every variant): after
the stem max-pool (64 channels), then after every residual block's output
(after the add and ReLU): resnet18: 9, resnet34 and the 50s: 17, the 101s:
34, resnet152: 51 sites. Block outputs have 64/128/256/512 channels per stage
for the BasicBlock networks and 4x that for the Bottleneck ones.

Memory: from 11.7M (resnet18, 47 MB) to 126.9M (wide_resnet101_2, 508 MB)
float32 parameters; 25.6M (102 MB) for resnet50. The forward pass keeps every
gate site's activation: per 224x224 image about 4 MB for resnet18, 6 MB for
resnet34, 23 MB for the 50s, 37 MB for the 101s and 53 MB for resnet152, on
top of the plain forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nad_jax.models import base
from nad_jax.models import torch_layers

STAGE_PLANES = (64, 128, 256, 512)


class Spec(NamedTuple):
  """One torchvision ResNet builder's arguments."""
  block: str  # "basic" (BasicBlock) or "bottleneck" (Bottleneck)
  layers: tuple[int, int, int, int]  # blocks per stage
  groups: int = 1
  width_per_group: int = 64

  @property
  def expansion(self) -> int:
    return 1 if self.block == "basic" else 4


# torchvision function name -> its builder's arguments.
VARIANTS = {
    "resnet18": Spec("basic", (2, 2, 2, 2)),
    "resnet34": Spec("basic", (3, 4, 6, 3)),
    "resnet50": Spec("bottleneck", (3, 4, 6, 3)),
    "resnet101": Spec("bottleneck", (3, 4, 23, 3)),
    "resnet152": Spec("bottleneck", (3, 8, 36, 3)),
    "resnext50_32x4d": Spec("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": Spec("bottleneck", (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": Spec("bottleneck", (3, 4, 23, 3), 64, 4),
    "wide_resnet50_2": Spec("bottleneck", (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": Spec("bottleneck", (3, 4, 23, 3), 1, 128),
}
STEM_CHANNELS = 64


class Block(NamedTuple):
  """One residual block: its Flax name (``layer2_0``), its shape."""
  name: str
  planes: int
  width: int  # channels of the inner 3x3 conv (= planes for BasicBlock)
  stride: int
  downsample: bool
  out_channels: int

  @property
  def torch_name(self) -> str:
    """``layer2_0`` -> ``layer2.0``."""
    return self.name.replace("_", ".")


def check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"unknown ResNet variant {variant!r}; known: "
                     f"{sorted(VARIANTS)}")


def block_layout(variant: str = "resnet50") -> list[Block]:
  """Every residual block of ``variant`` in order (torchvision's rules)."""
  check_variant(variant)
  spec = VARIANTS[variant]
  layout = []
  in_channels = STEM_CHANNELS
  for stage, (planes, blocks) in enumerate(zip(STAGE_PLANES, spec.layers)):
    out_channels = planes * spec.expansion
    width = (planes if spec.block == "basic" else
             int(planes * (spec.width_per_group / 64.0)) * spec.groups)
    for block in range(blocks):
      stride = 2 if (stage > 0 and block == 0) else 1
      downsample = block == 0 and (stride != 1 or in_channels != out_channels)
      layout.append(Block(f"layer{stage + 1}_{block}", planes, width, stride,
                          downsample, out_channels))
      in_channels = out_channels
  return layout


def _shortcut(x: jax.Array, block: Block) -> jax.Array:
  if not block.downsample:
    return x
  x = nn.Conv(block.out_channels, (1, 1), strides=(block.stride,) * 2,
              use_bias=False, name="downsample_0")(x)
  return torch_layers.batch_norm("downsample_1")(x)


class BasicBlock(nn.Module):
  """torchvision ``BasicBlock``: 3x3 (strided), 3x3, residual, ReLU."""
  block: Block

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b = self.block
    out = nn.Conv(b.planes, (3, 3), strides=(b.stride, b.stride),
                  padding=((1, 1), (1, 1)), use_bias=False, name="conv1")(x)
    out = nn.relu(torch_layers.batch_norm("bn1")(out))
    out = nn.Conv(b.planes, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  name="conv2")(out)
    out = torch_layers.batch_norm("bn2")(out)
    return nn.relu(out + _shortcut(x, b))


class Bottleneck(nn.Module):
  """torchvision ``Bottleneck`` (v1.5): 1x1, 3x3 (strided, grouped), 1x1."""
  block: Block
  groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b = self.block
    out = nn.Conv(b.width, (1, 1), use_bias=False, name="conv1")(x)
    out = nn.relu(torch_layers.batch_norm("bn1")(out))
    out = nn.Conv(b.width, (3, 3), strides=(b.stride, b.stride),
                  padding=((1, 1), (1, 1)), feature_group_count=self.groups,
                  use_bias=False, name="conv2")(out)
    out = nn.relu(torch_layers.batch_norm("bn2")(out))
    out = nn.Conv(b.out_channels, (1, 1), use_bias=False, name="conv3")(out)
    out = torch_layers.batch_norm("bn3")(out)
    return nn.relu(out + _shortcut(x, b))


class ResNet(nn.Module):
  """A torchvision ResNet with gate sites at the stem and every block.

  Attributes:
    num_classes: the size of ``fc``.
    variant: torchvision's function name, a key of ``VARIANTS``.
  """
  num_classes: int = 1000
  variant: str = "resnet50"

  def gate_sites(self) -> dict[str, int]:
    """``site00`` (stem, 64) then one site per residual block."""
    channels = [STEM_CHANNELS] + [b.out_channels
                                  for b in block_layout(self.variant)]
    return {base.site_name(i): c for i, c in enumerate(channels)}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(logits, activations)``; see ``models/base.py``."""
    layout = block_layout(self.variant)
    spec = VARIANTS[self.variant]
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"{self.variant} expects NHWC images with 3 channels, "
                       f"got shape {images.shape}")
    activations: dict[str, jax.Array] = {}
    x = nn.Conv(STEM_CHANNELS, (7, 7), strides=(2, 2),
                padding=((3, 3), (3, 3)), use_bias=False, name="conv1")(images)
    x = nn.relu(torch_layers.batch_norm("bn1")(x))
    x = torch_layers.max_pool_3x3_s2(x)
    x = base.gate_site(x, gates, base.site_name(0), activations)
    for site, block in enumerate(layout, start=1):
      if spec.block == "basic":
        x = BasicBlock(block, name=block.name)(x)
      else:
        x = Bottleneck(block, spec.groups, name=block.name)(x)
      x = base.gate_site(x, gates, base.site_name(site), activations)
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(x)
    return logits, activations


def _variant_class(class_name: str, variant: str) -> type[ResNet]:
  """A subclass of :class:`ResNet` whose ``variant`` defaults to ``variant``."""
  check_variant(variant)
  doc = (f"torchvision ``{variant}`` with {len(block_layout(variant)) + 1} "
         "gate sites (eval mode only).")
  return base.variant_class(ResNet, class_name, variant, doc)


ResNet18 = _variant_class("ResNet18", "resnet18")
ResNet34 = _variant_class("ResNet34", "resnet34")
ResNet50 = _variant_class("ResNet50", "resnet50")
ResNet101 = _variant_class("ResNet101", "resnet101")
ResNet152 = _variant_class("ResNet152", "resnet152")
ResNeXt50_32x4d = _variant_class("ResNeXt50_32x4d", "resnext50_32x4d")
ResNeXt101_32x8d = _variant_class("ResNeXt101_32x8d", "resnext101_32x8d")
ResNeXt101_64x4d = _variant_class("ResNeXt101_64x4d", "resnext101_64x4d")
WideResNet50_2 = _variant_class("WideResNet50_2", "wide_resnet50_2")
WideResNet101_2 = _variant_class("WideResNet101_2", "wide_resnet101_2")

MODELS = {"resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50,
          "resnet101": ResNet101, "resnet152": ResNet152,
          "resnext50_32x4d": ResNeXt50_32x4d,
          "resnext101_32x8d": ResNeXt101_32x8d,
          "resnext101_64x4d": ResNeXt101_64x4d,
          "wide_resnet50_2": WideResNet50_2,
          "wide_resnet101_2": WideResNet101_2}
