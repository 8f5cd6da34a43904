"""Figures of the paper, headless: cluster heatmap, unit usage, precision.

* ``similarity_heatmap``: the path similarity M with average-linkage
  dendrograms, rows and columns in dendrogram leaf order, class labels
  coloured by primary concept (paper Fig. 7).
* ``unit_usage_plot``: unit usage rate per gate site, one line per network
  (Fig. 4).
* ``precision_histogram_plot``: per-class precision in ten bins, original
  network vs. paths (Fig. 3).
* ``activation_map_grid``: per-site activation maps of one input, the
  original network and each concept's path (Fig. 1, 5).
* ``interpretability_vs_accuracy``: I vs. original accuracy, one point per
  network, with the random-path control (Fig. 6).
* Analyses beyond the paper (``nad_jax.analyses``, ``nad_jax.probes``):
  ``hit_rate_plot``, ``ablation_plot``, ``cross_class_heatmap``,
  ``null_distribution_plot``, ``top_k_overlap_plot``,
  ``seed_stability_plot``, ``trajectory_plot``.

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


# Above this many classes the heatmap leaves the class labels out.
MAX_LABELLED_CLASSES = 120


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
  # 0.28 in per class up to 16 in (57 classes); beyond, the cells shrink
  # and above MAX_LABELLED_CLASSES the class labels are left out (the
  # colour strips still show the primaries), so 1000 classes stay a
  # figure of a few megapixels.
  cell = min(0.28, 16.0 / num_concepts)
  heat = max(4.0, cell * num_concepts)
  label_classes = num_concepts <= MAX_LABELLED_CLASSES
  label_font = 8 if cell >= 0.2 else max(4, int(cell * 40))
  margin, dendro, strip, gap = 0.25, 1.2, 0.18, 0.04
  label_space = (0.09 * max(len(name) for name in class_names) + 0.3
                 if label_classes else 0.5)
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
  if label_classes:
    heat_ax.set_xticks(ticks)
    heat_ax.set_xticklabels(ordered_names, rotation=90, fontsize=label_font)
    heat_ax.set_yticks(ticks)
    heat_ax.set_yticklabels(ordered_names, fontsize=label_font)
  else:
    heat_ax.set_xticks([])
    heat_ax.set_yticks([])
    heat_ax.set_xlabel(f"{num_concepts} classes in dendrogram order "
                       f"(names in metrics.json)", fontsize=9)
  heat_ax.yaxis.tick_right()
  if show_primaries and label_classes:
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
  line_width = min(1.0, max(0.3, 40.0 / num_concepts))
  for dendrogram_ax in (left_ax, top_ax):
    for collection in dendrogram_ax.collections:
      collection.set_linewidth(line_width)

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


def _save(figure: Figure, path: str | os.PathLike, dpi: int) -> str:
  path = _prepare_path(path)
  figure.savefig(path, dpi=dpi)
  return path


def _short(name: str, width: int = 28) -> str:
  return name if len(name) <= width else name[:width - 1] + "\u2026"


def activation_map_grid(image: np.ndarray,
                        masks: Mapping[str, np.ndarray],
                        row_labels: Sequence[str],
                        path: str | os.PathLike,
                        title: str = "Activation maps",
                        quadrant_labels: Sequence[str] | None = None,
                        dpi: int = 100) -> str:
  """Top activation pixels per site, one row per gate set (Fig. 1, 5).

  Each cell shows the input dimmed, with the site's top pixels (the
  binary map) in red over the image at full brightness; a cell whose map
  is constant (every pixel kept) says so instead.

  Args:
    image: ``[H, W, 3]`` the input for display, values in [0, 1].
    masks: site -> bool ``[G, H, W]`` top pixels per gate set.
    row_labels: G labels (e.g. "original network", "path: round/red-disc").
    path: the PNG file to write.
    title: figure title.
    quadrant_labels: for a 2x2 mosaic, the four class names (drawn on the
      input, quadrant order top-left, top-right, bottom-left, bottom-right).
    dpi: resolution.

  Returns:
    ``path``.
  """
  image = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
  sites = list(masks)
  num_rows = len(row_labels)
  for site in sites:
    if masks[site].shape[0] != num_rows:
      raise ValueError(f"masks[{site!r}] has {masks[site].shape[0]} rows, "
                       f"row_labels has {num_rows}")
  cell = 1.25
  label_width = 1.9
  width = label_width + cell * (len(sites) + 1) + 0.2
  height = cell * num_rows + 0.9
  figure = Figure(figsize=(width, height), dpi=dpi)
  red = np.array([1.0, 0.1, 0.05])
  height_px, width_px = image.shape[:2]
  for row in range(num_rows):
    for column in range(len(sites) + 1):
      ax = figure.add_axes([
          (label_width + column * cell) / width,
          1 - (0.7 + (row + 1) * cell) / height,
          (cell - 0.06) / width, (cell - 0.06) / height])
      ax.set_xticks([])
      ax.set_yticks([])
      if column == 0:
        ax.imshow(image, interpolation="nearest")
        if quadrant_labels is not None and row == 0:
          ax.axhline(height_px / 2 - 0.5, color="w", lw=0.8)
          ax.axvline(width_px / 2 - 0.5, color="w", lw=0.8)
        if row == 0:
          ax.set_title("input", fontsize=8)
        ax.set_ylabel(_short(row_labels[row], 24), fontsize=8, rotation=0,
                      ha="right", va="center")
        continue
      site = sites[column - 1]
      mask = np.asarray(masks[site][row], bool)
      cell_image = image * 0.3
      if mask.all():
        # A constant map (e.g. a path with no active unit at this site):
        # every pixel ties at the threshold; nothing to point at.
        ax.text(0.5, 0.5, "constant\nmap", transform=ax.transAxes,
                ha="center", va="center", color="w", fontsize=8)
      else:
        cell_image[mask] = 0.4 * image[mask] + 0.6 * red
      ax.imshow(cell_image, interpolation="nearest")
      if quadrant_labels is not None:
        ax.axhline(height_px / 2 - 0.5, color="w", lw=0.4, alpha=0.6)
        ax.axvline(width_px / 2 - 0.5, color="w", lw=0.4, alpha=0.6)
      if row == 0:
        ax.set_title(site, fontsize=8)
  if quadrant_labels is not None:
    text = "mosaic quadrants: " + ", ".join(
        f"{where} = {name}" for where, name in zip(
            ("top-left", "top-right", "bottom-left", "bottom-right"),
            quadrant_labels))
    figure.text(0.01, 0.01, text, fontsize=7)
  figure.suptitle(title + " (red: top pixels of the site's channel sum)",
                  fontsize=10, y=1 - 0.1 / height, va="top")
  return _save(figure, path, dpi)


def interpretability_vs_accuracy(points: Sequence[Mapping[str, float]],
                                 path: str | os.PathLike,
                                 title: str = "Interpretability vs. accuracy",
                                 dpi: int = 100) -> str:
  """I against the original network's accuracy, one point per network
  (paper Fig. 6), with each network's random-path control I where known.

  Args:
    points: dicts with ``model``, ``interpretability``,
      ``original_accuracy`` (in [0, 1]) and optionally
      ``interpretability_std`` (seeds) and ``random_interpretability``.
    path: the PNG file to write.
    title: figure title.
    dpi: resolution.

  Returns:
    ``path``.
  """
  if not points:
    raise ValueError("interpretability_vs_accuracy needs at least one point")
  figure = Figure(figsize=(6.5, 4.5), dpi=dpi)
  ax = figure.add_subplot()
  colours = matplotlib.colormaps["tab10"]
  shown_control = False
  for index, point in enumerate(points):
    colour = colours(index % 10)
    x = float(point["interpretability"])
    y = 100 * float(point["original_accuracy"])
    ax.errorbar([x], [y], xerr=[point.get("interpretability_std") or 0.0],
                fmt="o", color=colour, markersize=8, capsize=3,
                label=point["model"])
    ax.annotate(point["model"], (x, y), textcoords="offset points",
                xytext=(6, 6), fontsize=8)
    control = point.get("random_interpretability")
    if control is not None and np.isfinite(control):
      ax.plot([control], [y], marker="o", markerfacecolor="none",
              color=colour, markersize=8, linestyle="none")
      ax.plot([control, x], [y, y], color=colour, lw=0.8, alpha=0.5)
      shown_control = True
  if shown_control:  # one neutral legend entry for the hollow markers
    ax.plot([], [], marker="o", markerfacecolor="none", color="0.4",
            markersize=8, linestyle="none",
            label="random paths, same usage (hollow)")
  ax.set_xlabel("interpretability I (Eq. 12)")
  ax.set_ylabel("original top-1 accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=11)
  figure.tight_layout()
  return _save(figure, path, dpi)


def hit_rate_plot(sites: Sequence[str],
                  curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  path: str | os.PathLike, chance: float = 0.25,
                  title: str = "Hit rate on 2x2 mosaics",
                  dpi: int = 100) -> str:
  """Hit rate per site (mean +- std over mosaics) for each curve.

  Args:
    sites: the site names (x axis).
    curves: label -> ``(mean [sites], std [sites])``.
    path: the PNG file to write.
    chance: drawn as a dashed line.
    title: figure title.
    dpi: resolution.

  Returns:
    ``path``.
  """
  figure = Figure(figsize=(max(6.0, 0.4 * len(sites) + 3), 4.0), dpi=dpi)
  ax = figure.add_subplot()
  x = np.arange(len(sites))
  for index, (label, (mean, std)) in enumerate(curves.items()):
    offset = (index - (len(curves) - 1) / 2) * 0.08
    ax.errorbar(x + offset, mean, yerr=std, marker="os^D"[index % 4],
                markersize=4, capsize=2, label=label)
  ax.axhline(chance, color="k", linestyle="--", lw=1,
             label=f"chance ({chance:g})")
  ax.set_xticks(x)
  ax.set_xticklabels(sites, rotation=45, ha="right", fontsize=8)
  ax.set_xlabel("gate site")
  ax.set_ylabel("share of top pixels in own quadrant")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=11)
  figure.tight_layout()
  return _save(figure, path, dpi)


ABLATION_CONDITIONS = (
    ("original", "original network", "k", "o"),
    ("kept", "only its path kept", "tab:blue", "s"),
    ("random_kept", "random path kept (same size)", "tab:cyan", "^"),
    ("removed", "its path removed", "tab:red", "D"),
    ("random_removed", "random path removed (same size)", "tab:orange", "v"),
)


def ablation_plot(class_names: Sequence[str],
                  accuracies: Mapping[str, np.ndarray],
                  path: str | os.PathLike,
                  title: str = "Sufficiency and necessity of the paths",
                  max_classes_listed: int = 40, dpi: int = 100) -> str:
  """Per-class accuracy under each ablation (``ABLATION_CONDITIONS``).

  Up to ``max_classes_listed`` classes: one row per class, one marker per
  condition. More classes: one box per condition over classes.

  Args:
    class_names: K names.
    accuracies: condition key -> ``[K]`` accuracy in [0, 1] (seed / draw
      means).
    path: the PNG file to write.
    title: figure title.
    max_classes_listed: above this, box plots.
    dpi: resolution.

  Returns:
    ``path``.
  """
  num_classes = len(class_names)
  conditions = [c for c in ABLATION_CONDITIONS if c[0] in accuracies]
  if num_classes <= max_classes_listed:
    figure = Figure(figsize=(8.0, 1.3 + 0.28 * num_classes), dpi=dpi)
    ax = figure.add_subplot()
    y = np.arange(num_classes)
    for key, label, colour, marker in conditions:
      values = 100 * np.asarray(accuracies[key], np.float64)
      ax.plot(values, y, linestyle="none", marker=marker, color=colour,
              markersize=5, alpha=0.85,
              label=f"{label} (mean {values.mean():.1f}%)")
    ax.set_yticks(y)
    ax.set_yticklabels([_short(n, 30) for n in class_names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-2, 102)
    ax.set_xlabel("top-1 accuracy on the class's validation images (%)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12
                                                              * 16 / max(
                                                                  16,
                                                                  num_classes)),
              ncol=2, frameon=False)
  else:
    figure = Figure(figsize=(8.0, 4.5), dpi=dpi)
    ax = figure.add_subplot()
    data = [100 * np.asarray(accuracies[c[0]], np.float64) for c in conditions]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(np.arange(1, len(conditions) + 1))
    ax.set_xticklabels([c[1] for c in conditions], rotation=20, ha="right",
                       fontsize=8)
    ax.set_ylabel(f"top-1 accuracy per class (%), {num_classes} classes")
    ax.grid(alpha=0.3, axis="y")
  ax.set_title(title, fontsize=11)
  figure.tight_layout()
  return _save(figure, path, dpi)


def cross_class_heatmap(matrix: np.ndarray, class_names: Sequence[str],
                        path: str | os.PathLike,
                        title: str = "Accuracy through another class's path",
                        colorbar_label: str = "accuracy", dpi: int = 100
                        ) -> str:
  """Row c = path of class c, column d = images of class d.

  Args:
    matrix: ``[X, X]`` values in [0, 1].
    class_names: X names.
    path: the PNG file to write.
    title: figure title.
    colorbar_label: what the colour means.
    dpi: resolution.

  Returns:
    ``path``.
  """
  matrix = np.asarray(matrix, np.float64)
  num = matrix.shape[0]
  size = max(4.5, 0.3 * num + 2.5)
  figure = Figure(figsize=(size + 1.0, size), dpi=dpi)
  ax = figure.add_subplot()
  image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis",
                    interpolation="nearest")
  names = [_short(n, 24) for n in class_names]
  ax.set_xticks(np.arange(num))
  ax.set_xticklabels(names, rotation=90, fontsize=7)
  ax.set_yticks(np.arange(num))
  ax.set_yticklabels(names, fontsize=7)
  ax.set_xlabel("images of class")
  ax.set_ylabel("through the path of class")
  colorbar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  colorbar.set_label(colorbar_label, fontsize=8)
  ax.set_title(title, fontsize=10)
  figure.tight_layout()
  return _save(figure, path, dpi)


def null_distribution_plot(tests: Mapping[str, tuple[float, np.ndarray,
                                                     float]],
                           path: str | os.PathLike,
                           title: str = "Permutation tests",
                           dpi: int = 100) -> str:
  """One histogram per test: the null distribution and the observed value.

  Args:
    tests: label -> ``(observed, null [R], p_value)``.
    path: the PNG file to write.
    title: figure title.
    dpi: resolution.

  Returns:
    ``path``.
  """
  if not tests:
    raise ValueError("null_distribution_plot needs at least one test")
  figure = Figure(figsize=(3.6 * len(tests) + 0.4, 3.4), dpi=dpi)
  for index, (label, (observed, null, p_value)) in enumerate(tests.items()):
    ax = figure.add_subplot(1, len(tests), index + 1)
    null = np.asarray(null, np.float64)
    null = null[np.isfinite(null)]
    if null.size:
      ax.hist(null, bins=30, color="0.6", label=f"null ({null.size} "
              f"relabellings)")
    ax.axvline(observed, color="tab:red", lw=2,
               label=f"observed {observed:.3g} (p = {p_value:.3g})")
    ax.set_xlabel(label, fontsize=9)
    ax.set_ylabel("count" if index == 0 else "")
    ax.legend(fontsize=7, loc="upper left")
    ax.tick_params(labelsize=8)
  figure.suptitle(title, fontsize=11)
  figure.tight_layout()
  return _save(figure, path, dpi)


def top_k_overlap_plot(overlaps: Mapping[str, np.ndarray], k: int,
                       num_concepts: int, path: str | os.PathLike,
                       title: str = "Most similar paths vs. most confused "
                       "classes", dpi: int = 100) -> str:
  """Share of classes by overlap (0..k) of top-k similar and confused,
  next to chance (two random k-subsets of the other K - 1 classes:
  hypergeometric).

  Args:
    overlaps: variant label -> ``[K']`` overlap counts.
    k: the k of top-k.
    num_concepts: K (for chance).
    path: the PNG file to write.
    title: figure title.
    dpi: resolution.

  Returns:
    ``path``.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=(6.0, 3.8), dpi=dpi)
  ax = figure.add_subplot()
  values = np.arange(k + 1)
  width = 0.8 / (len(overlaps) + 1)
  for index, (label, overlap) in enumerate(overlaps.items()):
    overlap = np.asarray(overlap)
    share = np.bincount(overlap, minlength=k + 1)[:k + 1] / max(len(overlap),
                                                                1)
    ax.bar(values + (index - len(overlaps) / 2) * width, share, width,
           label=f"{label} (mean {overlap.mean():.2f})")
  chance = stats.hypergeom(num_concepts - 1, k, k).pmf(values)
  ax.bar(values + (len(overlaps) / 2) * width, chance, width, color="0.6",
         label=f"chance (mean {k * k / (num_concepts - 1):.2f})")
  ax.set_xticks(values)
  ax.set_xlabel(f"classes shared by the top-{k} similar paths and the "
                f"top-{k} confusions")
  ax.set_ylabel("share of classes")
  ax.set_ylim(0, 1.45 * max(ax.get_ylim()[1], 0.1))
  ax.legend(fontsize=8, loc="upper right")
  ax.grid(alpha=0.3, axis="y")
  ax.set_title(title, fontsize=11)
  figure.tight_layout()
  return _save(figure, path, dpi)


def seed_stability_plot(per_concept: np.ndarray, across_concepts: float,
                        path: str | os.PathLike,
                        random_level: float | None = None,
                        title: str = "Path stability across seeds",
                        dpi: int = 100) -> str:
  """Histogram of each concept's cross-seed similarity, with references.

  Args:
    per_concept: ``[N]`` mean M between a concept's seeds.
    across_concepts: mean M between different concepts (same seed).
    path: the PNG file to write.
    random_level: mean M between random same-size paths, if known.
    title: figure title.
    dpi: resolution.

  Returns:
    ``path``.
  """
  figure = Figure(figsize=(6.0, 3.8), dpi=dpi)
  ax = figure.add_subplot()
  ax.hist(np.asarray(per_concept), bins=20, range=(0, 1), color="tab:blue",
          alpha=0.8, label="one concept, two seeds")
  ax.axvline(across_concepts, color="tab:red", lw=2,
             label=f"two concepts, one seed ({across_concepts:.3f})")
  if random_level is not None and np.isfinite(random_level):
    ax.axvline(random_level, color="0.4", lw=2, linestyle="--",
               label=f"random same-size paths ({random_level:.3f})")
  ax.set_xlabel("path similarity M")
  ax.set_ylabel("number of concepts")
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=11)
  figure.tight_layout()
  return _save(figure, path, dpi)


def trajectory_plot(steps: np.ndarray,
                    flip_fraction: Mapping[str, np.ndarray],
                    usage: Mapping[str, np.ndarray],
                    path: str | os.PathLike,
                    title: str = "Paths during the search",
                    dpi: int = 100) -> str:
  """Changed units and unit usage per site against the search step.

  Args:
    steps: ``[T]`` record steps.
    flip_fraction: site -> ``[T]`` share of the site's units that changed
      since the previous record (mean over concepts and seeds).
    usage: site -> ``[T]`` unit usage rate.
    path: the PNG file to write.
    title: figure title.
    dpi: resolution.

  Returns:
    ``path``.
  """
  figure = Figure(figsize=(10.0, 4.0), dpi=dpi)
  flips_ax = figure.add_subplot(1, 2, 1)
  usage_ax = figure.add_subplot(1, 2, 2)
  cmap = matplotlib.colormaps["viridis"]
  sites = list(flip_fraction)
  for index, site in enumerate(sites):
    colour = cmap(index / max(len(sites) - 1, 1))
    flips_ax.plot(steps, 100 * np.asarray(flip_fraction[site]), color=colour,
                  marker=".", label=site)
    usage_ax.plot(steps, np.asarray(usage[site]), color=colour, marker=".",
                  label=site)
  flips_ax.set_yscale("symlog", linthresh=0.1)
  flips_ax.set_xlabel("search step")
  flips_ax.set_ylabel("units changed since previous record (%)")
  flips_ax.set_title("changed units per site", fontsize=10)
  flips_ax.grid(alpha=0.3)
  usage_ax.set_xlabel("search step")
  usage_ax.set_ylabel("unit usage rate")
  usage_ax.set_ylim(0, 1.02)
  usage_ax.set_title("unit usage per site", fontsize=10)
  usage_ax.grid(alpha=0.3)
  usage_ax.legend(fontsize=7, ncol=2 if len(sites) > 8 else 1,
                  loc="center left", bbox_to_anchor=(1.02, 0.5))
  figure.suptitle(title, fontsize=11)
  figure.tight_layout()
  return _save(figure, path, dpi)
