"""The base config every file in ``configs/`` starts from.

Config files call :func:`base_config` and override fields; the docstring of
each config file gives its command line. Fields:

* ``seed``: seeds gate initialisation and data order (authors' code: 233).
* ``model``: ``name`` (a key of ``nad_jax.models.MODELS``), ``num_classes``,
  ``checkpoint`` (an Orbax params checkpoint made by ``weights_conversion/``
  or the demo training; demo networks default to the shipped weights),
  ``image_size``.
* ``data``: ``source`` (``demo``, ``tfds`` or ``folder``), ``name`` (tfds
  dataset), ``data_dir``, ``manual_dir``, ``root`` (image folder),
  ``classes`` (``'all'``, ``'hierarchy'`` (the classes of ``hierarchy``),
  or a comma-separated string / list of class ids or names), ``hierarchy`` (JSON file primary -> classes, optional), ``augment``
  (``'none'`` or ``'random_resized_crop'``), ``num_workers`` (decoding
  threads; 0: the calling thread, or all cores for the device pipeline's
  cache), ``labels``
  (image folders: ``'position'`` = sorted folder index, ``'imagenet'`` =
  ImageNet index of wnid folders, ``'auto'`` = ``'imagenet'`` when every
  folder is a wnid and the network has 1000 classes), ``pipeline``
  (``'host'``: decode and augment every draw on host threads, PIL,
  torchvision's pixels exactly; ``'device'``: decode each chunk's train
  images once into a uint8 cache and crop, flip and normalise on the
  accelerator inside the jitted step, see ``nad_jax/data/decode_cache.py``;
  ``'auto'`` (default) = ``'device'`` on GPU/TPU, where host decoding would
  need 10-20 cores per GPU, and ``'host'`` on CPU, where the step is
  compute-bound, the host path costs under 1% of it and needs no cache
  memory), ``cache_placement`` (device pipeline: ``'auto'``, ``'device'``
  or ``'host'`` memory for the cache; ``'auto'`` = the device while two
  chunks' caches take at most a quarter of its memory), ``cache_max_size``
  (device pipeline with ``random_resized_crop``: the stored canvas
  ``(rows, cols)``, default ``(288, 384)``, 332 kB per image, 431 MB per
  ImageNet class; larger photos are downscaled to fit, see
  benchmarks/RESULTS.md "Device data pipeline").
* ``objective``: ``name`` (``paper`` or ``official``), ``lam`` (paper's
  lambda), ``beta`` (official code's beta).
* ``optim``: ``alpha``, the learning rate of the normalised SGD.
* ``search``: ``num_steps`` (step budget per concept), ``batch_size``
  (images per concept per step), ``concepts_per_step`` (concepts vmapped in
  one step, a number or ``'auto'``: the largest that fits in device memory,
  see ``nad_jax.memory``; more concepts are done in chunks),
  ``memory_limit_gb`` (device memory per device ``'auto'`` may plan for;
  0 = what the device reports free, on a CPU the host's available memory),
  ``compute_dtype`` (``'float32'`` or ``'bfloat16'``: the network's weights
  and activations during the search; gate logits, loss and update stay
  float32, and the evaluation runs in float32), ``remat``
  (recompute the gated forward pass in the backward pass; costs a third
  more FLOPs, see benchmarks/RESULTS.md), ``num_seeds`` (random
  initialisations per concept), ``patience`` (a concept stops once none of
  its binary paths changed for this many steps; 0 = off), ``checkpoint_every``,
  ``log_every``, ``stop_after_steps`` (> 0: end this invocation after so
  many steps, checkpointed; a rerun resumes; for time-limited jobs).
* ``eval``: ``batch_size``, ``max_images_per_class`` (``None`` = all val).
* ``distributed``: several processes (hosts) run one search, each on its
  own devices and its own concepts' images (``nad_jax.distributed``,
  docs/distributed.md). ``mode``: ``'auto'`` (start ``jax.distributed`` when
  launched as several processes: SLURM ``srun`` with several tasks, Open
  MPI, ``JAX_COORDINATOR_ADDRESS``, or ``coordinator_address`` below),
  ``'on'`` (always; JAX detects SLURM, Open MPI and Cloud TPU VMs) or
  ``'off'``; ``coordinator_address`` (``host:port`` of process 0),
  ``num_processes``, ``process_id`` (all three for a manual launch).
* ``report``: ``figures`` (write PNGs).
* ``mode``: ``'search'`` (default: search, then evaluate and analyse) or
  ``'analyze'`` (read the finished search in ``--workdir`` and run the
  evaluation, if ``metrics.json`` lacks it, and every analysis, without
  searching again).
* ``analysis``: the analyses after the evaluation (``nad_jax.analyze``):
  ``enabled``, ``seed``, ``mask_rate`` (share of top activation pixels,
  0.1 as the authors' hit rate), ``num_mosaics`` (100),
  ``mosaic_images_per_class``, ``mosaic_full_size`` (also score 2x2
  mosaics at twice the input size, for networks that take any size),
  ``random_draws`` (random same-size paths per concept), ``permutations``
  (per permutation test), ``top_k``, ``authors_top_k_classes``,
  ``cross_max_classes``, ``cross_images_per_class``,
  ``max_images_per_class`` (``None`` = ``eval.max_images_per_class``),
  ``map_classes`` (up to four classes for the activation-map mosaic),
  ``images`` (comma-separated image files for activation maps).
* ``compare``: model names run one after another into ``workdir/<name>``
  with one combined report (the demo); empty = only ``model``.
  ``hparams_by_model`` then gives each its ``alpha``, ``lam``, ``beta``;
  see :func:`network_config` for how command-line overrides combine with
  them.

:func:`validate` checks every field against :data:`FIELD_RULES` (types,
ranges, known names, fields that need each other) and refuses unknown
fields, before anything is read or written; a new config field needs a
rule there.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import ml_collections
from absl import logging
from ml_collections import config_dict

from nad_jax import errors


def base_config() -> ml_collections.ConfigDict:
  """The defaults; config files override what they need."""
  config = ml_collections.ConfigDict()
  config.seed = 233

  config.model = ml_collections.ConfigDict()
  config.model.name = ""
  config.model.num_classes = 1000
  config.model.checkpoint = ""
  config.model.image_size = 224

  config.data = ml_collections.ConfigDict()
  config.data.source = "demo"
  config.data.name = ""
  config.data.data_dir = ""
  config.data.manual_dir = ""
  config.data.root = ""
  config.data.classes = "all"
  config.data.hierarchy = ""
  config.data.augment = "none"
  config.data.num_workers = 0
  config.data.labels = "auto"
  config.data.pipeline = "auto"
  config.data.cache_placement = "auto"
  config.data.cache_max_size = (288, 384)

  from nad_jax import objectives  # pylint: disable=g-import-not-at-top
  config.objective = ml_collections.ConfigDict()
  config.objective.name = "paper"
  for spec in objectives.OBJECTIVES.values():  # lam, beta
    config.objective[spec.weight] = spec.default

  config.optim = ml_collections.ConfigDict()
  config.optim.alpha = 0.1

  config.search = ml_collections.ConfigDict()
  config.search.num_steps = 100
  config.search.batch_size = 16
  # A number or 'auto' (any type: the command line gives 16 or auto).
  config.search.concepts_per_step = config_dict.FieldReference(
      8, field_type=object)
  config.search.memory_limit_gb = 0.0
  config.search.compute_dtype = "float32"
  config.search.remat = False
  config.search.num_seeds = 1
  config.search.patience = 0
  config.search.checkpoint_every = 50
  config.search.log_every = 10
  config.search.stop_after_steps = 0

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64
  config.eval.max_images_per_class = ml_collections.config_dict.placeholder(int)

  config.distributed = ml_collections.ConfigDict()
  config.distributed.mode = "auto"
  config.distributed.coordinator_address = ""
  config.distributed.num_processes = 0
  config.distributed.process_id = -1

  config.report = ml_collections.ConfigDict()
  config.report.figures = True

  config.mode = "search"
  config.analysis = analysis_config()

  config.compare = ()
  config.hparams_by_model = ml_collections.ConfigDict()
  return config


def analysis_config() -> ml_collections.ConfigDict:
  """``config.analysis`` defaults (``nad_jax.analyze`` reads them)."""
  config = ml_collections.ConfigDict()
  config.enabled = True
  config.seed = 0
  config.mask_rate = 0.1
  config.num_mosaics = 100
  config.mosaic_images_per_class = 16
  config.mosaic_full_size = False
  config.random_draws = 3
  config.permutations = 999
  config.top_k = 3
  config.authors_top_k_classes = 100
  config.cross_max_classes = 32
  config.cross_images_per_class = 16
  config.max_images_per_class = ml_collections.config_dict.placeholder(int)
  config.map_classes = ""
  config.images = ""
  return config


# The paper's datasets: arg -> (tfds name, classes, search steps). The steps
# follow the authors' 21 epochs over one class's training images at batch
# 16: ImageNet ~1300 images per class -> ~1700 steps; Places365
# (places365_small, ~4940 per class) -> ~6500 steps.
PAPER_DATASETS = {
    "imagenet": ("imagenet2012", 1000, 1700),
    "places365": ("places365_small", 365, 6500),
}


# The paper's networks' hyperparameters: network -> dataset -> (paper
# alpha, paper lambda, authors' code beta): paper Sec. 5.1 and the
# authors' code (docs/networks.md, Hyperparameters). The other
# variants of a family use its paper network's values (configs/vgg.py,
# configs/resnet.py, configs/densenet.py).
PAPER_HPARAMS = {
    "vgg16": {"imagenet": (0.1, 6.0, 4.5), "places365": (0.1, 6.0, 5.0)},
    "resnet50": {"imagenet": (2.5, 0.03, 0.02),
                 "places365": (2.5, 0.023, 0.02)},
    "densenet121": {"imagenet": (0.6, 0.08, 0.02),
                    "places365": (0.6, 0.02, 0.02)},
}


def paper_network_config(
    model_name: str, arg: str | None,
    hparams: dict[str, tuple[float, float, float]],
    config_file: str) -> ml_collections.ConfigDict:
  """The config of one of the paper's networks on ImageNet or Places365.

  Args:
    model_name: a key of ``nad_jax.models.MODELS``.
    arg: the config file's ``:arg``, ``imagenet`` (default) or
      ``places365``.
    hparams: dataset -> ``(alpha, lambda, beta)``: the paper's learning
      rate and lambda and the authors' code's beta.
    config_file: the calling file, for error messages.

  Returns:
    The base config with the model (no checkpoint: it must be given), the
    tfds dataset, search-time augmentation, batch 16 and the step budget.
  """
  dataset = arg or "imagenet"
  if dataset not in PAPER_DATASETS:
    raise ValueError(f"{config_file}: unknown dataset {dataset!r}; use one "
                     f"of {sorted(PAPER_DATASETS)}")
  tfds_name, num_classes, num_steps = PAPER_DATASETS[dataset]
  alpha, lam, beta = hparams[dataset]
  config = base_config()
  config.model.name = model_name
  config.model.num_classes = num_classes
  config.model.checkpoint = ""  # Required: a converted params checkpoint.
  config.data.source = "tfds"
  config.data.name = tfds_name
  config.data.augment = "random_resized_crop"
  config.objective.name = "paper"
  config.objective.lam = lam
  config.objective.beta = beta
  config.optim.alpha = alpha
  config.search.batch_size = 16
  config.search.num_steps = num_steps
  return config


def family_config(arg: str | None, variants: Sequence[str],
                  paper_network: str,
                  config_file: str) -> ml_collections.ConfigDict:
  """The config of any variant of a paper network's family.

  Args:
    arg: the config file's ``:arg``, ``VARIANT`` or ``VARIANT,DATASET``
      (``vgg19_bn``, ``resnet18,places365``); default: ``paper_network`` on
      ImageNet.
    variants: the family's model names (torchvision function names).
    paper_network: the family's network in the paper, whose
      hyperparameters (``PAPER_HPARAMS``) every variant uses.
    config_file: the calling file, for error messages.

  Returns:
    :func:`paper_network_config` for the variant and dataset.

  Raises:
    ValueError: an unknown variant or dataset, naming the known ones.
  """
  variant, _, dataset = (arg or "").partition(",")
  variant = variant.strip() or paper_network
  if variant not in variants:
    raise ValueError(
        f"{config_file}: unknown variant {variant!r}; use "
        f"--config={config_file}:VARIANT[,DATASET] with VARIANT one of "
        f"{sorted(variants)} and DATASET one of {sorted(PAPER_DATASETS)}")
  return paper_network_config(variant, dataset.strip() or None,
                              PAPER_HPARAMS[paper_network], config_file)


# --------------------------------------------------------------------------
# Validation.


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a config field accepts: ``check(value)``, and ``wants``, its
  description (a string, or a function making one when a message needs it,
  for registries that are filled at import time)."""
  check: Callable[[Any], bool]
  wants: str | Callable[[], str]

  def describe(self) -> str:
    return self.wants() if callable(self.wants) else self.wants


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None) -> Rule:
  """An int in ``[low, high]`` (either bound may be None)."""
  if low is not None and high is not None:
    wants = f"an integer in [{low}, {high}]"
  elif low is not None:
    wants = {0: "an integer >= 0", 1: "a positive integer"}.get(
        low, f"an integer >= {low}")
  else:
    wants = "an integer"
  return Rule(lambda v: _is_int(v) and (low is None or v >= low)
              and (high is None or v <= high), wants)


def real(low: float, *, exclusive: bool = False) -> Rule:
  """A finite number ``>= low`` (``> low`` if ``exclusive``)."""
  wants = f"a finite number {'>' if exclusive else '>='} {low:g}"
  return Rule(lambda v: (_is_int(v) or isinstance(v, float))
              and math.isfinite(v) and (v > low if exclusive else v >= low),
              wants)


def one_of(choices: Callable[[], Collection[str]] | Collection[str]) -> Rule:
  """One of ``choices`` (or of what the callable returns, read lazily)."""
  get = choices if callable(choices) else (lambda: choices)
  return Rule(lambda v: isinstance(v, str) and v in get(),
              lambda: "one of " + ", ".join(repr(c) for c in sorted(get())))


TEXT = Rule(lambda v: isinstance(v, str), "a string")
FLAG = Rule(lambda v: isinstance(v, bool), "True or False")
OPTIONAL_POSITIVE = Rule(lambda v: v is None or (_is_int(v) and v >= 1),
                         "None or a positive integer")
CLASSES = Rule(
    lambda v: (isinstance(v, str) and v.strip() != "") or (
        isinstance(v, (list, tuple)) and len(v) > 0
        and all(isinstance(c, (int, str)) for c in v)),
    "'all', 'hierarchy', or a non-empty comma-separated string or list of "
    "class ids or names")


CLASSES_OR_EMPTY = Rule(
    lambda v: isinstance(v, str) or (
        isinstance(v, (list, tuple))
        and all(isinstance(c, (int, str)) for c in v)),
    "'' or a comma-separated string or list of class ids or names")


def _modes():
  from nad_jax import analyze  # pylint: disable=g-import-not-at-top
  return analyze.MODES


def _model_names():
  from nad_jax import models  # pylint: disable=g-import-not-at-top
  return models.MODELS


def _objective_names():
  from nad_jax import objectives  # pylint: disable=g-import-not-at-top
  return objectives.OBJECTIVES


def _data_sources():
  from nad_jax import data  # pylint: disable=g-import-not-at-top
  return data.DATASET_BUILDERS


def _augments():
  from nad_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  return preprocess.AUGMENTS


def _pipelines():
  from nad_jax.data import decode_cache  # pylint: disable=g-import-not-at-top
  return decode_cache.PIPELINES


def _placements():
  from nad_jax.data import decode_cache  # pylint: disable=g-import-not-at-top
  return decode_cache.PLACEMENTS


def _compute_dtypes():
  from nad_jax import search  # pylint: disable=g-import-not-at-top
  return search.COMPUTE_DTYPES


def _distributed_modes():
  from nad_jax import distributed  # pylint: disable=g-import-not-at-top
  return distributed.MODES


def _model_names_tuple(value) -> bool:
  return isinstance(value, (list, tuple)) and all(
      isinstance(n, str) and n in _model_names() for n in value) and len(
          set(value)) == len(value)


# Every config field and what it accepts; ``*`` matches one level (a model
# name under ``hparams_by_model``). Hyperparameters: alpha > 0 (a step of 0
# never moves), the objective weights >= 0 (0 = no sparsity pressure).
FIELD_RULES: dict[str, Rule] = {
    "seed": integer(0, 2**31 - 1),
    "model.name": one_of(_model_names),
    "model.num_classes": integer(1),
    "model.checkpoint": TEXT,
    "model.image_size": integer(1),
    "data.source": one_of(_data_sources),
    "data.name": TEXT,
    "data.data_dir": TEXT,
    "data.manual_dir": TEXT,
    "data.root": TEXT,
    "data.classes": CLASSES,
    "data.hierarchy": TEXT,
    "data.augment": one_of(_augments),
    "data.num_workers": integer(0, 1024),
    "data.labels": one_of(("auto", "position", "imagenet")),
    "data.pipeline": one_of(_pipelines),
    "data.cache_placement": one_of(_placements),
    "data.cache_max_size": Rule(
        lambda v: isinstance(v, (list, tuple)) and len(v) == 2
        and all(_is_int(x) and x >= 1 for x in v),
        "(rows, cols), two positive integers"),
    "data.demo.seed": integer(0, 2**31 - 1),
    "data.demo.num_primaries": integer(1, 4),
    "data.demo.classes_per_primary": integer(1, 6),
    "data.demo.train_per_class": integer(1),
    "data.demo.val_per_class": integer(1),
    "data.demo.image_size": integer(8),
    "data.demo.noise": real(0.0),
    "objective.name": one_of(_objective_names),
    "optim.alpha": real(0.0, exclusive=True),
    "search.num_steps": integer(1),
    "search.batch_size": integer(1),
    "search.concepts_per_step": Rule(
        lambda v: v == "auto" or (_is_int(v) and v >= 1),
        "a positive integer or 'auto'"),
    "search.memory_limit_gb": real(0.0),
    "search.compute_dtype": one_of(_compute_dtypes),
    "search.remat": FLAG,
    "search.num_seeds": integer(1),
    "search.patience": integer(0),
    "search.checkpoint_every": integer(0),
    "search.log_every": integer(0),
    "search.stop_after_steps": integer(0),
    "eval.batch_size": integer(1),
    "eval.max_images_per_class": OPTIONAL_POSITIVE,
    "report.figures": FLAG,
    "distributed.mode": one_of(_distributed_modes),
    "distributed.coordinator_address": TEXT,
    "distributed.num_processes": integer(0),
    "distributed.process_id": integer(-1),
    "mode": one_of(_modes),
    "analysis.enabled": FLAG,
    "analysis.seed": integer(0, 2**31 - 1),
    "analysis.mask_rate": Rule(
        lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
        and 0 < v <= 1, "a number in (0, 1]"),
    "analysis.num_mosaics": integer(1),
    "analysis.mosaic_images_per_class": integer(1),
    "analysis.mosaic_full_size": FLAG,
    "analysis.random_draws": integer(1),
    "analysis.permutations": integer(0),
    "analysis.top_k": integer(1),
    "analysis.authors_top_k_classes": integer(1),
    "analysis.cross_max_classes": integer(1),
    "analysis.cross_images_per_class": integer(1),
    "analysis.max_images_per_class": OPTIONAL_POSITIVE,
    "analysis.map_classes": CLASSES_OR_EMPTY,
    "analysis.images": TEXT,
    "compare": Rule(_model_names_tuple,
                    "a tuple of distinct model names (empty: only "
                    "config.model.name)"),
    "hparams_by_model.*.alpha": real(0.0, exclusive=True),
}
# The objectives' weights (objective.lam, objective.beta and their
# hparams_by_model entries) come from nad_jax.objectives.OBJECTIVES.
WEIGHT_RULE = real(0.0)


def all_rules() -> dict[str, Rule]:
  """:data:`FIELD_RULES` plus the registered objectives' weights."""
  rules = dict(FIELD_RULES)
  for field in hparam_fields().values():
    if field.startswith("objective."):
      rules[field] = WEIGHT_RULE
      rules["hparams_by_model.*." + field.split(".")[1]] = WEIGHT_RULE
  return rules


def hparam_fields() -> dict[str, str]:
  """The per-network hyperparameters of compare mode -> the fields they
  set: ``alpha`` -> ``optim.alpha`` and each objective's weight."""
  fields = {"alpha": "optim.alpha"}
  for spec in _objective_names().values():
    fields[spec.weight] = f"objective.{spec.weight}"
  return fields


def flatten(config: ml_collections.ConfigDict, prefix: str = ""
            ) -> dict[str, Any]:
  """``{'search.num_steps': 100, ...}``: every leaf field of ``config``."""
  out = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)) and value:
      out.update(flatten(ml_collections.ConfigDict(value)
                         if isinstance(value, dict) else value, path + "."))
    elif isinstance(value, (ml_collections.ConfigDict, dict)):
      out[path] = {}  # an empty section
    else:
      out[path] = value
  return out


def rule_for(path: str) -> Rule | None:
  """The rule of a flattened field name, or None for an unknown field."""
  rules = all_rules()
  if path in rules:
    return rules[path]
  for pattern, rule in rules.items():
    if "*" in pattern and fnmatch.fnmatchcase(path, pattern) and (
        path.count(".") == pattern.count(".")):
      return rule
  return None


def _fields_under(prefix: str) -> list[str]:
  return sorted(p[len(prefix):] for p in all_rules()
                if p.startswith(prefix) and "." not in p[len(prefix):])


def validate(config: ml_collections.ConfigDict,
             overrides: Iterable[str] = ()) -> None:
  """Checks every field of ``config``; raises before anything is written.

  Args:
    config: the run's config.
    overrides: the fields set on the command line (``'optim.alpha'``), for
      the compare-mode checks of :func:`network_config`.

  Raises:
    nad_jax.errors.ConfigError: naming the field, its value and what it
      accepts (the first bad field; all unknown fields at once).
  """
  values = flatten(config)
  unknown = [path for path in values
             if rule_for(path) is None and values[path] != {}]
  if unknown:
    hints = []
    for path in unknown:
      section = path.rsplit(".", 1)[0] + "." if "." in path else ""
      known = _fields_under(section)
      hints.append(f"config.{path} (known fields of "
                   f"config{'.' + section[:-1] if section else ''}: "
                   f"{', '.join(known)})")
    raise errors.ConfigError(f"unknown config fields: {'; '.join(hints)}")
  for path, value in values.items():
    if value == {}:
      continue
    rule = rule_for(path)
    if not rule.check(value):
      raise errors.ConfigError(
          f"config.{path}={value!r} is not allowed: it must be "
          f"{rule.describe()}")
  source = config.data.source
  if source == "tfds" and not config.data.name:
    raise errors.ConfigError(
        "config.data.source='tfds' needs config.data.name, e.g. "
        "'imagenet2012' or 'places365_small'")
  if source == "folder" and not config.data.root:
    raise errors.ConfigError(
        "config.data.source='folder' needs config.data.root, the folder "
        "holding train/<class>/ and val/<class>/")
  for name in config.compare:
    if name not in config.hparams_by_model:
      raise errors.ConfigError(
          f"config.compare names {name!r} but config.hparams_by_model has "
          f"no entry for it")
  for name in config.hparams_by_model:
    if name not in _model_names():
      raise errors.ConfigError(
          f"config.hparams_by_model.{name}: unknown model {name!r}; known "
          f"models: {', '.join(sorted(_model_names()))}")
  for name in config.compare:
    network_config(config, name, overrides)  # raises on conflicts
  from nad_jax import analyze  # pylint: disable=g-import-not-at-top
  try:
    analyze.validate_config(config)  # files named by config.analysis.images
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e
  ignored = sorted(f for f in overrides if f.startswith("hparams_by_model."))
  if ignored and not config.compare:
    raise errors.ConfigError(
        f"--config.{ignored[0]} has no effect: config.hparams_by_model is "
        f"read only in compare mode (config.compare is empty); set "
        f"--config.optim.alpha or --config.objective.* instead")


# Fields that name one network; set on the command line they contradict a
# comparison of several.
_ONE_NETWORK_FIELDS = ("model.name", "model.checkpoint")


def network_config(config: ml_collections.ConfigDict, name: str,
                   overrides: Iterable[str] = ()
                   ) -> ml_collections.ConfigDict:
  """The config network ``name`` of ``config.compare`` runs with.

  ``config.hparams_by_model[name]`` sets its ``alpha``, ``lam`` and
  ``beta``, except where the command line set the field itself: a field
  set on the command line (``--config.optim.alpha=0.3``) wins for every
  network. ``--config.hparams_by_model.<name>.alpha`` changes one
  network. The result has ``compare = ()`` and no ``hparams_by_model``: it
  is exactly what that network ran with (``pipeline`` stores it as the
  network's ``config.json``).

  Raises:
    nad_jax.errors.ConfigError: the command line sets ``model.name`` or
      ``model.checkpoint`` (they name one network, compare mode runs
      several), or sets both a field and the same network's
      ``hparams_by_model`` entry for it.
  """
  overrides = set(overrides)
  for field in _ONE_NETWORK_FIELDS:
    if field in overrides:
      raise errors.ConfigError(
          f"--config.{field} names one network but config.compare runs "
          f"{', '.join(config.compare)}; run one network with its own "
          f"config (e.g. configs/demo.py:vgg), or choose the networks with "
          f"--config.compare")
  result = copy.deepcopy(config)
  with result.unlocked():
    result.compare = ()
    result.model.name = name
    fields = hparam_fields()
    for key, value in config.hparams_by_model[name].items():
      if key not in fields:
        raise errors.ConfigError(
            f"config.hparams_by_model.{name}.{key}: unknown hyperparameter; "
            f"known: {', '.join(fields)}")
      field = fields[key]
      if field in overrides:
        if f"hparams_by_model.{name}.{key}" in overrides:
          raise errors.ConfigError(
              f"--config.{field} and --config.hparams_by_model.{name}.{key} "
              f"are both set on the command line; keep one")
        continue  # the command line wins for every network
      section, leaf = field.split(".")
      result[section][leaf] = value
    result.hparams_by_model = ml_collections.ConfigDict()
  return result


def log_overrides(config: ml_collections.ConfigDict,
                  overrides: Iterable[str]) -> None:
  """Says which command-line fields replace ``hparams_by_model`` values."""
  for key, field in hparam_fields().items():
    if field in set(overrides) and any(
        key in config.hparams_by_model[name] for name in config.compare):
      section, leaf = field.split(".")
      logging.info("--config.%s=%s applies to every network of "
                   "config.compare (instead of config.hparams_by_model.*.%s)",
                   field, config[section][leaf], key)
