"""``python -m nad_jax.main`` on the tiny test network, with injected faults.

For tests only. Run from the repository root::

  NAD_FAULTS='{"kill_at_step": 5}' python -m tests.fault_runner \\
      --config=tests/fault_config.py --workdir=DIR

It registers the model ``tiny`` (``tests/tiny.py``; its weights are written
once into ``$NAD_FAULT_CACHE``), installs the faults that ``$NAD_FAULTS``
(JSON) names, then runs the real command line on the (small) demo data.
Faults, counted in this process:

* ``kill_at_step: N``: SIGKILL itself when step N+1's batch is requested
  (N steps dispatched).
* ``signal_at_step: [N, "SIGTERM" | "SIGINT"]``: send itself the signal
  then (the real handler runs).
* ``kill_in_save: [N, "write" | "commit" | "after_commit"]``: SIGKILL during
  the N-th checkpoint save: right after Orbax started writing, before it
  renames the finished temporary directory, or right after the rename
  (before older checkpoints are deleted).
* ``fill_disk_at_step: N``: fill the workdir's file system (run it on a
  small tmpfs only!) so that the next checkpoint save meets a real ENOSPC.
* ``enospc_in_save: N``: the N-th save's array write raises
  ``OSError(ENOSPC)`` inside Orbax's asynchronous writer (an injected disk
  full for machines without a small file system to fill).
* ``nan_pixel: [class_id, index]``: that demo train image gets a NaN
  pixel after generation (the demo dataset's own check must catch it).
* ``sleep_per_step: seconds``: slow every step (to hold the workdir).
* ``print_steps``: print ``STEP n`` to stdout before each step.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time

import numpy as np

FAULTS = json.loads(os.environ.get("NAD_FAULTS", "{}") or "{}")
_counts = {"steps": 0, "saves": 0}


NUM_CLASSES = 4  # tests/fault_config.py: 2 demo primaries x 2 classes


def tiny_weights(cache_dir: str) -> str:
  """The tiny network's params checkpoint (written once)."""
  from nad_jax import params_io  # pylint: disable=g-import-not-at-top
  from tests import tiny  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.abspath(cache_dir), "tiny_weights")
  if not os.path.isdir(path):
    params_io.save_variables(path, tiny.tiny_variables(NUM_CLASSES),
                             {"arch": "tiny", "num_classes": NUM_CLASSES})
  return path


def register(cache_dir: str, setitem=None) -> None:
  """Registers the model ``tiny`` (``setitem``: e.g. pytest's
  ``monkeypatch.setitem``, to undo it after a test)."""
  from nad_jax import models  # pylint: disable=g-import-not-at-top
  from tests import tiny  # pylint: disable=g-import-not-at-top
  setitem = setitem or (lambda d, k, v: d.__setitem__(k, v))
  setitem(models.MODELS, "tiny", tiny.TinyNet)
  setitem(models.DEFAULT_CHECKPOINTS, "tiny", tiny_weights(cache_dir))
  setitem(models.CHECKPOINT_HELP, "tiny", "tests only")


def _kill(sig=signal.SIGKILL):
  sys.stdout.flush()
  sys.stderr.flush()
  os.kill(os.getpid(), sig)
  time.sleep(60)  # SIGKILL does not return


def _fill_disk(directory: str) -> None:
  """Waits for the save in flight, then fills the file system."""
  if "checkpointer" in _counts:
    _counts["checkpointer"]._manager.wait_until_finished()  # pylint: disable=protected-access
  block = b"\0" * 4096
  fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
  try:
    while True:
      os.write(fd, block)
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
  finally:
    os.close(fd)


def install_faults(workdir: str) -> None:
  """Patches the step loop and the checkpointer as ``FAULTS`` asks."""
  from nad_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from nad_jax.data import demo  # pylint: disable=g-import-not-at-top

  plain_batch = demo.DemoDataset.concept_batch
  plain_init = demo.DemoDataset.__init__

  def init(self, *args, **kwargs):
    plain_init(self, *args, **kwargs)
    if "nan_pixel" in FAULTS:
      class_id, index = FAULTS["nan_pixel"]
      self._images["train"][class_id, index, 2, 2, 1] = np.nan  # pylint: disable=protected-access

  demo.DemoDataset.__init__ = init

  def concept_batch(self, class_ids, step, batch_size):
    n = _counts["steps"]
    if "print_steps" in FAULTS:
      print(f"STEP {n}", flush=True)
    if FAULTS.get("kill_at_step") == n:
      _kill()
    if "signal_at_step" in FAULTS and FAULTS["signal_at_step"][0] == n:
      os.kill(os.getpid(), getattr(signal, FAULTS["signal_at_step"][1]))
    if FAULTS.get("fill_disk_at_step") == n:
      _fill_disk(workdir)
    if "sleep_per_step" in FAULTS:
      time.sleep(FAULTS["sleep_per_step"])
    _counts["steps"] += 1
    return plain_batch(self, class_ids, step, batch_size)

  demo.DemoDataset.concept_batch = concept_batch
  remembered_save = checkpoint.SearchCheckpointer.save

  def remember(self, step, state, meta):
    _counts["checkpointer"] = self
    return remembered_save(self, step, state, meta)

  checkpoint.SearchCheckpointer.save = remember

  if "kill_in_save" in FAULTS or "enospc_in_save" in FAULTS:
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
    from orbax.checkpoint._src.serialization import type_handlers  # pylint: disable=g-import-not-at-top
    plain_save = checkpoint.SearchCheckpointer.save
    plain_finalize = atomicity.AtomicRenameTemporaryPath.finalize
    plain_write = type_handlers.NumpyHandler._open_and_write  # pylint: disable=protected-access
    number, when = FAULTS.get("kill_in_save", (None, None))

    def save(self, step, state, meta):
      _counts["saves"] += 1
      if _counts["saves"] == number:
        _counts["target"] = str(step)
      if _counts["saves"] == FAULTS.get("enospc_in_save"):
        _counts["enospc"] = str(step)
      plain_save(self, step, state, meta)
      if _counts["saves"] == number and when == "write":
        _kill()

    # Orbax finalizes asynchronously, maybe after later saves started: the
    # step directory's name says which save it is.
    async def finalize(self, *args, **kwargs):
      target = os.path.basename(str(self._final_path)) == _counts.get(  # pylint: disable=protected-access
          "target")
      if target and when == "commit":
        _kill()
      result = await plain_finalize(self, *args, **kwargs)
      if target and when == "after_commit":
        _kill()
      return result

    async def open_and_write(handler, value, tspec, *args, **kwargs):
      if f"/{_counts.get('enospc')}.orbax-checkpoint-tmp/" in json.dumps(
          tspec, default=str):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
      return await plain_write(handler, value, tspec, *args, **kwargs)

    checkpoint.SearchCheckpointer.save = save
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    type_handlers.NumpyHandler._open_and_write = open_and_write  # pylint: disable=protected-access


def _flag(name: str) -> str:
  for arg in sys.argv[1:]:
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
  return ""


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from nad_jax import main  # pylint: disable=g-import-not-at-top
  register(os.environ.get("NAD_FAULT_CACHE") or _flag("workdir") or ".")
  install_faults(_flag("workdir"))
  app.run(main.main)
