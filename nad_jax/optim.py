"""The NAD update: SGD on the gradient normalised per concept and per site.

Paper Eq. 8 / the authors' code: ``s <- s - alpha * g / max(||g||_2, eps)``,
with the norm taken over one site's gate vector of one concept. Gate logits
are pytrees ``{site: [..., channels]}``; the norm is over the last axis, so
leading concept and seed axes (or ``jax.vmap`` over them) normalise each
concept, seed and site on its own.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class NormalizeBySiteNormState(NamedTuple):
  """The transformation is stateless."""


def normalize_by_site_norm(eps: float = 1e-12
                           ) -> optax.GradientTransformation:
  """Rescales each site's gradient vector to unit L2 norm.

  Args:
    eps: the norm is clipped from below at ``eps``, so a zero gradient stays
      zero (and finite) instead of becoming NaN.

  Returns:
    An optax ``GradientTransformation``.
  """

  def init_fn(params):
    del params
    return NormalizeBySiteNormState()

  def update_fn(updates, state, params=None):
    del params

    def normalize(g):
      norm = jnp.linalg.norm(g, axis=-1, keepdims=True)
      return g / jnp.maximum(norm, eps)

    return jax.tree.map(normalize, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def nad_optimizer(alpha: float) -> optax.GradientTransformation:
  """Normalised SGD with learning rate ``alpha`` (paper Eq. 8)."""
  return optax.chain(normalize_by_site_norm(), optax.sgd(alpha))
