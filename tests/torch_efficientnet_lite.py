"""EfficientNet-Lite0 stated in PyTorch, the golden side of the parity tests.

Written for the tests from the architecture's published description, not
from nad-jax's Flax code: TensorFlow's block strings for Lite
(``efficientnet_lite_builder.py``: the B0 blocks without ``se0.25``),
TensorFlow 'SAME' padding computed from the input size at every call, ReLU6,
BatchNorm eps 1e-3, stem 32 and head 1280 channels, no squeeze-excitation,
identity skip when stride is 1 and channels do not change. Module names are
the EfficientNet-PyTorch ones, so the packaged checkpoint
(``efficientnet-lite0-57934424.pth``) loads with ``strict=True``.

``forward(x, gates=None)`` takes ``(pixel - 127) / 128`` in NCHW and returns
``(logits, sites)``: the 18 NCHW outputs of the stem (after ReLU6), of each
block and of the head (after ReLU6); with ``gates`` (``{site: [C]}``) each
is multiplied by its gate before the next layer reads it.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

BLOCK_STRINGS = (
    "r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80", "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)
EPS = 1e-3


def decode(block_string: str) -> dict[str, int]:
  """``'r2_k3_s22_e6_i16_o24'`` -> ``{'r': 2, 'k': 3, 's': 2, 'e': 6, ...}``."""
  out = {}
  for part in block_string.split("_"):
    key, value = re.fullmatch(r"([a-z]+)(\d+)", part).groups()
    out[key] = int(value[0]) if key == "s" else int(value)
  return out


class SameConv2d(nn.Conv2d):
  """A bias-free conv with TensorFlow 'SAME' padding for the input's size."""

  def __init__(self, c_in, c_out, kernel, stride=1, groups=1):
    super().__init__(c_in, c_out, kernel, stride, padding=0, groups=groups,
                     bias=False)

  def forward(self, x):
    pads = []
    for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return super().forward(F.pad(x, (left, right, top, bottom)))


def batch_norm(channels):
  return nn.BatchNorm2d(channels, eps=EPS)


class MBConvBlock(nn.Module):

  def __init__(self, kernel, stride, expand, c_in, c_out):
    super().__init__()
    hidden = c_in * expand
    self.expand = expand != 1
    if self.expand:
      self._expand_conv = SameConv2d(c_in, hidden, 1)
      self._bn0 = batch_norm(hidden)
    self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride,
                                      groups=hidden)
    self._bn1 = batch_norm(hidden)
    self._project_conv = SameConv2d(hidden, c_out, 1)
    self._bn2 = batch_norm(c_out)
    self.skip = stride == 1 and c_in == c_out

  def forward(self, x):
    y = x
    if self.expand:
      y = F.relu6(self._bn0(self._expand_conv(y)))
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.skip else y


class EfficientNetLite0(nn.Module):

  def __init__(self, num_classes=1000):
    super().__init__()
    self._conv_stem = SameConv2d(3, 32, 3, 2)
    self._bn0 = batch_norm(32)
    blocks = []
    for string in BLOCK_STRINGS:
      spec = decode(string)
      c_in = spec["i"]
      for r in range(spec["r"]):
        blocks.append(MBConvBlock(spec["k"], spec["s"] if r == 0 else 1,
                                  spec["e"], c_in, spec["o"]))
        c_in = spec["o"]
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = SameConv2d(320, 1280, 1)
    self._bn1 = batch_norm(1280)
    self._fc = nn.Linear(1280, num_classes)

  def forward(self, x, gates=None):
    sites = []

    def site(y):
      if gates is not None:
        gate = torch.as_tensor(gates[f"site{len(sites):02d}"])
        y = y * gate[None, :, None, None]
      sites.append(y)
      return y

    x = site(F.relu6(self._bn0(self._conv_stem(x))))
    for block in self._blocks:
      x = site(block(x))
    x = site(F.relu6(self._bn1(self._conv_head(x))))
    return self._fc(x.mean(dim=(2, 3))), sites
