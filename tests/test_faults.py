"""Fault injection: kills, signals, damaged checkpoints, a full disk,
non-finite values, concurrent runs and degenerate inputs.

Every case asserts the exact outcome: final paths identical to an
uninterrupted run, or one ``error:``/``stopped:`` line naming the cause
with a non-zero exit status, and no result file that contradicts the log.
The command-line cases run ``python -m tests.fault_runner`` (the real
``nad_jax.main`` on the tiny test network and a small demo dataset, 3
concepts x 12 steps, a checkpoint every 3 steps; see
``tests/fault_config.py``); the others call the pipeline or the search in
this process. ``benchmarks/fault_soak.py`` repeats the random kills many
times for ``benchmarks/RESULTS.md``.
"""

import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nad_jax import checkpoint
from nad_jax import errors
from nad_jax import main as main_lib
from nad_jax import objectives
from nad_jax import optim
from nad_jax import pipeline
from nad_jax import search
from nad_jax.data import demo as demo_data
from tests import fault_config
from tests import fault_runner
from tests import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUTS = ("paths.npz", "paths.json", "metrics.json", "report.md",
           "report.json", "config.json", "trajectory.npz")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """Tiny weights and JAX's compilation cache, shared by the subprocesses
  (a rerun then starts in about half the time)."""
  return str(tmp_path_factory.mktemp("fault_cache"))


@pytest.fixture
def registered(cache, monkeypatch):
  fault_runner.register(cache, monkeypatch.setitem)
  return cache


def _cli(workdir, cache, faults=None, *flags, wait=True, timeout=300):
  """Runs the command line under ``tests.fault_runner``."""
  env = dict(os.environ, NAD_FAULTS=json.dumps(faults or {}),
             NAD_FAULT_CACHE=cache, PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=os.path.join(cache, "jax"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  cmd = [sys.executable, "-m", "tests.fault_runner",
         "--config=tests/fault_config.py", f"--workdir={workdir}", *flags]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _last_line(stderr):
  return stderr.strip().splitlines()[-1]


def _paths(workdir):
  with np.load(os.path.join(workdir, "paths.npz")) as f:
    return {k: f[k] for k in f.files}


def _assert_same_paths(workdir, reference):
  got = _paths(workdir)
  assert sorted(got) == sorted(reference)
  for key, value in reference.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def _no_outputs(workdir):
  return [n for n in OUTPUTS if os.path.exists(os.path.join(workdir, n))]


def _steps_logged(stderr):
  """The (chunk, step) of every progress line."""
  return [(int(c), int(s)) for c, s in
          re.findall(r"chunk (\d+)/\d+\s+step\s+(\d+)/", stderr)]


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
  """The uninterrupted run's paths (in this process)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  with pytest.MonkeyPatch.context() as patch:
    fault_runner.register(cache, patch.setitem)
    pipeline.run(fault_config.get_config(), workdir)
  return _paths(workdir)


def test_kills_and_signals_then_resume_equal_an_uninterrupted_run(
    tmp_path, cache, reference):
  """kill -9 at a random moment, in each phase of a save, SIGTERM and
  SIGINT; a concurrent run is refused; every rerun resumes; the final
  paths are those of the uninterrupted run."""
  workdir = tmp_path / "run"
  rng = random.Random(int(os.environ.get("NAD_FAULT_SEED", "0")) or None)
  seed = rng.randrange(2**31)
  rng = random.Random(seed)
  print(f"NAD_FAULT_SEED={seed}")

  # 1. kill -9 from outside at a random moment; meanwhile a second run on
  # the same workdir is refused at once, naming the first one's pid.
  proc = _cli(workdir, cache, {"sleep_per_step": 0.05, "print_steps": True},
              wait=False)
  assert proc.stdout.readline().startswith("STEP 0")
  with pytest.MonkeyPatch.context() as patch:
    fault_runner.register(cache, patch.setitem)
    with pytest.raises(errors.WorkdirBusyError,
                       match=f"in use by pid {proc.pid} on host"):
      pipeline.run(fault_config.get_config(), str(workdir))
  time.sleep(rng.uniform(0.0, 1.0))
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  killed_pid = proc.pid

  # 2-4. kill -9 while a save writes, before it commits, after it commits.
  for when in ("write", "commit", "after_commit"):
    result = _cli(workdir, cache, {"kill_in_save": [1, when]})
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    if when == "write":  # the first rerun takes over the killed run's lock
      assert f"pid {killed_pid}" in result.stderr
      assert "no longer running" in result.stderr
    assert not _no_outputs(workdir)

  # 5-6. SIGTERM and SIGINT: checkpoint saved, clean exit, nothing lost.
  for name, status in (("SIGTERM", 143), ("SIGINT", 130)):
    result = _cli(workdir, cache, {"signal_at_step": [2, name]})
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = _last_line(result.stderr)
    assert last.startswith(f"stopped: stopped by {name} with ")
    assert "the search state is saved in" in last
    assert not _no_outputs(workdir)
    saved = checkpoint.SearchCheckpointer(workdir)
    step = saved.latest_step()
    saved.close()
    assert f"(step {step})" in last  # saved at the step it stopped

  # 7. The rest, uninterrupted.
  result = _cli(workdir, cache)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Unable to initialize backend" not in result.stderr
  _assert_same_paths(workdir, reference)


def test_nan_pixel_is_skipped_like_an_unreadable_image(tmp_path, registered,
                                                       reference):
  """A NaN pixel in a training image: the image is named and replaced by
  the next image of its class, as an unreadable file would be."""
  class_id, index = 1, 5
  plain_init = demo_data.DemoDataset.__init__

  def poisoned(self, *args, **kwargs):
    plain_init(self, *args, **kwargs)
    self._images["train"][class_id, index, 3, 4, 0] = np.nan

  def replaced(self, *args, **kwargs):
    plain_init(self, *args, **kwargs)
    train = self._images["train"]
    train[class_id, index] = train[class_id, index + 1]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(demo_data.DemoDataset, "__init__", poisoned)
    pipeline.run(fault_config.get_config(), str(tmp_path / "nan"))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(demo_data.DemoDataset, "__init__", replaced)
    pipeline.run(fault_config.get_config(), str(tmp_path / "replaced"))
  _assert_same_paths(tmp_path / "nan", _paths(tmp_path / "replaced"))
  metrics = json.loads((tmp_path / "nan" / "metrics.json").read_text())
  assert metrics["skipped_files"] == [f"demo/train/{class_id}/{index}"]
  assert f"demo/train/{class_id}/{index}" in (
      tmp_path / "nan" / "report.md").read_text()
  for values in _paths(tmp_path / "nan").values():
    if values.dtype.kind == "f":
      assert np.all(np.isfinite(values))


def test_nan_pixel_on_the_command_line(tmp_path, cache):
  result = _cli(tmp_path / "run", cache, {"nan_pixel": [3, 2]})
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r"skipping image demo/train/3/2 \(class 3 .*\): "
                   r"non-finite pixel values", result.stderr)
  assert "nan" not in " ".join(
      line for line in result.stderr.splitlines() if "loss" in line)


# --------------------------------------------------------------------------
# A full disk.


def _assert_save_failed_cleanly(result, workdir, reference, cache, every):
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = _last_line(result.stderr)
  match = re.fullmatch(
      r"error: saving the search checkpoint \(step (\d+)\) in \S+ failed: "
      r"disk full \(no space left on device\); the previous checkpoint "
      r"\(step (\d+)\) is intact\. Fix that and rerun with the same "
      r"--workdir to resume\.", last)
  assert match, last
  failed, intact = int(match.group(1)), int(match.group(2))
  assert intact == failed - every
  # The run stopped at its first look (every step here) after the save
  # failed, well before the next save would have reported it.
  steps = _steps_logged(result.stderr)
  last_total = (steps[-1][0] - 1) * 12 + steps[-1][1]
  assert failed <= last_total < failed + every, (failed, steps[-3:])
  assert not _no_outputs(workdir)
  # The previous checkpoint is intact, and a rerun resumes from it.
  saved = checkpoint.SearchCheckpointer(workdir)
  assert saved.latest_step() == intact
  saved.close()
  rerun = _cli(workdir, cache)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"Resuming the search from {workdir}/checkpoints (step {intact})" \
      in rerun.stderr
  _assert_same_paths(workdir, reference)


def test_disk_full_injected_in_the_asynchronous_save(tmp_path, cache,
                                                     reference):
  """ENOSPC raised inside Orbax's background writer of the second save."""
  workdir = tmp_path / "run"
  result = _cli(workdir, cache, {"enospc_in_save": 2},
                "--config.search.checkpoint_every=6")
  _assert_save_failed_cleanly(result, workdir, reference, cache, every=6)


def _can_mount_tmpfs():
  if not shutil.which("unshare"):
    return False
  probe = subprocess.run(
      ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
       "mkdir -p /tmp/nad_probe_$$ && mount -t tmpfs -o size=64k tmpfs "
       "/tmp/nad_probe_$$ && umount /tmp/nad_probe_$$; "
       "rmdir /tmp/nad_probe_$$"], capture_output=True)
  return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(),
                    reason="needs unprivileged user namespaces to mount a "
                    "small tmpfs; the injected ENOSPC test covers the logic")
def test_disk_full_on_a_real_small_file_system(tmp_path, cache, reference):
  """A 2 MB tmpfs, filled up before the second save: the free-space check
  refuses the save before Orbax writes anything."""
  mount = tmp_path / "fs"
  mount.mkdir()
  inner = mount / "run"
  copy = tmp_path / "run"
  env = dict(os.environ, NAD_FAULTS=json.dumps({"fill_disk_at_step": 4}),
             NAD_FAULT_CACHE=cache, PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=os.path.join(cache, "jax"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  script = (
      f"mount -t tmpfs -o size=2m tmpfs {mount} && "
      f"{sys.executable} -m tests.fault_runner "
      f"--config=tests/fault_config.py --workdir={inner}; status=$?; "
      f"rm -f {inner}/filler; cp -r {inner} {copy}; exit $status")
  result = subprocess.run(
      ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
       script], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  # The workdir's path changed with the copy out of the namespace.
  result.stderr = result.stderr.replace(str(inner), str(copy))
  _assert_save_failed_cleanly(result, copy, reference, cache, every=3)


# --------------------------------------------------------------------------
# Damaged checkpoints (the search in this process, on the tiny network).

SEARCH = dict(objective=functools.partial(objectives.paper_objective,
                                          lam=0.05),
              optimizer=optim.nad_optimizer(0.3), num_steps=9, batch_size=4,
              concepts_per_step=2, num_seeds=2, seed=3, log_every=0,
              checkpoint_every=3)
STEP = search.make_search_step(tiny.TinyNet(5), SEARCH["objective"],
                               SEARCH["optimizer"])


def _search(workdir=None, dataset=None, **kwargs):
  return search.disentangle(tiny.TinyNet(5), tiny.tiny_variables(5),
                            dataset or tiny.TinyDataset(5), [0, 2],
                            workdir=workdir, step_fn=STEP,
                            **{**SEARCH, **kwargs})


@pytest.fixture(scope="module")
def uninterrupted():
  return _search()


def _first_file(root, pattern):
  for directory, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      if re.fullmatch(pattern, name):
        return os.path.join(directory, name)
  raise AssertionError(f"no {pattern} under {root}")


def _remove(path):
  (shutil.rmtree if os.path.isdir(path) else os.remove)(path)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(path):
  data = bytearray(open(path, "rb").read())
  for i in range(len(data) // 3, len(data) // 3 + 16):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _nan_state(workdir, step):
  """Replaces checkpoint ``step`` by one whose gate logits hold a NaN (what
  a flipped exponent bit does), written by Orbax itself."""
  saved = checkpoint.SearchCheckpointer(workdir)
  meta = saved.restore_meta(step)
  template = search.init_state(meta["concept_ids"], meta,
                               SEARCH["optimizer"])
  state = saved.restore_state(template, step)
  state["gate_logits"]["site01"][1, 0, 2] = np.nan
  shutil.rmtree(os.path.join(saved.directory, str(step)))
  saved.close()
  saved = checkpoint.SearchCheckpointer(workdir)
  saved.save(step, state, meta)
  saved.close()


DAMAGE = {
    "missing manifest": lambda d: _remove(os.path.join(d, "state",
                                                       "manifest.ocdbt")),
    "missing inner manifest": lambda d: _remove(_first_file(
        os.path.join(d, "state"), r"manifest\.ocdbt")),
    # The data files Orbax reads (merged from ocdbt.process_0/ at commit).
    "truncated data file": lambda d: [
        _truncate(os.path.join(d, "state", "d", name))
        for name in os.listdir(os.path.join(d, "state", "d"))],
    "flipped bytes in the data": lambda d: [
        _flip_bytes(os.path.join(d, "state", "d", name))
        for name in os.listdir(os.path.join(d, "state", "d"))],
    "missing meta": lambda d: _remove(os.path.join(d, "meta")),
    "empty meta file": lambda d: open(os.path.join(d, "meta", "metadata"),
                                      "w").close(),
    "missing state": lambda d: _remove(os.path.join(d, "state")),
}


@pytest.mark.parametrize("kind", [*DAMAGE, "non-finite state"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, kind, uninterrupted, caplog):
  workdir = str(tmp_path / "run")
  partial = _search(workdir, stop_after_steps=6)
  assert not partial.done.all()
  directory = checkpoint.checkpoint_dir(workdir)
  assert sorted(os.listdir(directory)) == ["3", "6"]
  if kind == "non-finite state":
    _nan_state(workdir, 6)
  else:
    DAMAGE[kind](os.path.join(directory, "6"))
  with caplog.at_level("INFO"):
    resumed = _search(workdir)
  warnings = [r.getMessage() for r in caplog.records
              if "is damaged" in r.getMessage()]
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert warnings[0].startswith(f"Checkpoint 6 in {directory} is damaged (")
  assert "moved to 6.damaged, falling back to the previous one" in \
      warnings[0]
  assert "Resuming the search from" in caplog.text and "(step 3)" in \
      caplog.text
  assert os.path.isdir(os.path.join(directory, "6.damaged"))  # kept aside
  for site, logits in uninterrupted.gate_logits.items():
    np.testing.assert_array_equal(resumed.gate_logits[site], logits)
  # The paths can be read back, from the newest intact checkpoint.
  paths, _ = checkpoint.load_paths(workdir)
  for site, p in paths.items():
    np.testing.assert_array_equal(p, uninterrupted.paths[site])


def test_only_damaged_checkpoints_are_refused_in_one_message(tmp_path):
  workdir = str(tmp_path / "run")
  _search(workdir, stop_after_steps=6)
  directory = checkpoint.checkpoint_dir(workdir)
  for step in ("3", "6"):
    _remove(os.path.join(directory, step, "meta"))
  with pytest.raises(errors.CheckpointError) as info:
    _search(workdir)
  message = str(info.value)
  assert message.startswith(f"no intact checkpoint in {directory}: step 6: "
                            f"its meta cannot be read")
  assert "step 3: its meta cannot be read" in message
  assert sorted(os.listdir(directory)) == ["3.damaged", "6.damaged"]
  # Nothing is lost: the damaged ones are kept; a rerun starts over.
  fresh = _search(workdir)
  assert fresh.done.all()


# --------------------------------------------------------------------------
# Non-finite values inside the search.


class _NanAt(tiny.TinyDataset):
  """Tiny data whose batch of ``concept`` at ``step`` holds a NaN, as a
  broken device cache or decoder could deliver (past the data's checks)."""

  def __init__(self, concept, step):
    super().__init__(5)
    self.concept, self.step = concept, step

  def concept_batch(self, class_ids, step, batch_size):
    images, labels = super().concept_batch(class_ids, step, batch_size)
    for k, class_id in enumerate(class_ids):
      if class_id == self.concept and step == self.step:
        images[k, 0, 1, 1, 2] = np.nan
    return images, labels


def test_non_finite_loss_stops_only_that_concept(tmp_path, uninterrupted,
                                                 caplog):
  """Concept 2's batch of step 5 (0-based 4) holds a NaN: concept 2 stops
  with its gates of step 4, named with the step and site; concept 0 runs to
  the end as if nothing happened."""
  with caplog.at_level("WARNING"):
    result = _search(str(tmp_path / "run"), dataset=_NanAt(2, 4))
  assert result.failures == [search.Failure(2, 5, "site00", "activation")]
  assert "concept 2 'class2': non-finite activation at site00 in step 5" \
      in caplog.text
  np.testing.assert_array_equal(result.failed, [False, True])
  np.testing.assert_array_equal(result.steps_done, [9, 4])
  four_steps = _search(num_steps=4)
  for site, logits in result.gate_logits.items():
    assert np.all(np.isfinite(logits))
    np.testing.assert_array_equal(logits[0],
                                  uninterrupted.gate_logits[site][0])
    np.testing.assert_array_equal(logits[1], four_steps.gate_logits[site][1])
  # A rerun retries it from its last finite state (and here meets the NaN
  # again at the same step).
  caplog.clear()
  with caplog.at_level("WARNING"):
    again = _search(str(tmp_path / "run"), dataset=_NanAt(2, 4))
  assert "Retrying 1 concepts" in caplog.text
  assert again.failures == result.failures
  # With the data fixed, the rerun finishes it like an uninterrupted run.
  fixed = _search(str(tmp_path / "run"))
  assert not fixed.failures
  for site, logits in fixed.gate_logits.items():
    np.testing.assert_array_equal(logits, uninterrupted.gate_logits[site])


def test_pipeline_leaves_stopped_concepts_out_and_exits_3(
    tmp_path, registered, monkeypatch, capsys):
  plain = demo_data.DemoDataset.concept_batch

  def nan_batch(self, class_ids, step, batch_size):
    images, labels = plain(self, class_ids, step, batch_size)
    if 1 in list(class_ids) and step == 6:  # past the data's own check
      images[list(class_ids).index(1), 0, 0, 0, 0] = np.inf
    return images, labels

  monkeypatch.setattr(demo_data.DemoDataset, "concept_batch", nan_batch)
  workdir = tmp_path / "run"
  status = main_lib.run_cli(fault_config.get_config(), str(workdir))
  assert status == 3
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert line == (
      "error: 1 concepts stopped on non-finite values and are not in the "
      "results: tiny: concept 1 'round/cyan-disc': non-finite activation at "
      "site00 in step 7. Their last finite state is checkpointed; a rerun "
      "retries them.")
  exported = np.load(workdir / "paths.npz")
  np.testing.assert_array_equal(exported["concept_ids"], [0, 3])
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["concept_ids"] == [0, 3]
  assert metrics["stopped_concepts"] == [
      "concept 1 'round/cyan-disc': non-finite activation at site00 in "
      "step 7"]
  assert "stopped on non-finite values and are left out" in (
      workdir / "report.md").read_text()
  assert json.loads((workdir / "paths.json").read_text())["concepts"][1][
      "id"] == 3


def test_no_stale_outputs_when_every_concept_stops(tmp_path, registered,
                                                   monkeypatch, capsys):
  """An earlier run's outputs are removed when this run has no result, so
  nothing on disk contradicts the log."""
  config = fault_config.get_config()
  config.data.classes = "1"
  workdir = tmp_path / "run"
  config.search.num_steps = 2
  pipeline.run(config, str(workdir))
  assert (workdir / "paths.npz").exists()
  config.search.num_steps = 4  # extends the same search
  plain = demo_data.DemoDataset.concept_batch

  def nan_batch(self, class_ids, step, batch_size):
    images, labels = plain(self, class_ids, step, batch_size)
    if step == 2:
      images[:] = np.nan
    return images, labels

  monkeypatch.setattr(demo_data.DemoDataset, "concept_batch", nan_batch)
  assert main_lib.run_cli(config, str(workdir)) == 3
  assert "concept 1 'round/cyan-disc': non-finite activation at site00 in " \
      "step 3" in capsys.readouterr().err
  assert not _no_outputs(workdir)


# --------------------------------------------------------------------------
# Degenerate inputs and logs.


def test_one_class_gives_a_report_without_the_comparisons(tmp_path,
                                                          registered):
  config = fault_config.get_config()
  config.data.classes = "1"
  workdir = tmp_path / "run"
  rows = pipeline.run(config, str(workdir))
  assert rows[0]["num_concepts"] == 1
  assert math_isnan(rows[0]["interpretability"])
  report = (workdir / "report.md").read_text()
  assert "Only one concept was disentangled" in report
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["notes"] and metrics["concept_ids"] == [1]
  # A rerun (everything checkpointed) writes the same report again.
  pipeline.run(config, str(workdir))
  assert (workdir / "report.md").read_text() == report


def math_isnan(value):
  return value is None or value != value


def test_compare_override_reaches_every_network_and_its_report(
    tmp_path, registered, monkeypatch):
  """--config.optim.alpha in compare mode: every network runs with it, its
  config.json and the combined report say so."""
  monkeypatch.setitem(pipeline.models.MODELS, "tiny2", tiny.TinyNet)
  monkeypatch.setitem(pipeline.models.DEFAULT_CHECKPOINTS, "tiny2",
                      pipeline.models.DEFAULT_CHECKPOINTS["tiny"])
  monkeypatch.setitem(pipeline.models.CHECKPOINT_HELP, "tiny2", "tests")
  config = fault_config.get_config()
  config.search.num_steps = 2
  with config.unlocked():
    config.compare = ("tiny", "tiny2")
    config.hparams_by_model = {"tiny": {"alpha": 0.5, "lam": 1.0},
                               "tiny2": {"alpha": 0.5, "lam": 2.0}}
  config.optim.alpha = 0.2  # as --config.optim.alpha=0.2 does
  # tiny2 loads tiny's weights.
  monkeypatch.setattr(pipeline.models.params_io, "load_variables",
                      _any_arch(pipeline.models.params_io.load_variables))
  pipeline.run(config, str(tmp_path), overrides={"optim.alpha"})
  for name, lam in (("tiny", 1.0), ("tiny2", 2.0)):
    ran = json.loads((tmp_path / name / "config.json").read_text())
    assert ran["optim"]["alpha"] == 0.2
    assert ran["objective"]["lam"] == lam
    assert ran["compare"] == [] and ran["hparams_by_model"] == {}
  report = (tmp_path / "report.md").read_text()
  assert "| tiny | tiny | 1.0 |" in report
  assert "| tiny2 | tiny2 | 2.0 |" in report
  assert '"optim.alpha": 0.2' in report


def _any_arch(load):
  def load_variables(path, expect_arch=None):
    del expect_arch
    return load(path)
  return load_variables


def test_class_mismatch_warns_with_the_numbers(caplog):
  config = fault_config.get_config()
  config.model.num_classes = 16
  dataset = tiny.TinyDataset(5)
  with caplog.at_level("WARNING"):
    pipeline.check_labels(config, dataset, [0, 1])
  assert "The data has 5 classes but tiny has 16 outputs" in caplog.text
  config.model.num_classes = 3
  with pytest.raises(errors.DataError, match=r"classes \[4\] have labels "
                     r"outside the 3 outputs of tiny"):
    pipeline.check_labels(config, dataset, [0, 4])
  caplog.clear()
  with caplog.at_level("WARNING"):
    pipeline._check_accuracy(config, np.asarray([0.0, 0.0]))  # pylint: disable=protected-access
  assert "classifies 0.0% of these validation images correctly (chance: " \
      "33.3%)" in caplog.text


def test_known_library_noise_is_filtered():
  import logging  # pylint: disable=g-import-not-at-top
  quiet = main_lib._QuietLibraries()  # pylint: disable=protected-access

  def record(path, level, message):
    return logging.LogRecord("absl", level, path, 1, message, (), None)

  assert not quiet.filter(record(
      "/x/jax/_src/xla_bridge.py", logging.INFO,
      "Unable to initialize backend 'tpu': INTERNAL: Failed to open "
      "libtpu.so"))
  assert not quiet.filter(record("/x/orbax/checkpoint/a.py", logging.INFO,
                                 "Saving checkpoint"))
  assert quiet.filter(record("/x/nad_jax/search.py", logging.INFO, "Chunk"))
  kept = record("/x/orbax/checkpoint/a.py", logging.ERROR, "failed\nlong")
  kept.exc_info = (ValueError, ValueError("x"), None)
  assert quiet.filter(kept) and kept.exc_info is None
  assert kept.getMessage() == "failed long"


def test_evaluation_progress_every_n_classes(caplog):
  from nad_jax import evaluate  # pylint: disable=g-import-not-at-top
  model, variables = tiny.TinyNet(5), tiny.tiny_variables(5)
  with caplog.at_level("INFO"):
    evaluate.class_accuracies(model, variables, tiny.TinyDataset(5),
                              [0, 1, 2, 3, 4], None, batch_size=4,
                              log_every_classes=2, log_every_seconds=1e9)
  lines = re.findall(r"evaluated (\d)/5 classes \((\d+) images",
                     caplog.text)
  assert lines == [("1", "12"), ("3", "36"), ("5", "60")]


def test_non_finite_image_from_a_file_source_is_skipped(tmp_path, caplog):
  """IndexedConceptDataset (folders, tfds): an image that is non-finite
  after its transform is skipped and named like an unreadable one."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from nad_jax.data import folder  # pylint: disable=g-import-not-at-top
  from nad_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  for split in ("train", "val"):
    for name in ("a", "b"):
      os.makedirs(tmp_path / split / name)
      for i in range(3):
        Image.new("RGB", (10, 10), (40 * i, 90, 20)).save(
            tmp_path / split / name / f"{i}.png")
  dataset = folder.FolderDataset(str(tmp_path), image_size=8)
  bad = str(tmp_path / "train" / "b" / "1.png")
  plain = preprocess.eval_transform

  def transform(image, size):
    out = plain(image, size)
    if image.getpixel((0, 0))[0] == 40 and image.getpixel((0, 0))[1] == 90:
      out[0, 0, 0] = np.nan  # what a broken decoder or cache might give
    return out

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(preprocess, "eval_transform", transform)
    with caplog.at_level("WARNING"):
      images, _ = dataset.concept_batch([1], 0, 6)
  assert np.all(np.isfinite(images))
  assert bad in dataset.skipped_files
  assert f"skipping image {bad} (class 1 'b'): non-finite pixel values" in \
      caplog.text


def test_device_cache_skips_non_finite_demo_images():
  """The device pipeline's decode-once cache applies the same rule."""
  from nad_jax.data import decode_cache  # pylint: disable=g-import-not-at-top
  dataset = demo_data.DemoDataset(num_primaries=1, classes_per_primary=2,
                                  train_per_class=6, val_per_class=2,
                                  image_size=8)
  dataset._images["train"][1, 2, 0, 0, 0] = np.nan  # pylint: disable=protected-access
  with decode_cache.DecodeCache(dataset, image_size=8,
                                augment="none") as cache:
    chunk = cache.build([0, 1])
  assert dataset.skipped_files == ["demo/train/1/2"]
  np.testing.assert_array_equal(chunk.slot_of[1], [0, 1, 3, 3, 4, 5])
  np.testing.assert_array_equal(chunk.slot_of[0], np.arange(6))
