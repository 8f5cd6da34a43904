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
