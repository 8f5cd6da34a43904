"""Device memory: what a compiled search step needs and what a device has.

``search.concepts_per_step='auto'`` uses this module to pick K, the
concepts vmapped into one step: the largest multiple of the number of
devices whose compiled step fits in the memory a device has free.

* Need: XLA's ``memory_analysis()`` of the step compiled for K concepts,
  per device: temporaries + arguments + outputs - outputs aliased to
  donated arguments. The arguments include the network's weights and the
  batch (with the device pipeline: the chunk's decode cache, counted twice
  since the next chunk's cache is built on the device meanwhile).
* Available: ``search.memory_limit_gb`` per device when set (> 0); else, on
  a GPU or TPU, the device's ``bytes_limit - bytes_in_use`` from
  ``memory_stats()`` (on a GPU ``bytes_limit`` is JAX's pool:
  ``XLA_PYTHON_CLIENT_MEM_FRACTION``, 75% of the card unless set) plus the
  bytes of the weights already resident there (they are counted in the
  need); on a CPU, which reports no such statistics, the host's available
  memory (``MemAvailable`` of ``/proc/meminfo``) shared by the local CPU
  devices. A step may use :data:`HEADROOM` of it; the rest is left for the
  batches in flight and allocator fragmentation.
* Search: compile for K = D and 2D (D = devices), extrapolate linearly to
  the budget and compile that K to check (three compiles; the need is
  close to linear in K); if it does not fit, narrow the bracket with at
  most five more compiles. XLA's CPU figures match the process's measured
  peak RSS (benchmarks/RESULTS.md); a GPU compiles another program, so the
  same network needs other amounts there.

Memory: nothing on the device; compiling a candidate costs host memory and
time (seconds per candidate on a GPU, more on a CPU).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import jax

HEADROOM = 0.9
GIB = 2**30
_MAX_REFINEMENTS = 5


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """XLA's per-device memory figures of one compiled step, in bytes, and
  ``extra``: what lives on the device beside the step (a device pipeline's
  prefetched cache)."""
  temp: int
  argument: int
  output: int
  alias: int
  extra: int = 0

  @property
  def total(self) -> int:
    return (self.temp + self.argument + self.output - self.alias
            + self.extra)

  @classmethod
  def of(cls, compiled, extra: int = 0) -> StepMemory:
    analysis = compiled.memory_analysis()
    if analysis is None:
      raise ValueError("this backend gives no memory analysis of a compiled "
                       "step; set search.concepts_per_step to a number")
    return cls(temp=int(analysis.temp_size_in_bytes),
               argument=int(analysis.argument_size_in_bytes),
               output=int(analysis.output_size_in_bytes),
               alias=int(analysis.alias_size_in_bytes), extra=int(extra))

  def describe(self) -> str:
    return (f"{self.total / GIB:.2f} GiB (temporaries {self.temp / GIB:.2f}, "
            f"arguments {self.argument / GIB:.2f}, outputs "
            f"{self.output / GIB:.2f}, aliased {self.alias / GIB:.2f}"
            + (f", prefetched cache {self.extra / GIB:.2f}" if self.extra
               else "") + ")")


@dataclasses.dataclass(frozen=True)
class Available:
  """Bytes a step may use per device, and where the figure came from."""
  bytes: int
  source: str


def host_available_bytes() -> int:
  """The host's available memory (Linux ``MemAvailable``, else free pages)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resident_bytes(tree, device) -> int:
  """Bytes of ``tree``'s jax.Array leaves that live on ``device``."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      for shard in leaf.addressable_shards:
        if shard.device == device:
          total += shard.data.nbytes
  return total


def available(devices: Sequence[jax.Device], limit_gb: float = 0.0,
              resident=None) -> Available:
  """What one step may use per device (see the module docstring).

  Args:
    devices: the devices the step runs on (this process's).
    limit_gb: ``search.memory_limit_gb``; > 0 overrides the device figure.
    resident: a pytree (the weights) whose bytes already on a device count
      as available, since the need counts them again as arguments.
  """
  if limit_gb and limit_gb > 0:
    return Available(int(limit_gb * GIB * HEADROOM),
                     f"{HEADROOM:.0%} of search.memory_limit_gb={limit_gb:g}")
  free = []
  for device in devices:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
      free = None
      break
    free.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0)
                + (resident_bytes(resident, device) if resident else 0))
  if free:
    device = devices[0]
    stats = device.memory_stats()
    return Available(
        int(min(free) * HEADROOM),
        f"{HEADROOM:.0%} of the free memory of {device.device_kind} "
        f"({stats['bytes_limit'] / GIB:.1f} GiB limit, "
        f"{stats.get('bytes_in_use', 0) / GIB:.1f} GiB in use)")
  host = host_available_bytes()
  return Available(
      int(host * HEADROOM / max(len(devices), 1)),
      f"{HEADROOM:.0%} of the host's available memory "
      f"({host / GIB:.1f} GiB) shared by {len(devices)} CPU device(s); set "
      f"search.memory_limit_gb to override")


@dataclasses.dataclass
class Decision:
  """The chosen K and every candidate compiled on the way."""
  k: int
  budget: Available
  checked: dict[int, StepMemory]

  def describe(self) -> str:
    tried = ", ".join(f"K={k}: {m.total / GIB:.2f} GiB"
                      for k, m in sorted(self.checked.items()))
    return (f"K={self.k} ({self.checked[self.k].describe()} per device; "
            f"budget {self.budget.bytes / GIB:.2f} GiB = "
            f"{self.budget.source}; compiled {tried})")


def largest_k(need: Callable[[int], StepMemory], budget: Available, *,
              step: int, max_k: int, what: str = "the search step"
              ) -> Decision:
  """The largest K (a multiple of ``step``, <= ``max_k``) whose need fits.

  Args:
    need: K -> the compiled step's memory for K concepts.
    budget: what a step may use per device.
    step: K must be a multiple of this (the number of devices).
    max_k: no use going beyond this (the run's concepts, rounded up).
    what: names the step in the error.

  Raises:
    ValueError: not even K = ``step`` fits; says what it needs and what is
      available.
  """
  max_k = max(step, -(-max_k // step) * step)
  checked = {step: need(step)}
  if checked[step].total > budget.bytes:
    raise ValueError(
        f"search.concepts_per_step='auto': not even {step} concept(s) fit "
        f"in device memory. {what} for K={step} needs "
        f"{checked[step].describe()} per device; available: "
        f"{budget.bytes / GIB:.2f} GiB ({budget.source}). Lower "
        f"search.batch_size or search.num_seeds, use "
        f"search.compute_dtype='bfloat16', or give a larger "
        f"search.memory_limit_gb.")
  best = step
  if 2 * step > max_k:
    return Decision(best, budget, checked)
  checked[2 * step] = need(2 * step)
  if checked[2 * step].total > budget.bytes:
    return Decision(best, budget, checked)
  best = 2 * step
  per_step = max(checked[2 * step].total - checked[step].total, 1)
  fixed = checked[step].total - per_step
  candidate = min(max_k, (budget.bytes - fixed) // per_step * step)
  if candidate <= best:
    return Decision(best, budget, checked)
  checked[candidate] = need(candidate)
  if checked[candidate].total <= budget.bytes:
    return Decision(candidate, budget, checked)
  # The need grows faster than linearly: narrow the bracket (fits, does
  # not fit), alternating interpolation and bisection, a few compiles.
  low, high = best, candidate
  for attempt in range(_MAX_REFINEMENTS):
    if high - low <= step:
      break
    if attempt % 2 == 0:
      n_low, n_high = checked[low].total, checked[high].total
      guess = low + (budget.bytes - n_low) * (high - low) // max(
          n_high - n_low, 1)
    else:
      guess = (low + high) // 2
    guess = min(max(guess // step * step, low + step), high - step)
    checked[guess] = need(guess)
    if checked[guess].total <= budget.bytes:
      low = guess
    else:
      high = guess
  return Decision(low, budget, checked)
