"""Orbax checkpoints of a NAD search, and reading paths back from them.

A run's ``workdir/checkpoints/<total_step>/`` holds two items written
atomically by Orbax (temporary directory, then rename):

* ``state``: ``gate_logits {site: [N, S, C]}``, ``opt_state`` (leading
  ``[N, S]``), ``stable_steps [N, S]``, ``steps_done [N]``, ``done [N]``,
  ``rng`` (key data of the run's seed key) and ``concept_ids [N]``, for all N
  concepts of the run and S random initialisations each.
* ``meta``: JSON with the model name, its gate sites and channels, the
  concept ids, the number of seeds and the hyperparameters, so that a rerun
  can check that the workdir belongs to the same search before touching it.

The two newest checkpoints are kept. Memory: ``4 * N * S * sum(channels)``
bytes for the gate logits (VGG16, 1000 classes, 1 seed: 17 MB).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

FORMAT_VERSION = 1


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


def _to_numpy(tree):
  import jax  # pylint: disable=g-import-not-at-top
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
