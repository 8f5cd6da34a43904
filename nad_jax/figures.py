"""Figures of the paper, headless: cluster heatmap, unit usage, precision.

* ``similarity_heatmap``: the path similarity M with average-linkage
  dendrograms, rows and columns in dendrogram leaf order, class labels
  coloured by primary concept (paper Fig. 7).
* ``unit_usage_plot``: unit usage rate per gate site, one line per network
  (Fig. 4).
* ``precision_histogram_plot``: per-class precision in ten bins, original
  network vs. paths (Fig. 3).

Each function writes one PNG (100 dpi unless told otherwise) and returns
its path. Figures are built with ``matplotlib.figure.Figure`` directly, not
pyplot, so nothing depends on or changes the global backend and no window
ever opens. Memory: one figure of a few megapixels at a time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np
from scipy.cluster import hierarchy

from nad_jax import metrics


class HeatmapResult(NamedTuple):
  """What ``similarity_heatmap`` drew: the PNG path and the leaf order."""
  path: str
  leaf_order: np.ndarray  # concept indices, top row / left column first


def _prepare_path(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  return path


def _primary_colours(num_primaries: int) -> list:
  cmap = matplotlib.colormaps["tab10" if num_primaries <= 10 else "tab20"]
  return [cmap(index % cmap.N) for index in range(num_primaries)]


def similarity_heatmap(similarity: np.ndarray,
                       class_names: Sequence[str],
                       primary_of: Sequence[int] | None,
                       primary_names: Sequence[str] | None,
                       path: str | os.PathLike,
                       title: str = "Path similarity M",
                       dpi: int = 100) -> HeatmapResult:
  """Cluster heatmap of the path similarity (paper Fig. 7).

  Average-linkage clustering on 1 - M (``metrics.similarity_linkage``, the
  same tree ``metrics.hierarchy_recovery`` scores); rows and columns are
  reordered by the dendrogram's leaf order. A colour strip and the class
  labels show each class's primary concept, with a legend. The colour scale
  spans the off-diagonal values (the unit diagonal is clipped) so the
  structure between classes stays visible.

  Args:
    similarity: ``[K, K]`` path similarity.
    class_names: K class names.
    primary_of: K integer primary concepts (indices into ``primary_names``),
      or None for no primary colouring.
    primary_names: names of the primary concepts, or None (then "primary i").
    path: the PNG file to write.
    title: figure title.
    dpi: resolution.

  Returns:
    ``HeatmapResult(path, leaf_order)``.
  """
  similarity = np.asarray(similarity, np.float64)
  num_concepts = similarity.shape[0]
  if len(class_names) != num_concepts:
    raise ValueError(f"class_names has {len(class_names)} names, similarity "
                     f"has {num_concepts} concepts")
  if primary_of is None:
    primary_of = np.zeros(num_concepts, np.int64)
    primary_names = None
    show_primaries = False
  else:
    primary_of = np.asarray(primary_of, np.int64).reshape(-1)
    show_primaries = True
    if primary_of.shape[0] != num_concepts:
      raise ValueError(f"primary_of has {primary_of.shape[0]} entries, "
                       f"similarity has {num_concepts} concepts")
  num_primaries = int(primary_of.max()) + 1
  if primary_of.min() < 0:
    raise ValueError(f"primary_of has negative entries: {primary_of.min()}")
  if primary_names is None:
    primary_names = [f"primary {index}" for index in range(num_primaries)]
  elif len(primary_names) < num_primaries:
    raise ValueError(f"primary_of uses primary {num_primaries - 1} but only "
                     f"{len(primary_names)} primary_names are given")
  colours = _primary_colours(len(primary_names))

  linkage = metrics.similarity_linkage(similarity)
  leaf_order = np.asarray(
      hierarchy.dendrogram(linkage, no_plot=True)["leaves"], np.int64)
  ordered = similarity[np.ix_(leaf_order, leaf_order)]
  off_diagonal = similarity[~np.eye(num_concepts, dtype=bool)]
  vmin, vmax = float(off_diagonal.min()), float(off_diagonal.max())
  if vmax - vmin < 1e-9:
    vmin, vmax = 0.0, 1.0

  # Layout in inches: left dendrogram | strip | heatmap | row labels | legend.
  cell = 0.28
  heat = max(4.0, cell * num_concepts)
  margin, dendro, strip, gap = 0.25, 1.2, 0.18, 0.04
  label_space = 0.09 * max(len(name) for name in class_names) + 0.3
  legend_space = 0.08 * max(len(name) for name in primary_names) + 0.6
  title_space, colorbar_space = 0.5, 0.0
  width = margin + dendro + strip + 2 * gap + heat + label_space + \
      legend_space + margin
  height = margin + label_space + heat + strip + 2 * gap + dendro + \
      title_space + colorbar_space
  figure = Figure(figsize=(width, height), dpi=dpi)

  def axes(left, bottom, box_width, box_height):
    return figure.add_axes([left / width, bottom / height,
                            box_width / width, box_height / height])

  heat_left = margin + dendro + strip + 2 * gap
  heat_bottom = margin + label_space
  heat_ax = axes(heat_left, heat_bottom, heat, heat)
  image = heat_ax.imshow(ordered, cmap="viridis", vmin=vmin, vmax=vmax,
                         extent=(0, num_concepts, num_concepts, 0),
                         interpolation="nearest", aspect="auto")
  ticks = np.arange(num_concepts) + 0.5
  ordered_names = [class_names[index] for index in leaf_order]
  heat_ax.set_xticks(ticks)
  heat_ax.set_xticklabels(ordered_names, rotation=90, fontsize=8)
  heat_ax.set_yticks(ticks)
  heat_ax.set_yticklabels(ordered_names, fontsize=8)
  heat_ax.yaxis.tick_right()
  if show_primaries:
    for labels in (heat_ax.get_xticklabels(), heat_ax.get_yticklabels()):
      for label, index in zip(labels, leaf_order):
        label.set_color(colours[primary_of[index]])
        label.set_fontweight("bold")

  def black(_):
    return "k"

  left_ax = axes(margin, heat_bottom, dendro, heat)
  hierarchy.dendrogram(linkage, orientation="left", ax=left_ax,
                       no_labels=True, link_color_func=black)
  left_ax.set_ylim(10 * num_concepts, 0)  # first leaf at the top row
  left_ax.axis("off")
  top_ax = axes(heat_left, heat_bottom + heat + strip + 2 * gap, heat, dendro)
  hierarchy.dendrogram(linkage, orientation="top", ax=top_ax,
                       no_labels=True, link_color_func=black)
  top_ax.set_xlim(0, 10 * num_concepts)
  top_ax.axis("off")

  strip_rgb = np.array([colours[primary_of[index]][:3]
                        for index in leaf_order])
  row_strip = axes(margin + dendro + gap, heat_bottom, strip, heat)
  row_strip.imshow(strip_rgb[:, None, :], aspect="auto",
                   extent=(0, 1, num_concepts, 0), interpolation="nearest")
  row_strip.axis("off")
  col_strip = axes(heat_left, heat_bottom + heat + gap, heat, strip)
  col_strip.imshow(strip_rgb[None, :, :], aspect="auto",
                   extent=(0, num_concepts, 1, 0), interpolation="nearest")
  col_strip.axis("off")

  colorbar_ax = axes(margin, heat_bottom + heat + strip + 2 * gap + 0.2,
                     0.15, dendro - 0.3)
  colorbar = figure.colorbar(image, cax=colorbar_ax)
  colorbar.ax.tick_params(labelsize=7)
  colorbar_ax.yaxis.tick_left()
  colorbar_ax.set_title("M", fontsize=8)

  if show_primaries:
    handles = [Patch(color=colours[index], label=name)
               for index, name in enumerate(primary_names)]
    figure.legend(handles=handles, title="primary concept", fontsize=8,
                  title_fontsize=8, frameon=False, loc="upper left",
                  bbox_to_anchor=((heat_left + heat + label_space) / width,
                                  (heat_bottom + heat) / height))
  figure.suptitle(title, fontsize=11,
                  y=1 - 0.15 / height, va="top")
  path = _prepare_path(path)
  figure.savefig(path, dpi=dpi)
  return HeatmapResult(path, leaf_order)


def unit_usage_plot(usage_by_model: Mapping[str, Mapping[str, float]],
                    path: str | os.PathLike,
                    title: str = "Unit usage rate per gate site",
                    dpi: int = 100) -> str:
  """Unit usage rate per site, one line per network (paper Fig. 4).

  Args:
    usage_by_model: network name -> (site -> usage rate), sites in network
      order (``metrics.unit_usage`` output).
    path: the PNG file to write.
    title: figure title.
    dpi: resolution.

  Returns:
    ``path``.
  """
  if not usage_by_model:
    raise ValueError("usage_by_model is empty")
  most_sites = max(len(usage) for usage in usage_by_model.values())
  figure = Figure(figsize=(max(6.0, 0.35 * most_sites + 2.5), 4.0), dpi=dpi)
  ax = figure.add_subplot()
  markers = "osD^vP*X"
  for index, (model, usage) in enumerate(usage_by_model.items()):
    if not usage:
      raise ValueError(f"usage of model {model!r} has no sites")
    values = np.asarray(list(usage.values()), np.float64)
    ax.plot(np.arange(len(values)), values,
            marker=markers[index % len(markers)], markersize=4,
            label=f"{model} (mean {values.mean():.2f})")
  ax.set_xticks(np.arange(most_sites))
  ax.set_xlabel("gate site (block index, input to output)")
  ax.set_ylabel("unit usage rate")
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=11)
  figure.tight_layout()
  path = _prepare_path(path)
  figure.savefig(path, dpi=dpi)
  return path


def precision_histogram_plot(original_precision: np.ndarray,
                             path_precision: np.ndarray,
                             path: str | os.PathLike,
                             title: str = "Per-class precision",
                             dpi: int = 100) -> str:
  """Bars of the ten precision bins, original network vs. paths (Fig. 3).

  Args:
    original_precision: ``[K]`` per-class top-1 precision of the original
      network, in [0, 1].
    path_precision: ``[K]`` per-class top-1 precision with each class's
      hard path, in [0, 1].
    path: the PNG file to write.
    title: figure title.
    dpi: resolution.

  Returns:
    ``path``.
  """
  original = metrics.precision_histogram(original_precision)
  with_path = metrics.precision_histogram(path_precision)
  positions = np.arange(10)
  figure = Figure(figsize=(7.0, 4.0), dpi=dpi)
  ax = figure.add_subplot()
  ax.bar(positions - 0.2, original, width=0.4, label="original network")
  ax.bar(positions + 0.2, with_path, width=0.4, label="concept paths")
  ax.set_xticks(positions)
  ax.set_xticklabels(metrics.PRECISION_BIN_LABELS, rotation=45, ha="right",
                     rotation_mode="anchor", fontsize=8)
  ax.set_xlabel("top-1 precision (%)")
  ax.set_ylabel("number of classes")
  ax.yaxis.get_major_locator().set_params(integer=True)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=11)
  figure.tight_layout()
  path = _prepare_path(path)
  figure.savefig(path, dpi=dpi)
  return path
