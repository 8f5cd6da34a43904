"""NAD on DARTS-Net (DARTS_V2, ImageNet) with the paper's hyperparameters.

First convert the DARTS ImageNet checkpoint (nothing is ever downloaded)::

  python weights_conversion/convert_darts.py --input model.pt \\
      --output ~/nad_weights/darts_v2 --verify

Then, ImageNet (tfds ``imagenet2012``; the archives go in ``manual_dir``)::

  python -m nad_jax.main --config=configs/darts.py \\
      --config.model.checkpoint=~/nad_weights/darts_v2 --workdir=/tmp/nad_darts

Places365 (tfds ``places365_small``, 365 classes) needs a checkpoint with a
365-way classifier (no public DARTS one exists; convert your own)::

  python -m nad_jax.main --config=configs/darts.py:places365 \\
      --config.model.checkpoint=DIR --workdir=/tmp/nad_darts_places

Hyperparameters (paper Sec. 5.1, beta from the authors' code;
docs/networks.md): paper alpha 0.1 / 0.3, lambda 0.3 / 0.19; the authors'
code's beta 0.45 / 0.20 (ImageNet / Places365);
16 images per step, RandomResizedCrop training augmentation. The run
produces the 16-site paths (stems and the 14 cells), path similarities,
interpretability and the report under ``workdir``.
"""

from __future__ import annotations

import ml_collections

from nad_jax import config_lib

# dataset -> (paper alpha, paper lambda, code beta): paper Sec. 5.1 and
# the authors' code; docs/networks.md, Hyperparameters.
_HPARAMS = {
    "imagenet": (0.1, 0.3, 0.45),
    "places365": (0.3, 0.19, 0.20),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``imagenet`` (default) or ``places365``."""
  return config_lib.paper_network_config("darts_v2", arg, _HPARAMS,
                                         "configs/darts.py")
