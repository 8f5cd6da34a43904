"""analyze.analyze_network on the tiny test network: two seeds, no
hierarchy, user images; every output file and the HTML page."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from nad_jax import analyze
from nad_jax import config_lib
from nad_jax import html_report
from nad_jax import metrics
from tests import tiny


def _config(tmp_path, image_file):
  config = config_lib.base_config()
  config.model.name = "tiny"
  config.model.image_size = 8
  config.data.source = "demo"
  config.eval.batch_size = 8
  config.analysis.num_mosaics = 6
  config.analysis.permutations = 19
  config.analysis.random_draws = 2
  config.analysis.cross_images_per_class = 4
  config.analysis.images = str(image_file)
  return config


def test_analyze_network_with_two_seeds(tmp_path):
  rng = np.random.default_rng(0)
  model = tiny.TinyNet(num_classes=5)
  variables = tiny.tiny_variables(num_classes=5)
  dataset = tiny.TinyDataset(num_classes=5, per_class=6)
  concept_ids = [0, 1, 2, 3, 4]
  paths = {site: rng.random((5, 2, channels)) < 0.6
           for site, channels in model.gate_sites().items()}
  seed_paths = {site: np.swapaxes(p, 0, 1) for site, p in paths.items()}
  similarity = metrics.path_similarity(seed_paths)
  row = metrics.summary_row("tiny", similarity, metrics.unit_usage(
      seed_paths), rng.random((2, 5)), rng.random(5), steps=3)
  image_file = tmp_path / "photo.png"
  Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(
      image_file)
  config = _config(tmp_path, image_file)
  with pytest.raises(ValueError, match="config.analysis.images"):
    bad = _config(tmp_path, tmp_path / "missing.png")
    analyze.validate_config(bad)
  result = analyze.analyze_network(
      config, str(tmp_path), model, variables, dataset, concept_ids, paths,
      similarity=similarity, row=row,
      class_names=[f"class{i}" for i in concept_ids], primary_of=None,
      primary_names=None)
  # Seeds: spread of every per-seed score, and stability of the paths
  # (M between seed 0 and seed 1 of each concept, by metrics directly).
  stability = np.mean([metrics.path_similarity(
      {site: p[i] for site, p in paths.items()})[0, 1] for i in range(5)])
  assert result["seed_stability"]["mean"] == pytest.approx(stability)
  assert result["seeds"]["interpretability"]["values"] == pytest.approx(
      row["per_seed"]["interpretability"])
  assert len(result["seeds"]["hit_rate_last_sites"]["values"]) == 2
  assert "hierarchy" in result["skipped"]
  assert result["skipped"]["trajectory"].startswith("not recorded")
  # TinyNet's third site is pooled: maps only for the two spatial sites.
  assert result["hit_rate"]["authors"]["sites"] == ["site00", "site01"]
  for key in ("seed_stability", "activation_maps", "activation_maps_image0",
              "hit_rate", "ablation", "cross_class", "top_k"):
    assert (tmp_path / result["figures"][key]).is_file(), key
  stored = json.loads((tmp_path / "analyses.json").read_text())
  assert stored["scores"] == json.loads(json.dumps(stored["scores"]))
  keys = [entry["key"] for entry in stored["scores"]]
  assert "seed_stability" in keys and "hierarchy_adjusted_rand_index" not in \
      keys
  with np.load(tmp_path / "analyses.npz") as arrays:
    assert arrays["ablation/kept"].shape == (5, 2)
    assert arrays["random/similarity"].shape == (2, 5, 5)
  header = (tmp_path / "per_class.csv").read_text().splitlines()[0]
  assert header.startswith("class_id,class,original,path_kept")
  # The HTML page from what the workdir holds.
  (tmp_path / "metrics.json").write_text(json.dumps({"row": row}))
  text = pathlib.Path(html_report.write_network_report(
      str(tmp_path))).read_text()
  assert "Over the 2 seeds:" in text
  assert "Activation maps of a user-given image." in text
  assert "The search did not record its trajectory" in text
