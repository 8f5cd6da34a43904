"""The per-site gradient normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nad_jax import optim


def test_unit_norm_per_concept_and_site():
  grads = {"site00": jnp.array([[3.0, 4.0], [0.0, 2.0]]),  # [concepts, C]
           "site01": jnp.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0]])}
  tx = optim.normalize_by_site_norm()
  updates, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(updates["site00"], [[0.6, 0.8], [0.0, 1.0]])
  np.testing.assert_allclose(updates["site01"],
                             [[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0]])


def test_zero_gradient_stays_finite_and_zero():
  grads = {"site00": jnp.zeros((3,))}
  tx = optim.normalize_by_site_norm()
  updates, _ = tx.update(grads, tx.init(grads))
  assert np.all(np.isfinite(updates["site00"]))
  np.testing.assert_array_equal(updates["site00"], 0.0)


def test_nad_optimizer_step_is_alpha_times_unit_gradient():
  params = {"s": jnp.array([1.0, 1.0])}
  grads = {"s": jnp.array([0.0, -10.0])}
  tx = optim.nad_optimizer(0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["s"], [1.0, 1.5])  # 1 - 0.5 * (-1)


def test_normalisation_is_per_concept_under_vmap():
  tx = optim.normalize_by_site_norm()
  grads = {"s": jnp.array([[3.0, 4.0], [30.0, 40.0]])}
  out = jax.vmap(lambda g: tx.update(g, tx.init(g))[0])(grads)
  np.testing.assert_allclose(out["s"], [[0.6, 0.8], [0.6, 0.8]], rtol=1e-6)
