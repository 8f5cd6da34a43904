"""DARTS-Net: parity with an independent PyTorch implementation, conversion.

The reference is ``NetworkImageNet`` of the ``darmo`` package (PyPI,
Apache-2.0; install with ``pip install --no-deps darmo``), which follows the
DARTS reference code and its key names. Its package ``__init__`` imports
timm and ofa, so only its ``network.py`` / ``operations.py`` are loaded, under
a stub package. Its genotypes are read from its source with ``ast``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import types

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch")

from nad_jax import params_io  # pylint: disable=g-import-not-at-top
from nad_jax import config_lib
from nad_jax.models import darts
import nad_jax.models as models_lib
from weights_conversion import convert_darts
from weights_conversion import torch_utils

NUM_CLASSES = 10
TOLERANCE = 1e-4
_DARMO_STUB = "_darmo_reference"


def _darmo_dir() -> str:
  spec = importlib.util.find_spec("darmo")  # does not run darmo/__init__.py
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("the PyTorch reference needs darmo: "
                "pip install --no-deps darmo")
  return list(spec.submodule_search_locations)[0]


def _darmo_network():
  """darmo's network.py, imported without darmo's package __init__."""
  if _DARMO_STUB not in sys.modules:
    stub = types.ModuleType(_DARMO_STUB)
    stub.__path__ = [_darmo_dir()]
    sys.modules[_DARMO_STUB] = stub
  return importlib.import_module(f"{_DARMO_STUB}.network")


def _darmo_genotype(function_name: str) -> dict:
  """The Genotype(...) literal inside darmo's ``function_name``."""
  with open(os.path.join(_darmo_dir(), "__init__.py")) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef) and node.name == function_name:
      for call in ast.walk(node):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "Genotype"):
          fields = {}
          for keyword in call.keywords:
            value = keyword.value
            if (isinstance(value, ast.Call)
                and getattr(value.func, "id", "") == "range"):
              fields[keyword.arg] = list(
                  range(*[ast.literal_eval(a) for a in value.args]))
            else:
              fields[keyword.arg] = ast.literal_eval(value)
          return fields
  raise AssertionError(f"no Genotype in darmo's {function_name}()")


def _torch_network(genotype: darts.Genotype, init_channels: int = 48,
                   layers: int = 14, seed: int = 0):
  """darmo's NetworkImageNet, random weights and BN statistics, eval mode."""
  torch.manual_seed(seed)
  net = _darmo_network().NetworkImageNet(
      init_channels, NUM_CLASSES, layers, True, genotype, False)
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        shape = module.running_mean.shape
        module.running_mean.normal_(0.0, 0.2, generator=generator)
        module.running_var.uniform_(0.5, 2.0, generator=generator)
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.normal_(0.0, 0.2, generator=generator)
        assert module.running_mean.shape == shape
  return net.eval()


def _torch_forward(net, images_nhwc: np.ndarray, gates=None):
  """Logits and post-gate site outputs (NHWC) of the torch network."""
  sites = [net.stem0, net.stem1, *net.cells]
  activations = {}
  handles = []
  for index, site in enumerate(sites):
    name = f"site{index:02d}"

    def hook(module, inputs, output, name=name):
      del module, inputs
      if gates is not None:
        output = output * torch.from_numpy(gates[name]).view(1, -1, 1, 1)
      # clone: stem1 starts with an in-place ReLU on stem0's output.
      activations[name] = output.detach().clone().permute(0, 2, 3, 1).numpy()
      return output

    handles.append(site.register_forward_hook(hook))
  try:
    with torch.no_grad():
      images = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
      output = net(images)
  finally:
    for handle in handles:
      handle.remove()
  logits = output[0] if isinstance(output, tuple) else output
  return logits.numpy(), activations


def _assert_close(name, actual, expected):
  actual = np.asarray(actual)
  assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
  error = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert error <= TOLERANCE, f"{name}: relative error {error:.2e}"
  return float(error)


def _images(batch: int = 1, seed: int = 3) -> np.ndarray:
  return np.random.default_rng(seed).normal(
      size=(batch, 224, 224, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def reference():
  """darmo's NetworkImageNet with DARTS_V2 (C=48, 14 cells, aux head)."""
  return _torch_network(darts.DARTS_V2)


def test_darts_v2_is_darmos_genotype():
  assert darts.DARTS_V2 == darts.make_genotype(**_darmo_genotype("dartsv2"))


def test_gate_sites_follow_nad_facts():
  # docs/darts.md, Gate sites (the authors' code's sites): stems 48, cells
  # 192 (0-3), 384 (4-8), 768 (9-13).
  expected = [48, 48] + [192] * 4 + [384] * 5 + [768] * 5
  sites = darts.DartsImageNet(num_classes=1000).gate_sites()
  assert list(sites) == [f"site{i:02d}" for i in range(16)]
  assert list(sites.values()) == expected


def test_input_size_without_a_7px_map_is_refused():
  module = darts.DartsImageNet(num_classes=10, init_channels=8, layers=3)
  shapes = convert_darts.variable_shapes(module)
  images = jax.ShapeDtypeStruct((1, 160, 160, 3), np.float32)  # 5x5 map
  with pytest.raises(ValueError, match="last cell's map is 5x5"):
    jax.eval_shape(module.apply, shapes, images)


def test_bad_genotype_is_refused():
  with pytest.raises(ValueError, match="unknown operation 'sep_conv_9x9'"):
    darts.make_genotype([("sep_conv_9x9", 0), ("skip_connect", 1)], [2],
                        [("max_pool_3x3", 0), ("max_pool_3x3", 1)], [2])
  with pytest.raises(ValueError, match=r"node 0 can read states 0\.\.1"):
    darts.make_genotype([("sep_conv_3x3", 2), ("skip_connect", 1)], [2],
                        [("max_pool_3x3", 0), ("max_pool_3x3", 1)], [2])


def test_parity_with_pytorch_darts_v2(reference, tmp_path):
  net = reference
  state_dict = net.state_dict()
  assert any(k.startswith("auxiliary_head.") for k in state_dict)
  wrapped = tmp_path / "model.pt"
  torch.save({"state_dict": state_dict, "epoch": 250}, wrapped)
  # DataParallel prefixes, in the pre-1.6 (non-zip) file format of the
  # published 2018 checkpoint.
  prefixed = tmp_path / "model_dp.pt"
  torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict.items()},
              "best_acc_top1": 73.3},
             prefixed, _use_new_zipfile_serialization=False)

  out_dir = tmp_path / "darts_v2"
  meta = convert_darts.convert_file(str(wrapped), str(out_dir))
  assert meta["arch"] == "darts_v2" and meta["num_classes"] == NUM_CLASSES
  config = config_lib.base_config()
  config.model.name = "darts_v2"
  config.model.num_classes = NUM_CLASSES
  config.model.checkpoint = str(out_dir)
  module, variables = models_lib.load_model(config.model)

  prefixed_variables = convert_darts.convert_state_dict(
      torch_utils.load_state_dict(prefixed))
  jax.tree.map(np.testing.assert_array_equal, prefixed_variables, variables)

  images = _images()
  site_channels = module.gate_sites()
  rng = np.random.default_rng(7)
  gates = {site: rng.uniform(0.0, 1.0, size=c).astype(np.float32)
           for site, c in site_channels.items()}
  apply = jax.jit(module.apply)
  errors = {}
  for label, site_gates in (("original", None), ("gated", gates)):
    torch_logits, torch_sites = _torch_forward(net, images, site_gates)
    with jax.default_matmul_precision("highest"):
      logits, activations = apply(variables, images, site_gates)
    assert list(activations) == list(site_channels)
    errors[f"{label} logits"] = _assert_close(f"{label} logits", logits,
                                              torch_logits)
    for site in site_channels:
      errors[f"{label} {site}"] = _assert_close(
          f"{label} {site}", activations[site], torch_sites[site])
  print("max relative errors:",
        {k: f"{v:.1e}" for k, v in errors.items()})


# Every operation of the reference code, reductions with stride 2 on all
# kinds, a 3-node concat in the reduction cell.
ALL_OPS = darts.make_genotype(
    normal=[("sep_conv_7x7", 0), ("conv_7x1_1x7", 1), ("none", 1),
            ("avg_pool_3x3", 2), ("sep_conv_5x5", 3), ("max_pool_3x3", 0),
            ("dil_conv_5x5", 4), ("skip_connect", 1)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("conv_7x1_1x7", 0), ("none", 1), ("sep_conv_7x7", 1),
            ("skip_connect", 0), ("dil_conv_3x3", 2), ("avg_pool_3x3", 1),
            ("sep_conv_3x3", 3), ("max_pool_3x3", 4)],
    reduce_concat=[3, 4, 5])


@pytest.mark.parametrize("genotype_name", ["relative_nas", "all_ops"])
def test_other_genotypes_plug_in(genotype_name):
  if genotype_name == "all_ops":
    genotype = ALL_OPS
  else:  # darmo's RelativeNAS genotype: avg pools, dil_conv_5x5, FR skip.
    genotype = darts.make_genotype(**_darmo_genotype(genotype_name))
  net = _torch_network(genotype, init_channels=8, layers=3, seed=11)
  variables = convert_darts.convert_state_dict(
      net.state_dict(), genotype=genotype, init_channels=8, layers=3)
  module = darts.DartsImageNet(num_classes=NUM_CLASSES, genotype=genotype,
                               init_channels=8, layers=3)
  images = _images(batch=1, seed=5)
  torch_logits, torch_sites = _torch_forward(net, images)
  with jax.default_matmul_precision("highest"):
    logits, activations = jax.jit(module.apply)(variables, images)
  _assert_close("logits", logits, torch_logits)
  for site, channels in module.gate_sites().items():
    assert activations[site].shape[-1] == channels
    _assert_close(site, activations[site], torch_sites[site])
  if genotype_name == "relative_nas":  # the converter's --verify helper
    differences = convert_darts.compare_with_darmo(
        variables, net.state_dict(), genotype, init_channels=8, layers=3)
    assert list(differences) == [*module.gate_sites(), "logits"]
    assert max(rel for _, rel in differences.values()) <= TOLERANCE


# ---------------------------------------------------------------------------
# Converter errors: one clear message, nothing written.


def _convert_error(tmp_path, payload) -> str:
  path = tmp_path / "bad.pt"
  if isinstance(payload, bytes):
    path.write_bytes(payload)
  else:
    torch.save(payload, path)
  out_dir = tmp_path / "out"
  with pytest.raises(torch_utils.ConversionError) as error:
    convert_darts.convert_file(str(path), str(out_dir))
  assert not out_dir.exists()
  assert not list(tmp_path.glob("out*"))  # no temporary dir left either
  return str(error.value)


def test_corrupted_file_is_refused(tmp_path):
  message = _convert_error(tmp_path, b"not a torch file" * 100)
  assert "bad.pt" in message and "not a readable PyTorch" in message


def test_wrong_architecture_is_refused(tmp_path):
  torchvision = pytest.importorskip("torchvision", reason="resnet18 source")
  resnet = torchvision.models.resnet18(weights=None)
  message = _convert_error(tmp_path, resnet.state_dict())
  assert "stem0.0.weight" in message  # missing
  assert "layer1.0.conv1.weight" in message  # unexpected


def test_missing_and_mis_shaped_keys_are_listed(reference, tmp_path):
  state_dict = dict(reference.state_dict())
  del state_dict["cells.3._ops.7.op.1.weight"]
  state_dict["cells.5.preprocess1.op.1.weight"] = torch.zeros(192, 384, 3, 3)
  state_dict["module_extra.weight"] = torch.zeros(3)
  message = _convert_error(tmp_path, {"state_dict": state_dict})
  assert "missing keys (1)" in message
  assert "cells.3._ops.7.op.1.weight" in message
  assert ("cells.5.preprocess1.op.1.weight: got (192, 384, 3, 3), expected "
          "(96, 384, 1, 1)") in message
  assert "module_extra.weight" in message


def test_cli_refuses_existing_output(reference, tmp_path, capsys):
  path = tmp_path / "model.pt"
  torch.save(reference.state_dict(), path)
  out_dir = tmp_path / "exists"
  out_dir.mkdir()
  code = convert_darts.main(["--input", str(path), "--output", str(out_dir)])
  assert code == 1
  assert "--force" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Config.


def _load_config(arg=None):
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "darts.py")
  spec = importlib.util.spec_from_file_location("darts_config", path)
  config_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config_module)
  return config_module.get_config(arg)


@pytest.mark.parametrize("arg, classes, name, alpha, lam, beta", [
    (None, 1000, "imagenet2012", 0.1, 0.3, 0.45),
    ("imagenet", 1000, "imagenet2012", 0.1, 0.3, 0.45),
    ("places365", 365, "places365_small", 0.3, 0.19, 0.20),
])
def test_config(arg, classes, name, alpha, lam, beta):
  config = _load_config(arg)
  assert config.model.name == "darts_v2"
  assert config.model.num_classes == classes
  assert config.data.source == "tfds" and config.data.name == name
  assert config.optim.alpha == alpha
  assert config.objective.lam == lam and config.objective.beta == beta
  assert config.search.batch_size == 16
  assert config.data.augment == "random_resized_crop"
  with pytest.raises(FileNotFoundError, match="convert_darts.py"):
    models_lib.load_model(config.model)


def test_config_rejects_unknown_dataset():
  with pytest.raises(ValueError, match="cifar10"):
    _load_config("cifar10")


def test_params_checkpoint_of_other_arch_is_refused(tmp_path):
  params_io.save_variables(tmp_path / "other", {"params": {"w": np.zeros(1)}},
                           {"arch": "vgg16", "num_classes": 1000})
  config = _load_config()
  config.model.checkpoint = str(tmp_path / "other")
  with pytest.raises(ValueError, match="vgg16"):
    models_lib.load_model(config.model)
