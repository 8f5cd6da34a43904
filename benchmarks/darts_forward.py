"""Times DARTS-Net's gated forward pass (random weights, nothing loaded).

  python benchmarks/darts_forward.py [--batch 16] [--repeats 5]

Prints the compile time and the median time of one jitted gated forward on
a batch of 224-px images (the search's batch is 16), with the backend, the
device and the load average, so numbers from different machines are not
mixed up. Memory: the variables (19 MB) and one batch's site activations
(5.4 MB per image) plus XLA's working set.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from nad_jax.models import darts


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  module = darts.DartsImageNet(num_classes=1000)
  images = jax.random.normal(jax.random.key(0), (args.batch, 224, 224, 3))
  # Random variables from the shapes: faster than tracing module.init.
  shapes = jax.eval_shape(module.init, jax.random.key(1), images[:1])
  rng = np.random.default_rng(1)
  variables = jax.tree.map(
      lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32),
      shapes)
  variables["batch_stats"] = jax.tree.map(
      lambda s: np.ones(s.shape, np.float32), shapes["batch_stats"])
  gates = {site: jnp.full((channels,), 0.5)
           for site, channels in module.gate_sites().items()}
  forward = jax.jit(module.apply)

  start = time.perf_counter()
  jax.block_until_ready(forward(variables, images, gates))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, images, gates))
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  print(f"backend={jax.default_backend()} device={jax.devices()[0]} "
        f"cpus={os.cpu_count()} machine={platform.machine()} "
        f"loadavg={os.getloadavg()[0]:.1f}")
  print(f"DARTS_V2 gated forward, batch {args.batch} at 224 px: first call "
        f"(compile + run) {compile_s:.1f} s, median of {args.repeats} "
        f"{median:.2f} s ({args.batch / median:.1f} images/s)")


if __name__ == "__main__":
  main()
