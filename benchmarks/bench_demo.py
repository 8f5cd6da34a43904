"""Times the demo's building blocks on this machine's CPU.

    python benchmarks/bench_demo.py   # after pip install -e ., or PYTHONPATH=.

Reports: generating the default demo dataset; the jitted forward pass of
each shipped demo network on the val split; and a search-like step, the
gradient with respect to per-concept gate logits of a paper-style loss
(squared distance to the original site activations and logits + L1 of the
sigmoid gates), vmapped over K=16 concepts x B=16 images. The numbers go
into benchmarks/RESULTS.md (section 5) by hand, with the machine and its load.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nad_jax import models
from nad_jax.data import demo

NAMES = ("demo_vgg", "demo_resnet", "demo_densenet")
CONCEPTS, BATCH = 16, 16


def _best_of(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}")
  start = time.perf_counter()
  dataset = demo.DemoDataset()
  print(f"DemoDataset() (16 classes x 576 images): "
        f"{time.perf_counter() - start:.2f} s")
  val_images, _ = dataset.split_arrays("val")
  images, _ = dataset.concept_batch(list(range(CONCEPTS)), 0, BATCH)

  for name in NAMES:
    module, variables = models.load_model(ml_collections.ConfigDict(dict(
        name=name, num_classes=16, checkpoint="", image_size=32)))
    forward = jax.jit(lambda x: module.apply(variables, x)[0])
    forward(val_images).block_until_ready()
    seconds = _best_of(lambda: forward(val_images), 3)
    print(f"{name} forward: {len(val_images) / seconds:.0f} images/s")

    def concept_loss(gate_logits, concept_images):
      logits, activations = module.apply(variables, concept_images)
      gates = jax.tree.map(jax.nn.sigmoid, gate_logits)
      gated_logits, gated = module.apply(variables, concept_images, gates)
      distance = sum(jnp.sum((gated[s] - activations[s]) ** 2)
                     for s in activations)
      distance += jnp.sum((gated_logits - logits) ** 2)
      return distance + 0.05 * sum(jnp.sum(g) for g in gates.values())

    step = jax.jit(jax.vmap(jax.grad(concept_loss)))
    gate_logits = {
        site: jnp.asarray(np.random.default_rng(0).normal(
            size=(CONCEPTS, channels)), jnp.float32)
        for site, channels in module.gate_sites().items()}
    start = time.perf_counter()
    jax.block_until_ready(step(gate_logits, images))
    compile_seconds = time.perf_counter() - start
    seconds = _best_of(lambda: step(gate_logits, images), 5)
    print(f"{name} gate-gradient step (K={CONCEPTS} x B={BATCH}): "
          f"{seconds * 1e3:.0f} ms = {CONCEPTS * BATCH / seconds:.0f} "
          f"images*concepts/s (first call incl. compile "
          f"{compile_seconds:.1f} s)")


if __name__ == "__main__":
  main()
