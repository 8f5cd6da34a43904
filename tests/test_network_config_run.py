"""configs/resnet50.py runs end to end on a folder of real photos.

The ResNet50 config, with its checkpoint pointed at random weights saved as
a params checkpoint and its data pointed at an image folder of real
ImageNet photos (foolbox's samples) in wnid folders, goes through the whole
pipeline at a small input size: search, evaluation, metrics and report,
with the class names in the outputs and ImageNet indices as labels.
"""

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import pytest

from nad_jax import models
from nad_jax import params_io
from nad_jax import pipeline
from nad_jax import data as data_lib
from nad_jax.data import classes
from tests import data_photos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resnet50_config_on_a_photo_folder(tmp_path):
  photos = data_photos.foolbox_imagenet()  # path -> ImageNet class id
  by_class = {}
  for path, label in sorted(photos.items()):
    by_class.setdefault(label, []).append(path)
  labels = sorted(by_class)[:2]
  wnids = classes.imagenet_wnids()
  root = tmp_path / "photos"
  for label in labels:
    for split in ("train", "val"):
      folder = root / split / wnids[label]
      folder.mkdir(parents=True)
      for i, path in enumerate(by_class[label]):
        shutil.copy(path, folder / f"{i}.jpg")

  checkpoint = tmp_path / "ckpt"
  model = models.get_model("resnet50", num_classes=1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  params_io.save_variables(checkpoint, variables,
                           {"arch": "resnet50", "num_classes": 1000})

  sys.path.insert(0, ROOT)
  try:
    from configs import resnet50  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  config = resnet50.get_config()
  config.model.checkpoint = str(checkpoint)
  config.model.image_size = 64
  config.data.source = "folder"
  config.data.root = str(root)
  config.search.num_steps = 2
  config.search.batch_size = 2
  config.search.concepts_per_step = 2
  config.eval.batch_size = 2
  config.report.figures = False
  # Folders of ImageNet wnids under a 1000-class network: the labels are the
  # ImageNet indices, not the folder positions.
  dataset = data_lib.get_dataset(config, cache_dir=str(tmp_path))
  assert next(dataset.eval_batches(1, 2))[1][0] == labels[1]
  assert (dataset.concept_batch([0, 1], 0, 2)[1] == [[labels[0]] * 2,
                                                      [labels[1]] * 2]).all()
  config.data.labels = "position"
  dataset = data_lib.get_dataset(config, cache_dir=str(tmp_path))
  assert next(dataset.eval_batches(1, 2))[1][0] == 1
  config.data.labels = "auto"
  workdir = tmp_path / "run"
  rows = pipeline.run(config, str(workdir))
  assert len(rows) == 1 and rows[0]["model"] == "resnet50"
  metrics = json.loads((workdir / "metrics.json").read_text())
  names = [classes.imagenet_names()[label] for label in labels]
  assert metrics["class_names"] == names
  paths = json.loads((workdir / "paths.json").read_text())
  assert [c["name"] for c in paths["concepts"]] == names
  assert len(paths["concepts"][0]["paths"][0]) == 17  # ResNet50's sites
