"""Batched search for concept feature paths (paper Alg. 1).

One jitted step updates the gates of K concepts at once: ``jax.vmap`` over
the concept axis (each concept with its own images) and, inside, over S
random initialisations per concept (the paper averages over several). The
frozen network's variables are an argument of the jitted step (so they are
not baked into the compiled program as constants) and are closed over by the
loss, which is differentiated with respect to the gate logits only.

The concept axis is sharded over all devices (``jax.sharding``): each device
runs ``K / num_devices`` concepts; the variables are replicated.

More concepts than ``concepts_per_step`` are processed in chunks of K (the
last one padded, so the step compiles once per shape). A concept stops after
``num_steps`` steps, or, with ``patience > 0``, once none of its S binary
paths has changed for ``patience`` steps (its gates are then frozen while
the rest of its chunk goes on).

Memory per step: K * S forward+backward passes of a batch of B images (all
site activations kept for the backward pass) plus K reference forward passes.
"""

from __future__ import annotations

import dataclasses
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
from nad_jax.data import base as data_base

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


def make_search_step(model, objective: Callable[..., Any],
                     optimizer: optax.GradientTransformation) -> Callable:
  """The jitted, vmapped search step.

  Returns:
    ``step(variables, gate_logits, opt_state, active, images, labels)`` ->
    ``(gate_logits, opt_state, metrics)`` where ``gate_logits`` is
    ``{site: [K, S, C]}``, ``opt_state`` has leading ``[K, S]`` axes,
    ``active [K, S]`` bool says which (concept, seed) may still change,
    ``images [K, B, H, W, 3]``, ``labels [K, B]``; ``metrics`` holds ``loss``,
    ``changed`` (the binary path changed) and ``valid`` (the objective took
    the batch), each ``[K, S]``.
  """

  def concept_step(variables, gate_logits, opt_state, active, images, labels):
    ref_logits, ref_acts = model.apply(variables, images)
    ref_logits = jax.lax.stop_gradient(ref_logits)
    ref_acts = jax.lax.stop_gradient(ref_acts)

    def seed_step(seed_gate_logits, seed_opt_state, seed_active):

      def loss_fn(gl):
        gates = jax.tree.map(jax.nn.sigmoid, gl)
        gated_logits, gated_acts = model.apply(variables, images, gates=gates)
        return objective(gl, ref_logits, ref_acts, gated_logits, gated_acts,
                         labels)

      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          seed_gate_logits)
      updates, new_opt_state = optimizer.update(grads, seed_opt_state,
                                                seed_gate_logits)
      new_gate_logits = optax.apply_updates(seed_gate_logits, updates)
      keep = jnp.logical_and(aux["valid"], seed_active)
      new_gate_logits = jax.tree.map(lambda n, o: jnp.where(keep, n, o),
                                     new_gate_logits, seed_gate_logits)
      new_opt_state = jax.tree.map(lambda n, o: jnp.where(keep, n, o),
                                   new_opt_state, seed_opt_state)
      changed = jnp.zeros((), bool)
      for site in seed_gate_logits:
        changed |= jnp.any((new_gate_logits[site] > 0)
                           != (seed_gate_logits[site] > 0))
      metrics = {"loss": loss, "changed": changed, "valid": aux["valid"]}
      return new_gate_logits, new_opt_state, metrics

    return jax.vmap(seed_step)(gate_logits, opt_state, active)

  batched = jax.vmap(concept_step, in_axes=(None, 0, 0, 0, 0, 0))
  return jax.jit(batched, donate_argnums=(1, 2))


@dataclasses.dataclass
class SearchResult:
  """What the search found, for all N concepts of the run.

  Attributes:
    concept_ids: ``[N]`` class ids.
    gate_logits: ``{site: [N, S, C]}`` real-valued gate logits.
    steps_done: ``[N]`` steps each concept was trained for.
    done: ``[N]`` whether each concept finished (budget or patience).
  """
  concept_ids: np.ndarray
  gate_logits: dict[str, np.ndarray]
  steps_done: np.ndarray
  done: np.ndarray

  @property
  def paths(self) -> dict[str, np.ndarray]:
    """Binary paths ``{site: [N, S, C]}`` (paper Eq. 9: sigmoid(s) > 0.5)."""
    return {site: logits > 0 for site, logits in self.gate_logits.items()}


def _initial_state(seed, concept_ids, num_seeds, site_channels, optimizer):
  gate_logits = init_gate_logits(seed, concept_ids, num_seeds, site_channels)
  opt_state = jax.vmap(jax.vmap(optimizer.init))(gate_logits)
  n = len(concept_ids)
  return {
      "gate_logits": gate_logits,
      "opt_state": jax.tree.map(np.asarray, opt_state),
      "stable_steps": np.zeros((n, num_seeds), np.int32),
      "steps_done": np.zeros((n,), np.int32),
      "done": np.zeros((n,), bool),
      "rng": np.asarray(jax.random.key_data(jax.random.key(seed))),
      "concept_ids": np.asarray(concept_ids, np.int32),
  }


def search_meta(model_name: str, site_channels: Mapping[str, int],
                concept_ids: Sequence[int], *, seed: int, num_seeds: int,
                batch_size: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
  """The JSON stored beside the state; a resume checks it (see below)."""
  return {
      "format_version": checkpoint_lib.FORMAT_VERSION,
      "model": model_name,
      "site_channels": dict(site_channels),
      "concept_ids": [int(c) for c in concept_ids],
      "seed": int(seed),
      "num_seeds": int(num_seeds),
      "batch_size": int(batch_size),
      "hparams": dict(hparams),
  }


# Fields of the meta that must match for a workdir to be resumed or
# extended; concept ids may differ (finished concepts are kept) and the step
# budget may grow.
_MUST_MATCH = ("model", "site_channels", "seed", "num_seeds", "batch_size",
               "hparams")


def check_resumable(stored: Mapping[str, Any], wanted: Mapping[str, Any],
                    where: str) -> None:
  """Raises a ValueError naming each field where ``stored`` != ``wanted``."""
  diffs = []
  for key in _MUST_MATCH:
    if stored.get(key) != wanted.get(key):
      diffs.append(f"{key}: checkpoint has {stored.get(key)!r}, this run "
                   f"has {wanted.get(key)!r}")
  if diffs:
    raise ValueError(
        f"the checkpoint in {where} belongs to a different search and was "
        f"left untouched; use another --workdir or remove it. Differences: "
        + "; ".join(diffs))


def _restore_or_init(checkpointer, meta, seed, concept_ids, num_seeds,
                     site_channels, optimizer):
  """The state to start from: a fresh one, the stored one, or a merge."""
  fresh = _initial_state(seed, concept_ids, num_seeds, site_channels,
                         optimizer)
  if checkpointer is None or checkpointer.latest_step() is None:
    return fresh, 0
  step = checkpointer.latest_step()
  stored_meta = checkpointer.restore_meta(step)
  check_resumable(stored_meta, meta, checkpointer.directory)
  stored_ids = stored_meta["concept_ids"]
  template = _initial_state(seed, stored_ids, num_seeds, site_channels,
                            optimizer)
  stored = checkpointer.restore_state(template, step)
  if list(stored_ids) == [int(c) for c in concept_ids]:
    logging.info("Resuming the search from %s (step %d).",
                 checkpointer.directory, step)
    return stored, step
  # Another concept set: keep what the stored run did for shared concepts.
  position = {c: i for i, c in enumerate(stored_ids)}
  rows_new, rows_old = [], []
  for i, c in enumerate(concept_ids):
    if int(c) in position:
      rows_new.append(i)
      rows_old.append(position[int(c)])
  logging.info("Extending the search in %s: %d of %d concepts carried over.",
               checkpointer.directory, len(rows_new), len(concept_ids))
  if rows_new:
    rows_new, rows_old = np.asarray(rows_new), np.asarray(rows_old)

    def merge(f, s):
      if f.ndim == 0 or f.shape[:1] != (len(concept_ids),):
        return f  # rng and other global leaves
      f = f.copy()
      f[rows_new] = s[rows_old]
      return f

    per_concept = {k: v for k, v in fresh.items() if k != "rng"}
    stored_per_concept = {k: stored[k] for k in per_concept}
    merged = jax.tree.map(merge, per_concept, stored_per_concept)
    merged["rng"] = fresh["rng"]
    merged["concept_ids"] = fresh["concept_ids"]
    return merged, step
  return fresh, step


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
    concepts_per_step: int,
    num_seeds: int = 1,
    patience: int = 0,
    seed: int = 0,
    workdir: str | None = None,
    meta: Mapping[str, Any] | None = None,
    checkpoint_every: int = 50,
    log_every: int = 10,
    stop_after_steps: int = 0,
    step_fn: Callable | None = None,
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
      multiple of the number of devices).
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
    log_every: log progress every this many steps.
    stop_after_steps: if > 0, return after this many steps of this call (a
      checkpoint is written; a rerun resumes). For time-boxed jobs and tests.
    step_fn: a prebuilt :func:`make_search_step` (to share its compilation).

  Returns:
    A :class:`SearchResult` for all ``concept_ids``.
  """
  if num_steps <= 0:
    raise ValueError(f"num_steps must be positive, got {num_steps}")
  if batch_size <= 0 or concepts_per_step <= 0 or num_seeds <= 0:
    raise ValueError(
        f"batch_size ({batch_size}), concepts_per_step ({concepts_per_step}) "
        f"and num_seeds ({num_seeds}) must be positive")
  concept_ids = [int(c) for c in concept_ids]
  if not concept_ids:
    raise ValueError("no concepts to search")
  if len(set(concept_ids)) != len(concept_ids):
    raise ValueError(f"concept ids repeat: {concept_ids}")
  data_base.check_class_ids(concept_ids, len(dataset.class_names))
  site_channels = model.gate_sites()
  if meta is None:
    meta = search_meta(type(model).__name__, site_channels, concept_ids,
                       seed=seed, num_seeds=num_seeds, batch_size=batch_size,
                       hparams={})

  checkpointer = (checkpoint_lib.SearchCheckpointer(workdir)
                  if workdir is not None else None)
  state, total_step = _restore_or_init(checkpointer, meta, seed, concept_ids,
                                       num_seeds, site_channels, optimizer)
  # The step budget may have changed since the checkpoint was written.
  state["done"] = _is_done(state, num_steps, patience)

  devices = jax.devices()
  mesh = Mesh(np.asarray(devices), ("concepts",))
  sharded = NamedSharding(mesh, PartitionSpec("concepts"))
  replicated = NamedSharding(mesh, PartitionSpec())
  k = -(-concepts_per_step // len(devices)) * len(devices)
  variables = jax.device_put(variables, replicated)
  step_fn = step_fn or make_search_step(model, objective, optimizer)

  steps_this_call = 0
  last_saved = total_step
  num_chunks_left = -(-int(np.sum(~state["done"])) // k)
  chunk_number = 0
  while not np.all(state["done"]):
    if stop_after_steps and steps_this_call >= stop_after_steps:
      break
    chunk_number += 1
    rows = _next_chunk(state, k)
    padded = np.concatenate([rows, np.repeat(rows[-1:], k - len(rows))])
    real = np.arange(k) < len(rows)
    chunk_ids = np.asarray(concept_ids)[padded]
    gate_logits = jax.device_put(
        jax.tree.map(lambda x: x[padded], state["gate_logits"]), sharded)
    opt_state = jax.device_put(
        jax.tree.map(lambda x: x[padded], state["opt_state"]), sharded)
    stable = state["stable_steps"][padded].copy()
    step = int(state["steps_done"][rows[0]])
    logging.info("Chunk %d/%d: concepts %s, from step %d of %d.",
                 chunk_number, num_chunks_left, chunk_ids[real].tolist(),
                 step, num_steps)
    tick, tick_step = time.perf_counter(), step
    while step < num_steps:
      active = stable < patience if patience > 0 else np.ones_like(
          stable, bool)
      if not np.any(active[real]):
        break
      if stop_after_steps and steps_this_call >= stop_after_steps:
        break
      images, labels = dataset.concept_batch(chunk_ids, step, batch_size)
      gate_logits, opt_state, metrics = step_fn(
          variables, gate_logits, opt_state,
          jax.device_put(active, sharded),
          jax.device_put(np.asarray(images, np.float32), sharded),
          jax.device_put(np.asarray(labels, np.int32), sharded))
      changed = np.asarray(metrics["changed"])
      stable = np.where(active & ~changed, stable + 1,
                        np.where(active, 0, stable))
      step += 1
      total_step += 1
      steps_this_call += 1
      if log_every and (step % log_every == 0 or step == num_steps):
        elapsed = time.perf_counter() - tick
        rate = (step - tick_step) * k * batch_size / max(elapsed, 1e-9)
        loss = np.asarray(metrics["loss"])[real]
        logging.info(
            "  step %4d/%d  loss %.4g  paths changed %3.0f%%  "
            "skipped batches %3.0f%%  %.0f images*concepts/s", step,
            num_steps, float(np.mean(loss)), 100 * np.mean(changed[real]),
            100 * (1 - np.mean(np.asarray(metrics["valid"])[real])), rate)
        tick, tick_step = time.perf_counter(), step
      if checkpointer is not None and checkpoint_every and (
          total_step % checkpoint_every == 0):
        _write_back(state, rows, gate_logits, opt_state, stable, step,
                    num_steps, patience)
        checkpointer.save(total_step, state, meta)
        last_saved = total_step
    _write_back(state, rows, gate_logits, opt_state, stable, step,
                num_steps, patience)
    if checkpointer is not None and total_step != last_saved:
      checkpointer.save(total_step, state, meta)
      last_saved = total_step
  if checkpointer is not None:
    checkpointer.wait()
    checkpointer.close()
  return SearchResult(
      concept_ids=np.asarray(concept_ids),
      gate_logits={k_: np.asarray(v) for k_, v in state["gate_logits"].items()},
      steps_done=state["steps_done"].copy(), done=state["done"].copy())


def _is_done(state, num_steps, patience):
  done = state["steps_done"] >= num_steps
  if patience > 0:
    done |= np.all(state["stable_steps"] >= patience, axis=-1)
  return done


def _next_chunk(state, k):
  """Up to k unfinished concepts that are at the same step (first first)."""
  pending = np.flatnonzero(~state["done"])
  first_step = state["steps_done"][pending[0]]
  same = pending[state["steps_done"][pending] == first_step]
  return same[:k]


def _write_back(state, rows, gate_logits, opt_state, stable, step,
                num_steps, patience):
  """Copies the chunk's arrays into the run's state (real rows only)."""
  n = len(rows)

  def put(full, chunk):
    full = np.array(full, copy=True)
    full[rows] = np.asarray(chunk)[:n]
    return full

  state["gate_logits"] = jax.tree.map(put, state["gate_logits"], gate_logits)
  state["opt_state"] = jax.tree.map(put, state["opt_state"], opt_state)
  state["stable_steps"][rows] = stable[:n]
  state["steps_done"][rows] = step
  state["done"] = _is_done(state, num_steps, patience)
