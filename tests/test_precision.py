"""bfloat16 vs float32 compute: the same search, the same paths.

The search step is run from the same gates on the same batches once with
``compute_dtype='float32'`` and once with ``'bfloat16'`` (network weights
and activations in bf16; gate logits, objective, gradient and update in
f32). Compared: the loss at every step (relative difference) and, after the
last step, each concept's binary path over all sites (Jaccard similarity).
The flipped share (units whose path bit changed from the initial gates in
the float32 run) shows the search moved, so agreement is not trivial.

Measured on this project's 2-core CPU (numbers in benchmarks/RESULTS.md):

* demo networks (shipped weights, demo data, 4 concepts x 16 images, 50
  steps, alpha 0.5, lambda 1): loss relative difference <= 0.13%, Jaccard
  >= 0.986 with ~45-55% of the units flipped. The test runs 15 steps.
* VGG16 at 224 px, random He-normal weights, B = 2 images per concept
  (one forward of 16 images costs ~12 s on this CPU), K = 2, 3 steps,
  alpha 5, lambda 1: loss relative difference <= 3.2e-4, Jaccard 0.9993
  with ~23% flipped. Marked ``slow`` (about 3 minutes).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nad_jax import models
from nad_jax import objectives
from nad_jax import optim
from nad_jax import search
from nad_jax.data import demo


def _chunk(model, k, optimizer):
  gate_logits = search.init_gate_logits(0, range(k), 1, model.gate_sites())
  zeros = np.zeros((k, 1), np.int32)
  healthy = np.full((k,), -1, np.int32)
  return {"gate_logits": gate_logits,
          "opt_state": jax.vmap(jax.vmap(optimizer.init))(gate_logits),
          "stable": zeros, "step": np.zeros((k,), np.int32),
          "failed_step": healthy, "failed_site": healthy,
          "failed_what": healthy,
          "sums": {"loss": np.zeros((k, 1), np.float32), "changed": zeros,
                   "valid": zeros, "active": zeros}}


def _compare(model, variables, batches, lam, alpha):
  """``(loss relative difference [steps, K], Jaccard [K], flipped [K])``."""
  optimizer = optim.nad_optimizer(alpha)
  objective = functools.partial(objectives.paper_objective, lam=lam)
  k = batches[0][0].shape[0]
  runs = {}
  for dtype in ("float32", "bfloat16"):
    step = search.make_search_step(model, objective, optimizer,
                                   compute_dtype=dtype)
    cast = search.cast_variables(variables, dtype)
    chunk = jax.tree.map(jnp.asarray, _chunk(model, k, optimizer))
    losses = []
    for images, labels in batches:
      chunk, metrics = step(cast, chunk, jnp.asarray(images),
                            jnp.asarray(labels), jnp.zeros((), jnp.int32))
      losses.append(np.asarray(metrics["loss"])[:, 0])
    paths = np.concatenate([np.asarray(v)[:, 0] > 0 for v in
                            chunk["gate_logits"].values()], axis=-1)
    runs[dtype] = np.stack(losses), paths
  (loss32, paths32), (loss16, paths16) = runs["float32"], runs["bfloat16"]
  initial = np.concatenate([v[:, 0] > 0 for v in _chunk(
      model, k, optimizer)["gate_logits"].values()], axis=-1)
  rel = np.abs(loss16 - loss32) / np.abs(loss32)
  jaccard = (paths32 & paths16).sum(-1) / (paths32 | paths16).sum(-1)
  flipped = (paths32 != initial).mean(-1)
  return rel, jaccard, flipped


@pytest.fixture(scope="module")
def demo_data():
  return demo.DemoDataset(seed=0, train_per_class=64, val_per_class=8)


@pytest.mark.parametrize("name",
                         ["demo_vgg", "demo_resnet", "demo_densenet"])
def test_bf16_matches_f32_on_the_demo_networks(name, demo_data):
  model, variables = models.load_model(ml_collections.ConfigDict(dict(
      name=name, num_classes=16, checkpoint="", image_size=32)))
  ids = [0, 5, 10, 15]
  batches = [demo_data.concept_batch(ids, step, 16) for step in range(15)]
  rel, jaccard, flipped = _compare(model, variables, batches, lam=1.0,
                                   alpha=0.5)
  print(f"{name}: loss rel. diff max {np.max(rel):.2e}, Jaccard "
        f"{np.round(jaccard, 4)}, flipped {np.round(flipped, 3)}")
  assert np.max(rel) < 5e-3, rel
  assert np.min(jaccard) > 0.97, jaccard
  assert np.min(flipped) > 0.2, flipped  # the paths did move


def test_bf16_activations_are_bf16():
  """The network really computes in bfloat16 (sites), the loss in f32."""
  model, variables = models.load_model(ml_collections.ConfigDict(dict(
      name="demo_resnet", num_classes=16, checkpoint="", image_size=32)))
  cast = search.cast_variables(variables, "bfloat16")
  leaves = jax.tree_util.tree_leaves_with_path(cast)
  for path, leaf in leaves:
    expected = (jnp.float32 if "batch_stats" in jax.tree_util.keystr(path)
                else jnp.bfloat16)
    assert leaf.dtype == expected, jax.tree_util.keystr(path)
  gates = {s: jnp.full((c,), 0.5) for s, c in model.gate_sites().items()}
  logits, acts = model.apply(cast, jnp.zeros((2, 32, 32, 3), jnp.bfloat16),
                             gates=gates)
  assert logits.dtype == jnp.bfloat16
  assert all(a.dtype == jnp.bfloat16 for a in acts.values())


def _he_normal_vgg16():
  model = models.get_model("vgg16", num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 224, 224, 3)))
  rng = np.random.default_rng(0)

  def leaf(path, x):
    if "kernel" in jax.tree_util.keystr(path[-1:]):
      fan_in = np.prod(x.shape[:-1])
      return (rng.standard_normal(x.shape, np.float32)
              * np.float32(np.sqrt(2.0 / fan_in)))
    return np.zeros(x.shape, np.float32)

  return model, jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.mark.slow
def test_bf16_matches_f32_on_vgg16_224():
  model, variables = _he_normal_vgg16()
  rng = np.random.default_rng(1)
  # K = 2 concepts x B = 2 images (a forward of 16 images costs ~12 s here).
  batches = [(rng.standard_normal((2, 2, 224, 224, 3), np.float32),
              np.zeros((2, 2), np.int32)) for _ in range(3)]
  rel, jaccard, flipped = _compare(model, variables, batches, lam=1.0,
                                   alpha=5.0)
  print(f"vgg16: loss rel. diff max {np.max(rel):.2e}, Jaccard "
        f"{np.round(jaccard, 4)}, flipped {np.round(flipped, 3)}")
  assert np.max(rel) < 2e-3, rel
  assert np.min(jaccard) > 0.99, jaccard
  assert np.min(flipped) > 0.1, flipped


def test_unknown_compute_dtype_is_refused():
  from nad_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.name = "demo_vgg"
  config.search.compute_dtype = "float16"
  with pytest.raises(ValueError, match=r"config.search.compute_dtype="
                     r"'float16' is not allowed: it must be one of "
                     r"'bfloat16', 'float32'"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    search.make_search_step(models.get_model("demo_vgg", num_classes=16),
                            None, optim.nad_optimizer(0.1),
                            compute_dtype="float16")
