"""An ImageNet image folder from the real photos that PyPI packages ship.

For trying NAD on a real pretrained ImageNet network without ImageNet::

  pip install --no-deps foolbox scikit-image
  python -m nad_jax.data.photos --out data/photos

writes ``data/photos/{train,val}/<wnid>/<photo>``, the layout of
``nad_jax.data.folder`` with ImageNet wnid folders (labels = ImageNet
indices under a 1000-class network), from

* foolbox's 20 labelled ImageNet validation photos
  (``foolbox/data/imagenet_XX_LLL.jpg``, LLL = class index): 19 classes,
  the jeep class has two photos;
* two scikit-image photos with an unambiguous ImageNet class, labelled here
  by looking at them: ``chelsea.png`` (a tabby cat) -> ``tabby`` and
  ``coffee.png`` (an espresso in a cup) -> ``espresso``.

That is 21 classes with one photo each (two for jeep). There is no held-out
photo: ``val/`` holds the same photos as ``train/``. The search then learns
each class's path from random crops of one photo, and path accuracy asks
whether the path still classifies that photo (centre crop): a demonstration
and a sanity check of the machinery on a real network, not an estimate of
how a path generalises over a class. ``SOURCES.json`` in the folder records
where every photo came from.

The packages are located with ``importlib`` and not imported (their own
dependencies are not needed). Nothing is downloaded.

Memory: one photo at a time (the photos are copied as files).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile

from nad_jax.data import classes

# scikit-image photo -> ImageNet class index, chosen by looking at them.
SKIMAGE_PHOTOS = {
    "chelsea.png": 281,  # tabby (n02123045): Chelsea, a striped tabby cat
    "coffee.png": 967,   # espresso (n07920052): an espresso cup on a saucer
}
_FOOLBOX_NAME = re.compile(r"^imagenet_(\d+)_(\d+)\.jpg$")


def package_data_dir(package: str) -> str:
  """``<package>/data`` of an installed package, located without importing.

  Raises:
    FileNotFoundError: the package is not installed (the message says how
      to install it).
  """
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"{package} is not installed; it ships the photos: pip install "
        f"--no-deps {'scikit-image' if package == 'skimage' else package}")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def photo_sources(include_skimage: bool = True
                  ) -> list[tuple[str, int, str]]:
  """``(file, ImageNet class index, source)`` of every photo, sorted.

  Raises:
    FileNotFoundError: foolbox (or, with ``include_skimage``, scikit-image)
      is missing, or ships none of the expected photos.
  """
  sources = []
  foolbox_dir = package_data_dir("foolbox")
  for name in sorted(os.listdir(foolbox_dir)):
    match = _FOOLBOX_NAME.match(name)
    if match:
      sources.append((os.path.join(foolbox_dir, name), int(match.group(2)),
                      "foolbox (ImageNet validation sample)"))
  if not sources:
    raise FileNotFoundError(f"{foolbox_dir} holds no imagenet_XX_LLL.jpg "
                            "photos")
  if include_skimage:
    skimage_dir = package_data_dir("skimage")
    for name, label in SKIMAGE_PHOTOS.items():
      path = os.path.join(skimage_dir, name)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"scikit-image ships no {path}")
      sources.append((path, label, "scikit-image (label chosen by nad-jax)"))
  return sources


def build_photo_folder(out_dir: str, *, include_skimage: bool = True,
                       force: bool = False) -> dict[str, list[str]]:
  """Writes the folder (see the module docstring); returns wnid -> files.

  The folder is assembled in a temporary directory next to ``out_dir`` and
  renamed into place, so an interrupted run leaves nothing half-written.

  Raises:
    FileExistsError: ``out_dir`` exists and ``force`` is off.
    FileNotFoundError: a package with the photos is missing.
  """
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.exists(out_dir) and not force:
    raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
  sources = photo_sources(include_skimage)
  wnids = classes.imagenet_wnids()
  names = classes.imagenet_names()
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".photos-", dir=parent)
  written: dict[str, list[str]] = {}
  records = []
  try:
    for path, label, source in sources:
      wnid = wnids[label]
      base = os.path.basename(path)
      for split in ("train", "val"):
        class_dir = os.path.join(tmp, split, wnid)
        os.makedirs(class_dir, exist_ok=True)
        shutil.copyfile(path, os.path.join(class_dir, base))
      written.setdefault(wnid, []).append(base)
      records.append({"file": base, "wnid": wnid, "imagenet_index": label,
                      "class": names[label], "source": source,
                      "original": path})
    with open(os.path.join(tmp, "SOURCES.json"), "w") as f:
      json.dump({"note": "val/ holds the same photos as train/ (no held-out "
                         "photos); see nad_jax/data/photos.py",
                 "photos": records}, f, indent=1)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return written


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description="Build an ImageNet wnid image folder (train/, val/) from "
                  "the photos foolbox and scikit-image ship.")
  parser.add_argument("--out", required=True, help="folder to create")
  parser.add_argument("--no_skimage", action="store_true",
                      help="only foolbox's 20 ImageNet photos")
  parser.add_argument("--force", action="store_true",
                      help="replace an existing folder")
  args = parser.parse_args(argv)
  try:
    written = build_photo_folder(args.out,
                                 include_skimage=not args.no_skimage,
                                 force=args.force)
  except (FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  names = dict(zip(classes.imagenet_wnids(), classes.imagenet_names()))
  photos = sum(len(v) for v in written.values())
  print(f"wrote {args.out}: {len(written)} classes, {photos} photos "
        f"(train/ and val/ hold the same photos)")
  for wnid, files in sorted(written.items()):
    print(f"  {wnid} {names[wnid]}: {', '.join(files)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
