"""Forward time and peak memory: Flax networks vs torchvision on this CPU.

Usage (from the repository root; needs torch + torchvision)::

  python benchmarks/bench_forward.py [--batch_size 16] [--runs 5]
      [--archs vgg16,resnet50,densenet121]

Each (framework, network) runs in its own subprocess so memory numbers do
not mix. Random weights (timing does not depend on them), float32, NHWC
for Flax / NCHW for torch, batch 16 at 224x224 by default.

* time: median wall time of ``--runs`` forward passes after one warm-up
  (which for Flax includes the ``jax.jit`` compile, reported separately).
  Flax is timed twice: the contract's forward returning logits and every
  gate site's activation, and a jit returning only the logits.
* peak memory: a thread samples the process RSS (psutil) every 2 ms during
  the warm-up and the timed runs; reported is the peak minus the RSS just
  before the warm-up (weights, inputs and, for Flax, the compiled program
  already resident): the working memory of a forward. Heap the compiler
  freed may be reused, so the Flax number can be an underestimate. For
  Flax also XLA's own ``memory_analysis()`` of the compiled forward
  (temporaries + outputs), as XLA reports it on CPU.

Prints a markdown table (paste into benchmarks/RESULTS.md (section 4)).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RssSampler:
  """Samples this process's RSS in a thread; ``peak`` is the maximum."""

  def __init__(self, interval_s: float = 0.002):
    import psutil  # pylint: disable=g-import-not-at-top
    self._process = psutil.Process()
    self._interval_s = interval_s
    self._stop = threading.Event()
    self.start_rss = self._process.memory_info().rss
    self.peak = self.start_rss
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, self._process.memory_info().rss)
      time.sleep(self._interval_s)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def _time_runs(fn, runs: int) -> tuple[list[float], RssSampler]:
  """Warm-up call, then ``runs`` timed calls; RSS sampled over all of them."""
  times = []
  with RssSampler() as sampler:
    fn()  # warm-up (not timed)
    for _ in range(runs):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
  return times, sampler


def bench_flax(arch: str, batch_size: int, runs: int) -> dict:
  sys.path.insert(0, _ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from nad_jax import models  # pylint: disable=g-import-not-at-top

  model = models.get_model(arch, num_classes=1000)
  images = jax.random.normal(jax.random.key(0), (batch_size, 224, 224, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images[:1])
  results = {"framework": "flax", "arch": arch,
             "jax": jax.__version__, "backend": jax.default_backend()}
  for variant, fn in (("sites", lambda v, x: model.apply(v, x)),
                      ("logits", lambda v, x: model.apply(v, x)[0])):
    forward = jax.jit(fn)
    start = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    times, sampler = _time_runs(
        lambda: jax.block_until_ready(compiled(variables, images)), runs)
    results[variant] = {
        "median_s": statistics.median(times), "times_s": times,
        "compile_s": compile_s,
        "rss_peak_delta_mb": (sampler.peak - sampler.start_rss) / 2**20,
        "xla_temp_mb": getattr(memory, "temp_size_in_bytes", 0) / 2**20,
        "xla_output_mb": getattr(memory, "output_size_in_bytes", 0) / 2**20,
    }
  return results


def bench_torch(arch: str, batch_size: int, runs: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  model = getattr(torchvision.models, arch)(weights=None).eval()
  images = torch.randn(batch_size, 3, 224, 224)
  with torch.no_grad():
    times, sampler = _time_runs(lambda: model(images), runs)
  return {"framework": "torch", "arch": arch, "torch": torch.__version__,
          "threads": torch.get_num_threads(),
          "logits": {"median_s": statistics.median(times), "times_s": times,
                     "rss_peak_delta_mb":
                         (sampler.peak - sampler.start_rss) / 2**20}}


def _cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
      if line.startswith("Model name"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return platform.processor() or "unknown"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--archs", default="vgg16,resnet50,densenet121")
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:  # Child process: one (framework, arch).
    framework, arch = args.one.split(":")
    bench = bench_flax if framework == "flax" else bench_torch
    print(json.dumps(bench(arch, args.batch_size, args.runs)))
    return

  print(f"machine: {_cpu_model()}, {os.cpu_count()} cores, "
        f"load average before: {os.getloadavg()}")
  print(f"batch {args.batch_size}, 224x224, float32, median of {args.runs} "
        "runs after one warm-up\n")
  print("| network | framework | forward median (s) | runs (s) | "
        "compile (s) | peak RSS delta (MB) | XLA temp + output (MB) |")
  print("|---|---|---|---|---|---|---|")
  for arch in args.archs.split(","):
    for framework in ("torch", "flax"):
      out = subprocess.run(
          [sys.executable, os.path.abspath(__file__), "--one",
           f"{framework}:{arch}", "--batch_size", str(args.batch_size),
           "--runs", str(args.runs)], capture_output=True, text=True,
          check=True).stdout
      result = json.loads(out.strip().splitlines()[-1])
      variants = (("logits", "torchvision"),) if framework == "torch" else (
          ("sites", "flax (logits + sites)"), ("logits", "flax (logits)"))
      for key, label in variants:
        r = result[key]
        runs = ", ".join(f"{t:.2f}" for t in r["times_s"])
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        xla = (f"{r['xla_temp_mb']:.0f} + {r['xla_output_mb']:.0f}"
               if "xla_temp_mb" in r else "-")
        print(f"| {arch} | {label} | {r['median_s']:.2f} | {runs} | "
              f"{compile_s} | {r['rss_peak_delta_mb']:.0f} | {xla} |",
              flush=True)
  print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
  main()
