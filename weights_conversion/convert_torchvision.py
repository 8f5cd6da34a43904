"""Converts torchvision VGG, ResNet and DenseNet weights to nad-jax.

Usage::

  python weights_conversion/convert_torchvision.py --arch vgg16 \\
      --input vgg16-397923af.pth --output ckpt/vgg16 [--verify]
  python weights_conversion/convert_torchvision.py --arch resnet50 \\
      --input resnet50_places365.pth.tar --output ckpt/resnet50_places365

``--arch`` is torchvision's function name: ``vgg11``, ``vgg11_bn``, ...,
``vgg19_bn``; ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``,
``resnet152``, ``resnext50_32x4d``, ``resnext101_32x8d``,
``resnext101_64x4d``, ``wide_resnet50_2``, ``wide_resnet101_2``;
``densenet121``, ``densenet161``, ``densenet169``, ``densenet201``.

The input is a torchvision state_dict (``.pth``) or a checkpoint dict that
holds one under ``state_dict`` / ``model`` (``module.`` prefixes are
stripped; old DenseNet names ``norm.1`` / ``conv.2`` are renamed). The
number of classes is read from the classifier weight unless
``--num_classes`` is given. Every key must map to exactly one Flax variable
with the right shape; otherwise one error lists every missing, unexpected
and mis-shaped key (and names the architecture the file looks like, when
it is another one) and nothing is written. The output is an Orbax params
checkpoint (``nad_jax.params_io``) with meta ``arch``, ``num_classes``,
``source_file`` and ``source_sha256``.

``--verify`` (needs torchvision) runs torchvision and the Flax model on the
same random input and prints the largest absolute and relative differences
at the logits and at every gate site.

Memory: the state_dict and its converted copy, about twice the checkpoint
(1.1 GB for a VGG); ``--verify`` adds both models' forward passes.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
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

from nad_jax.models import densenet, resnet, vgg
from weights_conversion import convert_efficientnet
from weights_conversion import torch_utils as tu
# pylint: enable=wrong-import-position

# The model module of each family; every torchvision function name of the
# family is a key of its ``MODELS``.
FAMILIES = {"vgg": vgg, "resnet": resnet, "densenet": densenet}
# torchvision function name -> family, and -> the Flax module class.
FAMILY = {arch: family for family, module in FAMILIES.items()
          for arch in module.MODELS}
ARCHS = {arch: FAMILIES[family].MODELS[arch]
         for arch, family in FAMILY.items()}
# The classifier of each family: torch key prefix and Flax scope. Its weight
# gives num_classes.
_CLASSIFIERS = {"vgg": ("classifier.6", "classifier_6"),
                "resnet": ("fc", "fc"),
                "densenet": ("classifier", "classifier")}
CLASSIFIER_KEYS = {arch: f"{_CLASSIFIERS[family][0]}.weight"
                   for arch, family in FAMILY.items()}

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


def _vgg_rules(arch: str) -> list[tu.Rule]:
  rules = []
  for conv in vgg.conv_layout(arch):
    rules += tu.conv_rules(f"features.{conv.index}",
                           (f"features_{conv.index}",), bias=True)
    if conv.batch_norm is not None:
      rules += tu.batch_norm_rules(f"features.{conv.batch_norm}",
                                   (f"features_{conv.batch_norm}",))
  for index in vgg.CLASSIFIER:
    # The Flax model flattens channel-major like PyTorch: a plain transpose.
    rules += tu.linear_rules(f"classifier.{index}", (f"classifier_{index}",))
  return rules


def _resnet_rules(arch: str) -> list[tu.Rule]:
  rules = tu.conv_rules("conv1", ("conv1",)) + tu.batch_norm_rules(
      "bn1", ("bn1",))
  num_convs = 2 if resnet.VARIANTS[arch].block == "basic" else 3
  for block in resnet.block_layout(arch):
    for i in range(1, num_convs + 1):
      rules += tu.conv_rules(f"{block.torch_name}.conv{i}",
                             (block.name, f"conv{i}"))
      rules += tu.batch_norm_rules(f"{block.torch_name}.bn{i}",
                                   (block.name, f"bn{i}"))
    if block.downsample:
      rules += tu.conv_rules(f"{block.torch_name}.downsample.0",
                             (block.name, "downsample_0"))
      rules += tu.batch_norm_rules(f"{block.torch_name}.downsample.1",
                                   (block.name, "downsample_1"))
  return rules + tu.linear_rules("fc", ("fc",))


def _densenet_rules(arch: str) -> list[tu.Rule]:
  block_config = densenet.VARIANTS[arch].block_config
  rules = tu.conv_rules("features.conv0", ("conv0",))
  rules += tu.batch_norm_rules("features.norm0", ("norm0",))
  for b, num_layers in enumerate(block_config, start=1):
    for l in range(1, num_layers + 1):
      torch_prefix = f"features.denseblock{b}.denselayer{l}"
      scope = (f"denseblock{b}", f"denselayer{l}")
      for i in (1, 2):
        rules += tu.batch_norm_rules(f"{torch_prefix}.norm{i}",
                                     (*scope, f"norm{i}"))
        rules += tu.conv_rules(f"{torch_prefix}.conv{i}", (*scope, f"conv{i}"))
    if b != len(block_config):
      rules += tu.batch_norm_rules(f"features.transition{b}.norm",
                                   (f"transition{b}", "norm"))
      rules += tu.conv_rules(f"features.transition{b}.conv",
                             (f"transition{b}", "conv"))
  rules += tu.batch_norm_rules("features.norm5", ("norm5",))
  return rules + tu.linear_rules("classifier", ("classifier",))


_RULES = {"vgg": _vgg_rules, "resnet": _resnet_rules,
          "densenet": _densenet_rules}


def torchvision_rules(arch: str) -> list[tu.Rule]:
  """The conversion rules (torch key -> Flax path) of ``arch``."""
  _check_arch(arch)
  return _RULES[FAMILY[arch]](arch)


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


@functools.lru_cache(maxsize=32)
def _target_shapes(arch: str, num_classes: int) -> dict[str, Any]:
  """The Flax variables' shapes (tracing a DenseNet's init takes seconds)."""
  model = ARCHS[arch](num_classes=num_classes)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, 224, 224, 3), jnp.float32))


@functools.lru_cache(maxsize=None)
def _rule_keys(arch: str) -> frozenset[str]:
  return frozenset(rule.torch_key for rule in torchvision_rules(arch))


def expected_torch_shapes(arch: str, num_classes: int
                          ) -> dict[str, tuple[int, ...]]:
  """torch key -> torch-layout shape of every tensor ``arch`` needs."""
  shapes = {}
  target = _target_shapes(arch, num_classes)
  for rule in torchvision_rules(arch):
    node = target
    for key in rule.flax_path:
      node = node[key]
    shape = tuple(node.shape)
    if rule.transform in (tu.conv_kernel, tu.depthwise_kernel):
      shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
    elif rule.transform is tu.linear_kernel:
      shape = (shape[1], shape[0])
    shapes[rule.torch_key] = shape
  return shapes


def identify_arch(state_dict: Mapping[str, Any]) -> list[str]:
  """The architectures whose every key and shape ``state_dict`` has.

  The class count is read from the classifier weight. Usually one name;
  none for a damaged or foreign state_dict.
  """
  state_dict = rename_old_densenet_keys(tu.strip_prefix(state_dict))
  keys = frozenset(k for k in state_dict
                   if not k.endswith("num_batches_tracked"))
  matches = []
  for arch in ARCHS:
    num_classes = infer_num_classes(arch, state_dict)
    if _rule_keys(arch) != keys or not num_classes:
      continue
    try:
      tu.check_state_dict(state_dict, expected_torch_shapes(arch, num_classes))
    except tu.ConversionError:
      continue
    matches.append(arch)
  return matches


def _arch_hint(arch: str, state_dict: Mapping[str, Any]) -> str:
  """Names the architecture the state_dict looks like, if not ``arch``."""
  others = [a for a in identify_arch(state_dict) if a != arch]
  if others:
    return (f"\n  (this looks like a {' or '.join(others)} state_dict, "
            f"not {arch})")
  keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
  if not keys:
    return ""

  def overlap(a: str) -> float:
    return len(keys & _rule_keys(a)) / len(keys | _rule_keys(a))

  closest = max(ARCHS, key=overlap)
  if closest != arch and overlap(closest) > max(overlap(arch), 0.5):
    return (f"\n  (its key names are closest to {closest}'s: "
            f"{len(keys & _rule_keys(closest))} of {len(keys)} keys are "
            f"{closest} keys)")
  return ""


def convert_state_dict(arch: str, state_dict: Mapping[str, Any],
                       num_classes: int | None = None, *,
                       source: str = "") -> dict[str, Any]:
  """Converts a torchvision ``state_dict`` (numpy or torch values).

  Args:
    arch: a torchvision function name, a key of ``ARCHS`` (``vgg11`` ..
      ``vgg19_bn``, ``resnet18`` .. ``wide_resnet101_2``, ``densenet121`` ..
      ``densenet201``).
    state_dict: torch key -> array; ``module.`` prefixes and old DenseNet
      names are handled here too.
    num_classes: classifier size; default: from the classifier weight.
    source: the file name, for messages.

  Returns:
    Flax variables ``{'params': ..., 'batch_stats': ...}`` (no
    ``batch_stats`` for VGG without BatchNorm), float32 numpy arrays.

  Raises:
    ConversionError: lists every missing, unexpected and mis-shaped key, and
      names the architecture the state_dict looks like when it is another.
  """
  _check_arch(arch)
  state_dict = {k: (v.detach().cpu().float().numpy()
                    if hasattr(v, "detach") and v.is_floating_point()
                    else np.asarray(v))
                for k, v in tu.strip_prefix(state_dict, "module.").items()}
  if FAMILY[arch] == "densenet":
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
  output_dir = tu.check_output(output_dir, force)
  state_dict = tu.load_state_dict(input_path)
  variables = convert_state_dict(arch, state_dict, num_classes,
                                 source=os.fspath(input_path))
  meta = {
      "arch": arch,
      "num_classes": int(variables["params"][_classifier_scope(arch)]
                         ["bias"].shape[0]),
      "source_file": os.path.basename(os.fspath(input_path)),
      "source_sha256": tu.sha256_of_file(input_path),
      "converter": "weights_conversion/convert_torchvision.py",
  }
  tu.write_params(output_dir, variables, meta, force=force)
  return variables, meta


def _classifier_scope(arch: str) -> str:
  return _CLASSIFIERS[FAMILY[arch]][1]


# ----------------------------------------------------------------------------
# Verification against torchvision.


def torch_site_modules(arch: str) -> list[str]:
  """Names (``model.named_modules()``) of the torchvision site modules.

  The module whose forward output is each gate site, in site order. A
  DenseNet's last site is ReLU(norm5) (torchvision applies ``F.relu`` after
  ``features``): compare ReLU of ``features.norm5``'s output with it.
  """
  _check_arch(arch)
  family = FAMILY[arch]
  if family == "vgg":
    convs = vgg.conv_layout(arch)
    return [f"features.{c.pool if c.pool is not None else c.relu}"
            for c in convs[:-1]] + ["avgpool"]
  if family == "resnet":
    return ["maxpool"] + [b.torch_name for b in resnet.block_layout(arch)]
  names = ["features.pool0"]
  for b in range(1, len(densenet.VARIANTS[arch].block_config)):
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
  if FAMILY[arch] == "densenet":
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
      if FAMILY[arch] == "densenet" and name == "features.norm5":
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
  parser.add_argument(
      "--arch", required=True,
      choices=sorted(ARCHS) + sorted(convert_efficientnet.ARCHS),
      help="torchvision's function name (vgg16, resnet50, ...) or "
           "efficientnet_lite0 (its own converter, same command line)")
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
    tu.print_differences(differences)
  return 0


if __name__ == "__main__":
  sys.exit(main())
