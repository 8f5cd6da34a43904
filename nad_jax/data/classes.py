"""Class metadata: names, user class selections, hierarchies, WordNet.

* ImageNet: the 1000 wnids in tfds' (= torchvision's) label order and
  readable names (the first WordNet lemma; the two names ImageNet uses twice,
  ``crane`` and ``maillot``, get their wnid appended), from
  ``nad_jax/assets/imagenet_wordnet.json`` (derived from WordNet 3.0 by
  ``tools/derive_imagenet_wordnet.py``; licence in
  ``assets/WORDNET_LICENSE.txt``), which also holds every hypernym path of
  each class.
* Places365: the 365 category names of tfds' ``places365_small`` label file.
* :func:`resolve_classes`: ``config.data.classes`` -> class ids.
* :func:`load_hierarchy`: a user's JSON/YAML ``{primary: [classes]}`` ->
  ``{primary: [ids]}``; :func:`imagenet_hierarchy` groups ImageNet classes
  under chosen WordNet ancestors; :func:`resolve_hierarchy` reads
  ``config.data.hierarchy``.

Memory: the WordNet file is 0.3 MB on disk, a few MB once parsed (cached).
"""

from __future__ import annotations

import collections
import functools
import json
import os
from collections.abc import Mapping, Sequence

ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          "assets")
IMAGENET_WORDNET_FILE = os.path.join(ASSETS_DIR, "imagenet_wordnet.json")
# Paper Fig. 7-style selection: six primary concepts, five ImageNet classes
# each (bird, lizard, snake, dog, wolf & fox, cat).
FIG7_HIERARCHY_FILE = os.path.join(ASSETS_DIR, "hierarchy_imagenet_fig7.json")
ENTITY_WNID = "n00001740"


@functools.lru_cache(maxsize=1)
def imagenet_wordnet() -> dict:
  """The parsed WordNet file: ``{'classes': {wnid: [paths]}, 'lemmas': ...}``.

  Each path is a list of wnids from ``entity`` down to the class.
  """
  with open(IMAGENET_WORDNET_FILE) as f:
    return json.load(f)


def imagenet_wnids() -> list[str]:
  """The 1000 ImageNet wnids in label order (id = position)."""
  return list(imagenet_wordnet()["classes"])


def imagenet_names() -> list[str]:
  """Readable names of the 1000 ImageNet classes (first WordNet lemma)."""
  lemmas = imagenet_wordnet()["lemmas"]
  wnids = imagenet_wnids()
  names = [lemmas[w][0] for w in wnids]
  counts = collections.Counter(names)
  return [f"{n} ({w})" if counts[n] > 1 else n for n, w in zip(names, wnids)]


def wordnet_lemmas(wnid: str) -> list[str]:
  """Lemma names of a synset on some ImageNet class's hypernym path."""
  lemmas = imagenet_wordnet()["lemmas"]
  if wnid not in lemmas:
    raise ValueError(f"wnid {wnid!r} is not an ImageNet class or one of "
                     f"their WordNet ancestors")
  return lemmas[wnid]


def imagenet_ancestors(wnid: str) -> set[str]:
  """Every synset on any hypernym path of ImageNet class ``wnid`` (incl.
  itself)."""
  classes = imagenet_wordnet()["classes"]
  if wnid not in classes:
    raise ValueError(f"{wnid!r} is not one of the 1000 ImageNet wnids")
  return {w for path in classes[wnid] for w in path}


def places365_names() -> list[str]:
  """The 365 Places365 category names, in tfds' label order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(tfds.__file__), "image_classification",
                      "categories_places365.txt")
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if len(names) != 365:
    raise ValueError(f"{path}: expected 365 categories, found {len(names)}")
  return names


def _normal(name: str) -> str:
  return name.strip().lower().replace("_", " ")


def class_index(class_names: Sequence[str],
                aliases: Mapping[str, int] | None = None
                ) -> dict[str, list[int]]:
  """Lookup table: normalised name or alias -> class ids carrying it."""
  index: dict[str, list[int]] = collections.defaultdict(list)
  for class_id, name in enumerate(class_names):
    index[_normal(name)].append(class_id)
  for alias, class_id in (aliases or {}).items():
    if class_id not in index[_normal(alias)]:
      index[_normal(alias)].append(class_id)
  return dict(index)


def _lookup(item, class_names: Sequence[str], index: dict[str, list[int]]
            ) -> int | None:
  """One class given as id (int or digit string), name or alias; None if
  unknown; a ValueError if the name is ambiguous."""
  if isinstance(item, bool):
    return None
  if isinstance(item, int) or (isinstance(item, str) and
                               item.strip().isdigit()):
    class_id = int(item)
    return class_id if 0 <= class_id < len(class_names) else None
  if not isinstance(item, str):
    return None
  ids = index.get(_normal(item), [])
  if len(ids) > 1:
    raise ValueError(f"class name {item!r} is ambiguous: it names classes "
                     f"{[(i, class_names[i]) for i in ids]}; give the id or "
                     f"the wnid")
  return ids[0] if ids else None


def _unknown_error(unknown: list, class_names: Sequence[str],
                   where: str) -> ValueError:
  examples = ", ".join(repr(n) for n in list(class_names)[:5])
  return ValueError(
      f"unknown classes {unknown} in {where}: give class ids "
      f"0..{len(class_names) - 1}, class names (e.g. {examples}) or, for "
      f"ImageNet, wnids")


def resolve_classes(selection, class_names: Sequence[str],
                    aliases: Mapping[str, int] | None = None) -> list[int]:
  """Class ids of a user's selection, in the order given, without repeats.

  Args:
    selection: ``'all'`` (or empty), a comma-separated string, or a list of
      ids / names / aliases (ImageNet wnids). Names match case-insensitively,
      ``_`` = space.
    class_names: the dataset's class names (id = position).
    aliases: extra names -> id (e.g. wnid -> id).

  Raises:
    ValueError: naming every unknown class, or an ambiguous name.
  """
  if selection is None or (isinstance(selection, str) and
                           selection.strip().lower() in ("", "all")):
    return list(range(len(class_names)))
  if isinstance(selection, str):
    items = [s.strip() for s in selection.split(",") if s.strip()]
  elif isinstance(selection, int):
    items = [selection]
  else:
    items = list(selection)
  index = class_index(class_names, aliases)
  ids, unknown = [], []
  for item in items:
    class_id = _lookup(item, class_names, index)
    if class_id is None:
      unknown.append(item)
    elif class_id not in ids:
      ids.append(class_id)
  if unknown:
    raise _unknown_error(unknown, class_names, "config.data.classes")
  if not ids:
    raise ValueError(f"config.data.classes={selection!r} selects no class")
  return ids


def hierarchy_ids(groups: Mapping, class_names: Sequence[str],
                  aliases: Mapping[str, int] | None = None,
                  where: str = "the hierarchy") -> dict[str, list[int]]:
  """``{primary: [class ids / names / aliases]}`` -> ``{primary: [ids]}``.

  Raises:
    ValueError: not a mapping of lists, an empty primary, unknown classes
      (all named, with their primary), or a class under two primaries.
  """
  if not isinstance(groups, Mapping) or not groups:
    raise ValueError(f"{where} must be a non-empty mapping primary concept "
                     f"-> list of classes, got {type(groups).__name__}")
  index = class_index(class_names, aliases)
  out, unknown, owner = {}, [], {}
  for primary, members in groups.items():
    if isinstance(members, str):
      members = [m.strip() for m in members.split(",") if m.strip()]
    if not isinstance(members, Sequence) or not members:
      raise ValueError(f"{where}: primary concept {primary!r} needs a "
                       f"non-empty list of classes, got {members!r}")
    ids = []
    for item in members:
      class_id = _lookup(item, class_names, index)
      if class_id is None:
        unknown.append(f"{item!r} (under {primary!r})")
        continue
      if class_id in owner and owner[class_id] != str(primary):
        raise ValueError(
            f"{where}: class {class_names[class_id]!r} is listed under both "
            f"{owner[class_id]!r} and {primary!r}")
      owner[class_id] = str(primary)
      if class_id not in ids:
        ids.append(class_id)
    out[str(primary)] = ids
  if unknown:
    raise _unknown_error(unknown, class_names, where)
  return out


def load_hierarchy(path: str, class_names: Sequence[str],
                   aliases: Mapping[str, int] | None = None
                   ) -> dict[str, list[int]]:
  """Reads a JSON or YAML file ``{primary: [classes]}`` -> ``{primary: [ids]}``.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file does not parse, or see :func:`hierarchy_ids`.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"hierarchy file {path} (config.data.hierarchy) "
                            f"does not exist")
  with open(path) as f:
    text = f.read()
  try:
    if path.endswith((".yaml", ".yml")):
      import yaml  # pylint: disable=g-import-not-at-top
      groups = yaml.safe_load(text)
    else:
      groups = json.loads(text)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"hierarchy file {path} does not parse: {e}") from None
  return hierarchy_ids(groups, class_names, aliases, where=f"hierarchy file "
                       f"{path}")


def imagenet_hierarchy(ancestors: Sequence[str] | None = None,
                       level: int | None = None,
                       wnids: Sequence[str] | None = None
                       ) -> dict[str, list[int]]:
  """Groups ImageNet classes under WordNet ancestors.

  Args:
    ancestors: ancestor wnids (e.g. ``['n01503061', 'n02084071']`` = bird,
      dog); each class goes to the deepest given ancestor on any of its
      hypernym paths; classes under none are left out.
    level: instead of ``ancestors``, group by the synset at this depth
      (entity = 0) of each class's shortest hypernym path.
    wnids: the dataset's classes in id order (default: all 1000).

  Returns:
    ``{primary name: [class ids]}``; the name is the ancestor's first lemma
    (with its wnid when two primaries share a lemma).

  Raises:
    ValueError: neither or both of ``ancestors`` / ``level``; an unknown
      ancestor or class wnid; an ancestor with no class under it.
  """
  if (ancestors is None) == (level is None):
    raise ValueError("imagenet_hierarchy needs exactly one of ancestors= "
                     "or level=")
  classes = imagenet_wordnet()["classes"]
  lemmas = imagenet_wordnet()["lemmas"]
  wnids = list(wnids) if wnids is not None else imagenet_wnids()
  unknown = [w for w in wnids if w not in classes]
  if unknown:
    raise ValueError(f"not ImageNet wnids: {unknown}")
  groups: dict[str, list[int]] = collections.defaultdict(list)
  if level is not None:
    for class_id, wnid in enumerate(wnids):
      path = classes[wnid][0]
      groups[path[min(level, len(path) - 1)]].append(class_id)
  else:
    ancestors = list(ancestors)
    bad = [a for a in ancestors if a not in lemmas]
    if bad:
      raise ValueError(f"ancestor wnids {bad} are not on any ImageNet class's "
                       f"WordNet hypernym path")
    for class_id, wnid in enumerate(wnids):
      depth = {}
      for path in classes[wnid]:
        for d, node in enumerate(path):
          if node in ancestors:
            depth[node] = max(depth.get(node, -1), d)
      if depth:
        groups[max(depth, key=lambda a: (depth[a], -ancestors.index(a)))
               ].append(class_id)
    empty = [a for a in ancestors if a not in groups]
    if empty:
      raise ValueError(f"no class of the dataset lies under ancestors {empty}")
  names = [lemmas[a][0] for a in groups]
  counts = collections.Counter(names)
  return {(f"{n} ({a})" if counts[n] > 1 else n): ids
          for n, (a, ids) in zip(names, groups.items())}


def resolve_hierarchy(spec: str, class_names: Sequence[str],
                      aliases: Mapping[str, int] | None = None,
                      wnids: Sequence[str] | None = None
                      ) -> dict[str, list[int]] | None:
  """Reads ``config.data.hierarchy``.

  Args:
    spec: ``''`` (none), a JSON/YAML file, ``'fig7'`` (the shipped ImageNet
      Fig. 7 selection), ``'wordnet:<wnid>,<wnid>,...'`` (group under those
      ancestors) or ``'wordnet:level=<depth>'``; the WordNet forms need
      ``wnids``.
    class_names, aliases: the dataset's classes.
    wnids: the dataset's ImageNet wnids in id order, or None.
  """
  spec = (spec or "").strip()
  if not spec:
    return None
  if spec == "fig7":
    spec = FIG7_HIERARCHY_FILE
  if spec.startswith("wordnet:"):
    if wnids is None:
      raise ValueError(f"config.data.hierarchy={spec!r} needs ImageNet "
                       f"classes (wnids); this dataset has none")
    arg = spec[len("wordnet:"):]
    if arg.startswith("level="):
      return imagenet_hierarchy(level=int(arg[len("level="):]), wnids=wnids)
    return imagenet_hierarchy(
        ancestors=[a.strip() for a in arg.split(",") if a.strip()],
        wnids=wnids)
  return load_hierarchy(spec, class_names, aliases)
