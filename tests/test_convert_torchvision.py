"""The torchvision converter: round trips from .pth files and clear errors.

Golden values come from the torch tensors themselves (transposed by hand
here), from torchvision (``--verify``) and from hashlib; every failing
conversion must leave no output directory behind. One variant per family
(vgg11_bn, resnet18, densenet121 with old key names and ``module.``
prefixes) goes through the command line with ``--verify`` and then meets a
checkpoint of another variant, a wrong class count and a truncated file.
"""

from __future__ import annotations

import hashlib
import os
import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="converting .pth files needs torch (the 'torch' extra)")
torchvision = pytest.importorskip(
    "torchvision", reason="the converter tests build torchvision models (the "
    "'torch' extra)")

# pylint: disable=wrong-import-position
import ml_collections

from nad_jax import models, params_io
from weights_conversion import convert_torchvision, torch_utils
# pylint: enable=wrong-import-position

NUM_CLASSES = 7


@pytest.fixture(scope="module")
def densenet_state_dict():
  torch.manual_seed(0)
  model = torchvision.models.densenet121(weights=None, num_classes=NUM_CLASSES)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_()
        module.running_var.uniform_(0.5, 2.0)
  return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def resnet_state_dict():
  torch.manual_seed(1)
  model = torchvision.models.resnet50(weights=None, num_classes=NUM_CLASSES)
  return {k: v.clone() for k, v in model.state_dict().items()}


def _old_densenet_names(state_dict):
  """Renames denselayerN.norm1.weight -> denselayerN.norm.1.weight."""
  return {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
          for k, v in state_dict.items()}


def test_round_trip_checkpoint_dict_with_module_prefix_and_old_names(
    tmp_path, densenet_state_dict):
  old = _old_densenet_names(densenet_state_dict)
  assert "features.denseblock1.denselayer1.norm.1.weight" in old
  pth = tmp_path / "densenet_old.pth"
  torch.save({"state_dict": {f"module.{k}": v for k, v in old.items()},
              "epoch": 90}, pth)
  output = tmp_path / "ckpt"
  convert_torchvision.convert_file("densenet121", pth, output)

  meta = params_io.load_meta(output)
  assert meta["arch"] == "densenet121"
  assert meta["num_classes"] == NUM_CLASSES
  assert meta["source_file"] == "densenet_old.pth"
  assert meta["source_sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
  # The configs load it.
  config = ml_collections.ConfigDict(
      {"name": "densenet121", "num_classes": NUM_CLASSES,
       "checkpoint": str(output)})
  module, variables = models.load_model(config)
  assert isinstance(module, models.MODELS["densenet121"])

  sd = densenet_state_dict
  np.testing.assert_array_equal(
      variables["params"]["conv0"]["kernel"],
      sd["features.conv0.weight"].permute(2, 3, 1, 0).numpy())
  layer = "features.denseblock3.denselayer24"
  np.testing.assert_array_equal(
      variables["params"]["denseblock3"]["denselayer24"]["conv2"]["kernel"],
      sd[f"{layer}.conv2.weight"].permute(2, 3, 1, 0).numpy())
  np.testing.assert_array_equal(
      variables["batch_stats"]["denseblock3"]["denselayer24"]["norm1"]["var"],
      sd[f"{layer}.norm1.running_var"].numpy())
  np.testing.assert_array_equal(
      variables["params"]["transition2"]["norm"]["scale"],
      sd["features.transition2.norm.weight"].numpy())
  np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"],
                                sd["classifier.weight"].numpy().T)
  # Every tensor except num_batches_tracked lands somewhere, exactly once.
  num_values = sum(np.size(v) for v in jax.tree.leaves(variables))
  assert num_values == sum(v.numel() for k, v in sd.items()
                           if not k.endswith("num_batches_tracked"))



def test_cli_plain_state_dict_with_verify(tmp_path, capsys, resnet_state_dict):
  pth = tmp_path / "resnet50.pth"
  torch.save(resnet_state_dict, pth)
  output = tmp_path / "ckpt"
  code = convert_torchvision.main(["--arch", "resnet50", "--input", str(pth),
                                   "--output", str(output), "--verify"])
  assert code == 0
  printed = capsys.readouterr().out
  rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines()
          if re.match(r"\s*(site\d\d|logits)\s", line)}
  assert list(rows) == [f"site{i:02d}" for i in range(17)] + ["logits"]
  assert all(float(rel) < 1e-4 for _, rel in rows.values())
  meta = params_io.load_meta(output)
  assert meta == {**meta, "arch": "resnet50", "num_classes": NUM_CLASSES}
  # A second conversion to the same place needs --force.
  assert convert_torchvision.main(["--arch", "resnet50", "--input", str(pth),
                                   "--output", str(output)]) == 1
  assert "--force" in capsys.readouterr().err


def test_corrupted_file_writes_nothing(tmp_path, resnet_state_dict):
  good = tmp_path / "good.pth"
  torch.save(resnet_state_dict, good)
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(np.random.default_rng(0).bytes(4096))
  for bad in (truncated, garbage):
    output = tmp_path / f"out_{bad.stem}"
    with pytest.raises(torch_utils.ConversionError, match=re.escape(str(bad))):
      convert_torchvision.convert_file("resnet50", bad, output)
    assert not output.exists()


def test_wrong_architecture_names_every_key_and_writes_nothing(
    tmp_path, capsys, resnet_state_dict):
  pth = tmp_path / "resnet50.pth"
  torch.save(resnet_state_dict, pth)
  output = tmp_path / "out"
  code = convert_torchvision.main(["--arch", "densenet121", "--input",
                                   str(pth), "--output", str(output)])
  assert code == 1
  message = capsys.readouterr().err
  assert not output.exists()
  assert "looks like a resnet50 state_dict" in message
  # Each missing DenseNet key and each unexpected ResNet key is named.
  densenet_keys = [r.torch_key for r in
                   convert_torchvision.torchvision_rules("densenet121")]
  assert all(f"    {k}\n" in message + "\n" for k in densenet_keys)
  assert all(f"    {k}\n" in message + "\n" for k in resnet_state_dict
             if not k.endswith("num_batches_tracked"))


def test_mis_shaped_and_missing_keys_are_named(densenet_state_dict):
  state_dict = dict(densenet_state_dict)
  state_dict["features.denseblock2.denselayer5.conv1.weight"] = torch.zeros(
      128, 99, 1, 1)
  del state_dict["features.norm5.running_var"]
  state_dict["features.extra.weight"] = torch.zeros(3)
  with pytest.raises(torch_utils.ConversionError) as error:
    convert_torchvision.convert_state_dict("densenet121", state_dict)
  message = str(error.value)
  assert "features.denseblock2.denselayer5.conv1.weight: got (128, 99, 1, 1)" \
      in message
  assert "missing keys (1):\n    features.norm5.running_var" in message
  assert "unexpected keys (1):\n    features.extra.weight" in message
  # --num_classes that disagrees with the classifier is a mis-shaped key.
  with pytest.raises(torch_utils.ConversionError, match="classifier.weight"):
    convert_torchvision.convert_state_dict("densenet121", densenet_state_dict,
                                           num_classes=NUM_CLASSES + 1)


def test_layout_transforms_against_torch_ops():
  rng = np.random.default_rng(0)
  # A conv in torch equals lax.conv with the HWIO kernel.
  conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
  depthwise = torch.nn.Conv2d(5, 5, 3, padding=1, groups=5, bias=False)
  images = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
  with torch.no_grad():
    want = conv(torch.from_numpy(images)).permute(0, 2, 3, 1).numpy()
    want_dw = depthwise(torch.from_numpy(images[:, :1].repeat(5, 1))
                        ).permute(0, 2, 3, 1).numpy()
  with jax.default_matmul_precision("highest"):
    got = jax.lax.conv_general_dilated(
        images.transpose(0, 2, 3, 1),
        torch_utils.conv_kernel(conv.weight.detach().numpy()), (1, 1),
        ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got_dw = jax.lax.conv_general_dilated(
        images[:, :1].repeat(5, 1).transpose(0, 2, 3, 1),
        torch_utils.depthwise_kernel(depthwise.weight.detach().numpy()),
        (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_dw, want_dw, rtol=1e-5, atol=1e-5)
  weight = rng.standard_normal((3, 8)).astype(np.float32)
  np.testing.assert_array_equal(torch_utils.linear_kernel(weight), weight.T)
  with pytest.raises(torch_utils.ConversionError, match="depthwise"):
    torch_utils.depthwise_kernel(np.zeros((5, 2, 3, 3)))


def test_load_state_dict_accepts_model_key_and_strips_module(tmp_path):
  layer = torch.nn.Linear(3, 2)
  pth = tmp_path / "ckpt.pth"
  torch.save({"model": {f"module.{k}": v for k, v in
                        layer.state_dict().items()}, "optimizer": {}}, pth)
  loaded = torch_utils.load_state_dict(pth)
  assert sorted(loaded) == ["bias", "weight"]
  np.testing.assert_array_equal(loaded["weight"], layer.weight.detach().numpy())
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    torch_utils.load_state_dict(os.path.join(tmp_path, "nope.pth"))


# One variant per family: (arch, another variant of the family whose
# state_dict it must refuse). vgg11_bn's BatchNorm shifts every feature
# index; resnet18's keys are a subset of resnet34's; densenet121 and 169
# differ in block 3 and 4 depth and in shapes.
FAMILY_CASES = {"vgg11_bn": "vgg11", "resnet18": "resnet34",
                "densenet121": "densenet169"}


def _random_state_dict(arch, num_classes, seed):
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(weights=None,
                                            num_classes=num_classes)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.3)
        module.running_mean.normal_(0.0, 0.5)
        module.running_var.uniform_(0.3, 2.3)
  return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=sorted(FAMILY_CASES))
def family_pth(request, tmp_path_factory):
  """``(arch, state_dict, .pth path)``; DenseNet's file has old names."""
  arch = request.param
  state_dict = _random_state_dict(arch, NUM_CLASSES, seed=5)
  pth = tmp_path_factory.mktemp(arch) / f"{arch}.pth"
  if arch.startswith("densenet"):
    torch.save({"state_dict": {f"module.{k}": v for k, v in
                               _old_densenet_names(state_dict).items()}}, pth)
  else:
    torch.save(state_dict, pth)
  return arch, state_dict, pth


def _verify_rows(printed):
  return {line.split()[0]: line.split()[1:] for line in printed.splitlines()
          if re.match(r"\s*(site\d\d|logits)\s", line)}


def test_cli_verify_every_family(tmp_path, capsys, family_pth):
  arch, state_dict, pth = family_pth
  output = tmp_path / "ckpt"
  assert convert_torchvision.main(["--arch", arch, "--input", str(pth),
                                   "--output", str(output), "--verify"]) == 0
  rows = _verify_rows(capsys.readouterr().out)
  num_sites = len(models.get_model(arch).gate_sites())
  assert list(rows) == [f"site{i:02d}" for i in range(num_sites)] + ["logits"]
  assert all(float(rel) < 1e-4 for _, rel in rows.values())
  variables, meta = params_io.load_variables(output, expect_arch=arch)
  assert meta["num_classes"] == NUM_CLASSES
  # Every tensor except num_batches_tracked lands somewhere, exactly once.
  assert sum(np.size(v) for v in jax.tree.leaves(variables)) == sum(
      v.numel() for k, v in state_dict.items()
      if not k.endswith("num_batches_tracked"))


def test_another_variant_is_refused_naming_every_key(tmp_path, capsys,
                                                     family_pth):
  given, state_dict, pth = family_pth
  arch = FAMILY_CASES[given]
  output = tmp_path / "out"
  assert convert_torchvision.main(["--arch", arch, "--input", str(pth),
                                   "--output", str(output)]) == 1
  message = capsys.readouterr().err + "\n"
  assert not output.exists()
  assert f"looks like a {given} state_dict, not {arch}" in message
  wanted = {r.torch_key for r in convert_torchvision.torchvision_rules(arch)}
  have = {k for k in state_dict if not k.endswith("num_batches_tracked")}
  assert wanted - have or have - wanted
  sections = message.split("  unexpected keys")
  for key in wanted - have:  # each missing key, in the missing section
    assert f"    {key}\n" in sections[0], key
  for key in have - wanted:
    assert f"    {key}\n" in sections[1], key
  # Keys both have but with other shapes are named as mis-shaped.
  expected = convert_torchvision.expected_torch_shapes(arch, NUM_CLASSES)
  for key in wanted & have:
    if tuple(state_dict[key].shape) != expected[key]:
      assert f"    {key}: " in message, key


def test_wrong_class_count_is_refused(tmp_path, capsys, family_pth):
  arch, _, pth = family_pth
  output = tmp_path / "out"
  assert convert_torchvision.main(
      ["--arch", arch, "--input", str(pth), "--output", str(output),
       "--num_classes", str(NUM_CLASSES + 3)]) == 1
  message = capsys.readouterr().err
  assert not output.exists()
  assert f"cannot convert to {arch} ({NUM_CLASSES + 3} classes)" in message
  classifier = convert_torchvision.CLASSIFIER_KEYS[arch]
  assert "mis-shaped keys (2):" in message
  assert f"    {classifier}: got ({NUM_CLASSES}, " in message
  assert "looks like" not in message  # It is this arch, other classes.


def test_truncated_file_is_refused(tmp_path, capsys, family_pth):
  arch, _, pth = family_pth
  truncated = tmp_path / f"{arch}_truncated.pth"
  with open(pth, "rb") as source, open(truncated, "wb") as target:
    target.write(source.read(pth.stat().st_size * 2 // 3))
  output = tmp_path / "out"
  assert convert_torchvision.main(["--arch", arch, "--input", str(truncated),
                                   "--output", str(output)]) == 1
  message = capsys.readouterr().err
  assert not output.exists()
  assert str(truncated) in message
  assert "not a readable PyTorch checkpoint" in message


@pytest.mark.parametrize("given,arch", [("resnext50_32x4d", "resnet50"),
                                        ("resnet50", "wide_resnet50_2")])
def test_same_keys_other_shapes_names_the_variant(given, arch):
  """ResNet-50, ResNeXt-50 and Wide ResNet-50 share every key name."""
  state_dict = _random_state_dict(given, NUM_CLASSES, seed=2)
  assert set(state_dict) == {
      r.torch_key for r in convert_torchvision.torchvision_rules(arch)} | {
          k for k in state_dict if k.endswith("num_batches_tracked")}
  with pytest.raises(torch_utils.ConversionError) as error:
    convert_torchvision.convert_state_dict(arch, state_dict)
  message = str(error.value)
  assert f"looks like a {given} state_dict, not {arch}" in message
  assert "missing keys" not in message and "unexpected keys" not in message
  assert "layer1.0.conv2.weight: got" in message
  assert convert_torchvision.identify_arch(state_dict) == [given]


def test_damaged_state_dict_names_the_closest_variant():
  """No variant fits a state_dict with a key lost; the closest is named."""
  state_dict = _random_state_dict("resnet18", NUM_CLASSES, seed=3)
  del state_dict["layer3.1.bn2.running_var"]
  assert convert_torchvision.identify_arch(state_dict) == []
  with pytest.raises(torch_utils.ConversionError) as error:
    convert_torchvision.convert_state_dict("resnet34", state_dict)
  message = str(error.value)
  assert "its key names are closest to resnet18's" in message
  assert "looks like" not in message
  # Asked for resnet18 itself: the missing key, and no hint.
  with pytest.raises(torch_utils.ConversionError) as error:
    convert_torchvision.convert_state_dict("resnet18", state_dict)
  assert "missing keys (1):\n    layer3.1.bn2.running_var" in str(error.value)
  assert "closest" not in str(error.value)


def test_unknown_arch_lists_the_known_ones(tmp_path, capsys):
  with pytest.raises(SystemExit):
    convert_torchvision.main(["--arch", "resnet99", "--input", "x.pth",
                              "--output", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert "resnet99" in err and "wide_resnet101_2" in err and "vgg19_bn" in err
  with pytest.raises(ValueError, match="unknown arch 'resnet99'"):
    convert_torchvision.convert_state_dict("resnet99", {})
