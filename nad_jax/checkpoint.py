"""Orbax checkpoints of a NAD search: saving, resuming, extending, reading.

A run's ``workdir/checkpoints/<total_step>/`` holds two items written
atomically by Orbax (temporary directory, then rename):

* ``state``: ``gate_logits {site: [N, S, C]}``, ``opt_state`` (leading
  ``[N, S]``), ``stable_steps [N, S]``, ``steps_done [N]``, ``done [N]``,
  ``rng`` (key data of the run's seed key), ``concept_ids [N]`` and the
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

The two newest checkpoints are kept. Memory: ``4 * N * S * sum(channels)``
bytes for the gate logits (VGG16, 1000 classes, 1 seed: 17 MB), about as
much again for the trajectory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

FORMAT_VERSION = 2


def checkpoint_dir(workdir: str | os.PathLike) -> str:
  return os.path.join(os.path.abspath(os.fspath(workdir)), "checkpoints")


class SearchCheckpointer:
  """Saves and restores the search state of one workdir."""

  def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 2):
    self.directory = checkpoint_dir(workdir)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=False))

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
    return dict(restored["meta"])

  def restore_state(self, template: Mapping[str, Any],
                    step: int | None = None) -> dict[str, Any]:
    """Restores the state item as numpy arrays shaped like ``template``."""
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(dict(template))))
    return dict(restored["state"])

  def save(self, step: int, state: Mapping[str, Any],
           meta: Mapping[str, Any]) -> None:
    os.makedirs(self.directory, exist_ok=True)
    state = {k: _to_numpy(v) for k, v in state.items()}
    self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(dict(meta))),
        force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


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
_MUST_MATCH = ("format_version", "model", "site_channels", "seed",
               "num_seeds", "batch_size", "hparams")


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
    ValueError: the workdir holds another search (named differences).
  """
  concept_ids = [int(c) for c in meta["concept_ids"]]
  if checkpointer is None or checkpointer.latest_step() is None:
    return init_state(concept_ids, meta), 0, dict(meta)
  step = checkpointer.latest_step()
  stored_meta = checkpointer.restore_meta(step)
  check_resumable(stored_meta, meta, checkpointer.directory)
  meta = dict(meta, trajectory_every=stored_meta["trajectory_every"])
  stored_ids = [int(c) for c in stored_meta["concept_ids"]]
  stored = checkpointer.restore_state(init_state(stored_ids, stored_meta),
                                      step)
  stored = resize_state(stored, stored_meta, meta)
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
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f"no NAD checkpoint in {checkpointer.directory}")
  restored = checkpointer._manager.restore(  # pylint: disable=protected-access
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = restored["state"]
  checkpointer.close()
  gate_logits = {k: np.asarray(v) for k, v in state["gate_logits"].items()}
  return gate_logits, np.asarray(state["concept_ids"])
