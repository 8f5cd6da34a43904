"""Command line: ``python -m nad_jax.main --config=CONFIG --workdir=DIR``.

Flags only; the work is ``nad_jax.pipeline.run(config, workdir)``. Any
config field can be overridden, e.g. ``--config.search.num_steps=50``.
A rerun with the same ``--workdir`` resumes from the newest checkpoint.

Exit status: 0 done; 1 a user error (bad config, missing file, busy
workdir, damaged checkpoints, full disk, ...: one line ``error: ...`` on
stderr, no traceback; ``--verbosity=1`` adds it); 3 some concepts stopped
on non-finite values (the others' outputs are written); 130 / 143 stopped
by SIGINT / SIGTERM after saving a checkpoint (rerun to resume). A bug
keeps Python's traceback.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from nad_jax import errors
from nad_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/demo.py or "
    "configs/vgg16.py:places365.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory for checkpoints and outputs.")
flags.mark_flags_as_required(["config", "workdir"])
flags.register_validator(
    "workdir", lambda value: value is None or bool(value.strip()),
    message="--workdir is empty; give the directory for checkpoints and "
    "outputs")


# Log records that are known to be harmless: (logger path fragment, start
# of the message).
_HARMLESS = (
    # JAX probes for a TPU on every start; on CPU/GPU machines it fails.
    ("xla_bridge.py", "Unable to initialize backend 'tpu'"),
    ("xla_bridge.py", "Unable to initialize backend 'rocm'"),
    ("xla_bridge.py", "Unable to initialize backend 'cuda'"),
)


class _QuietLibraries(std_logging.Filter):
  """Keeps known-harmless library noise out of the log.

  Drops Orbax's INFO chatter (a dozen lines per save), JAX's probe for a
  TPU backend, and folds Orbax's error records to one line without their
  traceback: the error itself reaches the user as one ``error:`` line.
  """

  def filter(self, record):
    for where, start in _HARMLESS:
      if where in record.pathname and record.getMessage().startswith(start):
        return False
    if "/orbax/" in record.pathname:
      if record.levelno <= std_logging.INFO:
        return False
      if record.exc_info or record.exc_text:
        record.msg = errors.one_line(record.getMessage(), 300)
        record.args = ()
        record.exc_info = None
        record.exc_text = None
    return True


def install_log_filters() -> None:
  """Adds the filter to absl's handler (and Python's root handlers)."""
  quiet = _QuietLibraries()
  logging.get_absl_handler().addFilter(quiet)
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(quiet)


def report_user_error(error: errors.UserError) -> int:
  """Prints ``error`` as one line on stderr; returns the exit status."""
  prefix = "stopped" if isinstance(error, errors.Interrupted) else "error"
  logging.debug("traceback of the error below", exc_info=error)
  sys.stderr.flush()
  sys.stderr.write(f"{prefix}: {errors.one_line(str(error), 4000)}\n")
  sys.stderr.flush()
  return error.exit_code


def run_cli(config, workdir: str, overrides=()) -> int:
  """``pipeline.run`` with the user errors turned into an exit status."""
  try:
    pipeline.run(config, workdir, overrides)
  except errors.UserError as e:
    return report_user_error(e)
  except OSError as e:
    reason = errors.storage_reason(e)
    if reason is None:
      raise
    return report_user_error(errors.SaveError(
        f"{reason}: {getattr(e, 'filename', '') or ''} "
        f"({errors.one_line(str(e), 300)})"))
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  install_log_filters()
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  status = run_cli(_CONFIG.value, _WORKDIR.value, overrides)
  if status:
    sys.exit(status)


if __name__ == "__main__":
  app.run(main)
