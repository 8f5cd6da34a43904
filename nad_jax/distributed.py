"""Several processes (hosts) running one search: ``jax.distributed``.

Launched as P processes (one per host, or one per GPU; docs/distributed.md),
a run calls :func:`initialize` before any JAX computation. The search then
runs as one SPMD program over every process's devices, in lockstep:

* The concept axis of each step is sharded over all devices of all
  processes (``jax.devices()``); each process places and computes the
  concepts on its own devices and, with the host data pipeline, reads only
  those concepts' images (``batch_source.HostBatches``; the device
  pipeline still builds the chunk's whole decode cache on every process).
  K is a multiple of the global device count.
* Every ``log_every`` steps (and to save or end a chunk) the processes
  gather the chunk's state (:func:`gather`, an all-gather), so every
  process holds the same host state and takes the same decisions.
* Checkpoints are coordinated: one Orbax checkpoint of the whole run in
  ``workdir/checkpoints``, written together (Orbax's multi-process mode:
  process 0 writes the host arrays, the processes meet at Orbax's
  barriers). A rerun, with the same or another number of processes,
  resumes from it; after a lost host every process goes back to the last
  checkpoint (at most ``search.checkpoint_every`` steps lost).
* A SIGINT/SIGTERM to any process (``nad_jax.stop``) stops every process
  at the next host look, with a checkpoint (:func:`any_process`).
* The evaluation is split (process i evaluates every P-th concept, its
  :func:`process_share`) and gathered; process 0 writes the paths, metrics,
  figures and report.

Why not one independent checkpoint per process: Orbax 0.12.8 in a
multi-process JAX program writes numpy leaves from process 0 only, refuses
host-local ``jax.Array`` leaves, and its asynchronous directory creation
signals through keys of the shared ``jax.distributed`` store numbered per
process, which collide between processes that save independently.

Memory: the gathered chunk state on every host (gate logits and optimiser
state of K concepts), and the run's full host state on every process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from nad_jax import errors

MODES = ("auto", "on", "off")


def launched_as_several_processes(env: Mapping[str, str] | None = None
                                  ) -> bool:
  """Whether the environment says this is one of several processes.

  An explicit ``JAX_COORDINATOR_ADDRESS``; SLURM with more than one task
  under ``srun`` (``SLURM_NTASKS`` > 1 and ``SLURM_PROCID`` set); Open MPI
  with more than one rank. Cloud TPU VMs are not guessed: use
  ``distributed.mode='on'`` there.
  """
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return True
  return int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def initialize(config: ml_collections.ConfigDict) -> bool:
  """Starts ``jax.distributed`` if ``config`` (``config.distributed``) or
  the launcher asks for it; returns whether several processes run.

  Must run before any JAX computation. ``mode``: ``'auto'`` starts it when
  ``coordinator_address`` is set or :func:`launched_as_several_processes`;
  ``'on'`` always (JAX detects SLURM, Open MPI and Cloud TPU itself; the
  config's fields fill what it cannot); ``'off'`` never. On a CPU the
  processes gather through gloo.

  Raises:
    nad_jax.errors.ConfigError: an unknown mode, or a partial explicit
      setting.
  """
  mode = config.mode
  if mode not in MODES:
    raise errors.ConfigError(f"config.distributed.mode: unknown mode {mode!r}; use "
                     f"one of {MODES}")
  explicit = {
      "coordinator_address": config.coordinator_address or None,
      "num_processes": (int(config.num_processes)
                        if config.num_processes > 0 else None),
      "process_id": (int(config.process_id)
                     if config.process_id >= 0 else None),
  }
  if explicit["coordinator_address"] and None in explicit.values():
    raise errors.ConfigError(
        "config.distributed: with coordinator_address set, num_processes "
        "(> 0) and process_id (>= 0) must be set too; got "
        f"num_processes={config.num_processes}, "
        f"process_id={config.process_id}")
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  wanted = mode == "on" or (mode == "auto" and (
      explicit["coordinator_address"] or launched_as_several_processes()))
  if not wanted:
    return False
  # CPU processes need a collectives backend for the gathers (GPUs and TPUs
  # have theirs).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      **{k: v for k, v in explicit.items() if v is not None})
  logging.info("jax.distributed: process %d of %d, local devices %s of %d",
               jax.process_index(), jax.process_count(), jax.local_devices(),
               jax.device_count())
  return jax.process_count() > 1


def process_share(items: Sequence, index: int | None = None,
                  count: int | None = None) -> list:
  """Every ``count``-th item from ``index`` (default: this process's)."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  return list(items)[index::count]


def gather(tree):
  """The host copy of ``tree``: ``jax.device_get`` in one process, an
  all-gather of the global arrays with several."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def gather_shares(local: np.ndarray, total: int) -> np.ndarray:
  """Rows of every process's :func:`process_share`, back in item order.

  Args:
    local: this process's rows (its share of ``total`` items, in order).
    total: the number of items shared out.

  Returns:
    ``[total, ...]`` on every process.
  """
  count = jax.process_count()
  if count == 1:
    return np.asarray(local)
  local = np.asarray(local)
  longest = -(-total // count)
  padded = np.zeros((longest,) + local.shape[1:], local.dtype)
  padded[:len(local)] = local
  everyone = np.asarray(multihost_utils.process_allgather(padded))
  out = np.zeros((total,) + local.shape[1:], local.dtype)
  for index in range(count):
    rows = len(range(index, total, count))
    out[index::count] = everyone[index, :rows]
  return out


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on any process (all get the same)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.bool_(flag))))


def agree_on_min(value: int) -> int:
  """The smallest of every process's ``value`` (all get the same)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.min(multihost_utils.process_allgather(np.int64(value))))
