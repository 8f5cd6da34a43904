"""Both objectives against a PyTorch restatement on a small network.

The same weights and gate logits go into the Flax ``TinyNet`` and into a
PyTorch network written here layer by layer; each objective is restated in
PyTorch from the formulas (paper Eq. 4, 6, 7; the authors' code), and the
loss values and gradients with respect to the gate logits must agree.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nad_jax import objectives
from tests import tiny

torch = pytest.importorskip(
    "torch", reason="the PyTorch restatement needs torch (optional extra "
    "nad-jax[torch]; .ci/run installs it)")
F = torch.nn.functional


def _torch_forward(params, images_nchw, gates):
  """TinyNet in PyTorch; gates is None or a list of three [C] tensors."""
  acts = []

  def gate(x, i):
    if gates is not None:
      shape = (1, -1) + (1,) * (x.dim() - 2)
      x = x * gates[i].reshape(shape)
    acts.append(x)
    return x

  def conv_w(name):
    return torch.tensor(np.asarray(params[name]["kernel"])).permute(3, 2, 0, 1)

  x = F.relu(F.conv2d(images_nchw, conv_w("conv0"),
                      torch.tensor(np.asarray(params["conv0"]["bias"])),
                      padding=1))
  x = gate(x, 0)
  x = F.relu(F.conv2d(x, conv_w("conv1"),
                      torch.tensor(np.asarray(params["conv1"]["bias"])),
                      stride=2, padding=1))
  x = gate(x, 1)
  x = gate(x.mean(dim=(2, 3)), 2)
  logits = x @ torch.tensor(np.asarray(params["head"]["kernel"])) + \
      torch.tensor(np.asarray(params["head"]["bias"]))
  return logits, acts


def _torch_paper(ref, gated, gate_logits, lam):
  (ref_logits, ref_acts), (gated_logits, gated_acts) = ref, gated
  dist = sum((g - r).flatten(1).norm(dim=1) for g, r in zip(gated_acts,
                                                            ref_acts))
  dist = dist + (gated_logits - ref_logits).norm(dim=1)
  return dist.mean() + lam * sum(torch.sigmoid(s).sum() for s in gate_logits)


def _torch_official(ref, gated, gate_logits, labels, beta):
  (ref_logits, ref_acts), (gated_logits, gated_acts) = ref, gated
  idx = ref_logits.argmax(dim=1) == labels
  mse = sum(F.mse_loss(g[idx], r[idx]) for g, r in zip(gated_acts, ref_acts))
  n = len(gate_logits)
  return (F.cross_entropy(gated_logits, labels) + mse) / n + \
      beta * sum(torch.sigmoid(s).pow(2).mean() for s in gate_logits) / n


@pytest.mark.parametrize("name", ["paper", "official"])
def test_objective_matches_pytorch(name):
  torch.set_default_dtype(torch.float64)
  try:
    variables = tiny.tiny_variables(num_classes=5, seed=1)
    params = variables["params"]
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    model = tiny.TinyNet(5)
    ref_logits, _ = model.apply(variables, images)
    # Labels: the original network's own predictions for half the batch,
    # others for the rest, so the official preset's selection matters.
    labels = np.array(jnp.argmax(ref_logits, -1))
    labels[3:] = (labels[3:] + 1) % 5
    sites = model.gate_sites()
    gate_logits = {s: jnp.asarray(rng.normal(size=(c,)), jnp.float32)
                   for s, c in sites.items()}

    if name == "paper":
      objective = functools.partial(objectives.paper_objective, lam=0.3)
    else:
      objective = functools.partial(objectives.official_objective, beta=0.7)

    def jax_loss(gl):
      ref = model.apply(variables, images)
      gated = model.apply(variables, images,
                          gates=jax.tree.map(jax.nn.sigmoid, gl))
      return objective(gl, ref[0], ref[1], gated[0], gated[1],
                       jnp.asarray(labels))[0]

    with jax.default_matmul_precision("highest"):
      loss, grads = jax.value_and_grad(jax_loss)(gate_logits)

    images_t = torch.tensor(images.astype(np.float64)).permute(0, 3, 1, 2)
    params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    logits_t = [torch.tensor(np.asarray(gate_logits[s], np.float64),
                             requires_grad=True) for s in sites]
    with torch.no_grad():
      ref_t = _torch_forward(params64, images_t, None)
    gated_t = _torch_forward(params64, images_t,
                             [torch.sigmoid(s) for s in logits_t])
    if name == "paper":
      loss_t = _torch_paper(ref_t, gated_t, logits_t, 0.3)
    else:
      loss_t = _torch_official(ref_t, gated_t, logits_t,
                               torch.tensor(labels).long(), 0.7)
    loss_t.backward()
    np.testing.assert_allclose(float(loss), loss_t.item(), rtol=1e-5)
    for s, s_t in zip(sites, logits_t):
      np.testing.assert_allclose(np.asarray(grads[s]), s_t.grad.numpy(),
                                 rtol=1e-4, atol=1e-6)
  finally:
    torch.set_default_dtype(torch.float32)
