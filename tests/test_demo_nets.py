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
  """(name, module, variables, images) with random weights and inputs."""
  module = models.get_model(request.param, num_classes=16)
  images = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))
  variables = module.init(jax.random.PRNGKey(0), images)
  # Random BatchNorm statistics, so eval mode is not the identity.
  keys = iter(jax.random.split(jax.random.PRNGKey(2), 1000))
  variables["batch_stats"] = jax.tree.map(
      lambda x: x + 0.1 * jax.random.uniform(next(keys), x.shape),
      variables["batch_stats"])
  return request.param, module, variables, images


def test_registered_with_default_checkpoints():
  package_dir = os.path.dirname(os.path.dirname(os.path.abspath(
      models.__file__)))
  for name in NAMES:
    assert models.MODELS[name] is demo_nets.MODELS[name]
    assert os.path.normpath(models.DEFAULT_CHECKPOINTS[name]) == os.path.join(
        package_dir, "assets", "demo_weights", name)


def test_gate_sites_match_activations(net):
  _, module, variables, images = net
  sites = module.gate_sites()
  assert list(sites) == [f"site{i:02d}" for i in range(len(sites))]
  assert 6 <= len(sites) <= 8
  logits, activations = module.apply(variables, images)
  assert logits.shape == (3, 16)
  assert list(activations) == list(sites)
  for site, channels in sites.items():
    assert 16 <= channels <= 64
    assert activations[site].shape[0] == 3
    assert activations[site].shape[-1] == channels, site


def test_small_enough(net):
  _, module, variables, _ = net
  num_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert num_params <= 160_000


def test_gates_of_ones_reproduce_the_network(net):
  _, module, variables, images = net
  logits, activations = module.apply(variables, images)
  ones = {site: jnp.ones(c) for site, c in module.gate_sites().items()}
  gated_logits, gated_activations = module.apply(variables, images, ones)
  np.testing.assert_array_equal(gated_logits, logits)
  for site in activations:
    np.testing.assert_array_equal(gated_activations[site], activations[site])


def test_zero_gate_zeroes_its_site_and_changes_logits(net):
  _, module, variables, images = net
  sites = module.gate_sites()
  logits, _ = module.apply(variables, images)
  for site in sites:
    gates = {s: jnp.ones(c) for s, c in sites.items()}
    gates[site] = jnp.zeros(sites[site])
    gated_logits, activations = module.apply(variables, images, gates)
    np.testing.assert_array_equal(activations[site], 0.0)
    assert not np.allclose(gated_logits, logits, atol=1e-4), site


def test_next_block_consumes_the_gated_activation(net):
  _, module, variables, images = net
  sites = module.gate_sites()
  names = list(sites)
  _, activations = module.apply(variables, images)
  for site, next_site in zip(names[:-1], names[1:]):
    gates = {s: jnp.ones(c) for s, c in sites.items()}
    # Zero the channel with the largest activation at this site.
    channel = int(np.argmax(np.abs(activations[site]).sum(
        axis=tuple(range(activations[site].ndim - 1)))))
    gates[site] = gates[site].at[channel].set(0.0)
    _, gated = module.apply(variables, images, gates)
    np.testing.assert_array_equal(gated[site][..., channel], 0.0)
    # Earlier sites are unchanged, the next one changes.
    for earlier in names[:names.index(site)]:
      np.testing.assert_array_equal(gated[earlier], activations[earlier])
    assert not np.allclose(gated[next_site], activations[next_site],
                           atol=1e-5), (site, next_site)


def test_bad_gates_name_the_site(net):
  _, module, variables, images = net
  sites = module.gate_sites()
  gates = {s: jnp.ones(c) for s, c in sites.items()}
  gates["site01"] = jnp.ones(sites["site01"] + 1)
  with pytest.raises(ValueError, match="site01"):
    module.apply(variables, images, gates)
  del gates["site01"]
  with pytest.raises(KeyError, match="site01"):
    module.apply(variables, images, gates)


@pytest.fixture(scope="module")
def tiny_dataset():
  return demo.DemoDataset(seed=0, train_per_class=8, val_per_class=2)


@pytest.mark.parametrize("name", NAMES)
def test_training_smoke(name, tiny_dataset):
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
  # The weights moved and the returned batch statistics are not the init.
  module = models.get_model(name, num_classes=16)
  init = module.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)))
  assert not np.allclose(
      jax.tree.leaves(variables["params"])[0],
      jax.tree.leaves(init["params"])[0])
  assert not np.allclose(
      jax.tree.leaves(variables["batch_stats"])[0],
      jax.tree.leaves(init["batch_stats"])[0])


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
