"""DARTS-Net for ImageNet (genotype DARTS_V2) in Flax, evaluation mode.

The network of the DARTS paper's ImageNet experiment (Liu et al., 2019), as
in the DARTS reference code's ``NetworkImageNet``: a two-part stem that
brings 224-px images to 28 px, ``layers`` cells (14) with reduction cells at
``layers // 3`` and ``2 * layers // 3`` (4 and 9), a 7x7 global average pool
and a linear classifier. A cell's output is the channel concatenation of its
intermediate nodes, so the stages have 4 * C = 192, 384 and 768 channels.

The cell structure is data: a :class:`Genotype` lists, per intermediate node,
two ``(operation, input_index)`` pairs (inputs 0 and 1 are the two previous
cells, preprocessed; 2, 3, ... are the earlier nodes of this cell) and which
nodes are concatenated. ``DARTS_V2`` is the default; other DARTS-family
genotypes that use the operations of :data:`OPERATIONS` plug in unchanged.

Evaluation mode only: BatchNorm uses running statistics and there is no drop
path; the auxiliary head of the reference code is not built (its weights are
ignored by ``weights_conversion/convert_darts.py``). All BatchNorms are affine
(the reference builds the ImageNet network with ``affine=True``).

Gate sites (16 for 14 cells): ``site00`` after stem0 (C), ``site01`` after
stem1 (C), then ``site02``..``site15`` after each cell (the concatenated cell
output). Both consumers of a site (the next cell's two inputs) see the gated
activation.

Parameter names mirror the reference keys so that conversion is a renaming:
``stem0_3`` is ``stem0.3``, ``cells_4/ops_2/op_1`` is ``cells.4._ops.2.op.1``
(``seq_1`` is ``_ops.<j>.1`` of the bare-Sequential ``conv_7x1_1x7``).

Memory: 4,718,752 parameters plus 36,336 BatchNorm statistics for 1000
classes (19 MB in float32). A 224-px image's forward pass returns its 16 site
activations, 1,354,752 floats (5.4 MB) per image, on top of the plain
forward's working set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nad_jax.models import base

# BatchNorm2d defaults of PyTorch.
_BN_EPSILON = 1e-5


class Genotype(NamedTuple):
  """A DARTS cell structure.

  Attributes:
    normal: the normal cell, two ``(operation, input_index)`` pairs per
      intermediate node, in node order.
    normal_concat: the state indices concatenated into the normal cell's
      output (states 0 and 1 are the cell inputs, 2.. the nodes).
    reduce: the reduction cell, as ``normal``.
    reduce_concat: as ``normal_concat`` for the reduction cell.
  """
  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...]
  reduce_concat: tuple[int, ...]


# The DARTS paper's second-order search result, used for its ImageNet model.
DARTS_V2 = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0),
            ("skip_connect", 0), ("dil_conv_3x3", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2),
            ("skip_connect", 2), ("max_pool_3x3", 1)),
    reduce_concat=(2, 3, 4, 5))

# The operations a genotype may name (those of the DARTS reference code).
OPERATIONS = ("none", "avg_pool_3x3", "max_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3",
              "dil_conv_5x5", "conv_7x1_1x7")


def make_genotype(normal: Sequence[tuple[str, int]],
                  normal_concat: Sequence[int],
                  reduce: Sequence[tuple[str, int]],
                  reduce_concat: Sequence[int]) -> Genotype:
  """Builds a :class:`Genotype` from lists (as written in DARTS code).

  Linen module fields must be hashable, so lists and ranges become tuples.
  """
  genotype = Genotype(
      normal=tuple((str(op), int(index)) for op, index in normal),
      normal_concat=tuple(int(i) for i in normal_concat),
      reduce=tuple((str(op), int(index)) for op, index in reduce),
      reduce_concat=tuple(int(i) for i in reduce_concat))
  check_genotype(genotype)
  return genotype


def check_genotype(genotype: Genotype) -> None:
  """Raises a ValueError naming the cell and entry if ``genotype`` is bad."""
  for kind in ("normal", "reduce"):
    pairs = getattr(genotype, kind)
    concat = getattr(genotype, f"{kind}_concat")
    if not pairs or len(pairs) % 2:
      raise ValueError(f"genotype.{kind} needs two (op, input) pairs per "
                       f"node; got {len(pairs)} entries")
    num_states = 2 + len(pairs) // 2
    for position, (op, index) in enumerate(pairs):
      if op not in OPERATIONS:
        raise ValueError(f"genotype.{kind}[{position}] names unknown "
                         f"operation {op!r}; known: {OPERATIONS}")
      node = position // 2
      if not 0 <= index < 2 + node:
        raise ValueError(f"genotype.{kind}[{position}] = {(op, index)}: node "
                         f"{node} can read states 0..{1 + node} only")
    if not concat or any(not 0 <= i < num_states for i in concat):
      raise ValueError(f"genotype.{kind}_concat = {tuple(concat)} must name "
                       f"states in 0..{num_states - 1}")


class _CellPlan(NamedTuple):
  reduction: bool
  reduction_prev: bool
  channels: int  # C of this cell's operations
  out_channels: int  # len(concat) * channels


def _cell_plans(genotype: Genotype, init_channels: int,
                layers: int) -> list[_CellPlan]:
  """Per cell: reduction flags and channel counts, as the reference builds."""
  plans = []
  channels = init_channels
  reduction_prev = True  # the stem halves the resolution before cell 0
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    if reduction:
      channels *= 2
    concat = genotype.reduce_concat if reduction else genotype.normal_concat
    plans.append(_CellPlan(reduction, reduction_prev, channels,
                           len(concat) * channels))
    reduction_prev = reduction
  return plans


def _conv(features: int, kernel: int, stride: int, padding: int, name: str,
          dilation: int = 1, groups: int = 1) -> nn.Conv:
  """A bias-free conv with PyTorch's explicit symmetric padding."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)),
                 kernel_dilation=(dilation, dilation),
                 feature_group_count=groups, use_bias=False, name=name)


def _batch_norm(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, momentum=0.9,
                      epsilon=_BN_EPSILON, name=name)


class ReLUConvBN(nn.Module):
  """ReLU, conv (``op_1``), BN (``op_2``): the reference's ``ReLUConvBN``."""
  features: int
  kernel: int = 1
  stride: int = 1
  padding: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(x)
    x = _conv(self.features, self.kernel, self.stride, self.padding, "op_1")(x)
    return _batch_norm("op_2")(x)


class FactorizedReduce(nn.Module):
  """Halves the resolution: two 1x1 stride-2 convs, one shifted by a pixel."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.features % 2:
      raise ValueError(f"FactorizedReduce needs even features, got "
                       f"{self.features}")
    x = nn.relu(x)
    half = self.features // 2
    out = jnp.concatenate([
        _conv(half, 1, 2, 0, "conv_1")(x),
        _conv(half, 1, 2, 0, "conv_2")(x[:, 1:, 1:, :]),
    ], axis=-1)
    return _batch_norm("bn")(out)


class SepConv(nn.Module):
  """(ReLU, depthwise, pointwise, BN) twice; only the first has the stride."""
  features: int
  kernel: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    padding = self.kernel // 2
    x = nn.relu(x)
    x = _conv(channels, self.kernel, self.stride, padding, "op_1",
              groups=channels)(x)
    x = _conv(channels, 1, 1, 0, "op_2")(x)
    x = _batch_norm("op_3")(x)
    x = nn.relu(x)
    x = _conv(channels, self.kernel, 1, padding, "op_5", groups=channels)(x)
    x = _conv(self.features, 1, 1, 0, "op_6")(x)
    return _batch_norm("op_7")(x)


class DilConv(nn.Module):
  """ReLU, depthwise conv with dilation 2, pointwise conv, BN."""
  features: int
  kernel: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    x = nn.relu(x)
    x = _conv(channels, self.kernel, self.stride, self.kernel - 1, "op_1",
              dilation=2, groups=channels)(x)
    x = _conv(self.features, 1, 1, 0, "op_2")(x)
    return _batch_norm("op_3")(x)


class Conv7x1x1x7(nn.Module):
  """ReLU, 1x7 conv, 7x1 conv, BN (the reference's ``conv_7x1_1x7``).

  The reference builds it as a bare ``nn.Sequential``, so its keys have no
  ``op.``: ``seq_1`` here is ``_ops.<j>.1`` there.
  """
  features: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(x)
    x = nn.Conv(self.features, (1, 7), strides=(1, self.stride),
                padding=((0, 0), (3, 3)), use_bias=False, name="seq_1")(x)
    x = nn.Conv(self.features, (7, 1), strides=(self.stride, 1),
                padding=((3, 3), (0, 0)), use_bias=False, name="seq_2")(x)
    return _batch_norm("seq_3")(x)


def _apply_op(op: str, x: jax.Array, channels: int, stride: int,
              name: str) -> jax.Array:
  """Runs genotype operation ``op``; its parameters live under ``name``."""
  if op == "none":
    return jnp.zeros_like(x[:, ::stride, ::stride, :])
  if op == "skip_connect":
    return x if stride == 1 else FactorizedReduce(channels, name=name)(x)
  if op == "max_pool_3x3":
    # flax pads max pools with -inf, as PyTorch does.
    return nn.max_pool(x, (3, 3), (stride, stride), ((1, 1), (1, 1)))
  if op == "avg_pool_3x3":
    return nn.avg_pool(x, (3, 3), (stride, stride), ((1, 1), (1, 1)),
                       count_include_pad=False)
  if op.startswith("sep_conv_"):
    return SepConv(channels, int(op[-1]), stride, name=name)(x)
  if op.startswith("dil_conv_"):
    return DilConv(channels, int(op[-1]), stride, name=name)(x)
  if op == "conv_7x1_1x7":
    return Conv7x1x1x7(channels, stride, name=name)(x)
  raise ValueError(f"unknown DARTS operation {op!r}; known: {OPERATIONS}")


class Cell(nn.Module):
  """One DARTS cell: preprocess both inputs, build the nodes, concatenate."""
  genotype: Genotype
  channels: int
  reduction: bool
  reduction_prev: bool

  @nn.compact
  def __call__(self, s0: jax.Array, s1: jax.Array) -> jax.Array:
    if self.reduction_prev:
      s0 = FactorizedReduce(self.channels, name="preprocess0")(s0)
    else:
      s0 = ReLUConvBN(self.channels, name="preprocess0")(s0)
    s1 = ReLUConvBN(self.channels, name="preprocess1")(s1)
    if self.reduction:
      pairs, concat = self.genotype.reduce, self.genotype.reduce_concat
    else:
      pairs, concat = self.genotype.normal, self.genotype.normal_concat
    states = [s0, s1]
    for node in range(len(pairs) // 2):
      node_sum = 0
      for j in (2 * node, 2 * node + 1):
        op, index = pairs[j]
        stride = 2 if self.reduction and index < 2 else 1
        node_sum = node_sum + _apply_op(op, states[index], self.channels,
                                        stride, f"ops_{j}")
      states.append(node_sum)
    return jnp.concatenate([states[i] for i in concat], axis=-1)


class DartsImageNet(nn.Module):
  """The DARTS ImageNet network with 16 gate sites (for 14 cells).

  Attributes:
    num_classes: classifier outputs.
    genotype: the cell structure; :data:`DARTS_V2` by default.
    init_channels: C, the stem width (48 for the published model).
    layers: number of cells (14).
  """
  num_classes: int = 1000
  genotype: Genotype = DARTS_V2
  init_channels: int = 48
  layers: int = 14

  def gate_sites(self) -> dict[str, int]:
    """``site00``/``site01``: the stems (C); then one site per cell."""
    check_genotype(self.genotype)
    site_channels = [self.init_channels, self.init_channels]
    site_channels += [plan.out_channels for plan in
                      _cell_plans(self.genotype, self.init_channels,
                                  self.layers)]
    return {base.site_name(i): c for i, c in enumerate(site_channels)}

  @nn.compact
  def __call__(self, images: jax.Array,
               gates: Mapping[str, jax.Array] | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the network on NHWC ``images``; returns (logits, activations)."""
    check_genotype(self.genotype)
    c = self.init_channels
    activations: dict[str, jax.Array] = {}

    x = _conv(c // 2, 3, 2, 1, "stem0_0")(images)
    x = nn.relu(_batch_norm("stem0_1")(x))
    x = _conv(c, 3, 2, 1, "stem0_3")(x)
    s0 = _batch_norm("stem0_4")(x)
    s0 = base.gate_site(s0, gates, base.site_name(0), activations)

    x = _conv(c, 3, 2, 1, "stem1_1")(nn.relu(s0))
    s1 = _batch_norm("stem1_2")(x)
    s1 = base.gate_site(s1, gates, base.site_name(1), activations)

    plans = _cell_plans(self.genotype, c, self.layers)
    for i, plan in enumerate(plans):
      out = Cell(self.genotype, plan.channels, plan.reduction,
                 plan.reduction_prev, name=f"cells_{i}")(s0, s1)
      out = base.gate_site(out, gates, base.site_name(i + 2), activations)
      s0, s1 = s1, out

    # The reference pools with AvgPool2d(7) (stride 7, no padding) and then
    # flattens; a 7x7 map (224-px input) pools to 1x1.
    height, width = s1.shape[1:3]
    if not (7 <= height < 14 and 7 <= width < 14):
      raise ValueError(
          f"DARTS ImageNet network: the last cell's map is {height}x{width}; "
          f"AvgPool(7) then Linear({s1.shape[-1]}) needs 7..13 px (224-px "
          f"images give 7x7); got images of shape {images.shape}")
    pooled = nn.avg_pool(s1, (7, 7), (7, 7)).reshape(s1.shape[0], -1)
    logits = nn.Dense(self.num_classes, name="classifier")(pooled)
    return logits, activations


MODELS = {"darts_v2": DartsImageNet}
