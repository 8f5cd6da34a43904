"""Config validation (every field, every range) and compare-mode overrides.

Each out-of-range value must be refused by ``pipeline.run`` with one
message naming the field before anything is written. The expected ranges
are typed in here from the meaning of each field (a count is positive, a
learning rate is > 0, an objective weight is >= 0, a seed seeds numpy's
generators, which refuse negative seeds), not read from ``config_lib``.
"""

import glob
import math
import os
import subprocess
import sys

import ml_collections
import pytest

from nad_jax import config_lib
from nad_jax import errors
from nad_jax import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_file(path, arg=None):
  sys.path.insert(0, ROOT)
  try:
    name = os.path.splitext(os.path.relpath(path, ROOT))[0].replace("/", ".")
    module = __import__(name, fromlist=["get_config"])
  finally:
    sys.path.pop(0)
  return module.get_config(arg)


def _demo(arg=None):
  return _config_file(os.path.join(ROOT, "configs", "demo.py"), arg)


# field -> values that must be refused (typed by hand).
OUT_OF_RANGE = {
    "seed": [-1, 2**31],
    "model.name": ["no_such_net", ""],
    "model.num_classes": [0, -3],
    "model.image_size": [0],
    "data.source": ["no_such_source"],
    "data.augment": ["random_crop"],
    "data.num_workers": [-1],
    "data.labels": ["folder"],
    "data.pipeline": ["gpu"],
    "data.cache_placement": ["disk"],
    "data.cache_max_size": [(0, 384), (288,), (288, 384, 3)],
    "data.classes": ["", "  "],
    "data.demo.seed": [-1],
    "data.demo.num_primaries": [0, 5],
    "data.demo.classes_per_primary": [0, 7],
    "data.demo.train_per_class": [0],
    "data.demo.val_per_class": [0],
    "data.demo.image_size": [4],
    "data.demo.noise": [-0.1, math.nan, math.inf],
    "objective.name": ["no_such_objective"],
    "objective.lam": [-0.5, math.nan, math.inf],
    "objective.beta": [-1.0, math.nan],
    "optim.alpha": [0.0, -0.1, math.nan, math.inf],
    "search.num_steps": [0, -1],
    "search.batch_size": [0],
    "search.concepts_per_step": [0, "many", 2.5],
    "search.memory_limit_gb": [-1.0, math.nan],
    "search.compute_dtype": ["float16"],
    "distributed.mode": ["always"],
    "distributed.num_processes": [-1],
    "distributed.process_id": [-2],
    "search.num_seeds": [0],
    "search.patience": [-1],
    "search.checkpoint_every": [-1],
    "search.log_every": [-1],
    "search.stop_after_steps": [-1],
    "eval.batch_size": [0],
    "mode": ["train"],
    "analysis.seed": [-1],
    "analysis.mask_rate": [0.0, 1.5, math.nan],
    "analysis.num_mosaics": [0],
    "analysis.mosaic_images_per_class": [0],
    "analysis.random_draws": [0],
    "analysis.permutations": [-1],
    "analysis.top_k": [0],
    "analysis.authors_top_k_classes": [0],
    "analysis.cross_max_classes": [0],
    "analysis.cross_images_per_class": [0],
    "analysis.max_images_per_class": [0],
    "eval.max_images_per_class": [0],
    "compare": [("demo_vgg", "demo_vgg"), ("no_such_net",)],
    "hparams_by_model.demo_vgg.alpha": [0.0, math.nan],
    "hparams_by_model.demo_resnet.lam": [-1.0],
    "hparams_by_model.demo_densenet.beta": [math.inf],
}
# Fields without a range: ConfigDict's types already refuse a wrong type.
NO_RANGE = {"model.checkpoint", "data.name", "data.data_dir",
            "data.manual_dir", "data.root", "data.hierarchy",
            "report.figures", "analysis.enabled", "analysis.mosaic_full_size",
            "analysis.map_classes", "analysis.images", "search.remat",
            "distributed.coordinator_address"}


def _set(config, path, value):
  *sections, leaf = path.split(".")
  node = config
  for section in sections:
    node = node[section]
  with config.unlocked():
    node[leaf] = value


CASES = [(field, value) for field, values in OUT_OF_RANGE.items()
         for value in values]


@pytest.mark.parametrize("field, value", CASES,
                         ids=[f"{f}={v!r}" for f, v in CASES])
def test_out_of_range_field_is_refused_before_writing(tmp_path, field,
                                                      value):
  config = _demo()
  _set(config, field, value)
  workdir = tmp_path / "run"
  with pytest.raises(errors.ConfigError) as info:
    pipeline.run(config, str(workdir))
  message = str(info.value)
  assert f"config.{field}" in message
  assert "\n" not in message
  assert not workdir.exists()  # nothing written, not even the directory


def test_every_field_of_every_config_has_a_rule_and_is_tested():
  files = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
  files.append(os.path.join(ROOT, "tests", "fault_config.py"))
  seen = set()
  for path in files:
    for arg in ([None, "vgg"] if path.endswith("demo.py") else [None]):
      config = _config_file(path, arg)
      for field in config_lib.flatten(config):
        if config_lib.rule_for(field) is None and field != (
            "hparams_by_model"):
          pytest.fail(f"{path}: config.{field} has no rule in "
                      f"config_lib.FIELD_RULES")
        seen.add(field)
  generic = {f.replace("demo_resnet", "demo_vgg").replace(
      "demo_densenet", "demo_vgg") for f in OUT_OF_RANGE}
  untested = sorted(
      f for f in seen
      if f not in NO_RANGE and f != "hparams_by_model" and f.replace(
          "demo_resnet", "demo_vgg").replace("demo_densenet", "demo_vgg")
      not in generic)
  assert not untested, f"fields with a rule but no out-of-range case here: "\
      f"{untested}"


def test_valid_configs_pass():
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    config_lib.validate(_config_file(path))


def test_missing_analysis_image_is_refused(tmp_path):
  config = _demo("vgg")
  config.analysis.images = str(tmp_path / "missing.png")
  with pytest.raises(errors.ConfigError, match="missing.png"):
    pipeline.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_unknown_field_is_refused_with_the_known_ones():
  config = _demo()
  with config.unlocked():
    config.search.numsteps = 10
  with pytest.raises(errors.ConfigError,
                     match=r"config.search.numsteps .*num_steps"):
    config_lib.validate(config)


@pytest.mark.parametrize("source, message", [
    ("tfds", "config.data.source='tfds' needs config.data.name"),
    ("folder", "config.data.source='folder' needs config.data.root"),
])
def test_fields_that_need_each_other(source, message):
  config = _demo("vgg")
  config.data.source = source
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.validate(config)


def test_empty_workdir_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(errors.ConfigError, match="--workdir is empty"):
    pipeline.run(_demo("vgg"), "")
  with pytest.raises(errors.ConfigError, match="--workdir is empty"):
    pipeline.run(_demo("vgg"), "  ")
  assert not os.listdir(tmp_path)


# Compare mode (configs/demo.py runs demo_vgg, demo_resnet, demo_densenet
# with alpha 0.5 and lambda 1 each from hparams_by_model).


def test_command_line_field_wins_for_every_network():
  config = _demo()
  config.optim.alpha = 0.3  # as --config.optim.alpha=0.3 does
  for name in config.compare:
    network = config_lib.network_config(config, name, {"optim.alpha"})
    assert network.optim.alpha == 0.3
    assert network.objective.lam == 1.0  # not overridden: hparams_by_model
    assert network.model.name == name
    assert network.compare == ()
    assert not network.hparams_by_model  # not what it ran with


def test_without_overrides_hparams_by_model_applies():
  config = _demo()
  with config.unlocked():
    config.hparams_by_model.demo_resnet.lam = 0.25
  vgg = config_lib.network_config(config, "demo_vgg", ())
  resnet = config_lib.network_config(config, "demo_resnet", ())
  assert (vgg.optim.alpha, vgg.objective.lam) == (0.5, 1.0)
  assert (resnet.optim.alpha, resnet.objective.lam) == (0.5, 0.25)


@pytest.mark.parametrize("overrides, message", [
    ({"model.name"}, "--config.model.name names one network"),
    ({"model.checkpoint"}, "--config.model.checkpoint names one network"),
    ({"optim.alpha", "hparams_by_model.demo_vgg.alpha"},
     "--config.optim.alpha and --config.hparams_by_model.demo_vgg.alpha"),
])
def test_contradicting_overrides_are_refused(tmp_path, overrides, message):
  with pytest.raises(errors.ConfigError, match=message):
    pipeline.run(_demo(), str(tmp_path / "run"), overrides)
  assert not (tmp_path / "run").exists()


def test_hparams_by_model_override_outside_compare_mode_is_refused(
    tmp_path):
  with pytest.raises(errors.ConfigError,
                     match=r"--config.hparams_by_model.demo_vgg.alpha has no "
                     r"effect"):
    pipeline.run(_demo("vgg"), str(tmp_path / "run"),
                 {"hparams_by_model.demo_vgg.alpha"})
  assert not (tmp_path / "run").exists()


def test_main_reports_a_config_error_in_one_line(tmp_path):
  """The command line: one ``error:`` line, exit 1, no traceback."""
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "nad_jax.main", "--config=configs/demo.py",
       f"--workdir={workdir}", "--config.optim.alpha=-0.5"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines[-1] == ("error: config.optim.alpha=-0.5 is not allowed: it "
                       "must be a finite number > 0")
  assert not workdir.exists()


def test_main_refuses_an_empty_workdir_flag(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "nad_jax.main",
       f"--config={ROOT}/configs/demo.py", "--workdir="], cwd=tmp_path,
      capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert "--workdir is empty" in proc.stderr
  assert not os.listdir(tmp_path)


def test_flatten_names_every_leaf():
  config = ml_collections.ConfigDict({"a": 1, "b": {"c": 2, "d": {}}})
  assert config_lib.flatten(config) == {"a": 1, "b.c": 2, "b.d": {}}
