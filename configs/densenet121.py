"""NAD on torchvision DenseNet121 (8 gate sites), ImageNet or Places365.

Convert the weights once (needs torch; nothing is ever downloaded)::

  python weights_conversion/convert_torchvision.py --arch densenet121 \\
      --input densenet121-a639ec97.pth --output ckpt/densenet121

Then (``:imagenet`` is the default; ``:places365`` needs a 365-class
checkpoint converted the same way)::

  python -m nad_jax.main --config=configs/densenet121.py \\
      --workdir=runs/densenet121 --config.model.checkpoint=ckpt/densenet121
  python -m nad_jax.main --config=configs/densenet121.py:places365 \\
      --workdir=runs/densenet121_places365 \\
      --config.model.checkpoint=ckpt/densenet121_places365

The paper objective (Eq. 4, 6-8) is the default; the authors' code's
objective is ``--config.objective.name=official``. Hyperparameters (paper
Sec. 5.1, beta from the authors' code; docs/networks.md): paper alpha
0.6 / 0.6 and lambda 0.08 / 0.02, code beta 0.02 / 0.02 (ImageNet /
Places365). ``search.num_steps`` follows the
authors' 21 epochs over one class's training images at batch 16: ImageNet ~1300
images per class -> ~1700 steps; Places365 (``places365_small``, ~4940 per
class) -> ~6500 steps. The result is one path per class under ``workdir``
and the report (path similarity, interpretability, unit usage).
"""

from __future__ import annotations

import ml_collections

from nad_jax import config_lib

# dataset -> (paper alpha, paper lambda, code beta): paper Sec. 5.1 and
# the authors' code; docs/networks.md, Hyperparameters.
_HPARAMS = config_lib.PAPER_HPARAMS["densenet121"]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``imagenet`` (default) or ``places365``."""
  return config_lib.paper_network_config("densenet121", arg, _HPARAMS,
                                         "configs/densenet121.py")
