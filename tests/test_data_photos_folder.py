"""``python -m nad_jax.data.photos``: the image folder of packaged photos.

Golden values: foolbox's file names carry the ImageNet class index
(``imagenet_XX_LLL.jpg``); the wnids of the two scikit-image photos and the
classes are typed in here. The folder must load as a FolderDataset with
ImageNet labels, and configs/efficientnet_lite0.py must point at it.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from nad_jax.data import classes
from nad_jax.data import folder
from nad_jax.data import photos
from tests import data_photos

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs",
                      "efficientnet_lite0.py")


def _config(arg=None):
  spec = importlib.util.spec_from_file_location("config_lite0", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_folder_holds_every_photo_under_its_wnid(tmp_path, capsys):
  foolbox = data_photos.foolbox_imagenet()  # skips without foolbox
  data_photos.skimage_photo("chelsea.png")
  out = tmp_path / "photos"
  assert photos.main(["--out", str(out)]) == 0
  assert "21 classes, 22 photos" in capsys.readouterr().out
  wnids = classes.imagenet_wnids()
  want = {}
  for path, label in foolbox.items():
    want.setdefault(wnids[label], set()).add(os.path.basename(path))
  want["n02123045"] = {"chelsea.png"}   # tabby
  want["n07920052"] = {"coffee.png"}    # espresso
  for split in ("train", "val"):
    got = {w: set(os.listdir(out / split / w))
           for w in os.listdir(out / split)}
    assert got == want
  with open(out / "train" / "n02123045" / "chelsea.png", "rb") as f:
    with open(data_photos.skimage_photo("chelsea.png"), "rb") as g:
      assert f.read() == g.read()
  sources = json.loads((out / "SOURCES.json").read_text())
  assert len(sources["photos"]) == 22

  dataset = folder.FolderDataset(str(out), labels="imagenet")
  assert dataset.class_names[dataset.class_dirs.index("n03594945")] == "jeep"
  np.testing.assert_array_equal(
      dataset.label_of,
      [wnids.index(w) for w in dataset.class_dirs])
  # A second build needs --force; nothing is changed without it.
  assert photos.main(["--out", str(out)]) == 1
  assert "--force" in capsys.readouterr().err
  assert photos.main(["--out", str(out), "--force", "--no_skimage"]) == 0
  assert len(os.listdir(out / "train")) == 19
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".photos-")]


def test_missing_package_is_named(monkeypatch, tmp_path):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, "find_spec",
      lambda name, *a: None if name == "foolbox" else real_find_spec(name,
                                                                     *a))
  with pytest.raises(FileNotFoundError, match="pip install --no-deps foolbox"):
    photos.build_photo_folder(str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_config_points_at_the_folder_and_the_checkpoint():
  config = _config()
  assert config.model.name == "efficientnet_lite0"
  assert config.model.checkpoint == "ckpt/efficientnet_lite0"
  assert (config.data.source, config.data.root, config.data.labels) == (
      "folder", "data/photos", "imagenet")
  assert config.data.augment == "random_resized_crop"
  imagenet = _config("imagenet")
  assert (imagenet.data.source, imagenet.data.name) == ("tfds",
                                                        "imagenet2012")
  assert imagenet.optim.alpha == config.optim.alpha
  with pytest.raises(ValueError, match="unknown variant 'places365'"):
    _config("places365")
