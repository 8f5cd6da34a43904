"""An exclusive lock on a workdir, so that two runs never write one workdir.

``WorkdirLock(directory)`` holds ``directory/nad.lock`` with ``fcntl.flock``
for as long as the run lives: the kernel releases it when the process ends,
however it ends, so a lock left by a killed run (``kill -9``, out of memory,
power loss of a node) is free again and the next run takes it over (it logs
whose lock it took: the file keeps the holder's pid, host, start time and
command line). A second run on a busy workdir is refused at once with
:class:`nad_jax.errors.WorkdirBusyError` naming the holder.

Each process of a multi-process run locks on its own: pass
``process_index`` (``jax.process_index()``); process ``i > 0`` holds
``nad.lock.<i>``, or point each process at its own directory. The lock is
re-entrant within a process (the pipeline and the search both take it).

On a file system without ``flock`` (some network file systems) the lock
falls back to the pid in the file: a holder on this host that is still
alive refuses the run; one that is gone, or on another host, is taken over
with a warning that names it.

Memory and cost: one small file and one open descriptor; no JAX import.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
from typing import Any

from absl import logging

from nad_jax import errors

LOCK_NAME = "nad.lock"

# Locks this process holds: real path -> [descriptor, depth].
_HELD: dict[str, list[int]] = {}
_HELD_GUARD = threading.Lock()


def lock_path(directory: str | os.PathLike, process_index: int = 0) -> str:
  """The lock file of ``directory`` for process ``process_index``."""
  name = LOCK_NAME if not process_index else f"{LOCK_NAME}.{process_index}"
  return os.path.join(os.path.abspath(os.fspath(directory)), name)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _holder(info: dict[str, Any] | None) -> str:
  if not info:
    return "another process (it has not written its pid yet)"
  text = f"pid {info.get('pid')} on host {info.get('host')}"
  if info.get("started"):
    text += f", started {info['started']}"
  if info.get("command"):
    text += f": {info['command']}"
  return text


def _read_info(fd: int) -> dict[str, Any] | None:
  os.lseek(fd, 0, os.SEEK_SET)
  data = b""
  while chunk := os.read(fd, 65536):
    data += chunk
  try:
    info = json.loads(data.decode() or "null")
  except (UnicodeDecodeError, ValueError):
    return None
  return info if isinstance(info, dict) else None


class WorkdirLock:
  """Holds a workdir for this process (see the module docstring).

  Usage::

    with WorkdirLock(workdir):
      ...  # nothing else can run on workdir now

  Raises (on entry):
    nad_jax.errors.WorkdirBusyError: another live process holds the lock.
  """

  def __init__(self, directory: str | os.PathLike, process_index: int = 0):
    self.path = lock_path(directory, process_index)
    self._held = False

  def acquire(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    key = os.path.realpath(self.path)
    with _HELD_GUARD:
      if key in _HELD:
        _HELD[key][1] += 1
        self._held = True
        return self
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        previous = self._lock(fd)
        self._write_info(fd)
      except BaseException:
        os.close(fd)
        raise
      _HELD[key] = [fd, 1]
      self._held = True
    if previous and previous.get("pid") != os.getpid():
      logging.warning(
          "Took over the lock of %s from an earlier run that is no longer "
          "running (%s).", os.path.dirname(self.path), _holder(previous))
    return self

  def _lock(self, fd: int) -> dict[str, Any] | None:
    """Locks ``fd``; returns the info a dead holder left, if any."""
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise errors.WorkdirBusyError(
          f"the workdir {os.path.dirname(self.path)} is in use by "
          f"{_holder(_read_info(fd))}; wait for that run to end, stop it, "
          f"or use another --workdir") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      return self._lock_by_pid(fd)
    return _read_info(fd)

  def _lock_by_pid(self, fd: int) -> dict[str, Any] | None:
    """The fallback without flock: a live holder on this host refuses."""
    info = _read_info(fd)
    if (info and info.get("host") == socket.gethostname()
        and info.get("pid") != os.getpid()
        and _pid_alive(int(info.get("pid", 0)))):
      raise errors.WorkdirBusyError(
          f"the workdir {os.path.dirname(self.path)} is in use by "
          f"{_holder(info)}; wait for that run to end, stop it, or use "
          f"another --workdir")
    if info and info.get("host") != socket.gethostname():
      logging.warning("%s: this file system has no flock; taking over the "
                      "lock of %s. If that run is still going, stop one of "
                      "the two.", self.path, _holder(info))
    return info

  @staticmethod
  def _write_info(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(info).encode())
    os.fsync(fd)

  def release(self) -> None:
    """Releases the lock (the file stays, emptied, so a waiting opener never
    locks a deleted file)."""
    if not self._held:
      return
    self._held = False
    key = os.path.realpath(self.path)
    with _HELD_GUARD:
      entry = _HELD.get(key)
      if entry is None:
        return
      entry[1] -= 1
      if entry[1] > 0:
        return
      del _HELD[key]
      fd = entry[0]
      try:
        os.ftruncate(fd, 0)
      except OSError:
        pass  # a full disk must not keep the lock
      try:
        fcntl.flock(fd, fcntl.LOCK_UN)
      except OSError:
        pass
      os.close(fd)

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()
