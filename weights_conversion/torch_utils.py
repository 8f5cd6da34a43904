"""Shared helpers for converting PyTorch state_dicts to Flax variables.

The API (stable; the DARTS converter uses it too):

* :func:`load_state_dict` ``(path) -> dict[str, np.ndarray]``: reads a
  ``.pth`` that is a state_dict or a checkpoint dict holding one under
  ``'state_dict'`` or ``'model'``; strips ``module.`` prefixes.
* :func:`strip_prefix` ``(state_dict, prefix='module.')``.
* Layout transforms on numpy arrays: :func:`conv_kernel` (OIHW -> HWIO),
  :func:`depthwise_kernel` ((C, 1, k, k) -> (k, k, 1, C)),
  :func:`linear_kernel` ((out, in) -> (in, out)), :func:`identity`.
* Rule builders: :func:`conv_rules`, :func:`depthwise_conv_rules`,
  :func:`linear_rules`, :func:`batch_norm_rules` return lists of
  :class:`Rule` ``(torch_key, flax_path, transform)``; BatchNorm maps
  ``weight/bias -> params scale/bias`` and
  ``running_mean/running_var -> batch_stats mean/var``.
* :func:`convert_with_rules` ``(state_dict, rules, target_shapes, *,
  ignore_suffixes=('num_batches_tracked',), source='') -> variables``:
  applies the rules and checks strictly; on any problem raises one
  :class:`ConversionError` that lists every missing, unexpected and
  mis-shaped key (and any Flax variable no rule fills).
* :func:`check_state_dict` ``(state_dict, expected_shapes, ...)``: the same
  strict check on torch keys and torch-layout shapes alone.
* :func:`check_output` / :func:`write_params`: refuse an existing output
  unless forced; write the params checkpoint, leaving nothing behind when
  the write fails. :func:`sha256_of_file` for the meta.

torch is imported only inside :func:`load_state_dict`, so the transforms and
checks work on plain numpy dicts. Memory: a loaded state_dict is held once as
numpy float32 arrays (plus the converted copy: about twice the checkpoint
size).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

FlaxPath = tuple[str, ...]


class ConversionError(ValueError):
  """A state_dict does not fit the target network (keys or shapes)."""


# ----------------------------------------------------------------------------
# Loading.


def strip_prefix(state_dict: Mapping[str, Any],
                 prefix: str = "module.") -> dict[str, Any]:
  """Removes ``prefix`` from every key that starts with it (DataParallel)."""
  return {(key[len(prefix):] if key.startswith(prefix) else key): value
          for key, value in state_dict.items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a PyTorch ``.pth`` as a dict of numpy arrays.

  Accepts a plain state_dict or a checkpoint dict holding one under
  ``'state_dict'`` or ``'model'`` (other entries, e.g. ``epoch`` or
  ``optimizer``, are ignored). ``module.`` prefixes are stripped. Only
  tensors are loaded (``torch.load(weights_only=True)``), never pickled code.

  Raises:
    FileNotFoundError: no file at ``path``.
    ConversionError: the file is not a readable PyTorch checkpoint, or holds
      no state_dict; the message names the file.
  """
  import torch  # pylint: disable=g-import-not-at-top

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no PyTorch checkpoint file at {path}")
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many kinds for a bad file.
    raise ConversionError(
        f"{path} is not a readable PyTorch checkpoint (corrupted, truncated "
        f"or not written by torch.save; torch.load raised "
        f"{type(e).__name__})") from None
  if not isinstance(loaded, Mapping):
    raise ConversionError(f"{path} holds a {type(loaded).__name__}, not a "
                          "state_dict or a checkpoint dict")
  for holder in ("state_dict", "model"):
    if isinstance(loaded.get(holder), Mapping):
      loaded = loaded[holder]
      break
  state_dict = {}
  for key, value in loaded.items():
    if not isinstance(key, str) or not isinstance(value, torch.Tensor):
      raise ConversionError(
          f"{path} is not a state_dict: entry {key!r} is a "
          f"{type(value).__name__}, not a tensor (top-level keys: "
          f"{sorted(map(str, loaded))[:10]})")
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    state_dict[key] = value.numpy()
  if not state_dict:
    raise ConversionError(f"{path} holds an empty state_dict")
  return strip_prefix(state_dict, "module.")


# ----------------------------------------------------------------------------
# Layout transforms (numpy in, numpy out).


def identity(x: np.ndarray) -> np.ndarray:
  """Biases, BatchNorm vectors: unchanged."""
  return np.asarray(x)


def conv_kernel(x: np.ndarray) -> np.ndarray:
  """Conv kernel OIHW (PyTorch) -> HWIO (Flax)."""
  x = np.asarray(x)
  if x.ndim != 4:
    raise ConversionError(f"conv kernel must be 4-D (O, I, H, W), got "
                          f"{x.shape}")
  return np.ascontiguousarray(np.transpose(x, (2, 3, 1, 0)))


def depthwise_kernel(x: np.ndarray) -> np.ndarray:
  """Depthwise (C, 1, kh, kw) -> (kh, kw, 1, C); use feature_group_count=C."""
  x = np.asarray(x)
  if x.ndim != 4 or x.shape[1] != 1:
    raise ConversionError(
        f"depthwise kernel must be (C, 1, kh, kw), got {x.shape}")
  return np.ascontiguousarray(np.transpose(x, (2, 3, 1, 0)))


def linear_kernel(x: np.ndarray) -> np.ndarray:
  """Linear weight (out, in) (PyTorch) -> kernel (in, out) (Flax)."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ConversionError(f"linear weight must be 2-D (out, in), got {x.shape}")
  return np.ascontiguousarray(x.T)


# ----------------------------------------------------------------------------
# Rules.


@dataclasses.dataclass(frozen=True)
class Rule:
  """Copy ``state_dict[torch_key]`` through ``transform`` to ``flax_path``.

  ``flax_path`` starts with the collection, e.g.
  ``('params', 'conv1', 'kernel')`` or ``('batch_stats', 'bn1', 'mean')``.
  """
  torch_key: str
  flax_path: FlaxPath
  transform: Callable[[np.ndarray], np.ndarray] = identity


def _join(prefix: str, name: str) -> str:
  return f"{prefix}.{name}" if prefix else name


def conv_rules(torch_prefix: str, flax_scope: Sequence[str],
               bias: bool = False) -> list[Rule]:
  """Rules for an ``nn.Conv2d`` -> ``flax.linen.Conv`` (kernel, bias)."""
  scope = tuple(flax_scope)
  rules = [Rule(_join(torch_prefix, "weight"), ("params", *scope, "kernel"),
                conv_kernel)]
  if bias:
    rules.append(Rule(_join(torch_prefix, "bias"), ("params", *scope, "bias")))
  return rules


def depthwise_conv_rules(torch_prefix: str, flax_scope: Sequence[str],
                         bias: bool = False) -> list[Rule]:
  """Rules for a depthwise ``nn.Conv2d(groups=C)`` -> ``linen.Conv``."""
  scope = tuple(flax_scope)
  rules = [Rule(_join(torch_prefix, "weight"), ("params", *scope, "kernel"),
                depthwise_kernel)]
  if bias:
    rules.append(Rule(_join(torch_prefix, "bias"), ("params", *scope, "bias")))
  return rules


def linear_rules(torch_prefix: str, flax_scope: Sequence[str],
                 bias: bool = True) -> list[Rule]:
  """Rules for an ``nn.Linear`` -> ``flax.linen.Dense``."""
  scope = tuple(flax_scope)
  rules = [Rule(_join(torch_prefix, "weight"), ("params", *scope, "kernel"),
                linear_kernel)]
  if bias:
    rules.append(Rule(_join(torch_prefix, "bias"), ("params", *scope, "bias")))
  return rules


def batch_norm_rules(torch_prefix: str,
                     flax_scope: Sequence[str]) -> list[Rule]:
  """Rules for ``nn.BatchNorm2d`` -> ``flax.linen.BatchNorm``.

  ``weight/bias`` -> ``params/scale, bias``; ``running_mean/running_var`` ->
  ``batch_stats/mean, var``. ``num_batches_tracked`` is ignored by
  :func:`convert_with_rules`'s default ``ignore_suffixes``.
  """
  scope = tuple(flax_scope)
  return [
      Rule(_join(torch_prefix, "weight"), ("params", *scope, "scale")),
      Rule(_join(torch_prefix, "bias"), ("params", *scope, "bias")),
      Rule(_join(torch_prefix, "running_mean"),
           ("batch_stats", *scope, "mean")),
      Rule(_join(torch_prefix, "running_var"), ("batch_stats", *scope, "var")),
  ]


# ----------------------------------------------------------------------------
# Strict checks and conversion.


def _format_problems(source: str, missing: Iterable[str],
                     unexpected: Iterable[str],
                     mis_shaped: Iterable[str],
                     unfilled: Iterable[str] = ()) -> str:
  lines = [f"state_dict{' from ' + source if source else ''} does not fit "
           "the target network:"]
  for title, items in (("missing keys", missing),
                       ("unexpected keys", unexpected),
                       ("mis-shaped keys", mis_shaped),
                       ("Flax variables no rule fills", unfilled)):
    items = list(items)
    if items:
      lines.append(f"  {title} ({len(items)}):")
      lines.extend(f"    {item}" for item in items)
  return "\n".join(lines)


def _ignored(key: str, ignore_suffixes: Sequence[str]) -> bool:
  return any(key.endswith(suffix) for suffix in ignore_suffixes)


def check_state_dict(state_dict: Mapping[str, Any],
                     expected_shapes: Mapping[str, Sequence[int]],
                     *, ignore_suffixes: Sequence[str] = (
                         "num_batches_tracked",),
                     source: str = "") -> None:
  """Checks keys and shapes (torch layout) strictly.

  Args:
    state_dict: torch key -> array.
    expected_shapes: torch key -> expected torch-layout shape.
    ignore_suffixes: keys ending with one of these may be present or absent.
    source: the file name, for the message.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key.
  """
  missing = [k for k in expected_shapes if k not in state_dict]
  unexpected = [k for k in state_dict
                if k not in expected_shapes
                and not _ignored(k, ignore_suffixes)]
  mis_shaped = [
      f"{k}: got {tuple(np.shape(state_dict[k]))}, expected {tuple(shape)}"
      for k, shape in expected_shapes.items()
      if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(shape)]
  if missing or unexpected or mis_shaped:
    raise ConversionError(
        _format_problems(source, missing, unexpected, mis_shaped))


def _flatten(tree: Mapping[str, Any], prefix: FlaxPath = ()
             ) -> dict[FlaxPath, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, (*prefix, key)))
    else:
      flat[(*prefix, key)] = value
  return flat


def _unflatten(flat: Mapping[FlaxPath, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def convert_with_rules(state_dict: Mapping[str, Any],
                       rules: Sequence[Rule],
                       target_shapes: Mapping[str, Any],
                       *, ignore_suffixes: Sequence[str] = (
                           "num_batches_tracked",),
                       source: str = "") -> dict[str, Any]:
  """Converts ``state_dict`` to Flax variables, checking everything.

  Args:
    state_dict: torch key -> numpy array (e.g. from :func:`load_state_dict`).
    rules: one :class:`Rule` per torch key to convert.
    target_shapes: the Flax variables pytree or its shapes, e.g.
      ``jax.eval_shape(model.init, ...)``; leaves need only ``.shape``.
    ignore_suffixes: torch keys ending with these are dropped silently.
    source: the file name, for messages.

  Returns:
    The nested Flax variables dict (float32 numpy leaves), with exactly the
    paths of ``target_shapes``.

  Raises:
    ConversionError: one error listing every missing, unexpected and
      mis-shaped key, and every Flax variable that no rule fills.
  """
  target = _flatten(dict(target_shapes))
  rule_keys = {rule.torch_key for rule in rules}
  missing = [r.torch_key for r in rules if r.torch_key not in state_dict]
  unexpected = [k for k in state_dict
                if k not in rule_keys and not _ignored(k, ignore_suffixes)]
  mis_shaped = []
  flat: dict[FlaxPath, np.ndarray] = {}
  for rule in rules:
    if rule.torch_key not in state_dict:
      continue
    torch_shape = tuple(np.shape(state_dict[rule.torch_key]))
    if rule.flax_path not in target:
      mis_shaped.append(f"{rule.torch_key} {torch_shape}: no Flax variable "
                        f"{'/'.join(rule.flax_path)}")
      continue
    want = tuple(target[rule.flax_path].shape)
    try:
      value = np.asarray(rule.transform(state_dict[rule.torch_key]), np.float32)
    except ConversionError as e:
      mis_shaped.append(f"{rule.torch_key}: {e}")
      continue
    if value.shape != want:
      mis_shaped.append(
          f"{rule.torch_key}: got {torch_shape} -> {value.shape} for "
          f"{'/'.join(rule.flax_path)}, expected {want}")
      continue
    flat[rule.flax_path] = value
  covered = {rule.flax_path for rule in rules}
  unfilled = ["/".join(p) for p in target if p not in covered]
  if missing or unexpected or mis_shaped or unfilled:
    raise ConversionError(
        _format_problems(source, missing, unexpected, mis_shaped, unfilled))
  return _unflatten(flat)


def max_differences(pairs: Iterable[tuple[str, Any, np.ndarray]]
                    ) -> dict[str, tuple[float, float]]:
  """``{name: (max abs diff, max abs diff / max |torch|)}`` of Flax vs torch.

  Args:
    pairs: ``(name, flax array, torch array as numpy)`` with equal shapes
      (Flax NHWC activations must already match the torch layout).

  Raises:
    ValueError: naming the first pair whose shapes differ.
  """
  differences = {}
  for name, ours, theirs in pairs:
    ours = np.asarray(ours)
    if ours.shape != theirs.shape:
      raise ValueError(f"{name}: Flax shape {ours.shape} != torch shape "
                       f"{theirs.shape}")
    abs_diff = float(np.max(np.abs(ours - theirs)))
    differences[name] = (abs_diff,
                         abs_diff / max(float(np.max(np.abs(theirs))), 1e-30))
  return differences


def sha256_of_file(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def check_output(output_dir: str | os.PathLike, force: bool) -> str:
  """The absolute output path; FileExistsError if it exists and not ``force``."""
  output_dir = os.path.abspath(os.path.expanduser(os.fspath(output_dir)))
  if os.path.exists(output_dir) and not force:
    raise FileExistsError(f"{output_dir} exists; pass --force to replace it")
  return output_dir


def write_params(output_dir: str, variables: Mapping[str, Any],
                 meta: Mapping[str, Any], *, force: bool) -> None:
  """Writes the params checkpoint; a failed first write leaves no folder."""
  from nad_jax import params_io  # pylint: disable=g-import-not-at-top
  existed = os.path.exists(output_dir)
  try:
    params_io.save_variables(output_dir, variables, meta, force=force)
  except BaseException:
    if not existed and os.path.exists(output_dir):
      shutil.rmtree(output_dir, ignore_errors=True)
    raise


def print_differences(differences: Mapping[str, tuple[float, float]]) -> None:
  """Prints :func:`max_differences`' result as a table, one row a site."""
  print(f"{'site':>8} {'max abs diff':>14} {'max rel diff':>14}")
  for site, (abs_diff, rel_diff) in differences.items():
    print(f"{site:>8} {abs_diff:14.3e} {rel_diff:14.3e}")
