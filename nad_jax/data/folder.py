"""A ConceptDataset over an image folder (the authors' layout).

Layout::

  root/train/<class>/<image>   root/val/<class>/<image>

Classes are the sub-folders of ``root/train`` in sorted order (class id =
position, as torchvision's ``ImageFolder``); ``root/val`` must have the same
class folders. Images are the files with an image extension
(:data:`IMG_EXTENSIONS`, case-insensitive), in sorted order; hidden files and
other extensions are ignored. Decoding is PIL with ``convert('RGB')``
(greyscale, palette, CMYK and alpha images become RGB). If all class folders
are ImageNet wnids, ``class_names`` are the readable ImageNet names and the
wnids are accepted as aliases. Labels (what the network must predict) are
the folder positions, or with ``labels='imagenet'`` the ImageNet indices of
wnid folders, for a folder holding a subset of ImageNet's classes run
through a 1000-class network.

Memory: the file lists (one path per image) plus one batch; nothing is
cached.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from nad_jax.data import classes
from nad_jax.data import indexed

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif",
                  ".tiff", ".webp", ".gif")
LAYOUT_HELP = ("expected an image folder laid out as root/train/<class>/"
               "<image> and root/val/<class>/<image> with the same class "
               "folders in both (classes in sorted order)")


def decode_image(path: str) -> Image.Image:
  """Reads an image file into a PIL RGB image (raises OSError if broken)."""
  with open(path, "rb") as f:
    image = Image.open(f)
    return image.convert("RGB")  # loads the pixels; converts any mode


def list_images(class_dir: str) -> list[str]:
  """Sorted image files of one class folder (hidden files skipped)."""
  with os.scandir(class_dir) as entries:  # no stat per file on most systems
    return sorted(
        entry.path for entry in entries
        if not entry.name.startswith(".")
        and entry.name.lower().endswith(IMG_EXTENSIONS) and entry.is_file())


def all_imagenet_wnids(root: str) -> bool:
  """Whether every class folder of ``root/train`` is an ImageNet wnid."""
  train = os.path.join(os.path.expanduser(root), "train")
  if not os.path.isdir(train):
    return False
  names = [n for n in os.listdir(train) if not n.startswith(".")]
  known = set(classes.imagenet_wnids())
  return bool(names) and all(n in known for n in names)


class FolderDataset(indexed.IndexedConceptDataset):
  """Images of ``root/{train,val}/<class>/``; see the module docstring.

  Args:
    root: the folder holding ``train/`` and ``val/``.
    image_size: crop size (224); eval resize is ``round(size * 256 / 224)``.
    augment: ``'none'`` or ``'random_resized_crop'`` for search batches.
    seed: seeds the per-class image order and the augmentation.
    num_workers: decoding threads; 0 decodes in the calling thread.

  Raises:
    FileNotFoundError: ``root``, ``root/train`` or ``root/val`` missing (the
      message gives the expected layout).
    ValueError: no class folders, train/val class folders differ, or a class
      folder without images (named).
  """

  def __init__(self, root: str, *, image_size: int = 224,
               augment: str = "none", seed: int = 0, num_workers: int = 0,
               labels: str = "position"):
    root = os.path.expanduser(root)
    if not root or not os.path.isdir(root):
      raise FileNotFoundError(f"image folder root {root!r} "
                              f"(config.data.root) does not exist; "
                              f"{LAYOUT_HELP}")
    self.root = root
    class_dirs = {}
    for split in indexed.SPLITS:
      split_dir = os.path.join(root, split)
      if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"{split_dir} does not exist; {LAYOUT_HELP}")
      class_dirs[split] = sorted(
          name for name in os.listdir(split_dir)
          if not name.startswith(".")
          and os.path.isdir(os.path.join(split_dir, name)))
    if not class_dirs["train"]:
      raise ValueError(f"{os.path.join(root, 'train')} has no class folders; "
                       f"{LAYOUT_HELP}")
    if class_dirs["train"] != class_dirs["val"]:
      only_train = sorted(set(class_dirs["train"]) - set(class_dirs["val"]))
      only_val = sorted(set(class_dirs["val"]) - set(class_dirs["train"]))
      raise ValueError(f"{root}: train and val class folders differ: only in "
                       f"train {only_train}, only in val {only_val}; "
                       f"{LAYOUT_HELP}")
    self.class_dirs = class_dirs["train"]
    self.files = {}
    for split in indexed.SPLITS:
      self.files[split] = []
      for name in self.class_dirs:
        class_dir = os.path.join(root, split, name)
        files = list_images(class_dir)
        if not files:
          raise ValueError(f"class {name!r} has no images in {class_dir} "
                           f"(image extensions: {', '.join(IMG_EXTENSIONS)})")
        self.files[split].append(files)

    known = set(classes.imagenet_wnids())
    wnids = (list(self.class_dirs) if all(d in known for d in self.class_dirs)
             else None)
    if wnids is not None:
      names_by_wnid = dict(zip(classes.imagenet_wnids(),
                               classes.imagenet_names()))
      class_names = [names_by_wnid[w] for w in wnids]
    else:
      class_names = list(self.class_dirs)
    super().__init__(class_names, image_size=image_size, augment=augment,
                     seed=seed, num_workers=num_workers)
    self.wnids = wnids
    if labels == "imagenet":
      if wnids is None:
        not_wnids = [d for d in self.class_dirs if d not in known][:5]
        raise ValueError(
            f"config.data.labels='imagenet' needs ImageNet wnid class "
            f"folders in {root}; these are not: {not_wnids}")
      index_of = {w: i for i, w in enumerate(classes.imagenet_wnids())}
      self.label_of = np.asarray([index_of[w] for w in wnids], np.int32)
    elif labels != "position":
      raise ValueError(f"config.data.labels={labels!r}: use 'position' "
                       f"(label = sorted folder index) or 'imagenet' "
                       f"(label = ImageNet index of the wnid folder)")
    self.aliases = {name: i for i, name in enumerate(self.class_dirs)}

  def _count(self, split: str, class_id: int) -> int:
    return len(self.files[split][class_id])

  def _read(self, split: str, class_id: int, index: int) -> Image.Image:
    return decode_image(self.files[split][class_id][index])

  def _describe(self, split: str, class_id: int, index: int) -> str:
    return self.files[split][class_id][index]

  def class_files(self, split: str, class_id: int) -> Sequence[str]:
    """The image files of a class, in index order."""
    return list(self.files[split][class_id])
