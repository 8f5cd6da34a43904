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
  ``hparams_by_model`` then gives each its ``alpha``, ``lam``, ``beta``.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from ml_collections import config_dict


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

  config.objective = ml_collections.ConfigDict()
  config.objective.name = "paper"
  config.objective.lam = 1.0
  config.objective.beta = 1.0

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
# alpha, paper lambda, authors' code beta), NAD_FACTS section 3. The other
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
