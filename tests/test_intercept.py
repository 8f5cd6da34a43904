"""The interception route: gate sites on an unmodified Flax model.

* On the project's own DemoResNet (shipped trained weights, demo data):
  intercepting the stem and the five residual blocks, whose outputs are
  exactly its hand-written gate sites, gives the same gate logits, bit for
  bit, after a short batched search, and the same path accuracies.
* On a network defined only here (setup- and compact-style submodules,
  nesting): site discovery and order, and gated activations checked against
  independent golden values: flax's own ``capture_intermediates`` for the
  ungated outputs, and the submodules re-applied by hand to gated inputs.
* Clear errors: a path never called, a pattern matching nothing, an output
  that is not a [batch, ..., channels] array, a submodule called twice.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nad_jax import evaluate
from nad_jax import models
from nad_jax import objectives
from nad_jax import optim
from nad_jax import params_io
from nad_jax import search
from nad_jax.data import demo as demo_data
from nad_jax.models import demo_nets
from nad_jax.models import intercept
from tests import tiny


# ----------------------------------------------------------------------------
# A network defined only in this test, knowing nothing of gates.


class Block(nn.Module):
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), strides=(self.stride, self.stride))(x)
    return nn.relu(x)


class Stage(nn.Module):
  """Two blocks defined in setup (named block0, block1)."""
  features: int

  def setup(self):
    self.block0 = Block(self.features, stride=2)
    self.block1 = Block(self.features)

  def __call__(self, x):
    return self.block1(self.block0(x))


class StageNet(nn.Module):
  num_classes: int = 5

  @nn.compact
  def __call__(self, images):
    x = Stage(8, name="stage1")(images)
    x = Stage(12, name="stage2")(x)
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


BLOCKS = r"stage\d/block\d"


@pytest.fixture(scope="module")
def stage_net():
  module = StageNet()
  images = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
  variables = module.init(jax.random.key(0), images)
  return module, variables, images


def test_pattern_finds_sites_in_call_order(stage_net):
  module, _, _ = stage_net
  model = intercept.InterceptedModel(module, pattern=BLOCKS,
                                     input_shape=(8, 8, 3))
  assert model.gate_sites() == {"site00": 8, "site01": 8, "site02": 12,
                                "site03": 12}
  assert model.site_paths == {"site00": "stage1/block0",
                              "site01": "stage1/block1",
                              "site02": "stage2/block0",
                              "site03": "stage2/block1"}
  # Listed paths are numbered in call order too; an enclosing module's
  # output comes after those of its submodules.
  listed = intercept.InterceptedModel(
      module, ["stage2", "stage1/block1", "stage1/block0/Conv_0"],
      input_shape=(8, 8, 3))
  assert list(listed.site_paths.values()) == [
      "stage1/block0/Conv_0", "stage1/block1", "stage2"]
  assert list(listed.gate_sites().values()) == [8, 8, 12]


def test_ungated_forward_is_the_unmodified_model(stage_net):
  module, variables, images = stage_net
  model = intercept.InterceptedModel(module, pattern=BLOCKS,
                                     input_shape=(8, 8, 3))
  logits, activations = model.apply(variables, images)
  np.testing.assert_array_equal(logits, module.apply(variables, images))
  # Golden: flax's own record of every submodule's output.
  _, state = module.apply(variables, images, capture_intermediates=True,
                          mutable=["intermediates"])
  inter = state["intermediates"]
  for site, path in model.site_paths.items():
    stage, block = path.split("/")
    np.testing.assert_array_equal(activations[site],
                                  inter[stage][block]["__call__"][0])


def test_gates_multiply_site_outputs_and_feed_the_rest(stage_net):
  module, variables, images = stage_net
  model = intercept.InterceptedModel(module, pattern=BLOCKS,
                                     input_shape=(8, 8, 3))
  rng = np.random.default_rng(0)
  gates = {s: jnp.asarray(rng.uniform(0, 1, c).astype(np.float32) *
                          (rng.random(c) > 0.3))
           for s, c in model.gate_sites().items()}
  logits, acts = jax.jit(model.apply)(variables, images, gates)
  params = variables["params"]
  # Golden: each block re-applied by hand to the previous gated output.
  x = images
  for site, path in model.site_paths.items():
    stage, block = path.split("/")
    features = model.gate_sites()[site]
    stride = 2 if block == "block0" else 1
    x = Block(features, stride).apply({"params": params[stage][block]}, x)
    x = x * gates[site]
    np.testing.assert_allclose(acts[site], x, rtol=1e-6, atol=1e-6)
  want = nn.Dense(5).apply({"params": params["head"]}, x.mean((1, 2)))
  np.testing.assert_allclose(logits, want, rtol=1e-6, atol=1e-6)
  assert not np.allclose(logits, module.apply(variables, images), atol=1e-3)


def test_search_and_evaluate_run_on_an_intercepted_model(stage_net):
  module, variables, _ = stage_net
  model = intercept.InterceptedModel(module, pattern=BLOCKS,
                                     input_shape=(8, 8, 3))
  dataset = tiny.TinyDataset(5)
  result = search.disentangle(
      model, variables, dataset, [0, 3],
      objective=functools.partial(objectives.paper_objective, lam=0.05),
      optimizer=optim.nad_optimizer(0.3), num_steps=3, batch_size=4,
      concepts_per_step=2, num_seeds=2, log_every=0)
  assert {s: v.shape for s, v in result.gate_logits.items()} == {
      "site00": (2, 2, 8), "site01": (2, 2, 8), "site02": (2, 2, 12),
      "site03": (2, 2, 12)}
  original, path_acc = evaluate.class_accuracies(
      model, variables, dataset, [0, 3], result.paths, batch_size=8)
  assert original.shape == (2,) and path_acc.shape == (2, 2)


# ----------------------------------------------------------------------------
# Errors.


class TupleBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = nn.Conv(4, (1, 1))(x)
    return y, y


class PooledBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    return jnp.mean(nn.Conv(4, (1, 1))(x), axis=(1, 2, 3))  # [batch]


class OddNet(nn.Module):
  @nn.compact
  def __call__(self, images):
    y, _ = TupleBlock(name="pair")(images)
    score = PooledBlock(name="pooled")(y)
    shared = Block(4, name="shared")
    for _ in range(2):  # one submodule applied twice
      y = shared(y)
    return nn.Dense(3, name="head")(y.mean((1, 2)) + score[:, None])


def _odd(**kwargs):
  return intercept.InterceptedModel(OddNet(), input_shape=(6, 6, 3), **kwargs)


def test_never_called_path_is_named_with_the_called_ones():
  with pytest.raises(ValueError, match=r"\['stage1/block7'\].*never called"
                     r".*'stage1/block0'"):
    intercept.InterceptedModel(StageNet(), ["stage1/block0", "stage1/block7"],
                               input_shape=(8, 8, 3))
  with pytest.raises(ValueError, match="never called"):
    intercept.InterceptedModel(StageNet(), ["stage1.block0"],
                               input_shape=(8, 8, 3))


def test_pattern_matching_nothing_is_refused():
  with pytest.raises(ValueError, match=r"pattern 'stage\\\\d/conv' matches "
                     r"no submodule.*'stage2/block1'"):
    intercept.InterceptedModel(StageNet(), pattern=r"stage\d/conv",
                               input_shape=(8, 8, 3))


def test_outputs_that_are_not_channels_last_arrays_are_refused():
  with pytest.raises(ValueError, match="'pair' returns a tuple, not an array"):
    _odd(sites=["pair"])
  with pytest.raises(ValueError, match=r"'pooled' outputs shape \(2,\)"):
    _odd(sites=["pooled"])


def test_submodule_called_twice_is_refused():
  with pytest.raises(ValueError, match="'shared' of OddNet is called 2 times"):
    _odd(pattern="shared|head")
  # Its own conv is called twice as well; the head once: fine.
  assert _odd(sites=["head"]).gate_sites() == {"site00": 3}


def test_sites_xor_pattern():
  with pytest.raises(ValueError, match="either sites"):
    intercept.InterceptedModel(StageNet(), input_shape=(8, 8, 3))
  with pytest.raises(ValueError, match="either sites"):
    intercept.InterceptedModel(StageNet(), ["stage1"], pattern="stage1",
                               input_shape=(8, 8, 3))
  with pytest.raises(ValueError, match="sequence of module paths"):
    intercept.InterceptedModel(StageNet(), "stage1", input_shape=(8, 8, 3))


# ----------------------------------------------------------------------------
# The project's own networks.


def test_efficientnet_blocks_intercepted_are_its_block_sites():
  model = models.get_model("efficientnet_lite0")
  intercepted = intercept.InterceptedModel(
      model, pattern=r"blocks_\d+", logits_fn=lambda out: out[0])
  hand = list(model.gate_sites().values())
  assert list(intercepted.gate_sites().values()) == hand[1:17]
  assert list(intercepted.site_paths.values()) == [
      f"blocks_{i}" for i in range(16)]


DEMO_RESNET_SITES = ["_ConvBN_0"] + [f"_BasicBlock_{i}" for i in range(5)]


def test_demo_resnet_paths_identical_hand_gated_and_intercepted():
  hand = demo_nets.DemoResNet()
  variables, _ = params_io.load_variables(
      demo_nets.weights_path("demo_resnet"), expect_arch="demo_resnet")
  # The unmodified network: its own gates stay None; its outputs are
  # (logits, activations), of which we take the logits.
  intercepted = intercept.InterceptedModel(
      demo_nets.DemoResNet(), DEMO_RESNET_SITES, input_shape=(32, 32, 3),
      logits_fn=lambda out: out[0])
  assert intercepted.gate_sites() == hand.gate_sites()
  assert list(intercepted.site_paths.values()) == DEMO_RESNET_SITES
  dataset = demo_data.DemoDataset(seed=0, train_per_class=24,
                                  val_per_class=8)
  concepts = [0, 5, 10]
  kwargs = dict(objective=functools.partial(objectives.paper_objective,
                                            lam=1.0),
                optimizer=optim.nad_optimizer(0.5), num_steps=12,
                batch_size=8, concepts_per_step=3, num_seeds=2, seed=4,
                log_every=0)
  results = [search.disentangle(m, variables, dataset, concepts, **kwargs)
             for m in (hand, intercepted)]
  for site in hand.gate_sites():
    np.testing.assert_array_equal(results[0].gate_logits[site],
                                  results[1].gate_logits[site])
  paths = results[0].paths
  # The search moved some gates, and paths are not all-on or all-off.
  used = np.mean([np.mean(p) for p in paths.values()])
  assert 0.05 < used < 0.95
  accuracies = [evaluate.class_accuracies(m, variables, dataset, concepts,
                                          paths, batch_size=8)
                for m in (hand, intercepted)]
  np.testing.assert_array_equal(accuracies[0][0], accuracies[1][0])
  np.testing.assert_array_equal(accuracies[0][1], accuracies[1][1])
