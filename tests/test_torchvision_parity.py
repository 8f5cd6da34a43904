"""Golden parity of the Flax VGG16 / ResNet50 / DenseNet121 with torchvision.

torchvision models with random weights (fixed seed, BatchNorm affine and
running statistics set to non-trivial random values, eval mode) are converted
with ``convert_state_dict``; logits and every gate-site activation must match
torchvision (torch side read by forward hooks on the modules written out
below, independently of the converter) to a relative error of 1e-4 in
float32 at the highest matmul precision (TF32 off in torch).

* ``test_parity_with_torchvision``: the original network (``gates=None``)
  at 224x224.
* ``test_gated_parity_with_torchvision``: the gated forward at 200x200
  against torchvision whose hooks multiply the same per-channel gates into
  the hooked modules' outputs (the next layer consumes them). 200 gives odd
  intermediate sizes for the strided convs and pools and non-trivial
  AdaptiveAvgPool(7, 7) bins for VGG (6 -> 7), so this test is also the
  parity check at a second input size (one XLA compile per size and gate
  structure: DenseNet121 compiles take ~20 s on 2 cores, hence two, not
  three, per network).
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
OTHER_SIZE = 200

# The torchvision module whose output is each gate site (the authors' code's
# sites, docs/networks.md, Gate sites), in site order.
SITE_MODULES = {
    # ReLU after each conv; the max-pool where one follows; the avg-pool.
    "vgg16": ["features.1", "features.4", "features.6", "features.9",
              "features.11", "features.13", "features.16", "features.18",
              "features.20", "features.23", "features.25", "features.27",
              "avgpool"],
    # Stem max-pool, then every bottleneck (its output is after add + ReLU).
    "resnet50": ["maxpool"] + [f"layer{s}.{b}" for s, n in
                               ((1, 3), (2, 4), (3, 6), (4, 3))
                               for b in range(n)],
    # pool0, block1, transition1, ..., transition3, then norm5 (torchvision
    # applies F.relu after `features`; the hook output gets the ReLU below).
    "densenet121": ["features.pool0", "features.denseblock1",
                    "features.transition1", "features.denseblock2",
                    "features.transition2", "features.denseblock3",
                    "features.transition3", "features.norm5"],
}
SITE_CHANNELS = {
    "vgg16": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
    "resnet50": [64] + [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3,
    "densenet121": [64, 256, 128, 512, 256, 1024, 512, 1024],
}


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
    self.flax_model = models.get_model(arch, num_classes=NUM_CLASSES)
    self.variables = convert_torchvision.convert_state_dict(
        arch, self.torch_model.state_dict())
    self.apply = jax.jit(self.flax_model.apply)

  def torch_forward(self, images_nchw: np.ndarray, gates=None):
    """Logits and NHWC site activations; gates multiply the hook outputs."""
    modules = dict(self.torch_model.named_modules())
    sites = {}
    handles = []
    for i, name in enumerate(SITE_MODULES[self.arch]):
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


@pytest.fixture(scope="module", params=["vgg16", "resnet50", "densenet121"])
def network(request):
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  return Network(request.param)


def _images(size: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(
      (1, 3, size, size)).astype(np.float32)


def _assert_close(name: str, ours: np.ndarray, theirs: np.ndarray) -> None:
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  scale = float(np.max(np.abs(theirs)))
  assert scale > 0, f"{name}: torchvision output is all zero"
  rel = float(np.max(np.abs(ours - theirs))) / scale
  assert rel <= RTOL, f"{name}: relative error {rel:.2e} > {RTOL}"


def test_gate_sites_match_the_authors(network):
  sites = network.flax_model.gate_sites()
  assert list(sites) == [f"site{i:02d}" for i in range(len(sites))]
  assert list(sites.values()) == SITE_CHANNELS[network.arch]


def test_parity_with_torchvision(network):
  size = 224
  images = _images(size, seed=size)
  torch_logits, torch_sites = network.torch_forward(images)
  logits, activations = network.flax_forward(images)
  assert list(activations) == list(torch_sites)
  assert len(activations) == len(SITE_MODULES[network.arch])
  for site, theirs in torch_sites.items():
    _assert_close(f"{network.arch} {size}px {site}", activations[site], theirs)
  _assert_close(f"{network.arch} {size}px logits", logits, torch_logits)


def test_gated_parity_with_torchvision(network):
  rng = np.random.default_rng(7)
  # Gates in (0, 1) like sigmoid(gate_logits), a quarter of them hard zeros.
  gates = {}
  for i, channels in enumerate(SITE_CHANNELS[network.arch]):
    gate = rng.uniform(0.05, 1.0, channels).astype(np.float32)
    gate[rng.random(channels) < 0.25] = 0.0
    gates[f"site{i:02d}"] = gate
  images = _images(OTHER_SIZE, seed=3)
  torch_logits, torch_sites = network.torch_forward(images, gates)
  logits, activations = network.flax_forward(images, gates)
  plain_logits, _ = network.torch_forward(images)
  # The gates must matter, or the comparison proves nothing.
  assert np.max(np.abs(torch_logits - plain_logits)) > 1e-3 * np.max(
      np.abs(plain_logits))
  assert list(activations) == list(torch_sites)
  for site, theirs in torch_sites.items():
    _assert_close(f"{network.arch} gated {OTHER_SIZE}px {site}",
                  activations[site], theirs)
  _assert_close(f"{network.arch} gated {OTHER_SIZE}px logits", logits,
                torch_logits)
