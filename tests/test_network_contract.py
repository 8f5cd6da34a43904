"""The three torchvision networks follow the model contract (no torch needed).

Shapes only (``jax.eval_shape``): the activations dict has exactly the gate
sites, in order, with the channels of docs/networks.md (Gate sites, the
authors' code's sites) typed in here.
Parity with torchvision is in ``test_torchvision_parity.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from nad_jax import models

SITE_CHANNELS = {
    "vgg16": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
    "resnet50": [64] + [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3,
    "densenet121": [64, 256, 128, 512, 256, 1024, 512, 1024],
}
# Spatial size of each site at 224x224 input.
SITE_SIZES = {
    "vgg16": [224, 112, 112, 56, 56, 56, 28, 28, 28, 14, 14, 14, 7],
    "resnet50": [56] * 4 + [28] * 4 + [14] * 6 + [7] * 3,
    "densenet121": [56, 56, 28, 28, 14, 14, 7, 7],
}


@pytest.mark.parametrize("arch", sorted(SITE_CHANNELS))
def test_forward_returns_logits_and_every_gate_site(arch):
  model = models.get_model(arch, num_classes=5)
  (logits, activations), variables = jax.eval_shape(
      model.init_with_output, jax.random.key(0),
      jnp.zeros((2, 224, 224, 3), jnp.float32))
  assert logits.shape == (2, 5)
  names = [f"site{i:02d}" for i in range(len(SITE_CHANNELS[arch]))]
  assert list(model.gate_sites()) == names
  assert list(model.gate_sites().values()) == SITE_CHANNELS[arch]
  assert list(activations) == names
  for name, channels, size in zip(names, SITE_CHANNELS[arch],
                                  SITE_SIZES[arch]):
    assert activations[name].shape == (2, size, size, channels), name
  assert ("batch_stats" in variables) == (arch != "vgg16")


def test_vgg16_refuses_images_too_small_for_its_pools():
  model = models.get_model("vgg16", num_classes=5)
  with pytest.raises(ValueError, match="at least 32x32"):
    jax.eval_shape(model.init, jax.random.key(0),
                   jnp.zeros((1, 16, 16, 3), jnp.float32))


def test_resnet50_rejects_a_gate_of_the_wrong_size():
  model = models.get_model("resnet50", num_classes=5)
  images = jnp.zeros((1, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  gates = {name: jnp.ones(c) for name, c in model.gate_sites().items()}
  gates["site03"] = jnp.ones(255)
  with pytest.raises(ValueError, match="site03"):
    jax.eval_shape(model.apply, variables, images, gates)
