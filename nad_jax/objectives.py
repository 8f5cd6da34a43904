"""The two NAD objectives, as pure functions of one concept's batch.

Both take the gate logits of one concept (``{site: [channels]}``), the
original network's outputs on the batch (``ref_logits [B, classes]``,
``ref_acts {site: [B, ...]}``), the gated network's outputs
(``gated_logits``, ``gated_acts``) and the labels ``[B]``, and return
``(loss, aux)``. ``aux['valid']`` says whether the batch counts: a step on
an invalid batch must leave the gates unchanged (the official preset skips
batches without a correctly classified sample).

* ``paper`` (Eq. 4, 6, 7)::

      L = 1/B sum_b [ sum_{i<n} ||f_i(x_b) - f'_i(x_b)||_2
                      + ||f_n(x_b) - f'_n(x_b)||_2 ]
          + lam * sum_{i<n} ||sigmoid(s_i)||_1

  with f_n the logits; the L2 norm is over all elements of one sample's
  activation.
* ``official`` (the authors' ICCV code)::

      L = [ CE(f'_n(x), y) + sum_{i<n} MSE(f'_i(x)[idx], f_i(x)[idx]) ] / n
          + beta * sum_{i<n} mean(sigmoid(s_i)^2) / n

  CE is averaged over the whole batch; idx are the samples the original
  network classifies correctly; MSE is the mean over their elements; n is the
  number of gate sites. A batch with no correct sample is invalid (skipped).

Memory: nothing beyond the activations the caller already holds.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def paper_objective(
    gate_logits: Mapping[str, jax.Array],
    ref_logits: jax.Array,
    ref_acts: Mapping[str, jax.Array],
    gated_logits: jax.Array,
    gated_acts: Mapping[str, jax.Array],
    labels: jax.Array,
    *,
    lam: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The paper's objective (Eq. 7); see the module docstring."""
  del labels  # The paper's objective does not use labels.

  def per_sample_l2(a, b):
    diff = (a - b).reshape(a.shape[0], -1)
    # safe_norm: gradient 0 (not NaN) where a sample's distance is 0.
    return optax.safe_norm(diff, 0.0, axis=-1)

  distance = sum(per_sample_l2(gated_acts[s], ref_acts[s]) for s in ref_acts)
  distance = distance + per_sample_l2(gated_logits, ref_logits)
  distance = jnp.mean(distance)
  sparsity = sum(jnp.sum(jax.nn.sigmoid(g)) for g in gate_logits.values())
  loss = distance + lam * sparsity
  return loss, {"distance": distance, "sparsity": sparsity,
                "valid": jnp.asarray(True)}


def official_objective(
    gate_logits: Mapping[str, jax.Array],
    ref_logits: jax.Array,
    ref_acts: Mapping[str, jax.Array],
    gated_logits: jax.Array,
    gated_acts: Mapping[str, jax.Array],
    labels: jax.Array,
    *,
    beta: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The authors' code's objective; see the module docstring."""
  num_sites = len(gate_logits)
  correct = jnp.argmax(ref_logits, axis=-1) == labels  # [B]
  num_correct = jnp.sum(correct)
  safe_count = jnp.maximum(num_correct, 1)

  ce = jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(gated_logits, labels))

  def masked_mse(a, b):
    sq = jnp.square(a - b).reshape(a.shape[0], -1)
    per_sample = jnp.sum(sq, axis=-1) * correct
    return jnp.sum(per_sample) / (safe_count * sq.shape[-1])

  mse = sum(masked_mse(gated_acts[s], ref_acts[s]) for s in ref_acts)
  sparsity = sum(jnp.mean(jnp.square(jax.nn.sigmoid(g)))
                 for g in gate_logits.values())
  loss = (ce + mse) / num_sites + beta * sparsity / num_sites
  return loss, {"ce": ce, "mse": mse, "sparsity": sparsity,
                "valid": num_correct > 0}


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """A registry entry: the function and the name of its weight.

  ``weight`` is both the function's keyword argument and the field of
  ``config.objective`` (and of ``config.hparams_by_model.<name>``) that
  holds it; ``default`` is that field's default (``config_lib``). A weight
  must be a finite number >= 0.
  """
  fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  weight: str
  default: float = 1.0


# The single place objectives are defined: name -> function and weight.
OBJECTIVES: dict[str, ObjectiveSpec] = {
    "paper": ObjectiveSpec(paper_objective, weight="lam"),
    "official": ObjectiveSpec(official_objective, weight="beta"),
}


def get_objective(objective_config: ml_collections.ConfigDict) -> Objective:
  """The objective named by ``objective_config.name`` with its weight bound.

  Raises:
    ValueError: unknown objective name (the message lists the known ones).
  """
  name = objective_config.name
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; known objectives: "
                     f"{sorted(OBJECTIVES)}")
  spec = OBJECTIVES[name]
  return functools.partial(
      spec.fn, **{spec.weight: float(objective_config[spec.weight])})


def weight(objective_config: ml_collections.ConfigDict) -> tuple[str, float]:
  """``(field name, value)`` of the named objective's weight."""
  spec = OBJECTIVES[objective_config.name]
  return spec.weight, float(objective_config[spec.weight])
