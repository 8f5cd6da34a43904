"""Saving and loading the frozen network's variables as Orbax checkpoints.

A params checkpoint is a directory written atomically by Orbax with two
items: ``variables`` (the Flax variables pytree: ``params`` and, for networks
with BatchNorm, ``batch_stats``; float32 numpy arrays) and ``meta`` (JSON:
at least ``arch`` and ``num_classes``, plus where the weights came from).
The converters in ``weights_conversion/`` and the demo-network training
write them; configs load them with ``--config.model.checkpoint=PATH``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_variables(path: str | os.PathLike, variables: Mapping[str, Any],
                   meta: Mapping[str, Any], *, force: bool = False) -> None:
  """Writes ``variables`` and ``meta`` to the checkpoint directory ``path``.

  Orbax writes to a temporary directory and renames it at the end, so an
  interrupted save leaves no half-written checkpoint.

  Args:
    path: the checkpoint directory to create.
    variables: the Flax variables pytree.
    meta: JSON-serialisable facts; must hold ``arch`` and ``num_classes``.
    force: overwrite an existing checkpoint.
  """
  for key in ("arch", "num_classes"):
    if key not in meta:
      raise ValueError(f"params checkpoint meta needs {key!r}; got {dict(meta)}")
  path = os.path.abspath(os.fspath(path))
  variables = jax.tree.map(lambda x: np.asarray(x, np.float32), dict(variables))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(
        path,
        args=ocp.args.Composite(
            variables=ocp.args.StandardSave(variables),
            meta=ocp.args.JsonSave(dict(meta))),
        force=force)


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
  """Reads only the ``meta`` item of a params checkpoint."""
  path = _existing_checkpoint(path)
  with _readable(path), ocp.Checkpointer(
      ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(
        path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    if not isinstance(meta, dict):
      raise ValueError("its meta item is not a JSON object")
  return dict(meta)


def load_variables(path: str | os.PathLike,
                   expect_arch: str | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads ``(variables, meta)`` from the params checkpoint at ``path``.

  Args:
    path: a directory written by :func:`save_variables`.
    expect_arch: if given, the checkpoint's ``meta['arch']`` must equal it.

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    ValueError: the checkpoint holds another architecture, or cannot be
      read (damaged; the message names the path and Orbax's reason).
  """
  path = _existing_checkpoint(path)
  meta = load_meta(path)
  if expect_arch is not None and meta.get("arch") != expect_arch:
    raise ValueError(f"params checkpoint {path} holds arch "
                     f"{meta.get('arch')!r}, expected {expect_arch!r}")
  with _readable(path), ocp.Checkpointer(
      ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(
        path, args=ocp.args.Composite(variables=ocp.args.StandardRestore()))
    variables = jax.tree.map(np.asarray, dict(restored["variables"]))
  return variables, meta


@contextlib.contextmanager
def _readable(path: str) -> Iterator[None]:
  """A params checkpoint Orbax cannot read: one ValueError naming it."""
  try:
    yield
  except (ValueError, KeyError, OSError) as e:
    reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    raise ValueError(f"params checkpoint {path} cannot be read (damaged or "
                     f"not written by nad-jax): {reason}") from e


def _existing_checkpoint(path: str | os.PathLike) -> str:
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no params checkpoint at {path}")
  return path
