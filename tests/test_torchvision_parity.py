"""Golden parity of the Flax VGG / ResNet / DenseNet families with torchvision.

torchvision models with random weights (fixed seed, BatchNorm affine and
running statistics set to non-trivial random values, eval mode) are converted
with ``convert_state_dict``; logits and every gate-site activation must match
torchvision to a relative error of 1e-4 in float32 at the highest matmul
precision (TF32 off in torch). The torch side is read by forward hooks on
modules found here in torchvision's own module tree by the paper's rule
(``_torch_site_modules``), independently of the converter; the expected
site channels are typed in below from torchvision's architecture tables.

* ``test_parity_with_torchvision``: the original network (``gates=None``).
* ``test_gated_parity_with_torchvision``: the gated forward at a second
  size against torchvision whose hooks multiply the same per-channel gates
  into the hooked modules' outputs (the next layer consumes them).

Sizes: the paper's networks (vgg16, resnet50, densenet121) and the variants
behind the ``big_parity`` marker run at 224 (plain) and 200 (gated: odd
intermediate sizes for the strided convs and pools, and non-trivial
AdaptiveAvgPool(7, 7) bins, 6 -> 7, for VGG). The small CI variants (vgg11,
vgg11_bn, resnet18, resnext50_32x4d) run at 112 and 72 (VGG's last map is
3x3 and 2x2 before the 7x7 adaptive pool, which then repeats inputs; the
ResNets end at 4x4 and 3x3): each new code path (VGG layer configs and
BatchNorm, BasicBlock, grouped convs) is in CI at little cost. One XLA
compile per size and gate structure, hence two per network.

The ``big_parity`` variants (every other torchvision builder of the three
families) are deselected by default (pyproject addopts); run them with
``python3 -m pytest -m big_parity -s tests/test_torchvision_parity.py``
(benchmarks/RESULTS.md records the run). Each comparison prints a
``parity ...`` line with its largest relative errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torchvision parity needs torch (the 'torch' extra)")
torchvision = pytest.importorskip(
    "torchvision", reason="torchvision parity needs torchvision (the 'torch' "
    "extra)")

# pylint: disable=wrong-import-position
from nad_jax import models
from weights_conversion import convert_torchvision
# pylint: enable=wrong-import-position

NUM_CLASSES = 10  # The classifier's size does not change what is tested.
RTOL = 1e-4
PAPER_SIZES = (224, 200)  # (plain, gated)
SMALL_SIZES = (112, 72)

# Gate-site channels, typed in from torchvision's architecture tables
# (VGG cfgs A/B/D/E: one site per conv; ResNet: stem 64, then each block's
# output, planes x expansion; DenseNet: pool0, blocks 1-3 and transitions,
# norm5: init + layers x growth, halved by each transition).
_R50 = [64] + [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
_R101 = [64] + [256] * 3 + [512] * 4 + [1024] * 23 + [2048] * 3
SITE_CHANNELS = {
    "vgg11": [64, 128, 256, 256, 512, 512, 512, 512],
    "vgg13": [64, 64, 128, 128, 256, 256, 512, 512, 512, 512],
    "vgg16": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
    "vgg19": [64, 64, 128, 128, 256, 256, 256, 256] + [512] * 8,
    "resnet18": [64, 64, 64, 128, 128, 256, 256, 512, 512],
    "resnet34": [64] + [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3,
    "resnet50": _R50,
    "resnet101": _R101,
    "resnet152": [64] + [256] * 3 + [512] * 8 + [1024] * 36 + [2048] * 3,
    "resnext50_32x4d": _R50,
    "resnext101_32x8d": _R101,
    "resnext101_64x4d": _R101,
    "wide_resnet50_2": _R50,
    "wide_resnet101_2": _R101,
    "densenet121": [64, 256, 128, 512, 256, 1024, 512, 1024],
    "densenet161": [96, 384, 192, 768, 384, 2112, 1056, 2208],
    "densenet169": [64, 256, 128, 512, 256, 1280, 640, 1664],
    "densenet201": [64, 256, 128, 512, 256, 1792, 896, 1920],
}
for _depth in (11, 13, 16, 19):
  SITE_CHANNELS[f"vgg{_depth}_bn"] = SITE_CHANNELS[f"vgg{_depth}"]

# arch -> (plain size, gated size); the rest are big_parity at PAPER_SIZES.
CI_VARIANTS = {
    "vgg16": PAPER_SIZES, "resnet50": PAPER_SIZES, "densenet121": PAPER_SIZES,
    "vgg11": SMALL_SIZES, "vgg11_bn": SMALL_SIZES, "resnet18": SMALL_SIZES,
    "resnext50_32x4d": SMALL_SIZES,
}
BIG_VARIANTS = sorted(set(SITE_CHANNELS) - set(CI_VARIANTS))
VARIANT_PARAMS = [pytest.param(a, id=a) for a in CI_VARIANTS] + [
    pytest.param(a, id=a, marks=pytest.mark.big_parity) for a in BIG_VARIANTS]


def _torch_site_modules(model, arch: str) -> list[str]:
  """The paper's rule applied to torchvision's own module tree.

  VGG: per conv, its ReLU, or the max-pool right after that ReLU; the last
  conv's site is ``avgpool``. ResNet: ``maxpool``, then every block of
  ``layer1`` .. ``layer4``. DenseNet: ``pool0``, every dense block and
  transition except the last block, then ``norm5`` (its ReLU is applied
  below).
  """
  if arch.startswith("vgg"):
    layers = list(model.features)
    names = []
    for i, layer in enumerate(layers):
      if isinstance(layer, torch.nn.Conv2d):
        j = i + 1
        while not isinstance(layers[j], torch.nn.ReLU):
          j += 1
        if j + 1 < len(layers) and isinstance(layers[j + 1],
                                              torch.nn.MaxPool2d):
          j += 1
        names.append(f"features.{j}")
    return names[:-1] + ["avgpool"]
  if arch.startswith(("resnet", "resnext", "wide_resnet")):
    return ["maxpool"] + [f"layer{s}.{b}" for s in range(1, 5)
                          for b in range(len(getattr(model, f"layer{s}")))]
  children = [name for name, _ in model.features.named_children()
              if name.startswith(("pool", "denseblock", "transition"))]
  return [f"features.{c}" for c in children[:-1]] + ["features.norm5"]


class Network:
  """A random torchvision network and its converted Flax twin."""

  def __init__(self, arch: str):
    self.arch = arch
    torch.manual_seed(1234)
    self.torch_model = getattr(torchvision.models, arch)(
        weights=None, num_classes=NUM_CLASSES)
    generator = torch.Generator().manual_seed(99)
    with torch.no_grad():
      for module in self.torch_model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
          c = module.num_features
          module.weight.copy_(0.5 + torch.rand(c, generator=generator))
          module.bias.copy_(0.3 * torch.randn(c, generator=generator))
          module.running_mean.copy_(0.5 * torch.randn(c, generator=generator))
          module.running_var.copy_(0.3 + 2 * torch.rand(c, generator=generator))
    self.torch_model.eval()
    self.site_modules = _torch_site_modules(self.torch_model, arch)
    self.flax_model = models.get_model(arch, num_classes=NUM_CLASSES)
    self.variables = convert_torchvision.convert_state_dict(
        arch, self.torch_model.state_dict())
    self.apply = jax.jit(self.flax_model.apply)
    self.sizes = CI_VARIANTS.get(arch, PAPER_SIZES)

  def torch_forward(self, images_nchw: np.ndarray, gates=None):
    """Logits and NHWC site activations; gates multiply the hook outputs."""
    modules = dict(self.torch_model.named_modules())
    sites = {}
    handles = []
    for i, name in enumerate(self.site_modules):
      site = f"site{i:02d}"

      def hook(module, inputs, output, site=site, name=name):
        del module, inputs
        if gates is not None:
          # Gates are >= 0, so for DenseNet's norm5 relu(g * x) = g * relu(x).
          output = output * torch.from_numpy(gates[site])[None, :, None, None]
        recorded = output.detach().clone()
        if name == "features.norm5":
          recorded = torch.relu(recorded)
        sites[site] = recorded.permute(0, 2, 3, 1).numpy()
        return output

      handles.append(modules[name].register_forward_hook(hook))
    try:
      with torch.no_grad():
        logits = self.torch_model(torch.from_numpy(images_nchw)).numpy()
    finally:
      for handle in handles:
        handle.remove()
    return logits, sites

  def flax_forward(self, images_nchw: np.ndarray, gates=None):
    with jax.default_matmul_precision("highest"):
      logits, activations = self.apply(
          self.variables, jnp.asarray(images_nchw.transpose(0, 2, 3, 1)),
          gates)
    return np.asarray(logits), jax.tree.map(np.asarray, activations)


@pytest.fixture(scope="module", params=VARIANT_PARAMS)
def network(request):
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  return Network(request.param)


def _images(size: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(
      (1, 3, size, size)).astype(np.float32)


def _relative_error(name: str, ours: np.ndarray, theirs: np.ndarray) -> float:
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  scale = float(np.max(np.abs(theirs)))
  assert scale > 0, f"{name}: torchvision output is all zero"
  return float(np.max(np.abs(ours - theirs))) / scale


def _check(arch: str, kind: str, size: int, activations, torch_sites, logits,
           torch_logits) -> None:
  """Asserts every site and the logits within RTOL; prints the worst."""
  assert list(activations) == list(torch_sites)
  errors = {site: _relative_error(f"{arch} {kind} {size}px {site}",
                                  activations[site], theirs)
            for site, theirs in torch_sites.items()}
  logits_error = _relative_error(f"{arch} {kind} {size}px logits", logits,
                                 torch_logits)
  worst = max(errors, key=errors.get)
  print(f"\nparity {arch} {kind} {size}px: {len(errors)} sites, worst site "
        f"{worst} rel {errors[worst]:.1e}, logits rel {logits_error:.1e}")
  for site, error in errors.items():
    assert error <= RTOL, f"{arch} {kind} {size}px {site}: {error:.2e}"
  assert logits_error <= RTOL, f"{arch} {kind} {size}px logits: " \
      f"{logits_error:.2e}"


def test_gate_sites_follow_the_rule(network):
  sites = network.flax_model.gate_sites()
  assert list(sites) == [f"site{i:02d}" for i in range(len(sites))]
  assert list(sites.values()) == SITE_CHANNELS[network.arch]
  assert len(network.site_modules) == len(sites)
  # The converter's --verify hooks the same torchvision modules.
  assert convert_torchvision.torch_site_modules(network.arch) == \
      network.site_modules


def test_parity_with_torchvision(network):
  size = network.sizes[0]
  images = _images(size, seed=size)
  torch_logits, torch_sites = network.torch_forward(images)
  logits, activations = network.flax_forward(images)
  assert len(activations) == len(SITE_CHANNELS[network.arch])
  _check(network.arch, "plain", size, activations, torch_sites, logits,
         torch_logits)


def test_gated_parity_with_torchvision(network):
  rng = np.random.default_rng(7)
  # Gates in (0, 1) like sigmoid(gate_logits), a quarter of them hard zeros.
  gates = {}
  for i, channels in enumerate(SITE_CHANNELS[network.arch]):
    gate = rng.uniform(0.05, 1.0, channels).astype(np.float32)
    gate[rng.random(channels) < 0.25] = 0.0
    gates[f"site{i:02d}"] = gate
  size = network.sizes[1]
  images = _images(size, seed=3)
  torch_logits, torch_sites = network.torch_forward(images, gates)
  logits, activations = network.flax_forward(images, gates)
  plain_logits, _ = network.torch_forward(images)
  # The gates must matter, or the comparison proves nothing.
  assert np.max(np.abs(torch_logits - plain_logits)) > 1e-3 * np.max(
      np.abs(plain_logits))
  _check(network.arch, "gated", size, activations, torch_sites, logits,
         torch_logits)


def test_every_torchvision_builder_of_the_families_is_covered():
  """A registered variant without a parity test would go untested."""
  registered = {name for name in models.MODELS
                if name.startswith(("vgg", "resnet", "resnext",
                                    "wide_resnet", "densenet"))}
  assert registered == set(SITE_CHANNELS)
  assert registered <= set(convert_torchvision.ARCHS)
  for name in registered:
    assert callable(getattr(torchvision.models, name))
