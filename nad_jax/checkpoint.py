"""Orbax checkpoints of a NAD search: saving, resuming, extending, reading.

A run's ``workdir/checkpoints/<total_step>/`` holds two items written
atomically by Orbax (temporary directory, then rename):

* ``state``: ``gate_logits {site: [N, S, C]}``, ``opt_state`` (leading
  ``[N, S]``), ``stable_steps [N, S]``, ``steps_done [N]``, ``done [N]``,
  ``failed_step``, ``failed_site``, ``failed_what`` (``[N] int32``, -1 for
  a healthy concept; format 3, see ``nad_jax.search``), ``rng`` (key data
  of the run's seed key), ``concept_ids [N]`` and the
  path trajectory (``trajectory_paths {site: bool [N, S, C]}``: the paths at
  each concept's last record; ``trajectory_flips {site: int32 [N, S, T]}``
  and ``trajectory_usage {site: float32 [N, S, T]}``, see
  ``nad_jax.search``), for all N concepts of the run and S random
  initialisations each.
* ``meta``: JSON with the model name, its gate sites and channels, the
  concept ids, the number of seeds, the step budget, the trajectory
  interval and the hyperparameters, so that a rerun can check that the
  workdir belongs to the same search before touching it.

The resume policy lives here too (:func:`restore_or_init`): a rerun with the
same concepts resumes; a rerun with other concepts keeps what the stored run
did for the shared ones and starts the others fresh; a workdir of another
search (model, sites, seed, seeds, batch size or hyperparameters differ) is
refused and left untouched. The step budget may change between runs.

Faults: a checkpoint that cannot be read, or whose state holds a
non-finite value or does not fit the run, is *damaged*: the run says so in
one line, moves it aside (``<step>.damaged``) and falls back to the newest
intact one (no intact one left: :class:`nad_jax.errors.CheckpointError`).
Orbax saves asynchronously; a failed save is noticed at the next look
(:meth:`SearchCheckpointer.check`), save or wait, and raised as
:class:`nad_jax.errors.SaveError` naming the reason (a full disk as such)
and the intact previous checkpoint. Concepts stopped on non-finite values
in an earlier run are retried from their last finite state.

The two newest checkpoints are kept. Memory: ``4 * N * S * sum(channels)``
bytes for the gate logits (VGG16, 1000 classes, 1 seed: 17 MB), about as
much again for the trajectory.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from nad_jax import errors

FORMAT_VERSION = 3
# State keys each format added (older checkpoints are read without them;
# the fresh state's values fill them in).
_KEYS_ADDED = {3: ("failed_step", "failed_site", "failed_what")}
DAMAGED_SUFFIX = ".damaged"


def checkpoint_dir(workdir: str | os.PathLike) -> str:
  return os.path.join(os.path.abspath(os.fspath(workdir)), "checkpoints")


class SearchCheckpointer:
  """Saves and restores the search state of one workdir.

  Saves are asynchronous (Orbax); their errors surface as
  :class:`nad_jax.errors.SaveError` from :meth:`check`, the next
  :meth:`save`, :meth:`wait` or :meth:`close`.
  """

  def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 2):
    self.directory = checkpoint_dir(workdir)
    self._max_to_keep = max_to_keep
    self._pending: int | None = None  # step of the save in flight
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep,
                                             create=False))

  def all_steps(self) -> list[int]:
    if not os.path.isdir(self.directory):
      return []
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    if not os.path.isdir(self.directory):
      return None
    return self._manager.latest_step()

  def restore_meta(self, step: int | None = None) -> dict[str, Any] | None:
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    if not isinstance(meta, Mapping):
      raise ValueError(f"the meta item is {type(meta).__name__}, not a "
                       f"JSON object")
    return dict(meta)

  def restore_state(self, template: Mapping[str, Any],
                    step: int | None = None) -> dict[str, Any]:
    """Restores the state item as numpy arrays shaped like ``template``."""
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(dict(template))))
    return dict(restored["state"])

  def set_aside(self, step: int) -> str:
    """Renames a damaged checkpoint to ``<step>.damaged[.<n>]``; returns
    the new path. Orbax ignores it from then on."""
    source = os.path.join(self.directory, str(step))
    target = source + DAMAGED_SUFFIX
    n = 1
    while os.path.exists(target):
      n += 1
      target = f"{source}{DAMAGED_SUFFIX}.{n}"
    os.rename(source, target)
    self._manager.close()
    self._manager = self._new_manager()
    return target

  def save(self, step: int, state: Mapping[str, Any],
           meta: Mapping[str, Any]) -> None:
    """Starts saving ``state`` as checkpoint ``step`` (asynchronous).

    Raises:
      nad_jax.errors.SaveError: this save, or the previous one, failed.
    """
    self.check()
    try:
      os.makedirs(self.directory, exist_ok=True)
      state = {k: _to_numpy(v) for k, v in state.items()}
      self._pending = step
      _check_free_space(self.directory, state)
      self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(dict(meta))),
          force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e) from e

  def check(self) -> None:
    """Raises the error of a finished, failed save; never blocks."""
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Waits for the save in flight; raises its error as a SaveError."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e) from e
    self._pending = None

  def close(self) -> None:
    """Waits for the save in flight and closes; raises its SaveError."""
    error = None
    try:
      self.wait()
    except errors.SaveError as e:
      error = e
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      error = error or self._save_error(e)
    if error is not None:
      _join_orbax_threads()
      raise error

  def close_quietly(self) -> None:
    """Closes after another error; a failed save is logged in one line."""
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("While stopping: %s", errors.one_line(str(e), 500))

  def _save_error(self, error: BaseException) -> errors.SaveError:
    failed = self._pending
    self._pending = None
    reason = errors.storage_reason(error) or errors.one_line(
        f"{type(error).__name__}: {error}", 400)
    intact = [s for s in self.all_steps() if s != failed]
    previous = (f"the previous checkpoint (step {intact[-1]}) is intact"
                if intact else "no earlier checkpoint exists")
    which = f" (step {failed})" if failed is not None else ""
    return errors.SaveError(
        f"saving the search checkpoint{which} in {self.directory} failed: "
        f"{reason}; {previous}. Fix that and rerun with the same --workdir "
        f"to resume.")


def _check_free_space(directory: str, state: Mapping[str, Any]) -> None:
  """Raises ENOSPC before a save that cannot fit (the state's bytes plus
  1 MB of metadata), so that a full disk stops the run before Orbax starts
  writing; a disk that fills during the save is caught by Orbax."""
  needed = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(
      dict(state))) + (1 << 20)
  try:
    stats = os.statvfs(directory)
  except OSError:
    return
  free = stats.f_bavail * stats.f_frsize
  if free < needed:
    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {free} bytes "
                  f"free, the checkpoint needs about {needed}", directory)


def _join_orbax_threads(timeout: float = 30.0) -> None:
  """Waits (bounded) for Orbax's writer threads after a failed save.

  A failed save stops waiting at the first failed write while the other
  writes still run; if the process then exits, their callbacks meet a
  closed event loop and print tracebacks. Letting them end first keeps the
  failure to its one-line message.
  """
  deadline = time.monotonic() + timeout
  for thread in threading.enumerate():
    if thread is threading.current_thread() or not thread.is_alive():
      continue
    if type(thread).__module__.startswith("orbax") or thread.name in (
        "async_save", "save_finalize"):
      thread.join(max(0.0, deadline - time.monotonic()))


def search_meta(model_name: str, site_channels: Mapping[str, int],
                concept_ids: Sequence[int], *, seed: int, num_seeds: int,
                batch_size: int, hparams: Mapping[str, Any],
                num_steps: int = 0,
                trajectory_every: int = 0) -> dict[str, Any]:
  """The JSON stored beside the state; a resume checks it (see below).

  ``num_steps`` and ``trajectory_every`` are filled in by the search when
  left at 0.
  """
  return {
      "format_version": FORMAT_VERSION,
      "model": model_name,
      "site_channels": dict(site_channels),
      "concept_ids": [int(c) for c in concept_ids],
      "seed": int(seed),
      "num_seeds": int(num_seeds),
      "batch_size": int(batch_size),
      "hparams": dict(hparams),
      "num_steps": int(num_steps),
      "trajectory_every": int(trajectory_every),
  }


# Fields of the meta that must match for a workdir to be resumed or
# extended; concept ids may differ (finished concepts are kept), the step
# budget may change, and the trajectory interval of the stored run is kept.
# Older formats (format_version) are read as long as _KEYS_ADDED says how.
_MUST_MATCH = ("model", "site_channels", "seed", "num_seeds", "batch_size",
               "hparams")


def check_resumable(stored: Mapping[str, Any], wanted: Mapping[str, Any],
                    where: str) -> None:
  """Raises a CheckpointError naming each field where ``stored`` !=
  ``wanted``."""
  version = stored.get("format_version")
  if not (isinstance(version, int) and 2 <= version <= FORMAT_VERSION):
    raise errors.CheckpointError(
        f"the checkpoint in {where} has format {version!r}; this nad-jax "
        f"reads formats 2 to {FORMAT_VERSION}. It was left untouched; use "
        f"another --workdir or the nad-jax version that wrote it.")
  diffs = []
  for key in _MUST_MATCH:
    if stored.get(key) != wanted.get(key):
      diffs.append(f"{key}: checkpoint has {stored.get(key)!r}, this run "
                   f"has {wanted.get(key)!r}")
  if diffs:
    raise errors.CheckpointError(
        f"the checkpoint in {where} belongs to a different search and was "
        f"left untouched; use another --workdir or remove it. Differences: "
        + "; ".join(diffs))


def check_state(state: Mapping[str, Any], template: Mapping[str, Any]
                ) -> None:
  """Raises a ValueError if a restored state does not fit ``template`` or
  holds a non-finite value (a damaged checkpoint)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(dict(state))
  shapes = {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in
            jax.tree_util.tree_flatten_with_path(dict(template))[0]}
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    leaf = np.asarray(leaf)
    if name in shapes and leaf.shape != shapes[name]:
      raise ValueError(f"state{name} has shape {leaf.shape}, expected "
                       f"{shapes[name]}")
    if np.issubdtype(leaf.dtype, np.floating) and not np.all(
        np.isfinite(leaf)):
      bad = int(np.sum(~np.isfinite(leaf)))
      raise ValueError(f"state{name} holds {bad} non-finite values")
  steps = np.asarray(state["steps_done"])
  if steps.size and (steps.min() < 0):
    raise ValueError(f"state['steps_done'] holds negative steps")


def _restore_intact(checkpointer: SearchCheckpointer,
                    meta: Mapping[str, Any], init_state: Callable
                    ) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
  """``(step, stored_meta, stored_state)`` of the newest intact checkpoint
  (damaged newer ones are reported and set aside), or None if none."""
  damaged = []
  for step in reversed(checkpointer.all_steps()):
    try:
      stored_meta = checkpointer.restore_meta(step)
    except Exception as e:  # pylint: disable=broad-except
      damaged.append(_damaged(checkpointer, step, "its meta cannot be read",
                              e))
      continue
    check_resumable(stored_meta, meta, checkpointer.directory)
    try:
      stored_ids = [int(c) for c in stored_meta["concept_ids"]]
      template = init_state(stored_ids, stored_meta)
      older = [k for v, keys in _KEYS_ADDED.items()
               if stored_meta["format_version"] < v for k in keys]
      stored = checkpointer.restore_state(
          {k: v for k, v in template.items() if k not in older}, step)
      stored.update({k: template[k] for k in older})
      check_state(stored, template)
    except Exception as e:  # pylint: disable=broad-except
      damaged.append(_damaged(checkpointer, step, "its state cannot be used",
                              e))
      continue
    return step, stored_meta, stored
  if damaged:
    raise errors.CheckpointError(
        f"no intact checkpoint in {checkpointer.directory}: "
        + "; ".join(damaged) + ". The damaged ones were renamed *"
        + DAMAGED_SUFFIX + "; rerun to start the search over.")
  return None


def _damaged(checkpointer, step, what, error) -> str:
  reason = errors.one_line(f"{type(error).__name__}: {error}", 300)
  moved = checkpointer.set_aside(step)
  logging.warning("Checkpoint %d in %s is damaged (%s: %s); moved to %s, "
                  "falling back to the previous one.", step,
                  checkpointer.directory, what, reason,
                  os.path.basename(moved))
  return f"step {step}: {what} ({reason})"


def restore_or_init(
    checkpointer: SearchCheckpointer | None,
    meta: Mapping[str, Any],
    init_state: Callable[[Sequence[int], Mapping[str, Any]], dict[str, Any]],
    resize_state: Callable[[dict[str, Any], Mapping[str, Any],
                            Mapping[str, Any]], dict[str, Any]],
) -> tuple[dict[str, Any], int, dict[str, Any]]:
  """The state to start from: a fresh one, the stored one, or a merge.

  Args:
    checkpointer: the workdir's checkpointer, or None (nothing stored).
    meta: this run's :func:`search_meta`.
    init_state: ``(concept_ids, meta) -> state``, a fresh state; also the
      template the stored state is restored into (with the stored meta).
    resize_state: ``(state, stored_meta, meta) -> state``, adapts a stored
      state to this run's step budget.

  Returns:
    ``(state, total_step, meta)``: the state for ``meta['concept_ids']``,
    the run's step counter, and the meta to store from now on (the stored
    run's trajectory interval is kept).

  Raises:
    nad_jax.errors.CheckpointError: the workdir holds another search
      (named differences), or only damaged checkpoints.
  """
  concept_ids = [int(c) for c in meta["concept_ids"]]
  found = None
  if checkpointer is not None and checkpointer.latest_step() is not None:
    found = _restore_intact(checkpointer, meta, init_state)
  if found is None:
    return init_state(concept_ids, meta), 0, dict(meta)
  step, stored_meta, stored = found
  meta = dict(meta, trajectory_every=stored_meta["trajectory_every"])
  stored_ids = [int(c) for c in stored_meta["concept_ids"]]
  stored = resize_state(stored, stored_meta, meta)
  _retry_failed(stored)
  if stored_ids == concept_ids:
    logging.info("Resuming the search from %s (step %d).",
                 checkpointer.directory, step)
    return stored, step, meta
  # Another concept set: keep what the stored run did for shared concepts.
  fresh = init_state(concept_ids, meta)
  position = {c: i for i, c in enumerate(stored_ids)}
  rows_new = [i for i, c in enumerate(concept_ids) if c in position]
  rows_old = [position[concept_ids[i]] for i in rows_new]
  logging.info("Extending the search in %s: %d of %d concepts carried over.",
               checkpointer.directory, len(rows_new), len(concept_ids))
  if not rows_new:
    return fresh, step, meta
  rows_new, rows_old = np.asarray(rows_new), np.asarray(rows_old)
  n = len(concept_ids)

  def merge(f, s):
    if f.ndim == 0 or f.shape[:1] != (n,):
      return f  # rng and other global leaves
    f = np.array(f, copy=True)
    f[rows_new] = np.asarray(s)[rows_old]
    return f

  merged = jax.tree.map(merge, {k: v for k, v in fresh.items() if k != "rng"},
                        {k: stored[k] for k in fresh if k != "rng"})
  merged["rng"] = fresh["rng"]
  merged["concept_ids"] = fresh["concept_ids"]
  return merged, step, meta


def _retry_failed(state: dict[str, Any]) -> None:
  """Clears the stop marks of concepts that met non-finite values in an
  earlier run: they resume from their last finite state."""
  failed = np.flatnonzero(np.asarray(state["failed_step"]) >= 0)
  if not len(failed):
    return
  ids = np.asarray(state["concept_ids"])[failed].tolist()
  logging.warning("Retrying %d concepts stopped on non-finite values in an "
                  "earlier run, from their last finite state: %s",
                  len(failed), ids)
  for key in ("failed_step", "failed_site", "failed_what"):
    state[key] = np.array(state[key], copy=True)
    state[key][failed] = -1
  state["done"] = np.array(state["done"], copy=True)
  state["done"][failed] = False


def _to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def load_paths(workdir: str | os.PathLike,
               concept_ids: Sequence[int] | None = None
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The binary paths stored in a workdir's newest checkpoint.

  Args:
    workdir: the run's workdir (for the demo: ``workdir/<model name>``).
    concept_ids: the concepts (class ids) to return, in this order; ``None``
      returns all of the run's concepts.

  Returns:
    ``(paths, concept_ids)``: ``paths[site]`` is a bool array
    ``[len(concept_ids), num_seeds, channels]`` (``gate_logits > 0``).

  Raises:
    FileNotFoundError: no checkpoint in ``workdir``.
    KeyError: a requested concept is not in the checkpoint (named).
  """
  gate_logits, stored_ids = load_gate_logits(workdir)
  if concept_ids is None:
    index = np.arange(len(stored_ids))
  else:
    position = {int(c): i for i, c in enumerate(stored_ids)}
    missing = [int(c) for c in concept_ids if int(c) not in position]
    if missing:
      raise KeyError(f"concepts {missing} are not in the checkpoint of "
                     f"{workdir}; it holds {sorted(position)}")
    index = np.asarray([position[int(c)] for c in concept_ids])
  paths = {site: logits[index] > 0 for site, logits in gate_logits.items()}
  return paths, np.asarray(stored_ids)[index]


def load_gate_logits(workdir: str | os.PathLike
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """``(gate_logits {site: [N, S, C]}, concept_ids [N])`` of the newest
  checkpoint in ``workdir``."""
  checkpointer = SearchCheckpointer(workdir)
  try:
    for step in reversed(checkpointer.all_steps()):
      try:
        restored = checkpointer._manager.restore(  # pylint: disable=protected-access
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        state = restored["state"]
        gate_logits = {k: np.asarray(v)
                       for k, v in state["gate_logits"].items()}
        if not all(np.all(np.isfinite(v)) for v in gate_logits.values()):
          raise ValueError("non-finite gate logits")
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %d in %s is damaged (%s); reading the "
                        "previous one.", step, checkpointer.directory,
                        errors.one_line(f"{type(e).__name__}: {e}", 300))
        continue
      return gate_logits, np.asarray(state["concept_ids"])
  finally:
    checkpointer.close_quietly()
  raise FileNotFoundError(
      f"no intact NAD checkpoint in {checkpointer.directory}")
