"""Gate sites on an unmodified Flax model: the interception route.

The model contract (``models/base.py``) asks a network to call
``base.gate_site`` at each site itself. :class:`InterceptedModel` gives the
same contract to a Flax linen module that knows nothing of gates: name the
submodules whose outputs are gate sites, by their module paths or by a
regular expression, and their ``__call__`` is intercepted with
``flax.linen.intercept_methods`` (no user code is patched or subclassed) to
record each output and multiply it by its gate; the rest of the network
consumes the gated output. ::

  from nad_jax.models import intercept

  model = intercept.InterceptedModel(
      MyNet(num_classes=10), pattern=r"stage\\d/block\\d",
      input_shape=(32, 32, 3))
  model.gate_sites()   # {'site00': 64, 'site01': 64, ...} in call order
  model.site_paths     # {'site00': 'stage1/block0', ...}
  logits, activations = model.apply(variables, images, gates)

``model`` then goes wherever a contract model goes
(``search.disentangle``, ``evaluate.class_accuracies``); ``variables`` are
the unmodified module's own.

Rules:

* A module path is the submodule's ``Module.path`` joined with ``/``
  (``'stage1/block0'``; auto-named submodules of ``@nn.compact`` methods are
  ``'Conv_0'``, ``'_BasicBlock_2'``...). A pattern must match a whole path
  (``re.fullmatch``). The root module cannot be a site.
* Sites are named ``site00``, ``site01``, ... in the order their outputs are
  produced in the forward pass (an enclosing module's output comes after
  the outputs of the submodules it calls; naming both is allowed).
* Gate channels are the last axis of the output: it must be one floating
  ``[batch, ..., channels]`` array (channels last, as Flax convolutions
  produce). Anything else (a tuple, a dict, a ``[batch]`` vector) is refused
  when the model is wrapped, naming the submodule.
* Each site submodule must be called exactly once per forward pass. A
  submodule called twice (shared weights, a loop over one block) is
  refused, because each call would need its own gate and its own recorded
  activation; wrap the call you mean in a module of its own, or use the
  contract route. Submodules inside lifted transforms (``nn.scan``,
  ``nn.vmap``) are one trace for many applications and are not supported
  as sites.
* Only submodule outputs can be sites. A site after a plain function
  (``nn.relu(conv(x))`` where the ReLU is not inside a module) needs the
  contract route.

Channel counts are discovered at construction with ``jax.eval_shape`` of
``module.init`` on a ``[2, *input_shape]`` input (no computation, no
memory); ``input_shape`` must be a size the network accepts. The forward
pass is the module in evaluation mode: pass e.g. ``train=False`` as an
extra keyword (``apply_kwargs``) if the module needs it.

Memory: as the wrapped module's forward plus every site's activation, like
a hand-gated model.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nad_jax.models import base

_SHOW = 25  # called-module paths listed in an error message


def module_path(module: nn.Module) -> str:
  """``'stage1/block0'``: the bound module's path joined with ``/``."""
  return "/".join(str(p) for p in module.path)


def _default_logits(output: Any) -> Any:
  return output


class InterceptedModel:
  """A Flax module with gates on the outputs of named submodules.

  Args:
    module: the unmodified Flax linen module (``module.apply(variables,
      images, **apply_kwargs)`` returns the logits, or something
      ``logits_fn`` turns into them).
    sites: exact module paths of the site submodules (any order; sites are
      numbered in call order).
    pattern: instead of ``sites``, a regular expression that module paths
      must match entirely.
    input_shape: ``(height, width, 3)`` of the images used to discover the
      sites' channels.
    logits_fn: maps the module's output to ``[batch, num_classes]`` logits
      (e.g. ``lambda out: out[0]`` for a module returning a tuple); default:
      the output itself.
    apply_kwargs: extra keyword arguments for every ``module.apply`` /
      ``module.init`` call (e.g. ``{'train': False}``).

  Raises:
    ValueError: neither or both of ``sites`` and ``pattern``; a named path
      that is never called, a pattern that matches no called submodule, a
      site submodule called more than once, or one whose output is not a
      floating ``[batch, ..., channels]`` array. The message names the
      submodule and lists the paths that are called.
  """

  def __init__(self, module: nn.Module, sites: Sequence[str] | None = None,
               *, pattern: str | None = None,
               input_shape: Sequence[int] = (224, 224, 3),
               logits_fn: Callable[[Any], jax.Array] | None = None,
               apply_kwargs: Mapping[str, Any] | None = None):
    if (sites is None) == (pattern is None):
      raise ValueError("name the gate sites with either sites=[module "
                       "paths] or pattern=<regular expression>, not both "
                       "or neither")
    if isinstance(sites, str):
      raise ValueError(f"sites must be a sequence of module paths, got the "
                       f"string {sites!r}; for one path write [{sites!r}], "
                       f"for a pattern pass pattern=")
    self.module = module
    self.logits_fn = logits_fn or _default_logits
    self.apply_kwargs = dict(apply_kwargs or {})
    self.input_shape = tuple(int(d) for d in input_shape)
    self._describe = (f"pattern {pattern!r}" if pattern is not None
                      else f"sites {list(sites)}")
    calls = self._discover()
    called = list(calls)
    if pattern is not None:
      regex = re.compile(pattern)
      chosen = [p for p in called if regex.fullmatch(p)]
      if not chosen:
        raise ValueError(
            f"pattern {pattern!r} matches no submodule called in the "
            f"forward pass of {type(module).__name__}; "
            f"{_called_list(called)}")
    else:
      chosen = list(dict.fromkeys(sites))
      never = [p for p in chosen if p not in calls]
      if never:
        raise ValueError(
            f"submodule(s) {never} of {type(module).__name__} are never "
            f"called in the forward pass (a misspelt path, a submodule "
            f"defined but unused, or a path without '/' separators); "
            f"{_called_list(called)}")
    for path in chosen:
      outputs = calls[path]
      if len(outputs) != 1:
        raise ValueError(
            f"submodule {path!r} of {type(module).__name__} is called "
            f"{len(outputs)} times per forward pass (shared weights or a "
            f"loop); a gate site must be called exactly once, since each "
            f"call would need its own gate and recorded activation. Wrap "
            f"the call you mean in a submodule of its own or gate it by hand "
            f"(models/base.py)")
      _check_output(path, outputs[0], batch=2)
    # Completion order of the chosen calls (= the order of `calls`).
    chosen_set = set(chosen)
    ordered = [p for p in called if p in chosen_set]
    self.site_paths = {base.site_name(i): p for i, p in enumerate(ordered)}
    self._site_of = {p: s for s, p in self.site_paths.items()}
    self._channels = {s: int(calls[p][0].shape[-1])
                      for s, p in self.site_paths.items()}

  def _discover(self) -> dict[str, list[Any]]:
    """Every submodule ``__call__`` of one abstract forward pass, in
    completion order: path -> list of outputs (shape structs)."""
    calls: dict[str, list[Any]] = collections.OrderedDict()

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and context.module.path:
        calls.setdefault(module_path(context.module), []).append(
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(
                jnp.shape(x), jnp.result_type(x)), out))
      return out

    images = jax.ShapeDtypeStruct((2, *self.input_shape), jnp.float32)
    init = functools.partial(self.module.init, **self.apply_kwargs)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with nn.intercept_methods(record):
      jax.eval_shape(init, rngs, images)
    return calls

  def gate_sites(self) -> dict[str, int]:
    """``site00``, ``site01``, ... -> channels, in call order."""
    return dict(self._channels)

  def init(self, rngs, images, **kwargs):
    """The wrapped module's ``init`` (its variables are the model's)."""
    return self.module.init(rngs, images, **{**self.apply_kwargs, **kwargs})

  def apply(self, variables, images: jax.Array,
            gates: Mapping[str, jax.Array] | None = None, **kwargs
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(logits, activations)`` of the model contract (``models/base.py``).

    Raises:
      ValueError: a site was not called exactly once in this forward pass
        (e.g. a data-dependent branch skipped it at another input size).
      KeyError / ValueError: a gate is missing or has the wrong size (from
        ``base.gate_site``).
    """
    activations: dict[str, jax.Array] = {}
    counts: collections.Counter[str] = collections.Counter()

    def gate(next_fun, args, call_kwargs, context):
      out = next_fun(*args, **call_kwargs)
      if context.method_name != "__call__":
        return out
      site = self._site_of.get(module_path(context.module))
      if site is None:
        return out
      counts[site] += 1
      if counts[site] > 1:
        raise ValueError(
            f"gate site {site} (submodule {self.site_paths[site]!r}) is "
            f"called more than once in this forward pass")
      _check_output(self.site_paths[site], out, batch=jnp.shape(images)[0])
      return base.gate_site(out, gates, site, activations)

    with nn.intercept_methods(gate):
      output = self.module.apply(variables, images,
                                 **{**self.apply_kwargs, **kwargs})
    missing = [f"{s} ({p})" for s, p in self.site_paths.items()
               if s not in activations]
    if missing:
      raise ValueError(
          f"gate sites {missing} were not called in this forward pass of "
          f"{type(self.module).__name__} (images {jnp.shape(images)}); they "
          f"were found with input_shape {self.input_shape}")
    logits = self.logits_fn(output)
    return logits, {s: activations[s] for s in self.site_paths}

  def __repr__(self) -> str:
    return (f"InterceptedModel({type(self.module).__name__}, "
            f"{self._describe}: {self.site_paths})")


def _called_list(called: Sequence[str]) -> str:
  shown = ", ".join(repr(p) for p in called[:_SHOW])
  more = f", ... ({len(called)} in all)" if len(called) > _SHOW else ""
  return f"submodules called: [{shown}{more}]"


def _check_output(path: str, output: Any, batch: int) -> None:
  """Raises a ValueError unless ``output`` is a floating [batch, ..., C]
  array."""
  if not hasattr(output, "shape") or not hasattr(output, "dtype"):
    raise ValueError(
        f"submodule {path!r} returns a {type(output).__name__}, not an "
        f"array; a gate site must output one [batch, ..., channels] array "
        f"(name the submodule inside it that produces the features)")
  shape = tuple(output.shape)
  if len(shape) < 2 or shape[0] != batch:
    raise ValueError(
        f"submodule {path!r} outputs shape {shape} for a batch of {batch}; "
        f"a gate site must output [batch, ..., channels] (channels last)")
  if not jnp.issubdtype(output.dtype, jnp.floating):
    raise ValueError(f"submodule {path!r} outputs {output.dtype}; a gate "
                     f"site must output floating-point features")
