"""The workdir lock: a second process is refused naming the holder; a lock
left by a killed process is taken over; re-entrant within a process."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from nad_jax import errors
from nad_jax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = """
import sys, time
from nad_jax import workdir_lock
lock = workdir_lock.WorkdirLock(sys.argv[1], int(sys.argv[2]))
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(directory, process_index=0):
  proc = subprocess.Popen(
      [sys.executable, "-c", HOLDER, str(directory), str(process_index)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_second_process_is_refused_naming_the_holder(tmp_path):
  proc = _holder(tmp_path)
  try:
    with pytest.raises(errors.WorkdirBusyError) as info:
      workdir_lock.WorkdirLock(tmp_path).acquire()
    message = str(info.value)
    assert f"pid {proc.pid} on host {socket.gethostname()}" in message
    assert str(tmp_path) in message
    # Another process index of a multi-process run has its own lock.
    with workdir_lock.WorkdirLock(tmp_path, process_index=1):
      pass
  finally:
    proc.kill()
    proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
  proc = _holder(tmp_path)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  info = json.loads(open(workdir_lock.lock_path(tmp_path)).read())
  assert info["pid"] == proc.pid  # the dead holder's record is still there
  with caplog.at_level("WARNING"):
    with workdir_lock.WorkdirLock(tmp_path):
      info = json.loads(open(workdir_lock.lock_path(tmp_path)).read())
      assert info["pid"] == os.getpid()
  assert f"pid {proc.pid}" in caplog.text
  assert "no longer running" in caplog.text
  assert open(workdir_lock.lock_path(tmp_path)).read() == ""  # released


def test_reentrant_within_a_process(tmp_path):
  outer = workdir_lock.WorkdirLock(tmp_path).acquire()
  with workdir_lock.WorkdirLock(tmp_path):
    pass
  # Still held by the outer one: another process is refused.
  check = subprocess.run(
      [sys.executable, "-c",
       "import sys\nfrom nad_jax import workdir_lock, errors\n"
       "try:\n  workdir_lock.WorkdirLock(sys.argv[1]).acquire()\n"
       "except errors.WorkdirBusyError as e:\n  print('busy', e)\n",
       str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert check.stdout.startswith("busy"), check.stderr
  assert f"pid {os.getpid()}" in check.stdout
  outer.release()
  with workdir_lock.WorkdirLock(tmp_path):
    pass
