"""Three small networks for the embedded demo, trained on the demo dataset.

``DemoVGG`` (a plain conv stack), ``DemoResNet`` (residual add blocks) and
``DemoDenseNet`` (concatenating dense blocks) mirror the three families of
the paper at a size that a laptop CPU searches in seconds: 32x32x3 inputs,
six gate sites each with 16-64 channels, 4-6 MFLOPs per image and 50k-150k
parameters. All use BatchNorm; ``train=True`` (used only by
``nad_jax.train_demo``) switches it to batch statistics and needs
``mutable=['batch_stats']``.

Gate sites (``[H, W, C]`` of a 32x32 input):

* ``demo_vgg``: after each conv+BN+ReLU, after the max-pool where one
  follows (like the VGG16 sites): 16x16x16, 8x8x24, 8x8x32, 4x4x32, 4x4x64,
  4x4x64.
* ``demo_resnet``: after the stem, then after each basic block (after the
  residual add and ReLU): 16x16x16, 8x8x24, 8x8x24, 4x4x48, 4x4x48, 2x2x56.
* ``demo_densenet``: after the stem's pool, after dense blocks 1 and 2 and
  transitions 1 and 2, and after the final BN+ReLU (dense block 3 has no
  site of its own, like DenseNet121's block 4): 8x8x16, 8x8x64, 4x4x32,
  4x4x64, 2x2x32, 2x2x64.

The trained weights ship in ``nad_jax/assets/demo_weights/<name>``
(``weights_path``); ``python -m nad_jax.train_demo --all`` remakes them.

Memory: parameters under 0.6 MB each; a forward pass keeps every site's
activation, about 10 KB per image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from nad_jax.models import base

WEIGHTS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
    "demo_weights")


def weights_path(name: str) -> str:
  """The shipped params checkpoint of demo network ``name``."""
  return os.path.join(WEIGHTS_DIR, name)


def _batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, name=name)


class _ConvBN(nn.Module):
  """3x3 (or ``kernel``) conv, BatchNorm, optional ReLU."""

  features: int
  strides: int = 1
  kernel: int = 3
  relu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pad = self.kernel // 2
    x = nn.Conv(self.features, (self.kernel, self.kernel),
                strides=(self.strides, self.strides),
                padding=((pad, pad), (pad, pad)), use_bias=False)(x)
    x = _batch_norm(train)(x)
    return nn.relu(x) if self.relu else x


def _max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class DemoVGG(nn.Module):
  """A plain VGG-style conv stack (conv+BN+ReLU, max-pools)."""

  num_classes: int = 16

  # (channels, stride, max-pool after) per conv; one gate site each.
  layers = ((16, 2, False), (24, 1, True), (32, 1, False), (32, 1, True),
            (64, 1, False), (64, 1, False))

  def gate_sites(self) -> dict[str, int]:
    return {base.site_name(i): layer[0] for i, layer in enumerate(self.layers)}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None,
               train: bool = False):
    activations = {}
    x = images
    for i, (channels, strides, pool) in enumerate(self.layers):
      x = _ConvBN(channels, strides)(x, train)
      if pool:
        x = _max_pool(x)
      x = base.gate_site(x, gates, base.site_name(i), activations)
    logits = nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))
    return logits, activations


class _BasicBlock(nn.Module):
  """ResNet basic block: two 3x3 conv+BN, projection shortcut when the
  shape changes, ReLU after the add."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    residual = x
    y = _ConvBN(self.features, self.strides)(x, train)
    y = _ConvBN(self.features, relu=False)(y, train)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = nn.Conv(self.features, (1, 1),
                         strides=(self.strides, self.strides),
                         use_bias=False, name="shortcut_conv")(x)
      residual = _batch_norm(train, name="shortcut_bn")(residual)
    return nn.relu(y + residual)


class DemoResNet(nn.Module):
  """A small ResNet: stride-2 stem and five basic blocks."""

  num_classes: int = 16

  stem_channels = 16
  # (channels, stride) per basic block; one gate site each.
  blocks = ((24, 2), (24, 1), (48, 2), (48, 1), (56, 2))

  def gate_sites(self) -> dict[str, int]:
    channels = [self.stem_channels] + [block[0] for block in self.blocks]
    return {base.site_name(i): c for i, c in enumerate(channels)}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None,
               train: bool = False):
    activations = {}
    x = _ConvBN(self.stem_channels, strides=2)(images, train)
    x = base.gate_site(x, gates, base.site_name(0), activations)
    for i, (channels, strides) in enumerate(self.blocks):
      x = _BasicBlock(channels, strides)(x, train)
      x = base.gate_site(x, gates, base.site_name(i + 1), activations)
    logits = nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))
    return logits, activations


class _DenseBlock(nn.Module):
  """``num_layers`` x (BN, ReLU, 3x3 conv to ``growth`` channels), each
  layer's output concatenated to its input."""

  num_layers: int
  growth: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for _ in range(self.num_layers):
      y = nn.relu(_batch_norm(train)(x))
      y = nn.Conv(self.growth, (3, 3), padding=((1, 1), (1, 1)),
                  use_bias=False)(y)
      x = jnp.concatenate([x, y], axis=-1)
    return x


class _Transition(nn.Module):
  """BN, ReLU, 1x1 conv, 2x2 average pool."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.relu(_batch_norm(train)(x))
    x = nn.Conv(self.features, (1, 1), use_bias=False)(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DemoDenseNet(nn.Module):
  """A small DenseNet: stem, three dense blocks of four layers, two
  transitions, final BN+ReLU."""

  num_classes: int = 16

  stem_channels = 16
  # (layers, growth) per dense block; transitions halve to 32 channels.
  dense_blocks = ((4, 12), (4, 8), (4, 8))
  transition_channels = 32

  def gate_sites(self) -> dict[str, int]:
    channels = [self.stem_channels]
    width = self.stem_channels
    for i, (layers, growth) in enumerate(self.dense_blocks):
      width += layers * growth
      if i < len(self.dense_blocks) - 1:
        channels += [width, self.transition_channels]
        width = self.transition_channels
    channels.append(width)  # final BN + ReLU
    return {base.site_name(i): c for i, c in enumerate(channels)}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None,
               train: bool = False):
    activations = {}
    site = 0

    def gate(x):
      nonlocal site
      x = base.gate_site(x, gates, base.site_name(site), activations)
      site += 1
      return x

    x = _ConvBN(self.stem_channels, strides=2)(images, train)
    x = gate(_max_pool(x))
    for i, (layers, growth) in enumerate(self.dense_blocks):
      x = _DenseBlock(layers, growth)(x, train)
      if i < len(self.dense_blocks) - 1:
        x = gate(x)
        x = gate(_Transition(self.transition_channels)(x, train))
    x = gate(nn.relu(_batch_norm(train, name="final_bn")(x)))
    logits = nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))
    return logits, activations


MODELS = {
    "demo_vgg": DemoVGG,
    "demo_resnet": DemoResNet,
    "demo_densenet": DemoDenseNet,
}
