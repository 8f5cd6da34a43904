"""Several processes run one search (``jax.distributed`` over CPU, localhost).

Two processes with a localhost coordinator must give the same paths as one
process: the tiny search (each process reading only the concepts on its own
device) and ``python -m nad_jax.main`` end to end. A run whose processes
are killed (SIGKILL) mid-run is completed by a rerun, with the same paths.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from nad_jax import checkpoint
from nad_jax import distributed
from tests import data_photos
from tests import test_search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [0, 1, 4, 5, 8, 9]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(argv_of, workdir, count=2):
  """Starts ``count`` processes; ``argv_of(index, port)`` is each one's."""
  port = _free_port()
  procs = []
  for index in range(count):
    log = open(os.path.join(workdir, f"log{index}.txt"), "a")
    procs.append(subprocess.Popen(
        [sys.executable, *argv_of(index, port)], cwd=ROOT, env=_env(),
        stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, workdir, timeout=600):
  for index, proc in enumerate(procs):
    code = proc.wait(timeout=timeout)
    log = open(os.path.join(workdir, f"log{index}.txt")).read()
    assert code == 0, f"process {index} exit {code}:\n{log[-3000:]}"


_TINY = textwrap.dedent("""
    import json, sys
    import jax
    from absl import logging
    from nad_jax import distributed
    logging.set_verbosity(logging.INFO)
    import ml_collections
    index, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    distributed.initialize(ml_collections.ConfigDict(dict(
        mode="auto", coordinator_address=f"localhost:{port}",
        num_processes=2, process_id=index)))
    assert jax.process_count() == 2 and len(jax.local_devices()) == 1
    from tests import test_search, tiny
    read = []

    class Recording(tiny.TinyDataset):
      def concept_batch(self, class_ids, step, batch_size):
        read.extend(int(c) for c in class_ids)
        return super().concept_batch(class_ids, step, batch_size)

    tiny.TinyDataset = Recording
    result = test_search._run([0, 1, 2, 3, 4], concepts_per_step=2,
                              log_every=3)
    json.dump({"read": sorted(set(read)),
               "gate_logits": {s: v.tolist()
                               for s, v in result.gate_logits.items()}},
              open(out, "w"))
""")


def test_two_processes_search_like_one(tmp_path):
  """The tiny search: same gates; each process read only its concepts."""
  outs = [str(tmp_path / f"out{i}.json") for i in range(2)]
  _wait(_start(lambda i, port: ["-c", _TINY, str(i), str(port), outs[i]],
               str(tmp_path)), str(tmp_path))
  one = test_search._run([0, 1, 2, 3, 4], concepts_per_step=2)
  got = [json.load(open(out)) for out in outs]
  for result in got:  # both processes end with the whole run's state
    for site, logits in one.gate_logits.items():
      np.testing.assert_allclose(result["gate_logits"][site], logits,
                                 rtol=1e-5, atol=1e-5)
  # Chunks of K=2 over 2 devices: [0, 1], [2, 3], [4, 4 (padding)]; the
  # first concept of each chunk lands on process 0's device.
  assert got[0]["read"] == [0, 2, 4]
  assert got[1]["read"] == [1, 3, 4]
  log = open(tmp_path / "log1.txt").read()
  assert "[process 1/2]" in log  # the progress line names the process


def _main_argv(workdir, num_steps):
  def argv(index, port):
    return ["-m", "nad_jax.main", "--config=configs/demo.py:vgg",
            f"--workdir={workdir}", f"--config.search.num_steps={num_steps}",
            "--config.data.classes=" + ",".join(map(str, CLASSES)),
            "--config.data.demo.train_per_class=64",
            "--config.data.demo.val_per_class=8",
            "--config.search.concepts_per_step=2",
            "--config.search.checkpoint_every=4",
            "--config.search.log_every=4", "--config.report.figures=False",
            *([] if index is None else [
                f"--config.distributed.coordinator_address=localhost:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={index}"])]
  return argv


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """paths.npz and metrics.json of the demo run in one process."""
  workdir = tmp_path_factory.mktemp("one")
  proc = subprocess.run(
      [sys.executable, *_main_argv(workdir, 12)(None, None)], cwd=ROOT,
      env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return (np.load(workdir / "paths.npz"),
          json.load(open(workdir / "metrics.json")))


def _assert_same_outputs(workdir, one_process):
  reference, reference_metrics = one_process
  merged = np.load(os.path.join(workdir, "paths.npz"))
  np.testing.assert_array_equal(merged["concept_ids"], CLASSES)
  sites = [k for k in reference.files if k.startswith("gate_logits/")]
  assert sites
  for key in sites:
    np.testing.assert_allclose(merged[key], reference[key], rtol=1e-5,
                               atol=1e-5)
    site = key.split("/")[1]
    # Binary paths equal wherever the logit is not within rounding of 0.
    clear = np.abs(reference[key]) > 1e-4
    np.testing.assert_array_equal(merged[f"path/{site}"][clear],
                                  reference[f"path/{site}"][clear])
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  np.testing.assert_allclose(metrics["original_accuracy"],
                             reference_metrics["original_accuracy"])
  np.testing.assert_allclose(metrics["path_accuracy"],
                             reference_metrics["path_accuracy"])


@pytest.mark.slow  # the kill test below covers the same outputs
def test_main_as_two_processes_equals_one(tmp_path, one_process):
  workdir = str(tmp_path)
  _wait(_start(_main_argv(workdir, 12), workdir), workdir)
  _assert_same_outputs(workdir, one_process)
  log0 = open(os.path.join(workdir, "log0.txt")).read()
  assert "[process 0/2]   chunk 1/3  step    4/12" in log0
  assert "ETA" in log0
  log1 = open(os.path.join(workdir, "log1.txt")).read()
  assert "process 0 writes the outputs" in log1
  # One checkpoint of the whole run, as a one-process run writes it.
  paths, ids = checkpoint.load_paths(workdir, CLASSES)
  np.testing.assert_array_equal(ids, CLASSES)


def test_killed_processes_are_resumed_by_a_rerun(tmp_path, one_process):
  workdir = str(tmp_path)
  procs = _start(_main_argv(workdir, 12), workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  deadline = time.monotonic() + 600

  def saved_steps():
    if not os.path.isdir(checkpoints):
      return []
    return sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())

  # Kill process 1 once a checkpoint is saved (mid-run: 3 chunks x 12
  # steps), then process 0 (as a scheduler takes a job down).
  while not saved_steps():
    assert time.monotonic() < deadline and procs[1].poll() is None
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  procs[0].send_signal(signal.SIGKILL)
  procs[0].wait()
  killed_at = max(saved_steps())
  assert killed_at < 36
  assert not os.path.exists(os.path.join(workdir, "paths.npz"))
  for index in range(2):  # the rerun appends to the same logs
    with open(os.path.join(workdir, f"log{index}.txt"), "a") as log:
      log.write("\n=== RERUN ===\n")
  _wait(_start(_main_argv(workdir, 12), workdir), workdir)
  _assert_same_outputs(workdir, one_process)
  for index in range(2):
    rerun = open(os.path.join(workdir, f"log{index}.txt")).read()
    rerun = rerun.split("=== RERUN ===")[1]
    assert "Resuming the search" in rerun
    assert f"(step {killed_at})" in rerun
    # Each process's progress line: its index, chunk, step, rate, ETA.
    assert f"[process {index}/2]   chunk " in rerun
    assert "images*concepts/s  ETA " in rerun


def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path,
                                                       one_process):
  """SIGTERM (a preemption notice) to process 1 only: both processes stop
  at the same host look with one checkpoint; a rerun finishes the run."""
  workdir = str(tmp_path)
  procs = _start(_main_argv(workdir, 12), workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  deadline = time.monotonic() + 600
  while not (os.path.isdir(checkpoints) and any(
      n.isdigit() for n in os.listdir(checkpoints))):
    assert time.monotonic() < deadline and procs[1].poll() is None
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  codes = [proc.wait(timeout=300) for proc in procs]
  logs = [open(os.path.join(workdir, f"log{i}.txt")).read() for i in range(2)]
  assert codes == [0, 128 + signal.SIGTERM], logs[1][-3000:]
  assert "stopped by SIGTERM" in logs[1]
  assert "search stopped early" in logs[0]
  saved = max(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  assert f"(step {saved})" in logs[1]  # process 1 names the checkpoint
  assert not os.path.exists(os.path.join(workdir, "paths.npz"))
  for index in range(2):
    with open(os.path.join(workdir, f"log{index}.txt"), "a") as log:
      log.write("\n=== RERUN ===\n")
  _wait(_start(_main_argv(workdir, 12), workdir), workdir)
  _assert_same_outputs(workdir, one_process)


def test_launch_detection():
  detect = distributed.launched_as_several_processes
  assert not detect({})
  assert not detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
  assert detect({"SLURM_PROCID": "1", "SLURM_NTASKS": "4"})
  assert not detect({"SLURM_NTASKS": "4"})  # a salloc shell, not srun
  assert detect({"OMPI_COMM_WORLD_SIZE": "2"})
  assert detect({"JAX_COORDINATOR_ADDRESS": "host0:1234"})


def test_shares_cover_every_item_once():
  shares = [distributed.process_share(range(10), i, 3) for i in range(3)]
  assert sorted(sum(shares, [])) == list(range(10))
  assert [len(s) for s in shares] == [4, 3, 3]


def test_partial_manual_launch_is_refused():
  from nad_jax import errors  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(
      mode="auto", coordinator_address="localhost:1234", num_processes=0,
      process_id=-1))
  with pytest.raises(errors.ConfigError, match=(
      "with coordinator_address set, num_processes .* and process_id .* "
      "must be set too")):
    distributed.initialize(config)


_DEVICE_PIPELINE = textwrap.dedent("""
    import json, sys
    import jax
    import ml_collections
    from nad_jax import distributed
    index, port, root, out = (int(sys.argv[1]), sys.argv[2], sys.argv[3],
                              sys.argv[4])
    if port != "none":
      distributed.initialize(ml_collections.ConfigDict(dict(
          mode="auto", coordinator_address=f"localhost:{port}",
          num_processes=2, process_id=index)))
    from nad_jax.data import batch_source, folder
    from tests import test_device_pipeline

    class Recording(folder.FolderDataset):
      read = set()

      def decode(self, split, class_id, index):
        Recording.read.add(int(class_id))
        return super().decode(split, class_id, index)

    dataset = Recording(root, image_size=test_device_pipeline.SIZE,
                        augment="random_resized_crop")
    batches = test_device_pipeline._device(dataset, max_size=(96, 128))
    result = test_device_pipeline._search(dataset, batches,
                                          concept_ids=(0, 1, 2, 3))
    json.dump({"read": sorted(Recording.read),
               "gate_logits": {s: v.tolist()
                               for s, v in result.gate_logits.items()}},
              open(out, "w"))
""")


def test_device_pipeline_processes_decode_only_their_concepts(tmp_path):
  """Two processes on the device pipeline: each decodes only the classes
  of the chunk rows on its own device, and the gates equal one process's."""
  root = tmp_path / "photos"
  photos = [data_photos.skimage_photo(name) for name in
            ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
  for split in ("train", "val"):
    for c, photo in enumerate(photos):
      os.makedirs(root / split / f"c{c}")
      os.symlink(photo, root / split / f"c{c}" / os.path.basename(photo))
  outs = [str(tmp_path / f"out{i}.json") for i in range(3)]
  procs = _start(lambda i, port: ["-c", _DEVICE_PIPELINE, str(i), str(port),
                                  str(root), outs[i]], str(tmp_path))
  one = subprocess.run(
      [sys.executable, "-c", _DEVICE_PIPELINE, "0", "none", str(root),
       outs[2]], cwd=ROOT, env=_env(), capture_output=True, text=True,
      timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  _wait(procs, str(tmp_path))
  got = [json.load(open(out)) for out in outs]
  # Chunks of K=2 over the 2 devices: [0, 1], [2, 3].
  assert got[0]["read"] == [0, 2] and got[1]["read"] == [1, 3]
  assert got[2]["read"] == [0, 1, 2, 3]
  for result in got[:2]:
    for site, logits in got[2]["gate_logits"].items():
      # One device holding both rows vs one row per device: the device
      # crops differ by float rounding (measured: up to 4e-5 in the gates).
      np.testing.assert_allclose(result["gate_logits"][site], logits,
                                 atol=2e-4)
      clear = np.abs(np.asarray(logits)) > 1e-3
      np.testing.assert_array_equal(
          (np.asarray(result["gate_logits"][site]) > 0)[clear],
          (np.asarray(logits) > 0)[clear])
