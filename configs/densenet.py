"""NAD on any torchvision DenseNet: 121, 161, 169, 201; ImageNet or Places365.

The variant is the config's ``:arg`` (torchvision's function name), with an
optional dataset after a comma: ``configs/densenet.py:densenet169``,
``configs/densenet.py:densenet201,places365``; no ``:arg`` is
``densenet121`` on ImageNet (the same config as ``configs/densenet121.py``).
Gate sites (8 for every variant): after pool0, dense blocks 1-3, each
transition, and norm5 + ReLU (docs/networks.md).

Convert the weights once (needs torch; nothing is ever downloaded)::

  python weights_conversion/convert_torchvision.py --arch densenet169 \\
      --input densenet169-b2777c0a.pth --output ckpt/densenet169

Then::

  python -m nad_jax.main --config=configs/densenet.py:densenet169 \\
      --workdir=runs/densenet169 --config.model.checkpoint=ckpt/densenet169

Hyperparameters: the paper gives them for DenseNet121 only, so every
variant uses DenseNet121's (docs/networks.md, Hyperparameters): paper
alpha 0.6 / 0.6 and lambda 0.08 / 0.02, code beta 0.02 / 0.02 (ImageNet /
Places365). They are a starting point, not tuned for the other variants; override them with
``--config.optim.alpha``, ``--config.objective.lam`` (paper objective) or
``--config.objective.beta`` (``--config.objective.name=official``).
``search.num_steps``: ImageNet ~1700, Places365 ~6500 (21 epochs of one
class at batch 16, as the authors').
"""

from __future__ import annotations

import ml_collections

from nad_jax import config_lib
from nad_jax.models import densenet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``VARIANT`` or ``VARIANT,DATASET`` (default ``densenet121``)."""
  return config_lib.family_config(arg, densenet.VARIANTS, "densenet121",
                                  "configs/densenet.py")
