"""NAD on torchvision VGG16 (13 gate sites), ImageNet or Places365.

Convert the weights once (needs torch; nothing is ever downloaded)::

  python weights_conversion/convert_torchvision.py --arch vgg16 \\
      --input vgg16-397923af.pth --output ckpt/vgg16

Then (``:imagenet`` is the default; ``:places365`` needs a 365-class
checkpoint converted the same way)::

  python -m nad_jax.main --config=configs/vgg16.py --workdir=runs/vgg16 \\
      --config.model.checkpoint=ckpt/vgg16
  python -m nad_jax.main --config=configs/vgg16.py:places365 \\
      --workdir=runs/vgg16_places365 \\
      --config.model.checkpoint=ckpt/vgg16_places365

The paper objective (Eq. 4, 6-8) is the default; the authors' code's
objective is ``--config.objective.name=official``. Hyperparameters (paper
Sec. 5.1, beta from the authors' code; docs/networks.md): paper alpha
0.1 / 0.1 and lambda 6 / 6, code beta 4.5 / 5.0 (ImageNet / Places365).
``search.num_steps`` follows the authors' 21 epochs over one class's
training images at batch 16: ImageNet ~1300 images per class -> ~1700
steps; Places365 (``places365_small``, ~4940 per
class) -> ~6500 steps. The result is one path per class under ``workdir``
and the report (path similarity, interpretability, unit usage).
"""

from __future__ import annotations

import ml_collections

from nad_jax import config_lib

# dataset -> (paper alpha, paper lambda, code beta): paper Sec. 5.1 and
# the authors' code; docs/networks.md, Hyperparameters.
_HPARAMS = config_lib.PAPER_HPARAMS["vgg16"]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``imagenet`` (default) or ``places365``."""
  return config_lib.paper_network_config("vgg16", arg, _HPARAMS,
                                         "configs/vgg16.py")
