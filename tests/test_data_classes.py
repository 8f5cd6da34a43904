"""Class metadata, selections, hierarchies and the WordNet file."""

from __future__ import annotations

import json
import os

import pytest

from nad_jax.data import classes

ENTITY = "n00001740"


def _tfds_imagenet_wnids() -> list[str]:
  tfds = pytest.importorskip("tensorflow_datasets",
                             reason="tfds ships the ImageNet label file")
  path = os.path.join(os.path.dirname(tfds.__file__), "datasets",
                      "imagenet2012", "labels.txt")
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def test_wordnet_file_covers_all_imagenet_classes():
  wnids = _tfds_imagenet_wnids()
  assert classes.imagenet_wnids() == wnids
  paths = classes.imagenet_wordnet()["classes"]
  for wnid in wnids:
    assert paths[wnid], wnid
    for path in paths[wnid]:
      assert path[0] == ENTITY and path[-1] == wnid, wnid
  lemmas = classes.imagenet_wordnet()["lemmas"]
  assert lemmas[ENTITY] == ["entity"]


def test_known_hypernyms():
  # WordNet 3.0: tabby cat -> domestic cat -> cat -> feline -> carnivore.
  chains = [path for path in classes.imagenet_wordnet()["classes"]["n02123045"]
            if "n02075296" in path]
  assert chains
  path = chains[0]
  positions = [path.index(w) for w in ("n02075296", "n02120997", "n02121620",
                                       "n02121808", "n02123045")]
  assert positions == sorted(positions)
  assert classes.wordnet_lemmas("n02120997") == ["feline", "felid"]
  assert "n01503061" in classes.imagenet_ancestors("n01530575")  # bird
  assert "n02084071" in classes.imagenet_ancestors("n02085620")  # dog
  assert "n02084071" not in classes.imagenet_ancestors("n02114367")  # wolf


def test_imagenet_names():
  names = classes.imagenet_names()
  # torchvision / Keras class ids: 0 tench, 281 tabby, 999 toilet tissue.
  assert (names[0], names[281], names[999]) == ("tench", "tabby",
                                                 "toilet tissue")
  assert len(set(names)) == 1000
  assert names[134] == "crane (n02012849)"  # the bird; 517 is the machine


def test_places365_names():
  names = classes.places365_names()
  assert len(names) == 365 and names[0] == "airfield"


def test_resolve_classes():
  names = classes.imagenet_names()
  aliases = {w: i for i, w in enumerate(classes.imagenet_wnids())}
  assert classes.resolve_classes("all", names) == list(range(1000))
  assert classes.resolve_classes("Tabby, 0, n01530575, 0", names,
                                 aliases) == [281, 0, 10]
  assert classes.resolve_classes([5, "tiger_cat"], names) == [5, 282]
  with pytest.raises(ValueError, match=r"'tabbby'.*'n99999999'|"
                     r"'n99999999'.*'tabbby'") as info:
    classes.resolve_classes("tabbby, 3, n99999999, 1000", names, aliases)
  assert "'1000'" in str(info.value)
  places = ["airfield", "bedroom"]
  with pytest.raises(ValueError, match="ambiguous"):
    classes.resolve_classes("crane", ["crane", "crane"])
  with pytest.raises(ValueError, match="kitchen"):
    classes.resolve_classes(["kitchen"], places)


def test_load_hierarchy_json_and_yaml(tmp_path):
  names = ["airfield", "bedroom", "kitchen", "beach"]
  (tmp_path / "h.json").write_text(json.dumps(
      {"indoor": ["bedroom", 2], "outdoor": "airfield, beach"}))
  assert classes.load_hierarchy(str(tmp_path / "h.json"), names) == {
      "indoor": [1, 2], "outdoor": [0, 3]}
  (tmp_path / "h.yaml").write_text("indoor:\n  - bedroom\nnature:\n"
                                   "  - forest\n  - beach\n")
  with pytest.raises(ValueError, match=r"'forest' \(under 'nature'\)"):
    classes.load_hierarchy(str(tmp_path / "h.yaml"), names)
  (tmp_path / "both.json").write_text(json.dumps(
      {"a": ["beach"], "b": ["beach"]}))
  with pytest.raises(ValueError, match="both 'a' and 'b'"):
    classes.load_hierarchy(str(tmp_path / "both.json"), names)
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(ValueError, match="bad.json does not parse"):
    classes.load_hierarchy(str(tmp_path / "bad.json"), names)
  with pytest.raises(FileNotFoundError, match="missing.json"):
    classes.load_hierarchy(str(tmp_path / "missing.json"), names)


def test_fig7_hierarchy_file_matches_wordnet():
  names = classes.imagenet_names()
  aliases = {w: i for i, w in enumerate(classes.imagenet_wnids())}
  hierarchy = classes.resolve_hierarchy("fig7", names, aliases)
  assert list(hierarchy) == ["bird", "lizard", "snake", "dog", "wolf & fox",
                             "cat"]
  assert all(len(ids) == 5 for ids in hierarchy.values())
  ancestors = {"bird": {"n01503061"}, "lizard": {"n01674464"},
               "snake": {"n01726692"}, "dog": {"n02084071"},
               "wolf & fox": {"n02114100", "n02118333"},
               "cat": {"n02121620"}}
  wnids = classes.imagenet_wnids()
  for primary, ids in hierarchy.items():
    for class_id in ids:
      assert ancestors[primary] & classes.imagenet_ancestors(wnids[class_id])


def test_imagenet_hierarchy_groups_by_deepest_ancestor():
  groups = classes.imagenet_hierarchy(
      ancestors=["n02075296", "n02121620", "n01503061"])  # carnivore, cat, bird
  assert 281 in groups["cat"] and 281 not in groups["carnivore"]  # tabby
  assert 269 in groups["carnivore"]  # timber wolf
  assert 10 in groups["bird"]  # brambling
  assert 0 not in sum(groups.values(), [])  # tench: under none
  subset = classes.imagenet_hierarchy(ancestors=["n02121620"],
                                      wnids=["n01440764", "n02123045"])
  assert subset == {"cat": [1]}
  by_level = classes.imagenet_hierarchy(level=0)
  assert by_level == {"entity": list(range(1000))}
  with pytest.raises(ValueError, match="n09999999"):
    classes.imagenet_hierarchy(ancestors=["n09999999"])
  with pytest.raises(ValueError, match="exactly one"):
    classes.imagenet_hierarchy()
  with pytest.raises(ValueError, match="needs ImageNet"):
    classes.resolve_hierarchy("wordnet:n02121620", ["a", "b"])
