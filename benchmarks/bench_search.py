"""Times the NAD search step: K concepts in one vmapped step vs. K steps.

    python benchmarks/bench_search.py --model=demo_vgg --concepts=16

Builds the model from its shipped (or given) weights, random gate logits and
a batch of random images per concept, then times (after compilation, median
of ``--repeats``):

* ``vmapped``: one jitted step over K concepts (``nad_jax.search``);
* ``sequential``: K calls of the same step compiled for one concept.

Prints images*concepts per second for both and the speed-up, and appends a
line to ``--results`` (markdown) with the machine. Devices: whatever JAX
sees (CPU here; GPU on a GPU machine).
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags

from nad_jax import models
from nad_jax import objectives
from nad_jax import optim
from nad_jax import search

_MODEL = flags.DEFINE_string("model", "demo_vgg", "Model name.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "Params checkpoint "
                                  "(default: shipped demo weights; random "
                                  "weights with --random_weights).")
_RANDOM = flags.DEFINE_bool("random_weights", False,
                            "Use random weights (for the big networks).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 16, "Classes.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Input size.")
_CONCEPTS = flags.DEFINE_integer("concepts", 16, "K, concepts per step.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per concept.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats.")
_RESULTS = flags.DEFINE_string("results", "", "Markdown file to append to.")


def _machine() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    try:
      out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
      name = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                  if line.startswith("Model name"))
    except (OSError, StopIteration):
      name = platform.processor()
    return f"CPU {name}, {os.cpu_count()} cores"
  return f"{device.device_kind} x{len(jax.devices())}"


def _time(fn, repeats):
  fn()  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  k, b, size = _CONCEPTS.value, _BATCH.value, _IMAGE_SIZE.value
  model_config = ml_collections.ConfigDict(dict(
      name=_MODEL.value, num_classes=_NUM_CLASSES.value,
      checkpoint=_CHECKPOINT.value, image_size=size))
  if _RANDOM.value:
    model = models.get_model(_MODEL.value, num_classes=_NUM_CLASSES.value)
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
  else:
    model, variables = models.load_model(model_config)
  variables = jax.device_put(variables)
  objective = functools.partial(objectives.paper_objective, lam=0.05)
  optimizer = optim.nad_optimizer(0.1)
  step = search.make_search_step(model, objective, optimizer)
  sites = model.gate_sites()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(k, b, size, size, 3)), jnp.float32)
  labels = jnp.zeros((k, b), jnp.int32)

  patience = jnp.zeros((), jnp.int32)

  def chunk(n):
    gl = jax.tree.map(jnp.asarray, search.init_gate_logits(0, range(n), 1,
                                                           sites))
    zeros = lambda: jnp.zeros((n, 1), jnp.int32)  # one buffer each
    return {"gate_logits": gl,
            "opt_state": jax.vmap(jax.vmap(optimizer.init))(gl),
            "stable": zeros(), "step": jnp.zeros((n,), jnp.int32),
            **{name: jnp.full((n,), -1, jnp.int32)
               for name in ("failed_step", "failed_site", "failed_what")},
            "sums": {"loss": jnp.zeros((n, 1)), "changed": zeros(),
                     "valid": zeros(), "active": zeros()}}

  chunk_k = chunk(k)

  def vmapped():
    nonlocal chunk_k
    chunk_k, m = step(variables, chunk_k, images, labels, patience)
    jax.block_until_ready(m["loss"])

  chunk_1 = chunk(1)

  def sequential():
    nonlocal chunk_1
    for i in range(k):
      chunk_1, m = step(variables, chunk_1, images[i:i + 1],
                        labels[i:i + 1], patience)
    jax.block_until_ready(m["loss"])

  t_vmap = _time(vmapped, _REPEATS.value)
  t_seq = _time(sequential, _REPEATS.value)
  rate_vmap, rate_seq = k * b / t_vmap, k * b / t_seq
  line = (f"| {_MODEL.value} | {size} | {k} | {b} | {t_vmap * 1e3:.1f} | "
          f"{rate_vmap:.0f} | {t_seq * 1e3:.1f} | {rate_seq:.0f} | "
          f"{t_seq / t_vmap:.2f}x | {_machine()} | jax {jax.__version__} |")
  print("| model | size | K | B | vmapped ms/step | img*concepts/s | "
        "sequential ms | img*concepts/s | speed-up | machine | jax |")
  print(line)
  if _RESULTS.value:
    with open(_RESULTS.value, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
