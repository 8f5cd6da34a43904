"""NAD on any torchvision VGG: ``vgg11`` .. ``vgg19_bn``, ImageNet or Places365.

The variant is the config's ``:arg`` (torchvision's function name), with an
optional dataset after a comma: ``configs/vgg.py:vgg19_bn``,
``configs/vgg.py:vgg11,places365``; no ``:arg`` is ``vgg16`` on ImageNet
(the same config as ``configs/vgg16.py``). Gate sites: one per conv (after
its ReLU, after the pool where one follows, the last after the adaptive
avg-pool): vgg11 8, vgg13 10, vgg16 13, vgg19 16, the ``_bn`` variants the
same (docs/networks.md).

Convert the weights once (needs torch; nothing is ever downloaded)::

  python weights_conversion/convert_torchvision.py --arch vgg19_bn \\
      --input vgg19_bn-c79401a0.pth --output ckpt/vgg19_bn

Then::

  python -m nad_jax.main --config=configs/vgg.py:vgg19_bn \\
      --workdir=runs/vgg19_bn --config.model.checkpoint=ckpt/vgg19_bn

Hyperparameters: the paper gives them for VGG16 only, so every VGG variant
uses VGG16's (docs/networks.md, Hyperparameters): paper alpha 0.1 / 0.1
and lambda 6 / 6, code beta 4.5 / 5.0 (ImageNet / Places365). They are a starting point, not
tuned for the other depths or for BatchNorm; override them with
``--config.optim.alpha``, ``--config.objective.lam`` (paper objective) or
``--config.objective.beta`` (``--config.objective.name=official``).
``search.num_steps``: ImageNet ~1700, Places365 ~6500 (21 epochs of one
class at batch 16, as the authors').
"""

from __future__ import annotations

import ml_collections

from nad_jax import config_lib
from nad_jax.models import vgg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``VARIANT`` or ``VARIANT,DATASET`` (default ``vgg16``)."""
  return config_lib.family_config(arg, vgg.VARIANTS, "vgg16",
                                  "configs/vgg.py")
