"""Times the path-only analyses for 1000 concepts on this machine's CPU.

    PYTHONPATH=. python benchmarks/bench_analyses.py [--concepts 1000]

Random VGG16-shaped paths (13 sites, 64-512 channels, ~40% usage) for K
concepts and 10 planted primaries: M (``metrics.path_similarity``), one
random-path control draw (``random_paths_like`` + M), the hierarchy test
and the Mantel test (999 relabellings each), top-3 agreement (999), and
the report figures that scale with K (clustered heatmap, box-plot
ablations). The network forward passes (ablations, hit rate) are not
included: they are batched and jitted, and their cost is that of the
evaluation times ``2 (S + D) + 1``. The numbers go into
benchmarks/RESULTS.md by hand, with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from nad_jax import analyses
from nad_jax import figures
from nad_jax import metrics

VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512,
                  512)


def _timed(label, fn):
  start = time.perf_counter()
  result = fn()
  print(f"{label}: {time.perf_counter() - start:.2f} s")
  return result


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--concepts", type=int, default=1000)
  parser.add_argument("--permutations", type=int, default=999)
  args = parser.parse_args()
  print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"K = {args.concepts}")
  rng = np.random.default_rng(0)
  num = args.concepts
  primary_of = np.arange(num) % 10
  paths = {f"site{i:02d}": rng.random((num, c)) < 0.3 + 0.02 * (
      primary_of[:, None] % 5) for i, c in enumerate(VGG16_CHANNELS)}
  similarity = _timed("M (path_similarity)",
                      lambda: metrics.path_similarity(paths))
  _timed("random-path control, one draw (paths + M)",
         lambda: metrics.path_similarity(analyses.random_paths_like(paths,
                                                                    rng)))
  _timed(f"hierarchy test ({args.permutations} relabellings)",
         lambda: analyses.hierarchy_test(similarity, primary_of,
                                         args.permutations, rng))
  reference = (primary_of[:, None] == primary_of[None]).astype(float)
  _timed(f"Mantel test ({args.permutations} relabellings)",
         lambda: analyses.mantel_test(similarity, reference,
                                      args.permutations, rng))
  probabilities = rng.random((num, num))
  _timed(f"top-3 similar vs. confused ({args.permutations} relabellings)",
         lambda: analyses.top_k_agreement(
             analyses.top_k_similar(similarity, 3),
             analyses.top_k_confused(probabilities, np.arange(num), 3),
             args.permutations, rng))
  with tempfile.TemporaryDirectory() as tmp:
    _timed("clustered heatmap figure", lambda: figures.similarity_heatmap(
        similarity, [f"class {i}" for i in range(num)], primary_of, None,
        os.path.join(tmp, "m.png"), dpi=40))
    _timed("ablation figure (box plots)", lambda: figures.ablation_plot(
        [f"class {i}" for i in range(num)],
        {"kept": rng.random(num), "removed": rng.random(num)},
        os.path.join(tmp, "a.png")))


if __name__ == "__main__":
  main()
