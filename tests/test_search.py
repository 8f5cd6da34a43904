"""The batched search: vmap over concepts, compile once, resume, errors."""

import functools

import jax
import numpy as np
import pytest

from nad_jax import objectives
from nad_jax import optim
from nad_jax import search
from tests import tiny

OBJECTIVE = functools.partial(objectives.paper_objective, lam=0.05)
# One step function for the whole module: it compiles once per chunk shape.
STEP = search.make_search_step(tiny.TinyNet(5), OBJECTIVE,
                               optim.nad_optimizer(0.3))


def _run(concept_ids, *, concepts_per_step, num_steps=6, num_seeds=2,
         workdir=None, step_fn=None, **kwargs):
  model = tiny.TinyNet(5)
  return search.disentangle(
      model, tiny.tiny_variables(5), tiny.TinyDataset(5), concept_ids,
      objective=OBJECTIVE, optimizer=optim.nad_optimizer(0.3),
      num_steps=num_steps, batch_size=4, concepts_per_step=concepts_per_step,
      num_seeds=num_seeds, seed=3, workdir=workdir, step_fn=step_fn or STEP,
      **{"log_every": 0, **kwargs})


def test_vmapped_search_equals_separate_searches():
  together = _run([0, 2, 4], concepts_per_step=3)
  for i, c in enumerate([0, 2, 4]):
    alone = _run([c], concepts_per_step=1)
    for site in together.gate_logits:
      np.testing.assert_allclose(together.gate_logits[site][i],
                                 alone.gate_logits[site][0], rtol=1e-5,
                                 atol=1e-5)
  # The search moved the gates away from their initialisation.
  init = search.init_gate_logits(3, [0, 2, 4], 2, tiny.TinyNet().gate_sites())
  assert not np.allclose(init["site00"], together.gate_logits["site00"])


def test_init_depends_only_on_concept():
  sites = tiny.TinyNet().gate_sites()
  a = search.init_gate_logits(3, [1, 4], 2, sites)
  b = search.init_gate_logits(3, [4], 2, sites)
  np.testing.assert_array_equal(a["site01"][1], b["site01"][0])
  assert not np.allclose(a["site01"][0], a["site01"][1])
  assert abs(float(np.std(search.init_gate_logits(
      0, range(64), 4, sites)["site01"])) - 1.0) < 0.1


def test_step_compiles_once_across_chunks():
  traces = []

  def counting_objective(*args):
    traces.append(1)  # Runs only while jax traces the step.
    return OBJECTIVE(*args)

  model = tiny.TinyNet(5)
  step_fn = search.make_search_step(model, counting_objective,
                                    optim.nad_optimizer(0.3))
  # 5 concepts in chunks of 2: three chunks, the last one padded.
  result = _run([0, 1, 2, 3, 4], concepts_per_step=2, step_fn=step_fn)
  assert len(traces) == 1
  assert np.all(result.done) and np.all(result.steps_done == 6)


def test_patience_stops_and_freezes():
  result = _run([0, 1], concepts_per_step=2, num_steps=200, patience=3)
  assert np.all(result.done)
  assert np.all(result.steps_done < 200)


def test_resume_equals_uninterrupted(tmp_path):
  full = _run([0, 1, 3], concepts_per_step=2, num_steps=7)
  workdir = str(tmp_path / "run")
  partial = _run([0, 1, 3], concepts_per_step=2, num_steps=7,
                 workdir=workdir, stop_after_steps=4, checkpoint_every=3)
  assert not np.all(partial.done)
  resumed = _run([0, 1, 3], concepts_per_step=2, num_steps=7,
                 workdir=workdir, checkpoint_every=3)
  assert np.all(resumed.done)
  for site in full.gate_logits:
    np.testing.assert_allclose(resumed.gate_logits[site],
                               full.gate_logits[site], rtol=1e-6, atol=1e-6)


def test_extend_with_more_concepts_keeps_finished_ones(tmp_path):
  workdir = str(tmp_path / "run")
  first = _run([0, 1], concepts_per_step=2, workdir=workdir)
  extended = _run([0, 1, 2], concepts_per_step=2, workdir=workdir)
  alone = _run([2], concepts_per_step=1)
  for site in first.gate_logits:
    np.testing.assert_array_equal(extended.gate_logits[site][:2],
                                  first.gate_logits[site])
    np.testing.assert_allclose(extended.gate_logits[site][2],
                               alone.gate_logits[site][0], rtol=1e-5,
                               atol=1e-5)


def test_workdir_of_another_model_is_refused_and_untouched(tmp_path):
  workdir = str(tmp_path / "run")
  meta = search.search_meta("tiny", tiny.TinyNet().gate_sites(), [0, 1],
                            seed=3, num_seeds=2, batch_size=4, hparams={})
  _run([0, 1], concepts_per_step=2, workdir=workdir, meta=meta)
  before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
  other = dict(meta, model="other_net")
  with pytest.raises(ValueError, match="different search.*other_net"):
    _run([0, 1], concepts_per_step=2, workdir=workdir, meta=other)
  after = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
  assert before == after


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_steps=0), "num_steps must be positive"),
    (dict(concept_ids=[0, 7]), r"concept ids \[7\] are out of range"),
    (dict(concept_ids=[]), "no concepts"),
])
def test_bad_input(kwargs, message):
  concept_ids = kwargs.pop("concept_ids", [0])
  with pytest.raises(ValueError, match=message):
    _run(concept_ids, concepts_per_step=1, **kwargs)


def test_trajectory_matches_separate_shorter_runs():
  """Flips and usage at each record equal those of runs stopped there."""
  every, num_steps = 2, 7  # records at steps 2, 4, 6 and 7
  result = _run([1, 3], concepts_per_step=2, num_steps=num_steps,
                trajectory_every=every)
  trajectory = result.trajectory
  np.testing.assert_array_equal(trajectory["steps"], [2, 4, 6, 7])
  previous = search.init_gate_logits(3, [1, 3], 2, tiny.TinyNet().gate_sites())
  for t, step in enumerate(trajectory["steps"]):
    # A run with a budget of `step` steps is the first `step` steps.
    shorter = _run([1, 3], concepts_per_step=2, num_steps=int(step))
    for site, logits in shorter.gate_logits.items():
      flips = np.sum((logits > 0) != (previous[site] > 0), axis=-1)
      np.testing.assert_array_equal(trajectory["flips"][site][..., t], flips)
      np.testing.assert_allclose(trajectory["usage"][site][..., t],
                                 (logits > 0).mean(-1), rtol=1e-6)
    previous = shorter.gate_logits
  assert sum(int(v.sum()) for v in trajectory["flips"].values()) > 0


def test_trajectory_after_a_patience_stop_is_flat():
  result = _run([0, 1], concepts_per_step=2, num_steps=200, patience=3,
                trajectory_every=5)
  assert np.all(result.steps_done < 200)
  last = (result.steps_done.max() + 4) // 5  # records up to the stop
  for site, flips in result.trajectory["flips"].items():
    assert np.all(flips[..., last:] == 0)
    usage = result.trajectory["usage"][site]
    np.testing.assert_array_equal(
        usage[..., last:], np.repeat(usage[..., last - 1:last],
                                     usage.shape[-1] - last, axis=-1))
    np.testing.assert_allclose(usage[..., -1],
                               result.paths[site].mean(-1), rtol=1e-6)


def test_resumed_trajectory_equals_uninterrupted(tmp_path):
  full = _run([0, 1, 3], concepts_per_step=2, num_steps=7,
              trajectory_every=2)
  workdir = str(tmp_path / "run")
  _run([0, 1, 3], concepts_per_step=2, num_steps=7, workdir=workdir,
       stop_after_steps=5, checkpoint_every=3, trajectory_every=2)
  resumed = _run([0, 1, 3], concepts_per_step=2, num_steps=7,
                 workdir=workdir, checkpoint_every=3, trajectory_every=2)
  for key in ("flips", "usage"):
    for site, values in full.trajectory[key].items():
      np.testing.assert_allclose(resumed.trajectory[key][site], values,
                                 rtol=1e-6)


def test_host_reads_the_device_state_only_at_sync_points(monkeypatch):
  """No host round trip per step: the host looks every log_every steps."""
  calls = []
  real_get = jax.device_get

  def counting_get(tree):
    calls.append(1)
    return real_get(tree)

  monkeypatch.setattr(search.jax, "device_get", counting_get)
  _run([0, 1], concepts_per_step=2, num_steps=20, log_every=5,
       trajectory_every=5)
  assert len(calls) == 4  # steps 5, 10, 15, 20
