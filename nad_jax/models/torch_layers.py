"""Flax layers that behave exactly like their PyTorch counterparts.

Shared by the torchvision networks (``resnet.py``, ``densenet.py``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default


def batch_norm(name: str) -> nn.BatchNorm:
  """``nn.BatchNorm2d`` in eval mode (running statistics, eps 1e-5)."""
  return nn.BatchNorm(use_running_average=True, momentum=0.9,
                      epsilon=BN_EPSILON, name=name)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """``nn.MaxPool2d(3, 2, padding=1)``: pads with -inf, floor mode."""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
