"""``concepts_per_step='auto'``: the largest K that fits, or a clear refusal."""

import logging

import jax
import numpy as np
import pytest

from nad_jax import memory
from nad_jax import optim
from nad_jax import search
from nad_jax.data import batch_source
from tests import test_search
from tests import tiny
from tests.test_device_pipeline import photo_root  # noqa: F401


def _budget(nbytes):
  return memory.Available(nbytes, "test budget")


def _needs(totals):
  """A fake ``need``: K -> StepMemory with ``totals[K]`` bytes."""
  calls = []

  def need(k):
    calls.append(k)
    return memory.StepMemory(temp=totals(k), argument=0, output=0, alias=0)

  return need, calls


def test_largest_k_linear():
  need, calls = _needs(lambda k: 100 + 10 * k)
  assert memory.largest_k(need, _budget(175), step=1, max_k=64).k == 7
  assert len(calls) == 3  # K=1, 2, then the extrapolated 7
  need, _ = _needs(lambda k: 100 + 10 * k)
  # A multiple of the device count.
  assert memory.largest_k(need, _budget(175), step=2, max_k=64).k == 6
  need, _ = _needs(lambda k: 100 + 10 * k)
  # No more than the run's concepts (rounded up to the device count).
  assert memory.largest_k(need, _budget(10**6), step=2, max_k=5).k == 6


def test_largest_k_refines_when_the_extrapolation_overshoots():
  # Close to linear but growing a little faster (XLA's need is like this).
  need, calls = _needs(lambda k: int(1000 + 100 * k ** 1.1))
  decision = memory.largest_k(need, _budget(20000), step=1, max_k=1000)
  best = max(k for k in range(1, 1000) if 1000 + 100 * k ** 1.1 <= 20000)
  assert decision.k == best
  assert len(calls) <= 8
  # Far from linear: still a K that fits, with a bounded number of compiles.
  need, calls = _needs(lambda k: 100 + k * k)
  decision = memory.largest_k(need, _budget(500), step=1, max_k=1000)
  assert 100 + decision.k ** 2 <= 500 and decision.k >= 10
  assert len(calls) <= 8


def test_refuses_when_one_concept_does_not_fit():
  need, _ = _needs(lambda k: 3 * 2**30 * k)
  with pytest.raises(ValueError, match=(
      r"not even 1 concept\(s\) fit.*needs 3\.00 GiB.*available: "
      r"2\.00 GiB")):
    memory.largest_k(need, _budget(2 * 2**30), step=1, max_k=8)


def _tiny_need():
  model = tiny.TinyNet(5)
  optimizer = optim.nad_optimizer(0.3)
  meta = dict(site_channels=model.gate_sites(), num_seeds=2, seed=3,
              num_steps=6, trajectory_every=10)
  state = search.init_state(list(range(5)), meta, optimizer)
  variables = jax.tree.map(np.asarray, tiny.tiny_variables(5))
  return search.step_memory_fn(
      test_search.STEP, variables,
      batch_source.HostBatches(tiny.TinyDataset(5), 4), state, 6,
      search._concept_mesh())


def test_auto_refuses_with_the_memory_it_needs():
  one = _tiny_need()(1)
  with pytest.raises(ValueError, match=(
      rf"concepts_per_step='auto': not even 1 concept\(s\) fit in device "
      rf"memory.*needs {one.total / 2**30:.2f} GiB.*available: 0\.00 GiB "
      rf".*search.memory_limit_gb=1e-07")):
    test_search._run([0, 1, 2], concepts_per_step="auto",
                     memory_limit_gb=1e-7)


def test_auto_picks_the_largest_k_under_the_limit(caplog):
  need = _tiny_need()
  three, four = need(3).total, need(4).total
  assert three < four
  limit_gb = (three + four) / 2 / memory.HEADROOM / 2**30
  caplog.set_level(logging.INFO)
  auto = test_search._run([0, 1, 2, 3, 4], concepts_per_step="auto",
                          memory_limit_gb=limit_gb)
  assert "concepts_per_step='auto': K=3 " in caplog.text
  fixed = test_search._run([0, 1, 2, 3, 4], concepts_per_step=3)
  for site, logits in fixed.gate_logits.items():
    np.testing.assert_allclose(auto.gate_logits[site], logits, rtol=1e-6)


def test_auto_on_the_host_memory_takes_every_concept(caplog):
  caplog.set_level(logging.INFO)
  result = test_search._run([0, 1, 2, 3, 4], concepts_per_step="auto")
  assert np.all(result.done)
  assert "concepts_per_step='auto': K=5 " in caplog.text
  assert "host's available memory" in caplog.text


def test_bad_concepts_per_step():
  with pytest.raises(ValueError, match="positive integer or 'auto'"):
    test_search._run([0], concepts_per_step="many")


@pytest.mark.parametrize("value", ["many", 0, -2, 1.5])
def test_config_refuses_bad_concepts_per_step(value):
  from nad_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.name = "demo_vgg"
  config.search.concepts_per_step = value
  with pytest.raises(ValueError, match=r"config.search.concepts_per_step="
                     r".* must be a positive integer or 'auto'"):
    config_lib.validate(config)
  config.search.concepts_per_step = "auto"
  config_lib.validate(config)


def test_auto_with_the_device_pipeline_counts_its_cache(photo_root, caplog):
  """Auto K probes the device pipeline's batch (the decode cache) too; the
  bf16 step runs on its device-made images."""
  from nad_jax.data import folder  # pylint: disable=g-import-not-at-top
  caplog.set_level(logging.INFO)
  results = []
  for concepts_per_step in ("auto", 3):
    dataset = folder.FolderDataset(photo_root, image_size=32,
                                   augment="random_resized_crop")
    batches = batch_source.DeviceBatches(
        dataset, batch_size=4, seed=0, image_size=32,
        augment="random_resized_crop", placement="device")
    results.append(search.disentangle(
        tiny.TinyNet(3), tiny.tiny_variables(3, image_size=32), dataset,
        [0, 1, 2], objective=test_search.OBJECTIVE,
        optimizer=optim.nad_optimizer(0.3), num_steps=3, batch_size=4,
        concepts_per_step=concepts_per_step, seed=0, log_every=0,
        batches=batches, compute_dtype="bfloat16"))
    batches.close()
  assert "concepts_per_step='auto': K=3 " in caplog.text
  assert "prefetched cache" in caplog.text
  for site, logits in results[1].gate_logits.items():
    np.testing.assert_allclose(results[0].gate_logits[site], logits,
                               rtol=1e-6)
