"""Errors a user can act on, and how the command line reports them.

A :class:`UserError` is a problem with what the run was given or met: a
config value out of range, a missing file, a checkpoint of another search,
bad data, a busy workdir, a full disk, concepts stopped on non-finite
values, or a stop request (SIGINT / SIGTERM). ``python -m nad_jax.main``
prints its message on one line and exits with its ``exit_code`` (1; 128 +
the signal number for a stop request), without a traceback. Any other
exception is a bug and keeps its traceback.

Most messages are raised where the problem is found (config validation,
checkpoint restore, data batching). Code that only reads the user's input
(datasets, model weights, class lists) raises plain ``ValueError`` /
``FileNotFoundError`` with a message naming the file, field or class;
:func:`user_input` turns those into user errors at the stage boundary.

Memory: none. Importing this module does not import JAX.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import traceback
from collections.abc import Iterator

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class UserError(Exception):
  """A problem the user can fix; reported in one line, exit status 1."""
  exit_code = 1


class ConfigError(UserError, ValueError):
  """A config field is missing, unknown, out of range or contradictory."""


class DataError(UserError, ValueError):
  """The data cannot serve the run (no readable image, no val images...)."""


class InputNotFoundError(UserError, FileNotFoundError):
  """A file or directory the config names does not exist."""


class InputError(UserError, ValueError):
  """The input (model weights, data, class list) cannot serve the run."""


class CheckpointError(UserError, ValueError):
  """The workdir's checkpoints cannot be used (another search, all damaged)."""


class WorkdirBusyError(UserError):
  """Another process holds the workdir's lock."""


class SaveError(UserError):
  """A checkpoint or an output could not be written (the reason is named)."""


class NonFiniteError(UserError):
  """Concepts were stopped on non-finite values (each named); exit status 3."""
  exit_code = 3


class Interrupted(UserError):
  """SIGINT or SIGTERM: the state was saved; exit status 128 + signal."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = int(signum)
    self.exit_code = 128 + self.signum


def signal_name(signum: int) -> str:
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f"signal {signum}"


def raised_by_nad_jax(error: BaseException) -> bool:
  """Whether the innermost frame of ``error``'s traceback is nad-jax code.

  A message that our code raised on purpose names what is wrong; one raised
  inside numpy, JAX or another library is a bug (or unforeseen) and keeps
  its traceback.
  """
  frames = traceback.extract_tb(error.__traceback__)
  if not frames:
    return False
  return os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


# What a stage that reads the user's input raises about that input.
_INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                 IsADirectoryError)


@contextlib.contextmanager
def user_input(what: str) -> Iterator[None]:
  """Turns the input errors nad-jax raises inside the block into UserErrors.

  Args:
    what: the stage, for the message (``'loading the data'``).

  Raises:
    InputError: ``'<what>: <message>'`` (also a ``ValueError``) for a
      ``ValueError`` or ``KeyError`` raised by nad-jax code (see
      :func:`raised_by_nad_jax`); the original is its ``__cause__``.
    InputNotFoundError: the same for a missing file (a
      ``FileNotFoundError``), wherever it was raised.
  """
  try:
    yield
  except UserError:
    raise
  except _INPUT_ERRORS as e:
    if not raised_by_nad_jax(e) and not isinstance(e, FileNotFoundError):
      raise
    message = e.args[0] if len(e.args) == 1 and isinstance(
        e.args[0], str) else str(e)
    if isinstance(e, FileNotFoundError):
      raise InputNotFoundError(f"{what}: {message}") from e
    raise InputError(f"{what}: {message}") from e


# errno -> what the user is told.
_OS_REASONS = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def storage_reason(error: BaseException) -> str | None:
  """``'disk full (...)'`` etc. if ``error`` (or its cause) is a storage
  failure the user must fix; None otherwise.

  Orbax and TensorStore wrap the OS error in their own exceptions (a
  ``ValueError`` whose message holds ``[os_error_code='28']`` and "No space
  left on device"), so the chain and the message are both searched.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _OS_REASONS:
      return _OS_REASONS[error.errno]
    text = str(error)
    for code, reason in _OS_REASONS.items():
      if (f"os_error_code='{code}'" in text
          or os.strerror(code) in text):
        return reason
    error = error.__cause__ or error.__context__
  return None


def one_line(text: str, limit: int = 2000) -> str:
  """``text`` on one line (newlines folded), at most ``limit`` characters."""
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."
