"""End to end: ``python -m nad_jax.main`` on a tiny demo config, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import config_flags  # pylint: disable=unused-import

from nad_jax import checkpoint
from nad_jax import errors
from nad_jax import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo_config(variant="vgg", **search):
  sys.path.insert(0, ROOT)
  try:
    from configs import demo  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  config = demo.get_config(variant)
  config.data.classes = "0,1,4,5"
  config.search.num_steps = 3
  config.search.concepts_per_step = 4
  config.search.log_every = 1
  config.eval.max_images_per_class = 8
  config.report.figures = False
  config.analysis.enabled = False  # tests/test_analyze.py covers them
  config.search.update(search)
  return config


def test_main_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "nad_jax.main",
         "--config=configs/demo.py:vgg", f"--workdir={workdir}",
         "--config.search.num_steps=3", "--config.data.classes=0,1,4,5",
         "--config.search.concepts_per_step=2",
         "--config.eval.max_images_per_class=8",
         "--config.analysis.enabled=False"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Chunk 2/2" in proc.stderr  # progress output
  for name in ("paths.npz", "paths.json", "metrics.json", "report.md",
               "report.json", "path_similarity.png", "unit_usage.png",
               "precision_histogram.png"):
    assert (workdir / name).is_file(), name
  exported = np.load(workdir / "paths.npz")
  np.testing.assert_array_equal(exported["concept_ids"], [0, 1, 4, 5])
  paths, ids = checkpoint.load_paths(workdir, [4, 0])
  np.testing.assert_array_equal(ids, [4, 0])
  for site, p in paths.items():
    np.testing.assert_array_equal(p, exported[f"path/{site}"][[2, 0]])
  report = (workdir / "report.md").read_text()
  assert "| demo_vgg |" in report
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert len(metrics["original_accuracy"]) == 4
  assert metrics["steps_done"] == [3, 3, 3, 3]


@pytest.mark.parametrize("field, value, message", [
    ("model.name", "no_such_net", "config.model.name='no_such_net' is not "
     "allowed: it must be one of .*'demo_vgg'"),
    ("objective.name", "no_such_objective",
     "config.objective.name='no_such_objective' is not allowed"),
    ("search.num_steps", 0, "config.search.num_steps=0 is not allowed: it "
     "must be a positive integer"),
    ("data.classes", "0,99", "99"),
])
def test_bad_config_is_refused_before_writing(tmp_path, field, value,
                                              message):
  config = _demo_config()
  section, key = field.split(".")
  config[section][key] = value
  workdir = tmp_path / "run"
  with pytest.raises(errors.UserError, match=message):
    pipeline.run(config, str(workdir))
  assert not (workdir / "checkpoints").exists()


def test_workdir_of_another_model_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  pipeline.run(_demo_config("vgg", num_steps=1), workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(ValueError, match="different search.*demo_resnet"):
    pipeline.run(_demo_config("resnet", num_steps=1), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_unknown_demo_variant():
  with pytest.raises(ValueError, match="unknown variant 'vgg19'"):
    _demo_config("vgg19")


def test_classes_of_the_hierarchy():
  from nad_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  config = _demo_config()
  config.data.classes = "hierarchy"
  dataset = data_lib.get_dataset(config, cache_dir="")
  ids = data_lib.selected_classes(config, dataset)
  # The demo's 4 primaries x 4 classes, primary by primary.
  assert sorted(ids) == list(range(16))
  assert [dataset.class_names[i].split("/")[0] for i in ids[:4]] == [
      "round"] * 4
