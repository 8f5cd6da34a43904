"""NAD on any torchvision ResNet, ResNeXt or Wide ResNet, ImageNet or Places365.

The variant is the config's ``:arg`` (torchvision's function name:
``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``,
``resnext50_32x4d``, ``resnext101_32x8d``, ``resnext101_64x4d``,
``wide_resnet50_2``, ``wide_resnet101_2``), with an optional dataset after a
comma: ``configs/resnet.py:resnet18``,
``configs/resnet.py:resnet152,places365``; no ``:arg`` is ``resnet50`` on ImageNet (the same config as
``configs/resnet50.py``). Gate sites: the stem (after the max-pool) and every
residual block: resnet18 9, resnet34 and the 50s 17, the 101s 34,
resnet152 51 (docs/networks.md).

Convert the weights once (needs torch; nothing is ever downloaded)::

  python weights_conversion/convert_torchvision.py --arch resnet18 \\
      --input resnet18-f37072fd.pth --output ckpt/resnet18

Then::

  python -m nad_jax.main --config=configs/resnet.py:resnet18 \\
      --workdir=runs/resnet18 --config.model.checkpoint=ckpt/resnet18

Hyperparameters: the paper gives them for ResNet50 only, so every variant
uses ResNet50's (docs/networks.md, Hyperparameters): paper alpha
2.5 / 2.5 and lambda 0.03 / 0.023, code beta 0.02 / 0.02 (ImageNet / Places365). They are a
starting point, not tuned for the other depths and widths; override them
with ``--config.optim.alpha``, ``--config.objective.lam`` (paper objective)
or ``--config.objective.beta`` (``--config.objective.name=official``).
``search.num_steps``: ImageNet ~1700, Places365 ~6500 (21 epochs of one
class at batch 16, as the authors').
"""

from __future__ import annotations

import ml_collections

from nad_jax import config_lib
from nad_jax.models import resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``VARIANT`` or ``VARIANT,DATASET`` (default ``resnet50``)."""
  return config_lib.family_config(arg, resnet.VARIANTS, "resnet50",
                                  "configs/resnet.py")
