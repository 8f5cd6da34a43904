"""The model contract that every network disentangled by nad-jax follows.

A *gate site* is the output of one block of a frozen network; its units are
its channels. A model that can be disentangled is a Flax linen module with

* ``gate_sites(self) -> dict[str, int]``: the ordered gate sites, site name
  (``site00``, ``site01``, ...) -> number of channels. Plain Python: it needs
  no parameters and no input.
* ``__call__(self, images, gates=None) -> (logits, activations)``:
  ``images`` is ``[batch, height, width, 3]`` (NHWC, already normalised),
  ``logits`` is ``[batch, num_classes]`` and ``activations`` maps every site
  name to that site's output ``[batch, ..., channels]`` *after* its gate.
  ``gates`` is ``None`` (the original network) or a dict with one
  ``[channels]`` vector per site. The gate multiplies the site's output per
  channel and the next block consumes the gated activation (paper Eq. 5).
  During the search gates are ``sigmoid(gate_logits)``; for evaluation they
  are hard 0/1 paths.

The forward pass is the network in evaluation mode (BatchNorm uses running
statistics, no dropout). Modules may take extra keyword arguments with
defaults (the demo networks take ``train`` for their own training).

Memory: the forward pass returns every site's activation, so a batch costs
the sum of all site activation sizes on top of what the plain forward needs.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import jax
import jax.numpy as jnp


def site_name(index: int) -> str:
  """The name of the ``index``-th gate site: ``site00``, ``site01``, ..."""
  return f"site{index:02d}"


def gate_site(
    x: jax.Array,
    gates: Mapping[str, jax.Array] | None,
    name: str,
    activations: MutableMapping[str, jax.Array],
) -> jax.Array:
  """Applies the gate of site ``name`` to ``x`` and records the result.

  Args:
    x: the block output, channels last.
    gates: ``None`` for the original network, else one ``[channels]`` vector
      per site.
    name: this site's name.
    activations: the dict that collects the (gated) site outputs.

  Returns:
    The gated activation, which the next block must consume.
  """
  if gates is not None:
    if name not in gates:
      raise KeyError(f"gates has no entry for gate site {name!r}; "
                     f"it has {sorted(gates)}")
    gate = jnp.asarray(gates[name])
    if gate.shape != (x.shape[-1],):
      raise ValueError(
          f"gate for site {name!r} has shape {gate.shape}, expected "
          f"({x.shape[-1]},) for an activation of shape {x.shape}")
    # Multiplied in the gate's dtype (float32) and rounded to x's: under a
    # bfloat16 network the gate gradient's sum over pixels stays float32.
    x = (x * gate).astype(x.dtype)
  activations[name] = x
  return x


def variant_class(family: type, class_name: str, variant: str,
                  doc: str) -> type:
  """A subclass of the module ``family`` whose ``variant`` field defaults to
  ``variant`` (one registered class per torchvision name, e.g. ``VGG16``)."""
  return type(class_name, (family,), {"__annotations__": {"variant": str},
                                      "variant": variant, "__doc__": doc,
                                      "__module__": family.__module__})
