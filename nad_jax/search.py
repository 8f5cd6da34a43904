"""Batched search for concept feature paths (paper Alg. 1).

One jitted step updates the gates of K concepts at once: ``jax.vmap`` over
the concept axis (each concept with its own images) and, inside, over S
random initialisations per concept (the paper averages over several). The
frozen network's variables are an argument of the jitted step (so they are
not baked into the compiled program as constants) and are closed over by the
loss, which is differentiated with respect to the gate logits only.

The concept axis is sharded over all devices (``jax.sharding``): each device
runs ``K / num_devices`` concepts; the variables are replicated. With several
processes (``nad_jax.distributed``) "all devices" are every process's: the
processes step in lockstep, each reads only the images of the concepts on
its own devices, and the host state is gathered at each look.

The network computes in ``compute_dtype`` (float32 or bfloat16: weights and
activations); gate logits, objective, gradient and update are float32.
``concepts_per_step='auto'`` picks the largest K that fits in device memory
(``nad_jax.memory``).

More concepts than ``concepts_per_step`` are processed in chunks of K (the
last one padded, so the step compiles once per shape). A concept stops after
``num_steps`` steps, or, with ``patience > 0``, once none of its S binary
paths has changed for ``patience`` steps (its gates are then frozen while
the rest of its chunk goes on).

The chunk's state (gate logits, optimiser state, patience counters, metric
sums) stays on the device between steps: the host dispatches steps without
waiting for them and looks at the state only every ``log_every`` steps (and
when it records the trajectory, saves a checkpoint or ends the chunk), so
the next batch is prepared while the device computes. A chunk whose
concepts have all stopped (patience) is noticed at the next look. Batches
come from a batch source (``nad_jax/data/batch_source.py``): the host
pipeline's ``concept_batch``, or the device pipeline, which crops each step's
images inside the step from the chunk's decode-once cache (the next chunk's
cache is built while this one runs).

Path trajectory: every ``trajectory_every`` steps of a concept (and at its
last step) the search records, per site and seed, how many units' binary
value changed since the previous record and the share of units selected
(``SearchResult.trajectory``; ``pipeline`` writes it as
``trajectory.npz``), so a user can see whether paths converged.

Faults: a concept whose loss, activation or gradient is not finite stops
at that step with its last finite gates (``SearchResult.failures`` names
the step and the site); the others go on. With a workdir the search holds
its lock (``nad_jax.workdir_lock``), and under ``nad_jax.stop`` a SIGINT or
SIGTERM saves a checkpoint after the current step and raises
``nad_jax.errors.Interrupted``. The finiteness checks are reductions over
the activations and gate gradients the step already holds.

Memory per step: K * S forward+backward passes of a batch of B images (all
site activations kept for the backward pass) plus K reference forward passes
(VGG16 at 224 px, float32: about 280 MiB per image on XLA's CPU backend;
benchmarks/RESULTS.md section 12).
"""


from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nad_jax import checkpoint as checkpoint_lib
from nad_jax import distributed
from nad_jax import memory as memory_lib
from nad_jax import errors
from nad_jax import stop
from nad_jax import workdir_lock
from nad_jax.data import base as data_base
from nad_jax.data import batch_source

PyTree = Any


def init_gate_logits(seed: int, concept_ids: Sequence[int], num_seeds: int,
                     site_channels: Mapping[str, int]) -> dict[str, np.ndarray]:
  """Gate logits drawn from N(0, 1): ``{site: [N, num_seeds, channels]}``.

  Each concept's draw depends only on ``(seed, concept id, site)``, so a
  concept starts from the same gates whatever else is searched with it (and
  a run can later be extended with more concepts).
  """
  root = jax.random.key(seed)

  def one_concept(concept_id):
    key = jax.random.fold_in(root, concept_id)
    return {
        site: jax.random.normal(jax.random.fold_in(key, i),
                                (num_seeds, channels), jnp.float32)
        for i, (site, channels) in enumerate(site_channels.items())
    }

  ids = jnp.asarray(np.asarray(concept_ids, np.int32))
  return jax.tree.map(np.asarray, jax.vmap(one_concept)(ids))


COMPUTE_DTYPES = ("float32", "bfloat16")


def cast_variables(variables: PyTree, compute_dtype) -> PyTree:
  """The frozen variables for a forward pass in ``compute_dtype``.

  Floating leaves of every collection except ``batch_stats`` are cast; the
  BatchNorm statistics stay float32, so flax's BatchNorm normalises in
  float32 and returns the compute dtype (``(x - mean) * rsqrt(var + eps)``
  is then not rounded to bfloat16 before the scale). float32: unchanged.
  """
  compute_dtype = jnp.dtype(compute_dtype)
  if compute_dtype == jnp.float32:
    return variables

  def cast(leaf):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      return leaf
    if isinstance(leaf, np.ndarray):  # stays on the host
      return leaf.astype(compute_dtype)
    return jnp.asarray(leaf, compute_dtype)

  return {name: collection if name == "batch_stats" else
          jax.tree.map(cast, collection)
          for name, collection in variables.items()}


# What went non-finite first in a stopped concept (``failed_what``).
FAILED_ACTIVATION, FAILED_GRADIENT, FAILED_LOSS = 0, 1, 2
_FAILED_WORDS = {FAILED_ACTIVATION: "activation", FAILED_GRADIENT: "gradient",
                 FAILED_LOSS: "loss"}


def make_search_step(model, objective: Callable[..., Any],
                     optimizer: optax.GradientTransformation,
                     make_batch: Callable | None = None, *,
                     compute_dtype: Any = "float32",
                     remat: bool = False) -> Callable:
  """The jitted, vmapped search step.

  Args:
    model, objective, optimizer: as :func:`disentangle`'s.
    make_batch: turns the step's batch arguments into ``(images, labels)``
      inside the jitted step (a batch source's ``make_batch``, e.g. the
      device pipeline's crops; ``None``: the batch is ``images, labels``).
    compute_dtype: ``float32`` or ``bfloat16``: the dtype of the network's
      weights (:func:`cast_variables`, done here too if the caller did not)
      and activations (the images are cast after ``make_batch``). The gate
      logits, the gates' sigmoid, the objective (its inputs are cast to
      float32 first), the gradient and the update are float32 either way.
    remat: recompute the gated forward pass and the objective in the
      backward pass (``jax.checkpoint`` around the loss) instead of keeping
      their intermediates from the forward pass.

  Returns:
    ``step(variables, chunk, *batch, patience)`` -> ``(chunk, metrics)``,
    with ``batch = (images, labels)`` unless ``make_batch`` is given.
    ``chunk`` is the chunk's state (donated): ``gate_logits {site: [K, S,
    C]}``, ``opt_state`` (leading ``[K, S]``), ``stable [K, S] int32``
    (steps since the binary path last changed), ``step [K] int32`` (steps
    each concept has done), ``failed_step``, ``failed_site``,
    ``failed_what`` (each ``[K] int32``, -1 while the concept is healthy;
    see below) and ``sums`` (``loss``, ``changed``, ``valid``, ``active``,
    each ``[K, S]``, summed over the steps since the host last reset them).
    ``images [K, B, H, W, 3]``, ``labels [K, B]``; ``patience`` an int32
    scalar (0: never stop). A (concept, seed) is active while
    ``stable < patience`` (always when patience is 0) and its concept has
    not failed; an inactive one keeps its gates. ``metrics`` holds this
    step's ``loss``, ``changed`` (the binary path changed), ``valid`` (the
    objective took the batch) and ``active``, each ``[K, S]``.

    Non-finite values: when the loss, a site's activation or gradient or
    the updated gates of any seed of a concept are not finite, no seed of
    that concept is updated (its last finite state is kept) and the concept
    stops: ``failed_step`` is the step that produced them (1-based),
    ``failed_site`` the first site in forward order where they appeared
    (-1: only in the loss or logits) and ``failed_what`` one of
    ``FAILED_ACTIVATION``, ``FAILED_GRADIENT``, ``FAILED_LOSS``.
  """
  compute_dtype = jnp.dtype(compute_dtype)
  if compute_dtype.name not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got "
                     f"{compute_dtype.name!r}")

  def forward(variables, images, gates):
    logits, acts = model.apply(variables, images, gates=gates)
    return jax.tree.map(lambda a: a.astype(jnp.float32), (logits, acts))

  def loss_fn(gate_logits, variables, images, labels, ref_logits, ref_acts):
    gates = jax.tree.map(jax.nn.sigmoid, gate_logits)
    gated_logits, gated_acts = forward(variables, images, gates)
    loss, aux = objective(gate_logits, ref_logits, ref_acts, gated_logits,
                          gated_acts, labels)
    finite_acts = jnp.stack([_all_finite(gated_acts[site])
                             for site in gate_logits])
    return loss, (aux, finite_acts, _all_finite(gated_logits))

  if remat:
    loss_fn = jax.checkpoint(loss_fn)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def concept_step(variables, gate_logits, opt_state, images, labels):
    ref_logits, ref_acts = jax.lax.stop_gradient(
        forward(variables, images, None))

    def seed_step(seed_gate_logits, seed_opt_state):
      (loss, (aux, finite_acts, finite_logits)), grads = grad_fn(
          seed_gate_logits, variables, images, labels, ref_logits, ref_acts)
      updates, new_opt_state = optimizer.update(grads, seed_opt_state,
                                                seed_gate_logits)
      new_gate_logits = optax.apply_updates(seed_gate_logits, updates)
      finite_grads = jnp.stack([
          jnp.logical_and(_all_finite(grads[site]),
                          _all_finite(new_gate_logits[site]))
          for site in seed_gate_logits])
      changed = jnp.zeros((), bool)
      for site in seed_gate_logits:
        changed |= jnp.any((new_gate_logits[site] > 0)
                           != (seed_gate_logits[site] > 0))
      metrics = {"loss": loss, "changed": changed, "valid": aux["valid"],
                 "finite_acts": finite_acts, "finite_grads": finite_grads,
                 "finite_loss": jnp.logical_and(jnp.isfinite(loss),
                                                finite_logits)}
      return new_gate_logits, new_opt_state, metrics

    return jax.vmap(seed_step)(gate_logits, opt_state)

  batched = jax.vmap(concept_step, in_axes=(None, 0, 0, 0, 0))

  def step(variables, chunk, *batch_and_patience):
    *batch, patience = batch_and_patience
    images, labels = make_batch(*batch) if make_batch else batch
    variables = cast_variables(variables, compute_dtype)
    images = images.astype(compute_dtype)
    stable = chunk["stable"]
    healthy = chunk["failed_step"] < 0  # [K]
    active = jnp.logical_and(
        jnp.logical_or(patience <= 0, stable < patience), healthy[:, None])
    gate_logits, opt_state, metrics = batched(
        variables, chunk["gate_logits"], chunk["opt_state"], images, labels)
    failure = _first_failure(metrics, active)
    new_failure = jnp.logical_and(healthy, failure["failed"])
    keep = jnp.logical_and(
        jnp.logical_and(metrics["valid"], active),
        jnp.logical_not(new_failure)[:, None])  # [K, S]
    gate_logits = jax.tree.map(functools.partial(_where_kept, keep),
                               gate_logits, chunk["gate_logits"])
    opt_state = jax.tree.map(functools.partial(_where_kept, keep), opt_state,
                             chunk["opt_state"])
    active = jnp.logical_and(active, jnp.logical_not(new_failure)[:, None])
    changed = jnp.logical_and(metrics["changed"], keep)
    stable = jnp.where(active, jnp.where(changed, 0, stable + 1), stable)
    step_number = chunk["step"] + 1
    metrics = {"loss": metrics["loss"], "changed": changed,
               "valid": metrics["valid"], "active": active}
    sums = chunk["sums"]
    sums = {
        "loss": sums["loss"] + jnp.where(active, metrics["loss"], 0.0),
        "changed": sums["changed"] + changed.astype(jnp.int32),
        "valid": sums["valid"] + jnp.logical_and(
            metrics["valid"], active).astype(jnp.int32),
        "active": sums["active"] + active.astype(jnp.int32),
    }
    return {"gate_logits": gate_logits, "opt_state": opt_state,
            "stable": stable, "step": step_number,
            "failed_step": jnp.where(new_failure, step_number,
                                     chunk["failed_step"]),
            "failed_site": jnp.where(new_failure, failure["site"],
                                     chunk["failed_site"]),
            "failed_what": jnp.where(new_failure, failure["what"],
                                     chunk["failed_what"]),
            "sums": sums}, metrics

  return jax.jit(step, donate_argnums=(1,))


def _all_finite(x) -> jax.Array:
  return jnp.all(jnp.isfinite(x))


def _where_kept(keep, new, old):
  """``new`` where ``keep [K, S]`` else ``old`` (leaves lead with K, S)."""
  keep = keep.reshape(keep.shape + (1,) * (new.ndim - keep.ndim))
  return jnp.where(keep, new, old)


def _first_failure(metrics, active) -> dict[str, jax.Array]:
  """Per concept: whether an active seed met a non-finite value, and the
  first site (forward order) and kind (activation, gradient, loss)."""
  mask = active[..., None]  # [K, S, 1]
  bad_acts = jnp.any(jnp.logical_and(~metrics["finite_acts"], mask), axis=1)
  bad_grads = jnp.any(jnp.logical_and(~metrics["finite_grads"], mask),
                      axis=1)  # [K, sites]
  bad_loss = jnp.any(jnp.logical_and(~metrics["finite_loss"], active),
                     axis=1)  # [K]
  any_acts, any_grads = jnp.any(bad_acts, -1), jnp.any(bad_grads, -1)
  site = jnp.where(any_acts, jnp.argmax(bad_acts, -1),
                   jnp.where(any_grads, jnp.argmax(bad_grads, -1), -1))
  what = jnp.where(any_acts, FAILED_ACTIVATION,
                   jnp.where(any_grads, FAILED_GRADIENT, FAILED_LOSS))
  return {"failed": any_acts | any_grads | bad_loss,
          "site": site.astype(jnp.int32), "what": what.astype(jnp.int32)}


@dataclasses.dataclass(frozen=True)
class Failure:
  """A concept stopped because a value went non-finite.

  Attributes:
    concept_id: the concept (class id).
    step: the step (1-based) whose loss, activation or gradient was not
      finite; the kept gates are those after step ``step - 1``.
    site: the first gate site (forward order) where it appeared, or
      ``None`` when only the loss or the logits were non-finite.
    what: ``'activation'``, ``'gradient'`` or ``'loss'``.
  """
  concept_id: int
  step: int
  site: str | None
  what: str

  def describe(self, class_names: Sequence[str] | None = None) -> str:
    name = (f" {class_names[self.concept_id]!r}" if class_names is not None
            else "")
    where = (f"{self.what} at {self.site}" if self.site is not None
             else "loss")
    return (f"concept {self.concept_id}{name}: non-finite {where} in step "
            f"{self.step}")


@dataclasses.dataclass
class SearchResult:
  """What the search found, for all N concepts of the run.

  Attributes:
    concept_ids: ``[N]`` class ids.
    gate_logits: ``{site: [N, S, C]}`` real-valued gate logits.
    steps_done: ``[N]`` steps each concept was trained for.
    done: ``[N]`` whether each concept finished (budget or patience).
    trajectory: ``steps [T]`` (the step of each record: every
      ``trajectory_every`` steps, the last one at the budget),
      ``flips {site: int32 [N, S, T]}`` (units whose binary value changed
      since the previous record; the first record compares with the
      initial gates) and ``usage {site: float32 [N, S, T]}`` (share of the
      site's units selected). After a concept stopped its flips are 0 and
      its usage stays at its last value.
    failures: one entry per concept stopped on non-finite values
      (:class:`Failure`); their gate logits are the last finite ones and
      their ``steps_done`` the steps before the failure.
  """
  concept_ids: np.ndarray
  gate_logits: dict[str, np.ndarray]
  steps_done: np.ndarray
  done: np.ndarray
  trajectory: dict[str, Any] = dataclasses.field(default_factory=dict)
  failures: list[Failure] = dataclasses.field(default_factory=list)

  @property
  def failed(self) -> np.ndarray:
    """``[N]`` bool: the concept stopped on non-finite values."""
    ids = {f.concept_id for f in self.failures}
    return np.asarray([int(c) in ids for c in self.concept_ids], bool)

  @property
  def paths(self) -> dict[str, np.ndarray]:
    """Binary paths ``{site: [N, S, C]}`` (paper Eq. 9: sigmoid(s) > 0.5)."""
    return {site: logits > 0 for site, logits in self.gate_logits.items()}


# Re-exported: the meta and the resume policy live in checkpoint.py.
search_meta = checkpoint_lib.search_meta
check_resumable = checkpoint_lib.check_resumable


def _num_records(num_steps: int, every: int) -> int:
  return -(-int(num_steps) // int(every))


def init_state(concept_ids: Sequence[int], meta: Mapping[str, Any],
               optimizer: optax.GradientTransformation) -> dict[str, Any]:
  """A fresh search state (host numpy) for ``concept_ids``.

  Args:
    concept_ids: the N concepts.
    meta: the run's :func:`search_meta` (sites, seed, seeds, budget and
      trajectory interval).
    optimizer: gives the optimiser state's structure.

  Returns:
    The state described in ``nad_jax.checkpoint``.
  """
  site_channels = meta["site_channels"]
  num_seeds = int(meta["num_seeds"])
  gate_logits = init_gate_logits(int(meta["seed"]), concept_ids, num_seeds,
                                 site_channels)
  opt_state = jax.vmap(jax.vmap(optimizer.init))(gate_logits)
  n = len(concept_ids)
  records = _num_records(meta["num_steps"], meta["trajectory_every"])
  return {
      "gate_logits": gate_logits,
      "opt_state": jax.tree.map(np.asarray, opt_state),
      "stable_steps": np.zeros((n, num_seeds), np.int32),
      "steps_done": np.zeros((n,), np.int32),
      "done": np.zeros((n,), bool),
      # -1 while healthy; see make_search_step.
      "failed_step": np.full((n,), -1, np.int32),
      "failed_site": np.full((n,), -1, np.int32),
      "failed_what": np.full((n,), -1, np.int32),
      "rng": np.asarray(jax.random.key_data(
          jax.random.key(int(meta["seed"])))),
      "concept_ids": np.asarray(concept_ids, np.int32),
      "trajectory_paths": {s: v > 0 for s, v in gate_logits.items()},
      "trajectory_flips": {s: np.zeros((n, num_seeds, records), np.int32)
                           for s in site_channels},
      # -1: not recorded yet.
      "trajectory_usage": {s: np.full((n, num_seeds, records), -1.0,
                                      np.float32) for s in site_channels},
  }


def resize_state(state: dict[str, Any], stored_meta: Mapping[str, Any],
                 meta: Mapping[str, Any]) -> dict[str, Any]:
  """Adapts a restored state's trajectory to this run's step budget."""
  records = _num_records(meta["num_steps"], meta["trajectory_every"])
  stored = _num_records(stored_meta["num_steps"],
                        stored_meta["trajectory_every"])
  if records == stored:
    return state
  state = dict(state)
  for key, fill in (("trajectory_flips", 0), ("trajectory_usage", -1.0)):
    resized = {}
    for site, values in state[key].items():
      if records < stored:
        resized[site] = values[..., :records]
      else:
        pad = np.full(values.shape[:-1] + (records - stored,), fill,
                      values.dtype)
        resized[site] = np.concatenate([values, pad], axis=-1)
    state[key] = resized
  return state


def disentangle(
    model,
    variables: PyTree,
    dataset: data_base.ConceptDataset,
    concept_ids: Sequence[int],
    *,
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    num_steps: int,
    batch_size: int,
    concepts_per_step: int | str,
    num_seeds: int = 1,
    patience: int = 0,
    seed: int = 0,
    workdir: str | None = None,
    meta: Mapping[str, Any] | None = None,
    checkpoint_every: int = 50,
    log_every: int = 10,
    trajectory_every: int = 0,
    stop_after_steps: int = 0,
    step_fn: Callable | None = None,
    batches=None,
    compute_dtype: str = "float32",
    remat: bool = False,
    memory_limit_gb: float = 0.0,
) -> SearchResult:
  """Finds the concept feature paths of ``concept_ids``.

  Args:
    model: a module following ``nad_jax.models.base``.
    variables: its frozen variables.
    dataset: serves each concept's training images (``concept_batch``).
    concept_ids: the concepts (class ids) to search.
    objective: ``nad_jax.objectives`` function with its weight bound.
    optimizer: ``nad_jax.optim.nad_optimizer(alpha)`` or another optax
      transformation (its state gets leading ``[K, S]`` axes).
    num_steps: step budget per concept.
    batch_size: images per concept per step.
    concepts_per_step: K, concepts vmapped into one step (rounded up to a
      multiple of the number of devices, of all processes), or ``'auto'``:
      the largest K whose compiled step fits in device memory
      (``nad_jax.memory``; logged).
    num_seeds: random initialisations per concept.
    patience: stop a concept once its paths did not change for this many
      steps (0: use the whole budget).
    seed: seeds the gate initialisation (per concept, see
      :func:`init_gate_logits`) and the data order.
    workdir: where checkpoints go; ``None`` keeps everything in memory.
    meta: the JSON stored with checkpoints (:func:`search_meta`); a stored
      checkpoint with other model/hparams is refused before anything is
      written.
    checkpoint_every: save every this many steps (and at the end of each
      chunk and of the search).
    log_every: log progress every this many steps (0: never).
    trajectory_every: record the path trajectory every this many steps
      (0: ``log_every``, or 10 if that is 0). A resumed run keeps the
      stored run's interval.
    stop_after_steps: if > 0, return after this many steps of this call (a
      checkpoint is written; a rerun resumes). For time-boxed jobs and tests.
    step_fn: a prebuilt :func:`make_search_step` (to share its
      compilation), built with ``batches.make_batch``, ``compute_dtype``
      and ``remat``.
    batches: where the images come from
      (:mod:`nad_jax.data.batch_source`; default: the host pipeline,
      ``dataset.concept_batch``). The caller closes it.
    compute_dtype: ``'float32'`` or ``'bfloat16'``, the network's weights
      and activations (see :func:`make_search_step`).
    remat: recompute the gated forward pass in the backward pass.
    memory_limit_gb: device memory per device that ``'auto'`` may plan
      for (0: what the device reports free; see ``nad_jax.memory``).

  Returns:
    A :class:`SearchResult` for all ``concept_ids``; concepts stopped on
    non-finite values are in its ``failures`` (each logged with a warning).

  Raises:
    nad_jax.errors.WorkdirBusyError: another process holds ``workdir``.
    nad_jax.errors.CheckpointError: ``workdir`` holds another search, or
      only damaged checkpoints.
    nad_jax.errors.SaveError: a checkpoint could not be written (the
      reason is named; the previous one is intact).
    nad_jax.errors.Interrupted: SIGINT/SIGTERM under
      ``nad_jax.stop.handle_signals``; the state was saved first.
  """
  concept_ids = _check_arguments(dataset, concept_ids, num_steps, batch_size,
                                 concepts_per_step, num_seeds)
  site_channels = model.gate_sites()
  if meta is None:
    meta = search_meta(type(model).__name__, site_channels, concept_ids,
                       seed=seed, num_seeds=num_seeds, batch_size=batch_size,
                       hparams={})
  meta = dict(meta, concept_ids=concept_ids, num_steps=int(num_steps),
              trajectory_every=int(trajectory_every or log_every or 10))

  lock = (workdir_lock.WorkdirLock(workdir, jax.process_index())
          if workdir is not None else contextlib.nullcontext())
  with lock, stop.polling():
    checkpointer = (checkpoint_lib.SearchCheckpointer(workdir)
                    if workdir is not None else None)
    try:
      return _search(model, variables, dataset, concept_ids,
                     checkpointer=checkpointer, meta=meta,
                     objective=objective, optimizer=optimizer,
                     num_steps=num_steps, batch_size=batch_size,
                     concepts_per_step=concepts_per_step, patience=patience,
                     checkpoint_every=checkpoint_every, log_every=log_every,
                     stop_after_steps=stop_after_steps, step_fn=step_fn,
                     batches=batches, compute_dtype=compute_dtype,
                     remat=remat, memory_limit_gb=memory_limit_gb)
    except BaseException:
      if checkpointer is not None:
        checkpointer.close_quietly()
      raise


def _search(model, variables, dataset, concept_ids, *, checkpointer, meta,
            objective, optimizer, num_steps, batch_size, concepts_per_step,
            patience, checkpoint_every, log_every, stop_after_steps,
            step_fn, batches, compute_dtype, remat,
            memory_limit_gb) -> SearchResult:
  """:func:`disentangle` once the workdir is locked."""
  state, total_step, meta = checkpoint_lib.restore_or_init(
      checkpointer, meta,
      functools.partial(_init_for_restore, optimizer=optimizer), resize_state)
  # The step budget may have changed since the checkpoint was written.
  state["done"] = _is_done(state, num_steps, patience)

  if batches is None:
    batches = batch_source.HostBatches(dataset, batch_size)
  step_fn = step_fn or make_search_step(
      model, objective, optimizer, batches.make_batch,
      compute_dtype=compute_dtype, remat=remat)
  variables = cast_variables(variables, compute_dtype)
  mesh = _concept_mesh()
  if concepts_per_step == "auto":
    concepts_per_step = 1 if np.all(state["done"]) else (
        _auto_concepts_per_step(step_fn, variables, batches, state,
                                int(num_steps), mesh, memory_limit_gb))
  run = _Run(
      model=model, dataset=dataset, batches=batches, step_fn=step_fn,
      mesh=mesh, concepts_per_step=int(concepts_per_step),
      num_steps=int(num_steps), batch_size=int(batch_size),
      patience=int(patience), log_every=int(log_every),
      trajectory_every=int(meta["trajectory_every"]),
      checkpoint_every=int(checkpoint_every),
      stop_after_steps=int(stop_after_steps), checkpointer=checkpointer,
      meta=meta, total_step=total_step, last_saved=total_step)
  variables = jax.device_put(variables, run.replicated)
  batches.start(concept_ids, run.sharded)
  run.num_chunks = -(-int(np.sum(~state["done"])) // run.k)
  while not np.all(state["done"]) and not run.out_of_budget():
    _run_chunk(run, variables, state, _next_chunk(state, run.k))
  if checkpointer is not None:
    if run.total_step != run.last_saved:
      checkpointer.save(run.total_step, state, meta)
      run.last_saved = run.total_step
    checkpointer.close()
  signum = stop.requested()
  if signum is not None:
    pending = int(np.sum(~state["done"]))
    where = (f"in {checkpointer.directory} (step {run.total_step})"
             if checkpointer is not None and run.last_saved == run.total_step
             and run.total_step > 0 else "nowhere (no workdir or no step)")
    raise errors.Interrupted(
        signum, f"stopped by {errors.signal_name(signum)} with {pending} "
        f"of {len(state['done'])} concepts to go; the search state is saved "
        f"{where}; rerun with the same --workdir to resume")
  sites = list(model.gate_sites())
  return SearchResult(
      concept_ids=np.asarray(concept_ids),
      gate_logits={s: np.asarray(v) for s, v in state["gate_logits"].items()},
      steps_done=state["steps_done"].copy(), done=state["done"].copy(),
      trajectory=_trajectory(state, num_steps, run.trajectory_every),
      failures=_failures(state, sites))


def _failures(state, sites) -> list[Failure]:
  out = []
  for row in np.flatnonzero(state["failed_step"] >= 0):
    site = int(state["failed_site"][row])
    out.append(Failure(
        concept_id=int(state["concept_ids"][row]),
        step=int(state["failed_step"][row]),
        site=sites[site] if site >= 0 else None,
        what=_FAILED_WORDS.get(int(state["failed_what"][row]), "loss")))
  return out


def _init_for_restore(concept_ids, meta, *, optimizer):
  return init_state(concept_ids, meta, optimizer)


def _check_arguments(dataset, concept_ids, num_steps, batch_size,
                     concepts_per_step, num_seeds) -> list[int]:
  if num_steps <= 0:
    raise ValueError(f"num_steps must be positive, got {num_steps}")
  if concepts_per_step != "auto" and (
      not isinstance(concepts_per_step, (int, np.integer))
      or concepts_per_step <= 0):
    raise ValueError(f"concepts_per_step must be a positive integer or "
                     f"'auto', got {concepts_per_step!r}")
  if batch_size <= 0 or num_seeds <= 0:
    raise ValueError(
        f"batch_size ({batch_size}) and num_seeds ({num_seeds}) must be "
        f"positive")
  concept_ids = [int(c) for c in concept_ids]
  if not concept_ids:
    raise ValueError("no concepts to search")
  if len(set(concept_ids)) != len(concept_ids):
    raise ValueError(f"concept ids repeat: {concept_ids}")
  data_base.check_class_ids(concept_ids, len(dataset.class_names))
  return concept_ids


def _concept_mesh() -> Mesh:
  """Every device, of every process (``nad_jax.distributed``)."""
  return Mesh(np.asarray(jax.devices()), ("concepts",))


def _log_prefix() -> str:
  """``[process i/P] `` when several processes search, else nothing."""
  if jax.process_count() == 1:
    return ""
  return f"[process {jax.process_index()}/{jax.process_count()}] "


def step_memory_fn(step_fn, variables, batches, state, num_steps,
                   mesh) -> Callable[[int], memory_lib.StepMemory]:
  """``K -> memory`` of ``step_fn`` compiled for K concepts of ``state``.

  The batch's shapes come from one probe batch of the batch source (for D
  concepts, D = devices; every array in a batch has the concept axis
  first). Compiles for abstract arguments with the run's shardings (nothing
  is placed on a device), so the compilation of the K finally chosen is
  reused by the search. A device pipeline keeps the next chunk's cache on
  the device too: its batch arrays are counted twice (``extra``).
  """
  sharded = NamedSharding(mesh, PartitionSpec("concepts"))
  replicated = NamedSharding(mesh, PartitionSpec())
  devices = mesh.devices.size
  pending = state["concept_ids"][~state["done"]]
  batches.start(state["concept_ids"], sharded)
  batches.start_chunk(np.resize(pending, devices), 0, num_steps)
  example = batches.batch(0)
  one_concept = _host_chunk(state, np.zeros(1, np.int64), 0)

  def spec(shape, dtype, sharding=None):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype),
                                sharding=sharding)

  def per_k(x, k):
    if np.ndim(x) == 0:
      return spec((), jnp.result_type(x))
    return spec((k,) + np.shape(x)[1:], jnp.result_type(x), sharded)

  variables_spec = jax.tree.map(
      lambda x: spec(np.shape(x), jnp.result_type(x), replicated), variables)
  prefetched = isinstance(batches, batch_source.DeviceBatches) and (
      batches.cache.placement == "device")

  def need(k):
    chunk = jax.tree.map(lambda x: per_k(x, k), one_concept)
    batch = jax.tree.map(lambda x: per_k(x, k), example)
    compiled = step_fn.lower(variables_spec, chunk, *batch,
                             jax.ShapeDtypeStruct((), jnp.int32)).compile()
    extra = 0
    if prefetched:
      extra = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                  for x in jax.tree.leaves(batch)) // devices
    return memory_lib.StepMemory.of(compiled, extra=extra)

  return need


def _auto_concepts_per_step(step_fn, variables, batches, state, num_steps,
                            mesh, memory_limit_gb) -> int:
  """The largest K whose compiled step fits (``nad_jax.memory``)."""
  need = step_memory_fn(step_fn, variables, batches, state, num_steps, mesh)
  local = [d for d in mesh.devices.flat
           if d.process_index == jax.process_index()]
  pending = int(np.sum(~state["done"]))
  decision = memory_lib.largest_k(
      need, memory_lib.available(local, memory_limit_gb, variables),
      step=mesh.devices.size, max_k=pending)
  logging.info("%sconcepts_per_step='auto': %s", _log_prefix(),
               decision.describe())
  # Processes whose devices have less memory free decide for everyone.
  return distributed.agree_on_min(decision.k)


@dataclasses.dataclass
class _Run:
  """What one call of :func:`disentangle` carries from chunk to chunk."""
  model: Any
  dataset: Any
  batches: Any
  step_fn: Callable
  mesh: Mesh
  concepts_per_step: int
  num_steps: int
  batch_size: int
  patience: int
  log_every: int
  trajectory_every: int
  checkpoint_every: int
  stop_after_steps: int
  checkpointer: checkpoint_lib.SearchCheckpointer | None
  meta: dict[str, Any]
  total_step: int
  last_saved: int
  steps_this_call: int = 0
  stop_agreed: bool = False
  num_chunks: int = 0
  chunk_number: int = 0

  @property
  def k(self) -> int:
    """Concepts per step, a multiple of the number of devices."""
    devices = self.mesh.devices.size
    return -(-self.concepts_per_step // devices) * devices

  @property
  def sharded(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec("concepts"))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def out_of_budget(self) -> bool:
    """This call must end: its step budget is spent or a stop was
    requested (SIGINT/SIGTERM, see ``nad_jax.stop``). With several
    processes a stop counts once every process knows of it
    (:attr:`stop_agreed`, decided at a host look), so that all stop at the
    same step."""
    if jax.process_count() > 1:
      stopping = self.stop_agreed
    else:
      stopping = stop.requested() is not None
    return bool(self.stop_after_steps
                and self.steps_this_call >= self.stop_after_steps) or stopping

  def save_due(self) -> bool:
    return bool(self.checkpointer is not None and self.checkpoint_every
                and self.total_step % self.checkpoint_every == 0)


def _run_chunk(run: _Run, variables, state, rows: np.ndarray) -> None:
  """Steps one chunk of concepts until they stop or the call's budget ends.

  The chunk's state lives on the device; the host looks at it (and writes
  it back into ``state``) only to log, record the trajectory, save, or end.
  """
  k = run.k
  run.chunk_number += 1
  padded = np.concatenate([rows, np.repeat(rows[-1:], k - len(rows))])
  real = np.arange(k) < len(rows)
  chunk_ids = state["concept_ids"][padded]
  step = int(state["steps_done"][rows[0]])
  logging.info("%sChunk %d/%d: concepts %s, from step %d of %d.",
               _log_prefix(), run.chunk_number, run.num_chunks,
               chunk_ids[real].tolist(), step, run.num_steps)
  num_seeds = state["stable_steps"].shape[1]
  chunk = jax.device_put(_host_chunk(state, padded, step), run.sharded)
  patience = jnp.asarray(run.patience, jnp.int32)
  run.batches.start_chunk(chunk_ids, step, run.num_steps,
                          _upcoming_chunk(state, rows, k))
  progress = _Progress(run, state, rows, step)
  in_flight = collections.deque()
  while step < run.num_steps and not run.out_of_budget():
    chunk, metrics = run.step_fn(variables, chunk, *run.batches.batch(step),
                                 patience)
    step += 1
    run.total_step += 1
    run.steps_this_call += 1
    # Let the host run at most two steps ahead of the device.
    in_flight.append(metrics["loss"])
    if len(in_flight) > 2:
      in_flight.popleft().block_until_ready()
    record = step % run.trajectory_every == 0 or step == run.num_steps
    logs = bool(run.log_every) and (step % run.log_every == 0
                                    or step == run.num_steps)
    save = run.save_due()
    if not (record or logs or save or run.out_of_budget()):
      continue
    host = distributed.gather(chunk)
    if jax.process_count() > 1:  # a signal to any process stops them all
      run.stop_agreed = distributed.any_process(stop.requested() is not None)
    chunk = dict(chunk, sums=jax.device_put(_zero_sums(k, num_seeds),
                                            run.sharded))
    _write_back(state, rows, host, step, run)
    if record:
      _record_trajectory(state, rows, step, run.trajectory_every)
    if logs:
      progress.log(step, host["sums"], real)
    stopped = np.all(state["done"][rows])
    if stopped and not record:
      _record_trajectory(state, rows, step, run.trajectory_every)
    if run.checkpointer is not None:
      run.checkpointer.check()  # a failed save stops the run here
    if save:
      run.checkpointer.save(run.total_step, state, run.meta)
      run.last_saved = run.total_step
    if stopped:
      break


def _host_chunk(state, padded: np.ndarray, step: int) -> dict[str, Any]:
  """The chunk state of rows ``padded`` of ``state`` (host numpy)."""
  k, num_seeds = len(padded), state["stable_steps"].shape[1]
  return {
      "gate_logits": jax.tree.map(lambda x: x[padded], state["gate_logits"]),
      "opt_state": jax.tree.map(lambda x: x[padded], state["opt_state"]),
      "stable": state["stable_steps"][padded],
      "step": np.full((k,), step, np.int32),
      "failed_step": state["failed_step"][padded],
      "failed_site": state["failed_site"][padded],
      "failed_what": state["failed_what"][padded],
      "sums": _zero_sums(k, num_seeds),
  }


def _zero_sums(k, num_seeds):
  return {"loss": np.zeros((k, num_seeds), np.float32),
          "changed": np.zeros((k, num_seeds), np.int32),
          "valid": np.zeros((k, num_seeds), np.int32),
          "active": np.zeros((k, num_seeds), np.int32)}


class _Progress:
  """The progress line: chunk, step, loss, path changes, rate and ETA."""

  def __init__(self, run: _Run, state, rows, step):
    self.run = run
    self.tick = time.perf_counter()
    self.tick_step = step
    # Chunk-steps left after this chunk (an upper bound with patience).
    pending = np.flatnonzero(~state["done"])
    others = np.setdiff1d(pending, rows)
    self.steps_after_chunk = (
        float(np.sum(run.num_steps - state["steps_done"][others])) / run.k)

  def log(self, step, sums, real):
    run = self.run
    elapsed = time.perf_counter() - self.tick
    steps = max(step - self.tick_step, 1)
    seconds_per_step = elapsed / steps
    rate = steps * run.k * run.batch_size / max(elapsed, 1e-9)
    active = np.maximum(sums["active"][real], 1)
    left = (run.num_steps - step) + self.steps_after_chunk
    logging.info(
        "%s  chunk %d/%d  step %4d/%d  loss %.4g  paths changed %3.0f%%  "
        "skipped batches %3.0f%%  active %3.0f%%  %.0f images*concepts/s  "
        "ETA %s", _log_prefix(), run.chunk_number, run.num_chunks, step,
        run.num_steps,
        float(np.sum(sums["loss"][real]) / np.sum(active)),
        100 * float(np.sum(sums["changed"][real]) / np.sum(active)),
        100 * (1 - float(np.sum(sums["valid"][real]) / np.sum(active))),
        100 * float(np.mean(sums["active"][real] > 0)), rate,
        _duration(left * seconds_per_step))
    self.tick, self.tick_step = time.perf_counter(), step


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _is_done(state, num_steps, patience):
  done = (state["steps_done"] >= num_steps) | (state["failed_step"] >= 0)
  if patience > 0:
    done |= np.all(state["stable_steps"] >= patience, axis=-1)
  return done


def _next_chunk(state, k):
  """Up to k unfinished concepts that are at the same step (first first)."""
  pending = np.flatnonzero(~state["done"])
  first_step = state["steps_done"][pending[0]]
  same = pending[state["steps_done"][pending] == first_step]
  return same[:k]


def _upcoming_chunk(state, rows, k):
  """The next chunk's class ids (padded) if this one runs to its end."""
  rest = {"done": state["done"].copy(), "steps_done": state["steps_done"]}
  rest["done"][rows] = True
  if np.all(rest["done"]):
    return None
  upcoming = _next_chunk(rest, k)
  padded = np.concatenate([upcoming,
                           np.repeat(upcoming[-1:], k - len(upcoming))])
  return state["concept_ids"][padded]


def _write_back(state, rows, chunk, step, run: _Run):
  """Copies the chunk's host copy into the run's state (real rows only)."""
  n = len(rows)

  def put(full, part):
    full = np.array(full, copy=True)
    full[rows] = np.asarray(part)[:n]
    return full

  state["gate_logits"] = jax.tree.map(put, state["gate_logits"],
                                      chunk["gate_logits"])
  state["opt_state"] = jax.tree.map(put, state["opt_state"],
                                    chunk["opt_state"])
  state["stable_steps"][rows] = np.asarray(chunk["stable"])[:n]
  failed_step = np.asarray(chunk["failed_step"])[:n]
  new = rows[(failed_step >= 0) & (state["failed_step"][rows] < 0)]
  for key in ("failed_step", "failed_site", "failed_what"):
    state[key][rows] = np.asarray(chunk[key])[:n]
  # A stopped concept keeps the state of the step before its failure.
  state["steps_done"][rows] = np.where(failed_step >= 0, failed_step - 1,
                                       step)
  state["done"] = _is_done(state, run.num_steps, run.patience)
  sites = list(run.model.gate_sites())
  for failure in _failures({k: state[k][new] for k in (
      "concept_ids", "failed_step", "failed_site", "failed_what")}, sites):
    logging.warning(
        "%s; the concept is stopped and keeps its gates of step %d. "
        "(Rerunning retries it; a non-finite image or a too large "
        "optim.alpha are the usual causes.)",
        failure.describe(run.dataset.class_names), failure.step - 1)


def _record_trajectory(state, rows, step, every):
  """Adds the flips since the last record to the record of ``step``."""
  slot = -(-step // every) - 1
  for site, logits in state["gate_logits"].items():
    paths = logits[rows] > 0
    flips = np.sum(paths != state["trajectory_paths"][site][rows], axis=-1)
    state["trajectory_flips"][site][rows, :, slot] += flips.astype(np.int32)
    state["trajectory_usage"][site][rows, :, slot] = paths.mean(-1)
    state["trajectory_paths"][site][rows] = paths


def _trajectory(state, num_steps, every) -> dict[str, Any]:
  """The recorded trajectory, usage carried forward after a concept stops."""
  records = _num_records(num_steps, every)
  steps = np.minimum(np.arange(1, records + 1) * every, num_steps)
  usage = {}
  for site, values in state["trajectory_usage"].items():
    values = values.copy()
    for t in range(1, records):
      missing = values[..., t] < 0
      values[..., t] = np.where(missing, values[..., t - 1], values[..., t])
    usage[site] = values
  return {"steps": steps.astype(np.int32),
          "flips": {s: v.copy() for s, v in state["trajectory_flips"].items()},
          "usage": usage}
