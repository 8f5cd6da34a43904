"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (cloud preemption,
SLURM's warning before a kill).

``pipeline.run`` installs the handlers with :func:`handle_signals`. While
the search runs (inside :func:`polling`) a signal only sets a flag: the
search finishes its step, saves a checkpoint and raises
:class:`nad_jax.errors.Interrupted`, so nothing is lost and a rerun resumes.
Outside the search (loading, evaluation, writing outputs; their results
are written atomically and redone on a rerun) the handler raises
``Interrupted`` at once. A second signal always stops at once.

Memory: none; no JAX import.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from absl import logging

from nad_jax import errors

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: int | None = None
_polling = 0


def requested() -> int | None:
  """The signal received since the handlers were installed, or None."""
  return _requested


def _handler(signum, frame):
  del frame
  global _requested
  name = errors.signal_name(signum)
  if _requested is not None or not _polling:
    _requested = signum
    raise errors.Interrupted(
        signum, f"stopped by {name}; outputs not yet written are redone by "
        f"a rerun with the same --workdir")
  _requested = signum
  logging.warning("%s received: the search saves a checkpoint after this "
                  "step and stops (send it again to stop at once).", name)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
  """Installs the SIGINT/SIGTERM handlers for the block (main thread only;
  elsewhere it does nothing)."""
  global _requested
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {s: signal.getsignal(s) for s in SIGNALS}
  _requested = None
  for s in SIGNALS:
    signal.signal(s, _handler)
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _requested = None


@contextlib.contextmanager
def polling() -> Iterator[None]:
  """Marks a block that checks :func:`requested` often (the search loop)."""
  global _polling
  _polling += 1
  try:
    yield
  finally:
    _polling -= 1
