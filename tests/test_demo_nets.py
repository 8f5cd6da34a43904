"""Tests of the demo networks, their training and their shipped weights."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nad_jax import models
from nad_jax import params_io
from nad_jax import train_demo
from nad_jax.data import demo
from nad_jax.models import demo_nets

NAMES = ["demo_vgg", "demo_resnet", "demo_densenet"]


@pytest.fixture(scope="module", params=NAMES)
def net(request):
  """(module, variables, images, apply) with random weights and inputs;
  ``apply(gates)`` is the jitted forward pass on ``images``."""
  module = models.get_model(request.param, num_classes=16)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  # Random variables of the right shapes (module.init is slow on a CPU);
  # random BatchNorm statistics, so eval mode is not the identity.
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), images)

  def random_leaf(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name:
      fan_in = np.prod(leaf.shape[:-1])
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
    elif "scale" in name or "var" in name:
      value = 1.0 + 0.2 * rng.uniform(size=leaf.shape)
    else:  # bias, mean
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, jnp.float32)

  variables = jax.tree_util.tree_map_with_path(random_leaf, shapes)
  apply = jax.jit(lambda gates: module.apply(variables, images, gates))
  return module, variables, images, apply


def _ones(module):
  return {site: jnp.ones(c) for site, c in module.gate_sites().items()}


def test_registered_with_default_checkpoints():
  package_dir = os.path.dirname(os.path.dirname(os.path.abspath(
      models.__file__)))
  for name in NAMES:
    assert models.MODELS[name] is demo_nets.MODELS[name]
    assert os.path.normpath(models.DEFAULT_CHECKPOINTS[name]) == os.path.join(
        package_dir, "assets", "demo_weights", name)


def test_gate_sites_match_activations(net):
  module, variables, _, apply = net
  sites = module.gate_sites()
  assert list(sites) == [f"site{i:02d}" for i in range(len(sites))]
  assert 6 <= len(sites) <= 8
  logits, activations = apply(None)
  assert logits.shape == (3, 16)
  assert list(activations) == list(sites)
  for site, channels in sites.items():
    assert 16 <= channels <= 64
    assert activations[site].shape[0] == 3
    assert activations[site].shape[-1] == channels, site
  num_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert num_params <= 160_000


def test_gates_of_ones_reproduce_the_network(net):
  # Eager, not jitted: two different XLA programs may round differently.
  module, variables, images, _ = net
  logits, activations = module.apply(variables, images)
  gated_logits, gated_activations = module.apply(variables, images,
                                                 _ones(module))
  np.testing.assert_array_equal(gated_logits, logits)
  for site in activations:
    np.testing.assert_array_equal(gated_activations[site], activations[site])


def test_zero_gate_zeroes_its_site_and_changes_logits(net):
  module, _, _, apply = net
  sites = module.gate_sites()
  logits, _ = apply(None)
  for site in sites:
    gates = _ones(module)
    gates[site] = jnp.zeros(sites[site])
    gated_logits, activations = apply(gates)
    np.testing.assert_array_equal(activations[site], 0.0)
    assert not np.allclose(gated_logits, logits, atol=1e-4), site


def test_next_block_consumes_the_gated_activation(net):
  module, _, _, apply = net
  names = list(module.gate_sites())
  _, activations = apply(_ones(module))  # the same program as the gated runs
  for site, next_site in zip(names[:-1], names[1:]):
    gates = _ones(module)
    # Zero the channel with the largest value at this site (a channel that
    # is only ever negative may be cut by the next block's ReLU anyway).
    values = activations[site].reshape(-1, activations[site].shape[-1])
    channel = int(np.argmax(values.max(axis=0)))
    gates[site] = gates[site].at[channel].set(0.0)
    _, gated = apply(gates)
    np.testing.assert_array_equal(gated[site][..., channel], 0.0)
    # Earlier sites are unchanged, the next one changes.
    for earlier in names[:names.index(site)]:
      np.testing.assert_array_equal(gated[earlier], activations[earlier])
    assert not np.allclose(gated[next_site], activations[next_site],
                           atol=1e-5), (site, next_site)


def test_bad_gates_name_the_site(net):
  module, _, _, apply = net
  gates = _ones(module)
  gates["site01"] = jnp.ones(gates["site01"].shape[0] + 1)
  with pytest.raises(ValueError, match="site01"):
    apply(gates)
  del gates["site01"]
  with pytest.raises(KeyError, match="site01"):
    apply(gates)


@pytest.fixture(scope="module")
def tiny_dataset():
  return demo.DemoDataset(seed=0, train_per_class=8, val_per_class=2)


def test_training_smoke(tiny_dataset, tmp_path):
  # One network: the training code is the same for all three, and each
  # train step takes long to compile on a busy CPU.
  name = "demo_vgg"
  lines = []
  variables, metrics = train_demo.train(name, tiny_dataset, steps=3, seed=0,
                                        batch_size=32, learning_rate=1e-3,
                                        log_every=1, log=lines.append)
  assert set(variables) == {"params", "batch_stats"}
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables))
  assert np.isfinite(metrics["train_loss"]) and metrics["steps"] == 3
  assert 0.0 <= metrics["val_accuracy"] <= 1.0
  assert set(metrics["val_accuracy_per_primary"]) == set(
      tiny_dataset.hierarchy)
  assert len(lines) == 4 and "step 3/3" in lines[2]
  # BatchNorm ran in train mode: its running means left their init (zeros).
  means = [x for path, x in jax.tree_util.tree_leaves_with_path(
      variables["batch_stats"]) if "mean" in jax.tree_util.keystr(path)]
  assert means and all(np.any(x != 0.0) for x in means)

  # Saved as a params checkpoint that loads back, never overwritten silently.
  path = str(tmp_path / name)
  training = {"steps": 3, "seed": 0}
  train_demo.save(path, name, variables, metrics, tiny_dataset, training)
  loaded, meta = params_io.load_variables(path, expect_arch=name)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  assert meta["num_classes"] == 16 and meta["steps"] == 3
  assert meta["val_accuracy"] == metrics["val_accuracy"]
  assert meta["dataset"]["train_per_class"] == 8
  with pytest.raises(FileExistsError, match=name):
    train_demo.save(path, name, variables, metrics, tiny_dataset, training)


def test_training_rejects_bad_input(tiny_dataset):
  with pytest.raises(ValueError, match="vgg16"):
    train_demo.train("vgg16", tiny_dataset, steps=1, seed=0)
  with pytest.raises(ValueError, match="steps"):
    train_demo.train("demo_vgg", tiny_dataset, steps=0, seed=0)


@pytest.fixture(scope="module")
def shipped_dataset():
  meta = params_io.load_meta(demo_nets.weights_path("demo_vgg"))
  generation = dict(meta["dataset"])
  generation["train_per_class"] = 1  # the val images do not depend on it
  return demo.DemoDataset(**generation)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_weights_reach_their_reported_accuracy(name,
                                                       shipped_dataset):
  path = demo_nets.weights_path(name)
  size = sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)
  assert size < 1_000_000
  variables, meta = params_io.load_variables(path, expect_arch=name)
  assert meta["num_classes"] == 16
  module, loaded = models.load_model(ml_collections.ConfigDict(dict(
      name=name, num_classes=16, checkpoint="", image_size=32)))
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)

  apply = jax.jit(lambda x: module.apply(loaded, x)[0])
  correct, total = {}, {}
  for class_id in range(16):
    for images, labels in shipped_dataset.eval_batches(class_id, 64):
      predictions = np.argmax(np.asarray(apply(images)), -1)
      correct[class_id] = correct.get(class_id, 0) + int(
          np.sum(predictions == labels))
      total[class_id] = total.get(class_id, 0) + len(labels)
  accuracy = sum(correct.values()) / sum(total.values())
  assert accuracy >= meta["val_accuracy"] - 0.01
  assert accuracy >= 0.8
  for primary, ids in shipped_dataset.hierarchy.items():
    primary_accuracy = (sum(correct[i] for i in ids)
                        / sum(total[i] for i in ids))
    assert primary_accuracy >= (meta["val_accuracy_per_primary"][primary]
                                - 0.02), primary
