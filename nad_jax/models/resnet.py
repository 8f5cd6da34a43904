"""ResNet50 (torchvision ``resnet50``, v1.5) in Flax, eval mode, NHWC.

Layer for layer the torchvision network: 7x7/2 stem conv (padding 3), BN,
ReLU, 3x3/2 max-pool (padding 1, pads with -inf), bottleneck stages of
(3, 4, 6, 3) blocks with widths (64, 128, 256, 512) x 4, the stride on the
3x3 conv (v1.5), a 1x1 conv + BN shortcut where the shape changes, global
average pool and ``fc``. BatchNorm uses running statistics, eps 1e-5.

Flax module names mirror the torchvision keys with ``.`` -> ``_`` at the
block level (``layer2.0.conv1`` -> ``layer2_0/conv1``,
``layer2.0.downsample.1`` -> ``layer2_0/downsample_1``).

Gate sites (authors' code, 17): after the stem max-pool (64), then after each
of the 16 bottleneck outputs (after the residual add and ReLU):
3 x 256, 4 x 512, 6 x 1024, 3 x 2048 channels.

Memory: 25.6M float32 parameters (102 MB). The forward pass keeps every gate
site's activation: about 23 MB per 224x224 image on top of the plain
forward.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from nad_jax.models import base
from nad_jax.models import torch_layers

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (planes, blocks)
EXPANSION = 4


class Bottleneck(nn.Module):
  """torchvision ``Bottleneck``: 1x1, 3x3 (strided), 1x1 x4, residual."""
  planes: int
  stride: int = 1
  downsample: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out = nn.Conv(self.planes, (1, 1), use_bias=False, name="conv1")(x)
    out = nn.relu(torch_layers.batch_norm("bn1")(out))
    out = nn.Conv(self.planes, (3, 3), strides=(self.stride, self.stride),
                  padding=((1, 1), (1, 1)), use_bias=False, name="conv2")(out)
    out = nn.relu(torch_layers.batch_norm("bn2")(out))
    out = nn.Conv(self.planes * EXPANSION, (1, 1), use_bias=False,
                  name="conv3")(out)
    out = torch_layers.batch_norm("bn3")(out)
    identity = x
    if self.downsample:
      identity = nn.Conv(self.planes * EXPANSION, (1, 1),
                         strides=(self.stride, self.stride), use_bias=False,
                         name="downsample_0")(x)
      identity = torch_layers.batch_norm("downsample_1")(identity)
    return nn.relu(out + identity)


def block_layout() -> list[tuple[str, int, int, bool]]:
  """``(name, planes, stride, downsample)`` of the 16 bottlenecks in order."""
  layout = []
  in_channels = 64
  for stage, (planes, blocks) in enumerate(STAGES):
    for block in range(blocks):
      stride = 2 if (stage > 0 and block == 0) else 1
      downsample = block == 0 and (stride != 1 or
                                   in_channels != planes * EXPANSION)
      layout.append((f"layer{stage + 1}_{block}", planes, stride, downsample))
      in_channels = planes * EXPANSION
  return layout


class ResNet50(nn.Module):
  """torchvision ResNet50 with the authors' 17 gate sites (eval mode only)."""
  num_classes: int = 1000

  def gate_sites(self) -> dict[str, int]:
    """``site00`` (stem, 64) then ``site01`` .. ``site16`` (bottlenecks)."""
    channels = [64] + [planes * EXPANSION for _, planes, _, _ in block_layout()]
    return {base.site_name(i): c for i, c in enumerate(channels)}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(logits, activations)``; see ``models/base.py``."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"ResNet50 expects NHWC images with 3 channels, got "
                       f"shape {images.shape}")
    activations: dict[str, jax.Array] = {}
    x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                use_bias=False, name="conv1")(images)
    x = nn.relu(torch_layers.batch_norm("bn1")(x))
    x = torch_layers.max_pool_3x3_s2(x)
    x = base.gate_site(x, gates, base.site_name(0), activations)
    for site, (name, planes, stride, downsample) in enumerate(block_layout(),
                                                              start=1):
      x = Bottleneck(planes, stride, downsample, name=name)(x)
      x = base.gate_site(x, gates, base.site_name(site), activations)
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(x)
    return logits, activations


MODELS = {"resnet50": ResNet50}
