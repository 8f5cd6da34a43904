"""Converts torchvision VGG16 / ResNet50 / DenseNet121 weights to nad-jax.

Usage::

  python weights_conversion/convert_torchvision.py --arch vgg16 \\
      --input vgg16-397923af.pth --output ckpt/vgg16 [--verify]
  python weights_conversion/convert_torchvision.py --arch resnet50 \\
      --input resnet50_places365.pth.tar --output ckpt/resnet50_places365

The input is a torchvision state_dict (``.pth``) or a checkpoint dict that
holds one under ``state_dict`` / ``model`` (``module.`` prefixes are
stripped; old DenseNet names ``norm.1`` / ``conv.2`` are renamed). The
number of classes is read from the classifier weight unless
``--num_classes`` is given. Every key must map to exactly one Flax variable
with the right shape; otherwise one error lists every missing, unexpected
and mis-shaped key and nothing is written. The output is an Orbax params
checkpoint (``nad_jax.params_io``) with meta ``arch``, ``num_classes``,
``source_file`` and ``source_sha256``.

``--verify`` (needs torchvision) runs torchvision and the Flax model on the
same random input and prints the largest absolute and relative differences
at the logits and at every gate site.

Memory: the state_dict and its converted copy, about twice the checkpoint
(1.1 GB for VGG16); ``--verify`` adds both models' forward passes.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Mapping
from typing import Any

if __package__ in (None, ""):  # Run as a script: make the repo importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from nad_jax import params_io
from nad_jax.models import densenet, resnet, vgg
from weights_conversion import convert_efficientnet
from weights_conversion import torch_utils as tu
# pylint: enable=wrong-import-position

ARCHS = {"vgg16": vgg.VGG16, "resnet50": resnet.ResNet50,
         "densenet121": densenet.DenseNet121}
# The classifier weight of each architecture: gives num_classes.
CLASSIFIER_KEYS = {"vgg16": "classifier.6.weight", "resnet50": "fc.weight",
                   "densenet121": "classifier.weight"}

# Old torchvision DenseNet checkpoints name ``denselayer1.norm.1.weight``
# what is now ``denselayer1.norm1.weight`` (same for relu / conv, 1 / 2).
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\."
    r"(weight|bias|running_mean|running_var|num_batches_tracked)$")


def rename_old_densenet_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """``...denselayerK.norm.1.weight`` -> ``...denselayerK.norm1.weight``."""
  renamed = {}
  for key, value in state_dict.items():
    match = _OLD_DENSENET_KEY.match(key)
    if match:
      key = f"{match.group(1)}{match.group(2)}.{match.group(3)}"
    renamed[key] = value
  return renamed


def _vgg16_rules() -> list[tu.Rule]:
  rules = []
  for index, _, _ in vgg._CONVS:  # pylint: disable=protected-access
    rules += tu.conv_rules(f"features.{index}", (f"features_{index}",),
                           bias=True)
  for index in (0, 3, 6):
    # The Flax model flattens channel-major like PyTorch: a plain transpose.
    rules += tu.linear_rules(f"classifier.{index}", (f"classifier_{index}",))
  return rules


def _resnet50_rules() -> list[tu.Rule]:
  rules = tu.conv_rules("conv1", ("conv1",)) + tu.batch_norm_rules(
      "bn1", ("bn1",))
  for name, _, _, downsample in resnet.block_layout():
    torch_name = name.replace("_", ".")  # layer2_0 -> layer2.0
    for i in (1, 2, 3):
      rules += tu.conv_rules(f"{torch_name}.conv{i}", (name, f"conv{i}"))
      rules += tu.batch_norm_rules(f"{torch_name}.bn{i}", (name, f"bn{i}"))
    if downsample:
      rules += tu.conv_rules(f"{torch_name}.downsample.0",
                             (name, "downsample_0"))
      rules += tu.batch_norm_rules(f"{torch_name}.downsample.1",
                                   (name, "downsample_1"))
  return rules + tu.linear_rules("fc", ("fc",))


def _densenet121_rules() -> list[tu.Rule]:
  rules = tu.conv_rules("features.conv0", ("conv0",))
  rules += tu.batch_norm_rules("features.norm0", ("norm0",))
  for b, num_layers in enumerate(densenet.BLOCK_CONFIG, start=1):
    for l in range(1, num_layers + 1):
      torch_prefix = f"features.denseblock{b}.denselayer{l}"
      scope = (f"denseblock{b}", f"denselayer{l}")
      for i in (1, 2):
        rules += tu.batch_norm_rules(f"{torch_prefix}.norm{i}",
                                     (*scope, f"norm{i}"))
        rules += tu.conv_rules(f"{torch_prefix}.conv{i}", (*scope, f"conv{i}"))
    if b != len(densenet.BLOCK_CONFIG):
      rules += tu.batch_norm_rules(f"features.transition{b}.norm",
                                   (f"transition{b}", "norm"))
      rules += tu.conv_rules(f"features.transition{b}.conv",
                             (f"transition{b}", "conv"))
  rules += tu.batch_norm_rules("features.norm5", ("norm5",))
  return rules + tu.linear_rules("classifier", ("classifier",))


def torchvision_rules(arch: str) -> list[tu.Rule]:
  """The conversion rules (torch key -> Flax path) of ``arch``."""
  _check_arch(arch)
  return {"vgg16": _vgg16_rules, "resnet50": _resnet50_rules,
          "densenet121": _densenet121_rules}[arch]()


def _check_arch(arch: str) -> None:
  if arch not in ARCHS:
    raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")


def infer_num_classes(arch: str, state_dict: Mapping[str, Any]) -> int | None:
  """Rows of the classifier weight, or None if the key is absent."""
  _check_arch(arch)
  weight = state_dict.get(CLASSIFIER_KEYS[arch])
  if weight is None or np.ndim(weight) != 2:
    return None
  return int(np.shape(weight)[0])


def _arch_hint(arch: str, state_dict: Mapping[str, Any]) -> str:
  """Names the architecture whose classifier key the state_dict holds."""
  others = [a for a, k in CLASSIFIER_KEYS.items()
            if a != arch and k in state_dict and
            CLASSIFIER_KEYS[arch] not in state_dict]
  if others:
    return (f"\n  (this looks like a {' or '.join(others)} state_dict, "
            f"not {arch})")
  return ""


@functools.lru_cache(maxsize=8)
def _target_shapes(arch: str, num_classes: int) -> dict[str, Any]:
  """The Flax variables' shapes (tracing DenseNet121's init takes seconds)."""
  model = ARCHS[arch](num_classes=num_classes)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, 224, 224, 3), jnp.float32))


def convert_state_dict(arch: str, state_dict: Mapping[str, Any],
                       num_classes: int | None = None, *,
                       source: str = "") -> dict[str, Any]:
  """Converts a torchvision ``state_dict`` (numpy or torch values).

  Args:
    arch: ``vgg16``, ``resnet50`` or ``densenet121``.
    state_dict: torch key -> array; ``module.`` prefixes and old DenseNet
      names are handled here too.
    num_classes: classifier size; default: from the classifier weight.
    source: the file name, for messages.

  Returns:
    Flax variables ``{'params': ..., 'batch_stats': ...}`` (no
    ``batch_stats`` for VGG16), float32 numpy arrays.

  Raises:
    ConversionError: lists every missing, unexpected and mis-shaped key.
  """
  _check_arch(arch)
  state_dict = {k: (v.detach().cpu().float().numpy()
                    if hasattr(v, "detach") and v.is_floating_point()
                    else np.asarray(v))
                for k, v in tu.strip_prefix(state_dict, "module.").items()}
  if arch == "densenet121":
    state_dict = rename_old_densenet_keys(state_dict)
  if num_classes is None:
    num_classes = infer_num_classes(arch, state_dict) or 1000
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  try:
    return tu.convert_with_rules(state_dict, torchvision_rules(arch),
                                 _target_shapes(arch, num_classes),
                                 source=source)
  except tu.ConversionError as e:
    raise tu.ConversionError(
        f"cannot convert to {arch} ({num_classes} classes): {e}"
        f"{_arch_hint(arch, state_dict)}") from None


def sha256_of_file(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def convert_file(arch: str, input_path: str | os.PathLike,
                 output_dir: str | os.PathLike,
                 num_classes: int | None = None, *,
                 force: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
  """Converts ``input_path`` and writes the params checkpoint ``output_dir``.

  Nothing is written unless the whole conversion succeeds; an existing
  ``output_dir`` is replaced only with ``force``.

  Returns:
    ``(variables, meta)`` as written.

  Raises:
    FileNotFoundError: no input file.
    FileExistsError: ``output_dir`` exists and ``force`` is off.
    ConversionError: unreadable file or keys/shapes that do not fit.
  """
  _check_arch(arch)
  output_dir = os.path.abspath(os.fspath(output_dir))
  if os.path.exists(output_dir) and not force:
    raise FileExistsError(f"{output_dir} exists; pass --force to replace it")
  state_dict = tu.load_state_dict(input_path)
  variables = convert_state_dict(arch, state_dict, num_classes,
                                 source=os.fspath(input_path))
  meta = {
      "arch": arch,
      "num_classes": int(variables["params"][_classifier_scope(arch)]
                         ["bias"].shape[0]),
      "source_file": os.path.basename(os.fspath(input_path)),
      "source_sha256": sha256_of_file(input_path),
      "converter": "weights_conversion/convert_torchvision.py",
  }
  existed = os.path.exists(output_dir)
  try:
    params_io.save_variables(output_dir, variables, meta, force=force)
  except BaseException:
    if not existed and os.path.exists(output_dir):
      shutil.rmtree(output_dir, ignore_errors=True)
    raise
  return variables, meta


def _classifier_scope(arch: str) -> str:
  return {"vgg16": "classifier_6", "resnet50": "fc",
          "densenet121": "classifier"}[arch]


# ----------------------------------------------------------------------------
# Verification against torchvision.

# torchvision module whose forward output is each gate site, in site order.
# DenseNet's last site is ReLU(norm5) (torchvision applies F.relu after the
# features), so its hook output gets a ReLU before the comparison.
_VGG16_SITE_MODULES = ("features.1", "features.4", "features.6", "features.9",
                       "features.11", "features.13", "features.16",
                       "features.18", "features.20", "features.23",
                       "features.25", "features.27", "avgpool")


def torch_site_modules(arch: str) -> list[str]:
  """Names (``model.named_modules()``) of the torchvision site modules."""
  _check_arch(arch)
  if arch == "vgg16":
    return list(_VGG16_SITE_MODULES)
  if arch == "resnet50":
    return ["maxpool"] + [name.replace("_", ".")
                          for name, _, _, _ in resnet.block_layout()]
  names = ["features.pool0"]
  for b in range(1, len(densenet.BLOCK_CONFIG)):
    names += [f"features.denseblock{b}", f"features.transition{b}"]
  return names + ["features.norm5"]


def build_torchvision(arch: str, state_dict: Mapping[str, Any],
                      num_classes: int):
  """The torchvision model in eval mode with ``state_dict`` loaded."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  model = getattr(torchvision.models, arch)(weights=None,
                                            num_classes=num_classes)
  tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
  if arch == "densenet121":
    tensors = rename_old_densenet_keys(tensors)
  result = model.load_state_dict(tu.strip_prefix(tensors, "module."),
                                 strict=False)
  missing = [k for k in result.missing_keys
             if not k.endswith("num_batches_tracked")]
  if missing or result.unexpected_keys:
    raise tu.ConversionError(
        f"torchvision {arch} rejects the state_dict: missing {missing}, "
        f"unexpected {result.unexpected_keys}")
  return model.eval()


def compare_with_torchvision(arch: str, variables: Mapping[str, Any],
                             state_dict: Mapping[str, Any], *,
                             image_size: int = 224, batch_size: int = 2,
                             seed: int = 0) -> dict[str, tuple[float, float]]:
  """Largest ``(abs, rel)`` difference per gate site and at ``logits``.

  ``rel`` is ``max |flax - torch| / max |torch|``. Both run in float32; JAX
  at the highest matmul precision, torch with TF32 off.
  """
  import torch  # pylint: disable=g-import-not-at-top

  num_classes = int(variables["params"][_classifier_scope(arch)]["bias"]
                    .shape[0])
  torch_model = build_torchvision(arch, state_dict, num_classes)
  images = np.random.default_rng(seed).standard_normal(
      (batch_size, 3, image_size, image_size)).astype(np.float32)
  names = torch_site_modules(arch)
  modules = dict(torch_model.named_modules())
  torch_sites: dict[str, np.ndarray] = {}
  handles = []
  for i, name in enumerate(names):
    def hook(module, inputs, output, site=f"site{i:02d}", name=name):
      del module, inputs
      out = output.detach().clone()
      if arch == "densenet121" and name == "features.norm5":
        out = torch.relu(out)
      torch_sites[site] = out.permute(0, 2, 3, 1).numpy()
    handles.append(modules[name].register_forward_hook(hook))
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  with torch.no_grad():
    torch_logits = torch_model(torch.from_numpy(images)).numpy()
  for handle in handles:
    handle.remove()

  model = ARCHS[arch](num_classes=num_classes)
  with jax.default_matmul_precision("highest"):
    logits, activations = jax.jit(model.apply)(
        variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
  pairs = [(s, activations[s], torch_sites[s]) for s in torch_sites]
  pairs.append(("logits", logits, torch_logits))
  return tu.max_differences(pairs)


# ----------------------------------------------------------------------------
# Command line.


def main(argv: list[str] | None = None) -> int:
  # EfficientNet-Lite (EfficientNet-PyTorch keys) has its own converter with
  # the same command line: weights_conversion/convert_efficientnet.py.
  peek = argparse.ArgumentParser(add_help=False)
  peek.add_argument("--arch")
  if peek.parse_known_args(argv)[0].arch in convert_efficientnet.ARCHS:
    return convert_efficientnet.main(argv)
  parser = argparse.ArgumentParser(
      description="Convert a torchvision checkpoint to a nad-jax params "
                  "checkpoint (Orbax).")
  parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
  parser.add_argument("--input", required=True,
                      help="torchvision .pth (state_dict or checkpoint dict)")
  parser.add_argument("--output", required=True,
                      help="params checkpoint directory to create")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="default: rows of the classifier weight")
  parser.add_argument("--verify", action="store_true",
                      help="compare with torchvision on a random input")
  parser.add_argument("--force", action="store_true",
                      help="replace an existing output directory")
  args = parser.parse_args(argv)
  try:
    variables, meta = convert_file(args.arch, args.input, args.output,
                                   args.num_classes, force=args.force)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.output}: {meta}")
  if args.verify:
    state_dict = tu.load_state_dict(args.input)
    differences = compare_with_torchvision(args.arch, variables, state_dict)
    print(f"{'site':>8} {'max abs diff':>14} {'max rel diff':>14}")
    for site, (abs_diff, rel_diff) in differences.items():
      print(f"{site:>8} {abs_diff:14.3e} {rel_diff:14.3e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
