"""Kills and stops the command line many times; counts outcomes and steps lost.

    PYTHONPATH=. python benchmarks/fault_soak.py --kills=30 --each=5

Runs ``python -m tests.fault_runner`` (the real ``nad_jax.main`` on the tiny
test network and a small demo dataset: 3 concepts x 12 steps, a checkpoint
every 3 steps, 24 chunk-steps in all; ``tests/fault_config.py``) and
injects, one run at a time on one workdir:

* ``kill -9`` from outside at a uniformly random moment of the run (during
  start-up, compilation, steps, saves, evaluation or report);
* ``kill -9`` during a save: while Orbax writes, before it commits, after
  it commits (``--each`` times each, at a random save);
* SIGTERM and SIGINT at a random step (``--each`` times each).

After each fault the run is repeated on the same workdir until one ends
(so a rerun may itself be killed); each finished workdir's ``paths.npz``
is compared with an uninterrupted run's. Steps lost = chunk-steps reached
before the fault (restored step + steps dispatched by the killed process)
minus the step the next run resumed from. Prints a markdown table for
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KILLS = flags.DEFINE_integer("kills", 30, "Random-moment kill -9 faults.")
_EACH = flags.DEFINE_integer("each", 5, "Faults of each other kind.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


class Soak:
  """Runs the faults and keeps the tallies."""

  def __init__(self, root: str, rng: random.Random):
    self.root = root
    self.rng = rng
    self.cache = os.path.join(root, "cache")
    os.makedirs(self.cache, exist_ok=True)
    self.reference = None
    self.outcomes = collections.defaultdict(collections.Counter)
    self.lost = collections.defaultdict(list)
    self.count = 0

  def run(self, workdir, faults=None, kill_after=None):
    env = dict(os.environ, NAD_FAULTS=json.dumps(dict(faults or {},
                                                      print_steps=True)),
               NAD_FAULT_CACHE=self.cache, PYTHONPATH=ROOT,
               JAX_COMPILATION_CACHE_DIR=os.path.join(self.cache, "jax"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fault_runner",
         "--config=tests/fault_config.py", f"--workdir={workdir}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    if kill_after is not None:
      try:
        proc.wait(kill_after)
      except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    resumed = re.search(r"Resuming the search from .* \(step (\d+)\)", err)
    start = int(resumed.group(1)) if resumed else 0
    dispatched = len(re.findall(r"^STEP ", out, re.M))
    return proc.returncode, start, start + dispatched, err

  def until_done(self, workdir, kind, reached):
    """Reruns until a run ends; books the steps lost by the fault."""
    first = True
    while True:
      status, start, end, err = self.run(workdir)
      if first:
        self.lost[kind].append(max(0, reached - start))
        first = False
      if status == 0:
        return err
      self.outcomes[kind][f"rerun failed ({status})"] += 1
      reached = end

  def check_paths(self, workdir, kind):
    with np.load(os.path.join(workdir, "paths.npz")) as f:
      got = {k: f[k] for k in f.files}
    same = all(np.array_equal(got[k], v) for k, v in self.reference.items())
    self.outcomes[kind]["final paths identical" if same
                        else "FINAL PATHS DIFFER"] += 1

  def fresh(self):
    self.count += 1
    return os.path.join(self.root, f"run{self.count}")

  def reference_run(self):
    workdir = self.fresh()
    status, _, _, err = self.run(workdir)
    assert status == 0, err[-2000:]
    with np.load(os.path.join(workdir, "paths.npz")) as f:
      self.reference = {k: f[k] for k in f.files}
    durations = [float(x) for x in re.findall(r"done in (\d+) s", err)]
    return durations

  def random_kill(self, duration):
    workdir = self.fresh()
    kind = "kill -9 at a random moment"
    status, _, reached, err = self.run(
        workdir, {"sleep_per_step": 0.05},
        kill_after=self.rng.uniform(0.0, duration))
    if status == 0:
      self.outcomes[kind]["run had ended before the kill"] += 1
      self.lost[kind].append(0)
    else:
      self.outcomes[kind]["killed"] += 1
      self.until_done(workdir, kind, reached)
    self.check_paths(workdir, kind)

  def fault(self, kind, faults, expect):
    workdir = self.fresh()
    status, _, reached, err = self.run(workdir, faults)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if status == expect:
      self.outcomes[kind][f"exit {status}"] += 1
    else:
      self.outcomes[kind][f"UNEXPECTED exit {status}: {last[:100]}"] += 1
    if status in (130, 143):
      saved = re.search(r"saved in .* \(step (\d+)\)", last)
      reached = int(saved.group(1)) if saved else reached
    self.until_done(workdir, kind, reached)
    self.check_paths(workdir, kind)

  def table(self) -> str:
    lines = ["| fault | injected | outcome | steps lost (mean / max) |",
             "|---|---|---|---|"]
    for kind, outcomes in self.outcomes.items():
      lost = self.lost[kind]
      n = sum(v for k, v in outcomes.items() if k.startswith(
          ("killed", "exit", "run had", "UNEXPECTED")))
      text = "; ".join(f"{k}: {v}" for k, v in outcomes.items())
      lines.append(f"| {kind} | {n} | {text} | "
                   f"{np.mean(lost):.1f} / {max(lost)} |")
    return "\n".join(lines)


def main(argv):
  del argv
  rng = random.Random(_SEED.value)
  root = tempfile.mkdtemp(prefix="nad_soak_")
  soak = Soak(root, rng)
  start = time.time()
  soak.reference_run()
  # Time one undisturbed slow run to spread the random kills over it.
  t = time.time()
  status, _, _, _ = soak.run(soak.fresh(), {"sleep_per_step": 0.05})
  duration = time.time() - t
  assert status == 0
  for _ in range(_KILLS.value):
    soak.random_kill(duration)
  for when in ("write", "commit", "after_commit"):
    for _ in range(_EACH.value):
      soak.fault(f"kill -9 during a save ({when})",
                 {"kill_in_save": [rng.randint(1, 7), when]},
                 -signal.SIGKILL)
  for name, status in (("SIGTERM", 143), ("SIGINT", 130)):
    for _ in range(_EACH.value):
      soak.fault(f"{name} at a random step",
                 {"signal_at_step": [rng.randint(0, 22), name]}, status)
  print(soak.table())
  print(f"\n{time.time() - start:.0f} s; one undisturbed run with "
        f"0.05 s/step: {duration:.1f} s; workdirs in {root}")
  shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
