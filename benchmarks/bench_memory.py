"""XLA's memory analysis of the search step, and the K it allows.

    python benchmarks/bench_memory.py --models=vgg16,resnet50 \
        --dtypes=float32,bfloat16 [--remat] [--budget_gb=80]

Compiles (nothing runs, nothing is allocated: abstract arguments) the
search step of each network at 224 px for K = 1 and 2 concepts of B images
(one seed), reads ``memory_analysis()`` (temporaries + arguments + outputs
- aliased, per device) and extrapolates linearly to the K that fits in
``HEADROOM`` x ``--budget_gb`` (what ``concepts_per_step='auto'`` would do
without its checking compile). Prints markdown rows.

The figures are those of the backend that compiles: on a CPU they match
the process's measured peak RSS (benchmarks/RESULTS.md) but a GPU compiles
another program (other fusions, cuDNN workspaces; and bfloat16 on a CPU is
computed through float32 copies), so the GPU's K comes from
benchmarks/gpu_check.sh.

Memory: compiling only (a few GB of host memory for the big networks).
"""

from __future__ import annotations

import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from nad_jax import memory
from nad_jax import models
from nad_jax import objectives
from nad_jax import optim
from nad_jax import search

_MODELS = flags.DEFINE_list("models", ["vgg16", "resnet50", "densenet121",
                                       "darts_v2"], "Networks.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Dtypes.")
_REMAT = flags.DEFINE_bool("remat", False, "Also with search.remat.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per concept.")
_BUDGET = flags.DEFINE_float("budget_gb", 80.0, "Device memory to plan for.")


def step_memory(name, dtype, remat, k, b, size=224):
  """``memory.StepMemory`` of the step compiled for K concepts."""
  model = models.get_model(name, num_classes=1000)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, size, size, 3)))
  variables = jax.eval_shape(
      functools.partial(search.cast_variables, compute_dtype=dtype),
      variables)
  optimizer = optim.nad_optimizer(0.1)
  step = search.make_search_step(
      model, functools.partial(objectives.paper_objective, lam=1.0),
      optimizer, compute_dtype=dtype, remat=remat)
  gate_logits = {s: jax.ShapeDtypeStruct((k, 1, c), jnp.float32)
                 for s, c in model.gate_sites().items()}
  ints = jax.ShapeDtypeStruct((k, 1), jnp.int32)
  per_concept = jax.ShapeDtypeStruct((k,), jnp.int32)
  chunk = {"gate_logits": gate_logits,
           "opt_state": jax.eval_shape(jax.vmap(jax.vmap(optimizer.init)),
                                       gate_logits),
           "stable": ints, "step": per_concept, "failed_step": per_concept,
           "failed_site": per_concept, "failed_what": per_concept,
           "sums": {"loss": jax.ShapeDtypeStruct((k, 1), jnp.float32),
                    "changed": ints, "valid": ints, "active": ints}}
  compiled = step.lower(
      variables, chunk,
      jax.ShapeDtypeStruct((k, b, size, size, 3), jnp.float32),
      jax.ShapeDtypeStruct((k, b), jnp.int32),
      jax.ShapeDtypeStruct((), jnp.int32)).compile()
  return memory.StepMemory.of(compiled)


def main(argv):
  del argv
  b = _BATCH.value
  budget = _BUDGET.value * memory.GIB * memory.HEADROOM
  print(f"| network | dtype | remat | B | K=1 GiB (temp / args) | K=2 GiB | "
        f"per concept GiB | K in {memory.HEADROOM:.0%} of "
        f"{_BUDGET.value:g} GiB | backend |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name in _MODELS.value:
    for dtype in _DTYPES.value:
      for remat in ([False, True] if _REMAT.value else [False]):
        start = time.perf_counter()
        one = step_memory(name, dtype, remat, 1, b)
        two = step_memory(name, dtype, remat, 2, b)
        per = two.total - one.total
        k = int((budget - (one.total - per)) // per)
        print(f"| {name} | {dtype} | {'yes' if remat else 'no'} | {b} | "
              f"{one.total / memory.GIB:.2f} ({one.temp / memory.GIB:.2f} / "
              f"{one.argument / memory.GIB:.2f}) | "
              f"{two.total / memory.GIB:.2f} | {per / memory.GIB:.2f} | "
              f"{k} | {jax.devices()[0].platform} "
              f"({time.perf_counter() - start:.0f} s) |", flush=True)


if __name__ == "__main__":
  app.run(main)
