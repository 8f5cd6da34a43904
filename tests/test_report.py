"""Report rows from hand-computed paths; markdown table and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nad_jax import report


def _masks(sets, channels):
  out = np.zeros((len(sets), channels), bool)
  for row, members in enumerate(sets):
    out[row, list(members)] = True
  return out


# The paths of tests/test_metrics.py: M01 = 1/3, M02 = 1/6, M12 = 0;
# usage site00 = 1/3, site01 = 5/9.
PATHS = {
    "site00": _masks([{0, 1}, {1, 2}, set()], 4),
    "site01": _masks([{0, 1, 2}, {0}, {2}], 3),
}


def test_summarize_model_by_hand():
  row = report.summarize_model(
      "vgg", PATHS, path_accuracy=np.ones(3),
      original_accuracy=np.array([0.5, 0.6, 0.7]), steps=100,
      primary_of=np.array([0, 0, 1]), figures={"heatmap": "figs/h.png"})
  # v = 1/3, 1/6, 0; mu = 1/6; I = ((1/6)^2 + 0 + (1/6)^2) / 3 = 1/54.
  assert row["interpretability"] == pytest.approx(1 / 54)
  assert row["interpretability_std"] == 0.0
  assert row["mean_path_accuracy"] == 1.0
  assert row["original_accuracy"] == pytest.approx(0.6)
  assert row["mean_usage"] == pytest.approx((1 / 3 + 5 / 9) / 2)
  assert row["usage_per_site"]["site01"] == pytest.approx(5 / 9)
  # Distances 1 - M: d01 = 2/3, d02 = 5/6, d12 = 1. Average linkage merges
  # {0,1} at 2/3, then {0,1}+{2} at (5/6 + 1)/2 = 11/12. Cut into 2 clusters
  # = {0,1},{2} = the primaries -> ARI 1; cophenetic (2/3, 11/12, 11/12) is
  # affine in planted (0, 1, 1) -> r = 1.
  assert row["adjusted_rand_index"] == pytest.approx(1.0)
  assert row["cophenetic_correlation"] == pytest.approx(1.0)
  assert row["within_primary_similarity"] == pytest.approx(1 / 3)
  assert row["across_primary_similarity"] == pytest.approx(1 / 12)
  assert (row["num_concepts"], row["num_seeds"], row["steps"],
          row["num_primaries"]) == (3, 1, 100, 2)


def test_summarize_model_averages_seeds():
  swapped = {site: masks[[0, 2, 1]] for site, masks in PATHS.items()}
  stacked = {site: np.stack([PATHS[site], swapped[site]]) for site in PATHS}
  accuracy = np.array([[1.0, 1.0, 1.0], [1.0, 0.5, 1.0]])
  row = report.summarize_model("net", stacked, accuracy, np.ones(3), steps=5)
  # Seed 0: I = 1/54 = 12/648. Seed 1: M01 = 1/6, M02 = 1/3, M12 = 0 and
  # a = (1, .5, 1): v = 1/12, 1/3, 0 = (3, 12, 0)/36, mu = 5/36,
  # I = (4 + 49 + 25) / 1296 / 3 = 13/648. Mean 25/1296, std 1/1296.
  assert row["num_seeds"] == 2
  assert row["interpretability"] == pytest.approx(25 / 1296)
  assert row["interpretability_std"] == pytest.approx(1 / 1296)
  assert row["mean_path_accuracy"] == pytest.approx(5.5 / 6)
  assert np.isnan(row["adjusted_rand_index"])  # no primaries given


def test_summarize_model_bad_shapes():
  with pytest.raises(ValueError, match="path_accuracy of model 'x'"):
    report.summarize_model("x", PATHS, np.ones(4), np.ones(3), steps=1)
  with pytest.raises(ValueError, match="original_accuracy of model 'x'"):
    report.summarize_model("x", PATHS, np.ones(3), np.ones(2), steps=1)


def _rows(figure_dir):
  return [
      {"model": "vgg", "num_concepts": 16, "num_seeds": 1, "steps": 200,
       "interpretability": 0.012, "interpretability_std": 0.0,
       "mean_path_accuracy": 0.95, "original_accuracy": 0.9,
       "mean_usage": 0.41, "usage_per_site": {"site00": 0.5, "site01": 0.32},
       "cophenetic_correlation": 0.8, "adjusted_rand_index": 1.0,
       "within_primary_similarity": 0.6, "across_primary_similarity": 0.3,
       "num_primaries": 4,
       "figures": {"heatmap": str(figure_dir / "vgg_heatmap.png")}},
      {"model": "resnet", "num_concepts": 16, "num_seeds": 1, "steps": 200,
       "interpretability": 0.003, "interpretability_std": 0.0,
       "mean_path_accuracy": 0.8, "original_accuracy": 0.92,
       "mean_usage": 0.2, "usage_per_site": {"site00": 0.3},
       "cophenetic_correlation": 0.1, "adjusted_rand_index": 0.05,
       "within_primary_similarity": 0.31, "across_primary_similarity": 0.3,
       "num_primaries": 4, "figures": {}},
  ]


def test_write_report_markdown_and_json_round_trip(tmp_path):
  # Figure paths are as the figure functions return them (here absolute);
  # the report links them relative to the markdown file.
  rows = _rows(tmp_path / "figs")
  path_md, path_json = report.write_report(
      rows, tmp_path / "report.md", tmp_path / "metrics.json",
      extra_md="Run on the demo data.")
  text = open(path_md).read()
  lines = text.splitlines()
  header = [line for line in lines if line.startswith("| network |")]
  assert len(header) == 1
  assert "I (Eq. 12)" in header[0] and "ARI" in header[0]
  table_rows = [line for line in lines
                if line.startswith("| ") and not line.startswith("| network")]
  assert len(table_rows) == 2
  assert table_rows[0].startswith("| vgg | 16 | 1 | 200 | 0.012 | 95.0% | "
                                  "90.0% |")
  assert "vgg (0.012), resnet (0.003)" in text
  assert "vgg is the most interpretable" in text
  assert "recovered (ARI > 0.5) by clustering the path similarity of: vgg" \
      in text
  assert "Not recovered (ARI <= 0.5): resnet" in text
  assert "at least the original network's accuracy for: vgg" in text
  assert "below the original network's for: resnet" in text
  assert "[heatmap](figs/vgg_heatmap.png)" in text
  assert text.rstrip().endswith("Run on the demo data.")
  loaded = json.load(open(path_json))
  assert loaded["rows"] == rows
  assert "interpretability" in loaded["columns"]


def test_write_report_missing_values(tmp_path):
  rows = [{"model": "only", "interpretability": 0.5,
           "adjusted_rand_index": float("nan"), "num_seeds": 3,
           "interpretability_std": 0.1}]
  path_md, path_json = report.write_report(rows, tmp_path / "r.md",
                                           tmp_path / "r.json")
  text = open(path_md).read()
  assert "| only | n/a | 3 | n/a | 0.5 ± 0.1 |" in text
  assert "one network, so no ranking" in text
  assert json.load(open(path_json))["rows"][0]["adjusted_rand_index"] is None


def test_write_report_bad_rows(tmp_path):
  with pytest.raises(ValueError, match="at least one row"):
    report.write_report([], tmp_path / "r.md", tmp_path / "r.json")
  with pytest.raises(ValueError, match="row 0 has no 'model'"):
    report.write_report([{"I": 1}], tmp_path / "r.md", tmp_path / "r.json")
  assert not (tmp_path / "r.md").exists()
