"""Command line: ``python -m nad_jax.main --config=CONFIG --workdir=DIR``.

Flags only; the work is ``nad_jax.pipeline.run(config, workdir)``. Any
config field can be overridden, e.g. ``--config.search.num_steps=50``.
A rerun with the same ``--workdir`` resumes from the newest checkpoint.
"""

from __future__ import annotations

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from nad_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/demo.py or "
    "configs/vgg16.py:places365.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory for checkpoints and outputs.")
flags.mark_flags_as_required(["config", "workdir"])


class _HideLibraryInfo(std_logging.Filter):
  """Keeps Orbax's INFO chatter (a dozen lines per save) out of the log."""

  def filter(self, record):
    return record.levelno > std_logging.INFO or (
        "/orbax/" not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_HideLibraryInfo())
  pipeline.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
