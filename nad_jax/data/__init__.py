"""Datasets by source. Every dataset follows the interface in ``base.py``.

``DATASET_BUILDERS`` is a plain dict: ``config.data.source`` -> a function
``(config, cache_dir) -> ConceptDataset``. :func:`get_dataset` builds one and
sets its hierarchy from ``config.data.hierarchy``; :func:`selected_classes`
resolves ``config.data.classes`` to class ids.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from nad_jax.data import classes
from nad_jax.data import demo
from nad_jax.data import folder
from nad_jax.data import tfds_source


def _build_tfds(config: ml_collections.ConfigDict, cache_dir: str):
  if not config.data.name:
    raise ValueError("config.data.source='tfds' needs config.data.name, e.g. "
                     "'imagenet2012' or 'places365_small'")
  return tfds_source.TfdsDataset(
      config.data.name, data_dir=config.data.data_dir,
      manual_dir=config.data.manual_dir, cache_dir=cache_dir,
      image_size=config.model.image_size, augment=config.data.augment,
      seed=config.seed, num_workers=config.data.num_workers)


def _build_folder(config: ml_collections.ConfigDict, cache_dir: str):
  del cache_dir  # nothing to cache: the file lists are cheap
  if not config.data.root:
    raise ValueError("config.data.source='folder' needs config.data.root, the "
                     "folder holding train/<class>/ and val/<class>/")
  labels = config.data.get("labels", "auto")
  if labels == "auto":
    # A 1000-class network on wnid folders predicts ImageNet indices.
    labels = "imagenet" if (config.model.num_classes == 1000 and
                            folder.all_imagenet_wnids(config.data.root)) \
        else "position"
  return folder.FolderDataset(
      config.data.root, image_size=config.model.image_size,
      augment=config.data.augment, seed=config.seed,
      num_workers=config.data.num_workers, labels=labels)


def _build_demo(config: ml_collections.ConfigDict, cache_dir: str):
  del cache_dir  # generated in memory in a few seconds
  return demo.build_demo_dataset(config)


DATASET_BUILDERS: dict[str, Callable] = {
    "demo": _build_demo,
    "tfds": _build_tfds,
    "folder": _build_folder,
}


def get_dataset(config: ml_collections.ConfigDict, *, cache_dir: str):
  """The dataset ``config.data`` describes, with its hierarchy set.

  Args:
    config: reads ``config.data.*``, ``config.model.image_size`` and
      ``config.seed``.
    cache_dir: where a dataset may cache indices (the run's workdir).

  Raises:
    ValueError: unknown ``config.data.source`` (the message lists the known
      ones), or a bad hierarchy / missing field.
    FileNotFoundError: the data is missing; the message says how to get it.
  """
  source = config.data.source
  if source not in DATASET_BUILDERS:
    raise ValueError(f"unknown config.data.source {source!r}; known: "
                     f"{sorted(DATASET_BUILDERS)}")
  dataset = DATASET_BUILDERS[source](config, cache_dir)
  if config.data.hierarchy:
    dataset.hierarchy = classes.resolve_hierarchy(
        config.data.hierarchy, dataset.class_names, dataset.aliases,
        dataset.wnids)
  return dataset


def selected_classes(config: ml_collections.ConfigDict, dataset) -> list[int]:
  """Class ids of ``config.data.classes`` (``'all'``, ids, names, wnids, or
  ``'hierarchy'``: the classes of ``config.data.hierarchy``).

  Raises:
    ValueError: naming every unknown class.
  """
  if config.data.classes == "hierarchy":
    # The classes of the hierarchy, primary by primary (paper Fig. 7).
    if not dataset.hierarchy:
      raise ValueError("config.data.classes='hierarchy' needs a hierarchy: "
                       "set config.data.hierarchy")
    return [int(c) for ids in dataset.hierarchy.values() for c in ids]
  return classes.resolve_classes(config.data.classes, dataset.class_names,
                                 dataset.aliases)
