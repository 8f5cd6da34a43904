"""Converts a DARTS ImageNet checkpoint (PyTorch) to a params checkpoint.

Usage::

  python weights_conversion/convert_darts.py --input model.pt \\
      --output ~/nad_weights/darts_v2 [--force] [--verify]

The input uses the keys of the DARTS reference code's ``NetworkImageNet``
(``stem0.*``, ``stem1.*``, ``cells.<i>.preprocess{0,1}.*``,
``cells.<i>._ops.<j>.op.<k>.*``, ``classifier.*``), as a plain state_dict or
under ``'state_dict'`` (the published checkpoint), with or without the
``module.`` prefixes of DataParallel. ``auxiliary_head.*`` (training only)
and ``num_batches_tracked`` are accepted and dropped. Anything else that does
not fit :class:`nad_jax.models.darts.DartsImageNet` is refused with one error
listing every missing, unexpected and mis-shaped key, and nothing is written.

The output is an Orbax params checkpoint (``nad_jax.params_io``) with meta
``arch='darts_v2'``, ``num_classes``, ``source`` and the input's ``sha256``;
use it with ``--config.model.checkpoint=DIR``. Nothing is downloaded.

``--verify`` reloads the written checkpoint and checks it bit for bit; if
the ``darmo`` package is installed (``pip install --no-deps darmo``), it
also runs darmo's PyTorch ``NetworkImageNet`` and the Flax model on the same
random image and prints the largest differences at every gate site and the
logits.

Memory: the state_dict (4.7 M floats for 1000 classes, 19 MB) is held about
twice (torch-layout and converted copies); ``--verify`` adds both models'
forward passes.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import os
import re
import sys
import types
from collections.abc import Mapping
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from nad_jax import params_io
from nad_jax.models import darts
from weights_conversion import torch_utils

ARCH = "darts_v2"
# Reference keys that the evaluation network does not use.
IGNORED_PREFIXES = ("auxiliary_head.",)
_INDEXED_MODULE = re.compile(r"^(stem0|stem1|cells|op)_(\d+)$")
_OP_MODULE = re.compile(r"^ops_(\d+)$")
_SEQUENTIAL_MODULE = re.compile(r"^seq_(\d+)$")


def _torch_module_name(flax_name: str) -> str:
  """``cells_4`` -> ``cells.4``, ``ops_2`` -> ``_ops.2``, ``op_1`` -> ``op.1``.

  ``seq_1`` -> ``1`` (``conv_7x1_1x7`` is a bare ``nn.Sequential``).
  """
  match = _SEQUENTIAL_MODULE.match(flax_name)
  if match:
    return match.group(1)
  match = _INDEXED_MODULE.match(flax_name)
  if match:
    return f"{match.group(1)}.{match.group(2)}"
  match = _OP_MODULE.match(flax_name)
  if match:
    return f"_ops.{match.group(1)}"
  return flax_name  # preprocess0, conv_1, bn, classifier


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flatten(value, (*prefix, key))
    else:
      yield (*prefix, key), value


def variable_shapes(module: darts.DartsImageNet) -> dict[str, Any]:
  """The Flax variables' shapes of ``module`` (traced once, then cached)."""
  return _variable_shapes(module.num_classes, module.genotype,
                          module.init_channels, module.layers)


@functools.lru_cache(maxsize=8)
def _variable_shapes(num_classes: int, genotype: darts.Genotype,
                     init_channels: int, layers: int) -> dict[str, Any]:
  # Tracing the 14-cell network takes seconds; callers only read the result.
  module = darts.DartsImageNet(num_classes=num_classes, genotype=genotype,
                               init_channels=init_channels, layers=layers)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), images)


def conversion_rules(target_shapes: Mapping[str, Any]
                     ) -> list[torch_utils.Rule]:
  """One rule per Flax variable of the DARTS network, from its path.

  Parameter names in ``nad_jax.models.darts`` mirror the reference keys, so
  the torch key follows from the Flax path; the leaf name and rank pick the
  layout transform.
  """
  rules = []
  for path, shape in _flatten(dict(target_shapes)):
    collection, *modules, leaf = path
    prefix = ".".join(_torch_module_name(name) for name in modules)
    if collection == "batch_stats":
      torch_leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
      transform = torch_utils.identity
    elif leaf == "kernel" and len(shape.shape) == 4:
      torch_leaf = "weight"
      # Regular and depthwise kernels use the same OIHW -> HWIO transpose;
      # depthwise_kernel also checks the (C, 1, k, k) shape.
      is_depthwise = shape.shape[2] == 1 and shape.shape[3] > 1
      transform = (torch_utils.depthwise_kernel if is_depthwise
                   else torch_utils.conv_kernel)
    elif leaf == "kernel":
      torch_leaf, transform = "weight", torch_utils.linear_kernel
    elif leaf == "scale":
      torch_leaf, transform = "weight", torch_utils.identity
    elif leaf == "bias":
      torch_leaf, transform = "bias", torch_utils.identity
    else:
      raise ValueError(f"no conversion rule for Flax variable {'/'.join(path)}")
    rules.append(torch_utils.Rule(f"{prefix}.{torch_leaf}", tuple(path),
                                  transform))
  return rules


def convert_state_dict(state_dict: Mapping[str, Any],
                       num_classes: int | None = None,
                       genotype: darts.Genotype = darts.DARTS_V2,
                       *, init_channels: int = 48, layers: int = 14,
                       source: str = "") -> dict[str, Any]:
  """Converts a reference-layout state_dict to DartsImageNet variables.

  Args:
    state_dict: torch key -> array (numpy or torch tensors), with or without
      ``module.`` prefixes.
    num_classes: classifier outputs; ``None`` reads them from
      ``classifier.weight`` (1000 if that key is missing).
    genotype: the cell structure the checkpoint was trained with.
    init_channels: C of the network (48 for the published model).
    layers: number of cells (14).
    source: the file name, for error messages.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` with float32 numpy leaves.

  Raises:
    torch_utils.ConversionError: listing every missing, unexpected and
      mis-shaped key.
  """
  state_dict = torch_utils.strip_prefix(
      {key: _to_numpy(value) for key, value in state_dict.items()}, "module.")
  state_dict = {key: value for key, value in state_dict.items()
                if not key.startswith(IGNORED_PREFIXES)}
  if num_classes is None:
    classifier = state_dict.get("classifier.weight")
    num_classes = (int(classifier.shape[0])
                   if classifier is not None and classifier.ndim == 2 else 1000)
  module = darts.DartsImageNet(num_classes=num_classes, genotype=genotype,
                               init_channels=init_channels, layers=layers)
  target_shapes = variable_shapes(module)
  rules = conversion_rules(target_shapes)
  # Check in torch terms first, so that every message gives torch shapes.
  torch_utils.check_state_dict(
      state_dict, _torch_shapes(rules, target_shapes), source=source)
  return torch_utils.convert_with_rules(state_dict, rules, target_shapes,
                                        source=source)


def _torch_shapes(rules: list[torch_utils.Rule],
                  target_shapes: Mapping[str, Any]) -> dict[str, tuple]:
  """torch key -> the torch-layout shape its Flax variable needs."""
  flax_shapes = dict(_flatten(dict(target_shapes)))
  torch_shapes = {}
  for rule in rules:
    shape = tuple(flax_shapes[rule.flax_path].shape)
    if len(shape) == 4:  # HWIO -> OIHW
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif len(shape) == 2:  # (in, out) -> (out, in)
      shape = shape[::-1]
    torch_shapes[rule.torch_key] = shape
  return torch_shapes


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def convert_file(input_path: str, output_dir: str, *, force: bool = False,
                 verify: bool = False) -> dict[str, Any]:
  """Converts the checkpoint file ``input_path`` into ``output_dir``.

  Nothing is written unless the whole state_dict converts.

  Returns:
    The meta dict written with the checkpoint.

  Raises:
    FileNotFoundError: no input file.
    FileExistsError: ``output_dir`` exists and ``force`` is off.
    torch_utils.ConversionError: unreadable file or keys that do not fit.
  """
  output_dir = torch_utils.check_output(output_dir, force)
  state_dict = torch_utils.load_state_dict(input_path)
  variables = convert_state_dict(state_dict, source=input_path)
  num_classes = int(variables["params"]["classifier"]["kernel"].shape[1])
  meta = {"arch": ARCH, "num_classes": num_classes,
          "genotype": "DARTS_V2",
          "source": os.path.abspath(input_path),
          "sha256": torch_utils.sha256_of_file(input_path),
          "converter": "weights_conversion/convert_darts.py"}
  torch_utils.write_params(output_dir, variables, meta, force=force)
  if verify:
    _verify(output_dir, variables, state_dict)
  return meta


# ----------------------------------------------------------------------------
# Verification.

_DARMO_STUB = "_darmo_reference"


def darmo_network_module():
  """darmo's ``network.py``: a PyTorch DARTS ``NetworkImageNet``.

  darmo (PyPI, Apache-2.0; ``pip install --no-deps darmo``) follows the DARTS
  reference code and its key names. Its package ``__init__`` imports timm
  and ofa, so only ``network.py`` (and the ``operations.py`` / ``utils.py``
  it imports) is loaded, under a stub package.

  Raises:
    ModuleNotFoundError: darmo is not installed.
  """
  spec = importlib.util.find_spec("darmo")  # does not run darmo/__init__.py
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        "comparing with PyTorch needs darmo: pip install --no-deps darmo")
  if _DARMO_STUB not in sys.modules:
    stub = types.ModuleType(_DARMO_STUB)
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules[_DARMO_STUB] = stub
  return importlib.import_module(f"{_DARMO_STUB}.network")


def compare_with_darmo(variables: Mapping[str, Any],
                       state_dict: Mapping[str, Any],
                       genotype: darts.Genotype = darts.DARTS_V2, *,
                       init_channels: int = 48, layers: int = 14,
                       batch_size: int = 1, seed: int = 0
                       ) -> dict[str, tuple[float, float]]:
  """Largest ``(abs, rel)`` difference per gate site and at ``logits``.

  Runs darmo's PyTorch network with ``state_dict`` and the Flax network with
  ``variables`` on the same random 224-px images; ``rel`` is
  ``max |flax - torch| / max |torch|``. JAX runs at the highest matmul
  precision.
  """
  import torch  # pylint: disable=g-import-not-at-top

  num_classes = int(variables["params"]["classifier"]["kernel"].shape[1])
  torch_model = darmo_network_module().NetworkImageNet(
      init_channels, num_classes, layers, False, genotype, False)
  tensors = {key: torch.as_tensor(np.asarray(value))
             for key, value in torch_utils.strip_prefix(
                 dict(state_dict), "module.").items()
             if not key.startswith(IGNORED_PREFIXES)
             and not key.endswith("num_batches_tracked")}
  result = torch_model.load_state_dict(tensors, strict=False)
  missing = [k for k in result.missing_keys
             if not k.endswith("num_batches_tracked")]
  if missing or result.unexpected_keys:
    raise torch_utils.ConversionError(
        f"darmo's NetworkImageNet rejects the state_dict: missing {missing}, "
        f"unexpected {result.unexpected_keys}")
  torch_model.eval()

  site_modules = [torch_model.stem0, torch_model.stem1, *torch_model.cells]
  torch_sites: dict[str, np.ndarray] = {}
  handles = []
  for index, site_module in enumerate(site_modules):
    def hook(module, inputs, output, site=f"site{index:02d}"):
      del module, inputs
      # clone: stem1 starts with an in-place ReLU on stem0's output.
      torch_sites[site] = output.detach().clone().permute(0, 2, 3, 1).numpy()
    handles.append(site_module.register_forward_hook(hook))
  images = np.random.default_rng(seed).standard_normal(
      (batch_size, 224, 224, 3)).astype(np.float32)
  try:
    with torch.no_grad():
      torch_logits = torch_model(
          torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  finally:
    for handle in handles:
      handle.remove()

  module = darts.DartsImageNet(num_classes=num_classes, genotype=genotype,
                               init_channels=init_channels, layers=layers)
  with jax.default_matmul_precision("highest"):
    logits, activations = jax.jit(module.apply)(variables, images)
  pairs = [(site, activations[site], torch_sites[site])
           for site in module.gate_sites()]
  pairs.append(("logits", logits, torch_logits))
  return torch_utils.max_differences(pairs)


def _verify(output_dir: str, variables: Mapping[str, Any],
            state_dict: Mapping[str, Any]) -> None:
  """Reloads the checkpoint bit-exactly, then compares with darmo."""
  restored, _ = params_io.load_variables(output_dir, expect_arch=ARCH)
  written = dict(_flatten(dict(variables)))
  read = dict(_flatten(dict(restored)))
  if written.keys() != read.keys():
    raise RuntimeError(f"verify: {output_dir} holds other variables than "
                       "were written")
  for path, value in written.items():
    if not np.array_equal(value, read[path]):
      raise RuntimeError(f"verify: {'/'.join(path)} differs after reloading")
  print(f"verify: reloaded {len(read)} arrays bit-exactly")
  try:
    differences = compare_with_darmo(restored, state_dict)
  except ModuleNotFoundError as e:
    print(f"verify: skipped the PyTorch comparison ({e})")
    return
  print("verify: against darmo's PyTorch NetworkImageNet, one random image")
  torch_utils.print_differences(differences)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True,
                      help="PyTorch checkpoint in the DARTS reference layout")
  parser.add_argument("--output", required=True,
                      help="params checkpoint directory to create")
  parser.add_argument("--force", action="store_true",
                      help="overwrite an existing output directory")
  parser.add_argument("--verify", action="store_true",
                      help="reload the output; compare with darmo's PyTorch "
                           "network on a random image if darmo is installed")
  args = parser.parse_args(argv)
  try:
    meta = convert_file(args.input, args.output, force=args.force,
                        verify=args.verify)
  except (FileNotFoundError, FileExistsError,
          torch_utils.ConversionError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {os.path.abspath(os.path.expanduser(args.output))}: "
        f"arch={meta['arch']} num_classes={meta['num_classes']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
