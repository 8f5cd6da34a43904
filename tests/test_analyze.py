"""The analysis stage end to end on the demo: planted structure, the HTML
report in a real browser, --config.mode=analyze and comparing workdirs."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nad_jax import compare
from nad_jax import evaluate
from nad_jax import html_report
from nad_jax import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two classes of each of three primaries (round, polygons, stripes) and one
# checker class: enough for top-3, the hierarchy test and 4-class mosaics.
CLASSES = "0,1,4,5,8,9,12"


def _demo_config(variant="vgg"):
  sys.path.insert(0, ROOT)
  try:
    from configs import demo  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  config = demo.get_config(variant)
  config.data.classes = CLASSES
  config.search.num_steps = 50
  config.search.concepts_per_step = 7
  config.search.log_every = 25
  config.eval.max_images_per_class = 16
  config.analysis.num_mosaics = 40
  config.analysis.permutations = 199
  config.analysis.random_draws = 2
  config.analysis.cross_images_per_class = 8
  return config


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """One demo run shared by the tests (read-only for them). Under
  pytest-xdist every worker would build its own: the first one builds it
  in the session's shared temp root under a file lock, the others reuse
  it."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's root, shared by the workers
  workdir = root / "analyze_demo" / "demo_vgg"
  with open(root / "analyze_demo.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not (workdir / "report.html").exists():
        rows = pipeline.run(_demo_config(), str(workdir))
        assert len(rows) == 1
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return workdir


def _analysis(workdir):
  with open(workdir / "analyses.json") as file:
    return json.load(file)


def test_demo_shows_the_planted_structure(demo_run):
  analysis = _analysis(demo_run)
  hit = analysis["hit_rate"]
  # Each class's path lights up its own quadrant of a mosaic of the demo's
  # classes (objects differ in where and what is drawn) clearly more often
  # than chance and than random paths with as many units per site.
  full = hit["full_size"]
  assert full["last_sites_mean"] > 0.4
  assert full["last_sites_mean"] > full["random_last_sites_mean"] + 0.1
  authors = hit["authors"]
  assert authors["last_sites_mean"] > authors["random_last_sites_mean"] + 0.03
  assert abs(authors["random_last_sites_mean"] - 0.25) < 0.05
  # The paths' similarity follows the planted primaries.
  gap = analysis["hierarchy"]["within_minus_across"]
  assert gap["observed"] > gap["null_mean"] + 0.02
  # A path is sufficient and far better than a random one of the same size.
  ablation = analysis["ablation"]
  assert ablation["kept"]["mean"] > 0.9
  assert ablation["kept"]["mean"] > ablation["random_kept"]["mean"] + 0.5
  # Random control keeps each class's usage exactly.
  with open(demo_run / "metrics.json") as file:
    row = json.load(file)["row"]
  for site, usage in row["usage_per_site"].items():
    assert analysis["random_control"]["usage_per_site"][site] == \
        pytest.approx(usage)


def test_demo_report_has_every_figure_and_is_self_contained(demo_run):
  analysis = _analysis(demo_run)
  expected = {"ablation", "cross_class", "cross_class_predicted", "top_k",
              "permutation_tests", "hit_rate", "activation_maps",
              "activation_maps_full", "trajectory"}
  assert expected <= set(analysis["figures"])
  for file_name in list(analysis["figures"].values()) + [
      "path_similarity.png", "unit_usage.png", "precision_histogram.png"]:
    with Image.open(demo_run / file_name) as image:
      image.load()
      assert image.size[0] >= 400 and image.size[1] >= 250, file_name
  text = (demo_run / "report.html").read_text()
  sources = re.findall(r"<img [^>]*src=\"([^\"]*)\"", text)
  assert len(sources) == len(expected) + 3
  assert all(src.startswith("data:image/png;base64,") for src in sources)
  assert "<script" not in text.lower() and "<link" not in text.lower()
  assert not re.search(r"(src|href)=\"(https?:)?//", text)
  assert "@import" not in text and "url(" not in text
  # The summary gives numbers next to their controls, and what is missing.
  assert "random paths with the same number of units per site reach" in text
  assert "Paths during the search" in text
  assert "of the units changed" in text
  for line in (demo_run / "scores.csv").read_text().splitlines()[1:]:
    assert line.split(",")[0]
  markdown = (demo_run / "report.md").read_text()
  assert "## Analyses and controls" in markdown


_CHECK_IMAGES = """<script>
window.addEventListener('load', function() {
  var images = Array.from(document.images);
  var broken = images.filter(function(i) {
    return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); });
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-broken', broken.length);
});
</script>"""


def test_report_opens_in_headless_chromium(demo_run, tmp_path):
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  if chromium is None:
    pytest.skip("Chromium is not installed (Debian: apt-get install -y "
                "chromium; .ci/run installs it where apt-get is usable)")
  # A copy with a probe script: the report itself has no scripts.
  page = tmp_path / "probe.html"
  page.write_text((demo_run / "report.html").read_text().replace(
      "</body>", _CHECK_IMAGES + "</body>"))
  proc = subprocess.run(
      [chromium, "--headless", "--no-sandbox", "--disable-gpu",
       "--disable-background-networking", "--disable-component-update",
       "--disable-sync", "--no-first-run",
       f"--user-data-dir={tmp_path / 'profile'}",
       "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
      capture_output=True, text=True, timeout=180)
  match = re.search(r'data-images="(\d+)" data-broken="(\d+)"', proc.stdout)
  assert match, proc.stderr[-2000:]
  images, broken = int(match.group(1)), int(match.group(2))
  assert images == len(_analysis(demo_run)["figures"]) + 3
  assert broken == 0


def _write_trajectory(workdir, concept_ids, site_channels):
  steps = np.array([25, 50], np.int32)
  arrays = {"steps": steps, "concept_ids": np.asarray(concept_ids, np.int32)}
  for site, channels in site_channels.items():
    flips = np.zeros((len(concept_ids), 1, 2), np.int32)
    flips[:, 0, 0] = channels // 2
    flips[0, 0, 1] = 1
    arrays[f"flips/{site}"] = flips
    arrays[f"usage/{site}"] = np.full((len(concept_ids), 1, 2), 0.5,
                                      np.float32)
  np.savez(workdir / "trajectory.npz", **arrays)


def test_analyze_mode_reads_the_workdir(demo_run, tmp_path, monkeypatch):
  workdir = tmp_path / "copy"
  shutil.copytree(demo_run, workdir)
  checkpoints = sorted(os.listdir(workdir / "checkpoints"))
  with open(workdir / "paths.json") as file:
    sites = {s: n for s, n in json.load(file)["sites"].items()}
  concept_ids = [int(c) for c in CLASSES.split(",")]
  _write_trajectory(workdir, concept_ids, sites)
  (workdir / "report.html").unlink()

  def no_evaluation(*args, **kwargs):
    raise AssertionError("analyze mode must reuse metrics.json")

  monkeypatch.setattr(evaluate, "class_accuracies", no_evaluation)
  config = _demo_config()
  config.mode = "analyze"
  config.data.classes = "all"  # analyze: all concepts the workdir holds
  config.analysis.num_mosaics = 5
  config.analysis.permutations = 9
  config.analysis.mosaic_full_size = False
  rows = pipeline.run(config, str(workdir))
  assert rows[0]["num_concepts"] == len(concept_ids)
  assert sorted(os.listdir(workdir / "checkpoints")) == checkpoints
  analysis = _analysis(workdir)
  assert analysis["hit_rate"]["num_mosaics"] == 5
  assert "full_size" not in analysis["hit_rate"]
  assert analysis["trajectory"]["last_change_step"] == 50
  assert "trajectory" in analysis["figures"]
  text = (workdir / "report.html").read_text()
  assert "Paths during the search" in text
  assert "of the units changed" in text


def test_analyze_mode_errors(demo_run, tmp_path):
  config = _demo_config()
  config.mode = "analyze"
  with pytest.raises(FileNotFoundError, match="no NAD search"):
    pipeline.run(config, str(tmp_path / "empty"))
  unfinished = tmp_path / "unfinished"
  shutil.copytree(demo_run / "checkpoints", unfinished / "checkpoints")
  with pytest.raises(FileNotFoundError, match="has not finished"):
    pipeline.run(config, str(unfinished))
  other = _demo_config("resnet")
  other.mode = "analyze"
  with pytest.raises(ValueError, match="belongs to another network"):
    pipeline.run(other, str(demo_run))
  config.data.classes = "0,2"
  with pytest.raises(ValueError, match=r"concepts \[2\] were not searched"):
    pipeline.run(config, str(demo_run))
  config.mode = "sideways"
  with pytest.raises(ValueError, match="config.mode='sideways' is not "
                     "allowed: it must be one of"):
    pipeline.run(config, str(demo_run))


def test_compare_workdirs(demo_run, tmp_path):
  # A second "network": the same run under another name, with the
  # analyses left out (a run with config.analysis.enabled = False).
  other = tmp_path / "other"
  shutil.copytree(demo_run, other, ignore=shutil.ignore_patterns(
      "checkpoints", "analyses.json"))
  metrics_json = json.loads((other / "metrics.json").read_text())
  metrics_json["row"]["model"] = "other_net"
  metrics_json["row"]["interpretability"] *= 2
  (other / "metrics.json").write_text(json.dumps(metrics_json))
  out = tmp_path / "cmp"
  outputs = compare.compare_workdirs([str(demo_run), str(other)], str(out))
  text = pathlib.Path(outputs["html"]).read_text()
  assert "Interpretability vs. accuracy (paper Fig. 6)" in text
  assert "Unit usage per gate site (paper Fig. 4)" in text
  sources = re.findall(r"<img [^>]*src=\"([^\"]*)\"", text)
  assert len(sources) == 2 and all(s.startswith("data:image/png") for s in
                                   sources)
  assert "Interpretability I, highest first: other_net" in text
  rows = (out / "scores.csv").read_text().splitlines()
  assert any(r.startswith("demo_vgg,hit_rate_authors,") for r in rows)
  assert any(r.startswith("other_net,interpretability,") for r in rows)
  assert "| demo_vgg |" in (out / "report.md").read_text()
  # The command line.
  proc = subprocess.run(
      [sys.executable, "-m", "nad_jax.compare",
       f"--workdirs={demo_run},{other}", f"--out={tmp_path / 'cli'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / "cli" / "report.html").is_file()
  with pytest.raises(FileNotFoundError, match="no metrics.json"):
    compare.compare_workdirs([str(tmp_path / "nothing")], str(out))


def test_html_report_without_analyses(demo_run, tmp_path):
  workdir = tmp_path / "bare"
  shutil.copytree(demo_run, workdir, ignore=shutil.ignore_patterns(
      "checkpoints", "analyses.json"))
  path = html_report.write_network_report(str(workdir))
  text = pathlib.Path(path).read_text()
  assert "analyses and controls were not run" in text
  assert text.count("<img ") == 3
