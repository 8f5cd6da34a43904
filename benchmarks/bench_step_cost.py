"""What one search step costs, in bare forward passes of the same batch.

    python benchmarks/bench_step_cost.py --model=vgg16 --batch_size=16

Random weights, one concept (K = 1, S = 1) of B images at 224 px (the
paper's objective). Times, after compilation, the median of ``--repeats``:

* forward: the jitted network on the B images returning only the logits
  (what "a forward pass" usually means);
* step: ``nad_jax.search.make_search_step`` (reference forward, gated
  forward, backward to the gates, update; K = 1, S = 1);

and prints step / forward (the issue's target on this CPU: <= 3.2), the
FLOPs XLA counts for both (``cost_analysis``) and their ratio, and XLA's
memory analysis of the step. Runs against older checkouts too
(``PYTHONPATH=<checkout>``): without ``compute_dtype`` support the step is
built the old way (float32).

Memory: the network, B images and one step's activations (see
``nad_jax.memory``).
"""

from __future__ import annotations

import functools
import inspect
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

if "PYTHONPATH" not in os.environ:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from nad_jax import models
from nad_jax import objectives
from nad_jax import optim
from nad_jax import search

_MODEL = flags.DEFINE_string("model", "vgg16", "Model name.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Input size.")
_DTYPE = flags.DEFINE_string("compute_dtype", "float32", "Compute dtype.")
_REMAT = flags.DEFINE_bool("remat", False, "search.remat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats.")


def _median_time(fn, repeats):
  fn()  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def _flops(compiled):
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0))


def main(argv):
  del argv
  b, size = _BATCH.value, _SIZE.value
  model = models.get_model(_MODEL.value, num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(0)

  def he_normal(path, leaf):  # activations stay O(1): no denormals
    key = jax.tree_util.keystr(path[-1:])
    if "kernel" in key:
      scale = np.float32(np.sqrt(2.0 / np.prod(leaf.shape[:-1])))
      return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * scale)
    if "var" in key or "scale" in key:
      return jnp.ones(leaf.shape)
    return jnp.zeros(leaf.shape)

  variables = jax.tree_util.tree_map_with_path(he_normal, shapes)
  images = jnp.asarray(rng.standard_normal((1, b, size, size, 3),
                                           np.float32))
  labels = jnp.zeros((1, b), jnp.int32)
  optimizer = optim.nad_optimizer(0.1)
  objective = functools.partial(objectives.paper_objective, lam=0.05)
  kwargs = {}
  if "compute_dtype" in inspect.signature(search.make_search_step).parameters:
    kwargs = dict(compute_dtype=_DTYPE.value, remat=_REMAT.value)
    variables = search.cast_variables(variables, _DTYPE.value)
  elif _DTYPE.value != "float32" or _REMAT.value:
    raise ValueError("this checkout's step has no compute_dtype / remat")
  step = search.make_search_step(model, objective, optimizer, **kwargs)
  gate_logits = jax.tree.map(jnp.asarray, search.init_gate_logits(
      0, [0], 1, model.gate_sites()))
  chunk = {"gate_logits": gate_logits,
           "opt_state": jax.vmap(jax.vmap(optimizer.init))(gate_logits),
           "stable": jnp.zeros((1, 1), jnp.int32),
           "sums": {"loss": jnp.zeros((1, 1)),
                    **{name: jnp.zeros((1, 1), jnp.int32)
                       for name in ("changed", "valid", "active")}}}
  if hasattr(search, "FAILED_LOSS"):  # the step checks finiteness
    chunk.update(step=jnp.zeros((1,), jnp.int32),
                 **{name: jnp.full((1,), -1, jnp.int32)
                    for name in ("failed_step", "failed_site", "failed_what")})
  patience = jnp.zeros((), jnp.int32)
  dtype = jnp.dtype(_DTYPE.value)
  forward = jax.jit(lambda v, x: model.apply(v, x.astype(dtype))[0])
  forward_compiled = forward.lower(variables, images[0]).compile()
  step_compiled = step.lower(variables, chunk, images, labels,
                             patience).compile()

  def run_forward():
    forward(variables, images[0]).block_until_ready()

  def run_step():
    nonlocal chunk
    chunk, metrics = step(variables, chunk, images, labels, patience)
    jax.block_until_ready(metrics)

  t_forward, forward_runs = _median_time(run_forward, _REPEATS.value)
  t_step, step_runs = _median_time(run_step, _REPEATS.value)
  f_forward, f_step = _flops(forward_compiled), _flops(step_compiled)
  memory = step_compiled.memory_analysis()
  print(f"{_MODEL.value} {size}px B={b} {_DTYPE.value}"
        f"{' remat' if _REMAT.value else ''} jax {jax.__version__} "
        f"({jax.devices()[0].device_kind})")
  print(f"  forward (logits): {t_forward:.2f} s  runs "
        f"{', '.join(f'{t:.2f}' for t in forward_runs)}  "
        f"{f_forward / 1e9:.1f} GFLOP")
  print(f"  search step K=1:  {t_step:.2f} s  runs "
        f"{', '.join(f'{t:.2f}' for t in step_runs)}  "
        f"{f_step / 1e9:.1f} GFLOP")
  print(f"  step / forward: {t_step / t_forward:.2f} (time), "
        f"{f_step / f_forward:.2f} (XLA FLOPs)")
  print(f"  step memory (XLA): temp {memory.temp_size_in_bytes / 2**20:.0f} "
        f"MiB, arguments {memory.argument_size_in_bytes / 2**20:.0f} MiB")


if __name__ == "__main__":
  app.run(main)
