"""Objectives against hand calculations and a PyTorch restatement."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nad_jax import objectives

LN3 = math.log(3.0)


def _gate_logits():
  # sigmoid(0) = 0.5, sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25.
  return {"site00": jnp.array([0.0, LN3]), "site01": jnp.array([-LN3])}


def _acts():
  ref = {"site00": jnp.array([[1.0, 2.0], [3.0, 4.0]]),
         "site01": jnp.array([[1.0], [5.0]])}
  gated = {"site00": jnp.array([[1.0, 0.0], [0.0, 4.0]]),
           "site01": jnp.array([[0.0], [5.0]])}
  return ref, gated


def test_paper_objective_by_hand():
  ref, gated = _acts()
  ref_logits = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  gated_logits = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  loss, aux = objectives.paper_objective(
      _gate_logits(), ref_logits, ref, gated_logits, gated,
      jnp.array([0, 1]), lam=2.0)
  # Sample 0: ||(0,2)|| + ||(1)|| + ||(0,0)|| = 2 + 1 + 0 = 3.
  # Sample 1: ||(3,0)|| + ||(0)|| + ||(0,1)|| = 3 + 0 + 1 = 4.
  # Mean 3.5; L1 of sigmoids 0.5 + 0.75 + 0.25 = 1.5; loss 3.5 + 2 * 1.5.
  assert float(aux["distance"]) == pytest.approx(3.5)
  assert float(aux["sparsity"]) == pytest.approx(1.5)
  assert float(loss) == pytest.approx(6.5)
  assert bool(aux["valid"])


def test_paper_objective_gradient_finite_at_zero_distance():
  ref, _ = _acts()
  grads = jax.grad(lambda g: objectives.paper_objective(
      g, jnp.zeros((2, 2)), ref, jnp.zeros((2, 2)), ref, jnp.array([0, 1]),
      lam=1.0)[0])(_gate_logits())
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))


def test_official_objective_by_hand():
  ref, gated = _acts()
  # The original network gets sample 0 right (label 0), sample 1 wrong.
  ref_logits = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  gated_logits = jnp.array([[0.0, 0.0], [0.0, LN3]])
  labels = jnp.array([0, 1])
  loss, aux = objectives.official_objective(
      _gate_logits(), ref_logits, ref, gated_logits, gated, labels, beta=2.0)
  # CE: sample 0 softmax(0,0) -> ln 2; sample 1 softmax(0, ln3)[1] = 3/4 ->
  # ln(4/3). Mean = ln(8/3) / 2.
  ce = math.log(8 / 3) / 2
  # MSE on sample 0 only: site00 mean((0, 2)^2) = 2; site01 (1)^2 = 1.
  mse = 3.0
  # mean sigmoid^2: site00 (0.25 + 0.5625) / 2 = 0.40625; site01 0.0625.
  sparsity = 0.46875
  assert float(aux["ce"]) == pytest.approx(ce)
  assert float(aux["mse"]) == pytest.approx(mse)
  assert float(aux["sparsity"]) == pytest.approx(sparsity)
  assert float(loss) == pytest.approx((ce + mse) / 2 + 2.0 * sparsity / 2)
  assert bool(aux["valid"])


def test_official_objective_invalid_without_correct_samples():
  ref, gated = _acts()
  _, aux = objectives.official_objective(
      _gate_logits(), jnp.array([[0.0, 1.0], [1.0, 0.0]]), ref,
      jnp.zeros((2, 2)), gated, jnp.array([0, 1]), beta=1.0)
  assert not bool(aux["valid"])


def test_get_objective_unknown_name():
  with pytest.raises(ValueError, match="unknown objective 'nope'.*official"):
    objectives.get_objective(ml_collections.ConfigDict(
        {"name": "nope", "lam": 1.0, "beta": 1.0}))


def test_get_objective_binds_weight():
  ref, gated = _acts()
  fn = objectives.get_objective(ml_collections.ConfigDict(
      {"name": "paper", "lam": 2.0, "beta": 9.0}))
  loss, _ = fn(_gate_logits(), jnp.array([[1.0, 0.0], [0.0, 1.0]]), ref,
               jnp.array([[1.0, 0.0], [0.0, 0.0]]), gated, jnp.array([0, 1]))
  assert float(loss) == pytest.approx(6.5)
