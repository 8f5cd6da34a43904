"""The embedded demo dataset: procedurally generated images with a planted
two-level concept hierarchy, so NAD can be tried on a laptop with no data.

Every class (a *secondary* concept) belongs to one *primary* concept, a
family of images that share a visual trait:

* ``round``: a filled disc (slightly elliptical); the secondaries differ in
  the disc's colour (hues spread evenly round the colour wheel):
  ``round/red-disc``, ``round/lime-disc``, ...
* ``polygons``: a straight-edged shape of any colour with a dark outline,
  randomly rotated; the
  secondaries differ in the shape: ``polygons/triangle``,
  ``polygons/square``, ``polygons/star``, ``polygons/cross``, then pentagon
  and hexagon.
* ``stripes``: a square patch of two-tone stripes; the secondaries differ in
  the stripes' orientation: ``stripes/0deg``, ``stripes/45deg``, ...
* ``checker``: a square checkerboard patch, randomly rotated; the
  secondaries differ in the number of cells per side: ``checker/2x2``, ...

Every image has a random position, scale, colour jitter, a random smooth
background and pixel noise (std ``noise``), so some secondaries of one
primary (the polygon shapes, checkers of 4 and 5 cells) are confusable and
the demo networks reach 93-97%, not 100%. Images are ``[H, W, 3] float32``
normalised with a fixed mean 0.45 and std 0.25 per channel (``PIXEL_MEAN``
/ ``PIXEL_STD``, close to the default dataset's statistics; raw pixels lie
in [0, 1]).

The images of a class depend only on ``(seed, split, class_id)``,
``classes_per_primary`` (which spreads the variants), ``image_size`` and
``noise``, not on how many other images are generated; the search's batch
order (:func:`nad_jax.data.base.sample_indices`) uses ``order_seed``.
Everything is generated at construction with vectorised numpy (about 2 s
for the defaults on one core).

Memory: the whole dataset is held in memory,
``num_classes * (train_per_class + val_per_class) * H * W * 3 * 4`` bytes,
113 MB for the defaults (16 classes x 576 images of 32x32).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
from absl import logging

from nad_jax import errors
from nad_jax.data import base

PRIMARIES = ("round", "polygons", "stripes", "checker")
MAX_CLASSES_PER_PRIMARY = 6
SPLITS = ("train", "val")
# Fixed per-channel normalisation: the train-split statistics of the default
# dataset (seed 0, noise 0.14), rounded. Fixed so that an image does not
# depend on how many other images were generated.
PIXEL_MEAN = (0.45, 0.45, 0.45)
PIXEL_STD = (0.25, 0.25, 0.25)

_HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "spring", "cyan",
              "azure", "blue", "violet", "magenta", "rose")  # every 30 deg
_POLYGON_SHAPES = ("triangle", "square", "star", "cross", "pentagon",
                   "hexagon")
_POLYGON_SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}


def secondary_name(primary: str, variant: int, classes_per_primary: int
                   ) -> str:
  """The readable name of variant ``variant`` of primary concept ``primary``."""
  if primary == "round":
    hue = 360.0 * variant / classes_per_primary
    return f"round/{_HUE_NAMES[int(round(hue / 30.0)) % 12]}-disc"
  if primary == "polygons":
    return f"polygons/{_POLYGON_SHAPES[variant]}"
  if primary == "stripes":
    angle = 180.0 * variant / classes_per_primary
    return f"stripes/{angle:g}deg"
  if primary == "checker":
    cells = 2 + variant
    return f"checker/{cells}x{cells}"
  raise ValueError(f"unknown demo primary concept {primary!r}; known: "
                   f"{PRIMARIES}")


def _hsv_to_rgb(hue: np.ndarray, sat: np.ndarray, val: np.ndarray
                ) -> np.ndarray:
  """Vectorised HSV -> RGB; ``hue`` in turns ([0, 1)), returns ``[..., 3]``."""
  k = (np.stack([5.0, 3.0, 1.0], -1) + (hue[..., None] % 1.0) * 6.0) % 6.0
  weight = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
  return val[..., None] * (1.0 - sat[..., None] * weight)


def _render_class(primary: str, variant: int, classes_per_primary: int,
                  num: int, image_size: int, noise: float,
                  rng: np.random.Generator) -> np.ndarray:
  """``num`` raw images ``[num, S, S, 3]`` in [0, 1] of one class."""
  size = image_size
  pixel = 2.0 / size  # one pixel in the [-1, 1] image coordinates
  grid = (np.arange(size, dtype=np.float32) + 0.5) * pixel - 1.0
  y = grid[None, :, None]
  x = grid[None, None, :]

  def per_image(low, high):
    return rng.uniform(low, high, (num, 1, 1)).astype(np.float32)

  # Object placement: centre, radius (in image coordinates) and rotation.
  centre_x, centre_y = per_image(-0.35, 0.35), per_image(-0.35, 0.35)
  radius = per_image(0.45, 0.7)
  rotation = per_image(0.0, 2.0 * np.pi)
  dx, dy = x - centre_x, y - centre_y
  u = (np.cos(rotation) * dx + np.sin(rotation) * dy) / radius
  v = (-np.sin(rotation) * dx + np.cos(rotation) * dy) / radius
  edge = pixel / radius  # one pixel in the object's units

  def soft_inside(distance, boundary):
    return np.clip(0.5 + (boundary - distance) / edge, 0.0, 1.0)

  def random_colour(hue):
    sat = rng.uniform(0.55, 1.0, (num, 1, 1))
    val = rng.uniform(0.55, 1.0, (num, 1, 1))
    return _hsv_to_rgb(hue, sat, val)

  def two_tone(pattern):
    hue = rng.uniform(0.0, 1.0, (num, 1, 1))
    light = _hsv_to_rgb(hue, rng.uniform(0.1, 0.5, (num, 1, 1)),
                        rng.uniform(0.75, 1.0, (num, 1, 1)))
    dark = _hsv_to_rgb(hue + 0.5, rng.uniform(0.5, 1.0, (num, 1, 1)),
                       rng.uniform(0.1, 0.45, (num, 1, 1)))
    return light + (dark - light) * pattern[..., None]

  square = np.maximum(np.abs(u), np.abs(v))
  if primary == "round":
    aspect = per_image(0.8, 1.25)
    mask = soft_inside(np.hypot(u * aspect, v / aspect), 1.0)
    hue = (variant / classes_per_primary
           + rng.normal(0.0, 0.025, (num, 1, 1)))
    foreground = random_colour(hue)
  elif primary == "polygons":
    shape = _POLYGON_SHAPES[variant]
    if shape == "star":  # five points, inner radius 0.45
      theta = np.arctan2(v, u)
      distance = np.hypot(u, v)
      boundary = 0.45 + 0.6 * ((1.0 + np.cos(5.0 * theta)) / 2.0) ** 3
    elif shape == "cross":  # a plus sign with arms 0.6 wide
      distance = np.minimum(
          np.maximum(np.abs(u) - 0.3, np.abs(v) - 1.0),
          np.maximum(np.abs(v) - 0.3, np.abs(u) - 1.0))
      boundary = 0.0
    else:
      sides = _POLYGON_SIDES[shape]
      angles = 2.0 * np.pi * np.arange(sides) / sides
      distance = np.max(u[..., None] * np.cos(angles)
                        + v[..., None] * np.sin(angles), axis=-1)
      # Scale the circumradius so that all polygons cover a similar area.
      circumradius = np.sqrt(np.pi / (0.5 * sides *
                                      np.sin(2 * np.pi / sides)))
      boundary = np.cos(np.pi / sides) * circumradius * 0.9
    # Any fill colour, with a dark outline about 1.5 pixels wide.
    mask = soft_inside(distance, boundary)
    fill = soft_inside(distance, boundary - 1.5 * edge)
    outline = _hsv_to_rgb(rng.uniform(0.0, 1.0, (num, 1, 1)),
                          rng.uniform(0.0, 0.5, (num, 1, 1)),
                          rng.uniform(0.0, 0.2, (num, 1, 1)))
    foreground = outline + (random_colour(rng.uniform(0.0, 1.0, (num, 1, 1)))
                            - outline) * fill[..., None]
  elif primary == "stripes":
    mask = soft_inside(square, 0.9)
    angle = (np.pi * variant / classes_per_primary
             + rng.normal(0.0, np.deg2rad(5.0), (num, 1, 1)))
    period = per_image(5.0, 7.0) * pixel
    phase = per_image(0.0, 2.0 * np.pi)
    wave = np.cos(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period
                  + phase)
    foreground = two_tone(0.5 + 0.5 * np.tanh(3.0 * wave))
  elif primary == "checker":
    mask = soft_inside(square, 0.9)
    cells = 2 + variant
    wave = (np.sin(np.pi * cells * (u / 0.9 + 1.0) / 2.0)
            * np.sin(np.pi * cells * (v / 0.9 + 1.0) / 2.0))
    foreground = two_tone(0.5 + 0.5 * np.tanh(4.0 * wave))
  else:
    raise ValueError(f"unknown demo primary concept {primary!r}")

  # Background: a random muted colour with a linear gradient.
  background_colour = _hsv_to_rgb(rng.uniform(0.0, 1.0, (num, 1, 1)),
                                  rng.uniform(0.0, 0.35, (num, 1, 1)),
                                  rng.uniform(0.25, 0.75, (num, 1, 1)))
  gradient_angle = per_image(0.0, 2.0 * np.pi)
  gradient = 0.2 * (x * np.cos(gradient_angle) + y * np.sin(gradient_angle))
  background = background_colour + gradient[..., None]

  images = background + (foreground - background) * mask[..., None]
  images = images * rng.uniform(0.85, 1.15, (num, 1, 1, 3))  # colour jitter
  images = images + rng.normal(0.0, noise, images.shape)
  return np.clip(images, 0.0, 1.0).astype(np.float32)


class DemoDataset:
  """The demo's concept dataset (see the module docstring).

  Implements the ``ConceptDataset`` interface of ``nad_jax.data.base``.

  Attributes:
    class_names: ``'primary/secondary'`` names, index = class id; the classes
      of primary p are ids ``p * classes_per_primary ...``.
    hierarchy: primary concept -> its class ids.
    aliases: none (``{}``); wnids, label_of: ``None``.
    skipped_files: images left out for a non-finite value, named
      ``demo/<split>/<class id>/<index>`` (none unless the arrays were
      changed after generation).
    mean, std: the per-channel normalisation (``PIXEL_MEAN``, ``PIXEL_STD``).
  """

  def __init__(self, seed: int = 0, classes_per_primary: int = 4,
               num_primaries: int = 4, train_per_class: int = 512,
               val_per_class: int = 64, image_size: int = 32,
               noise: float = 0.14, order_seed: int | None = None):
    """Generates the dataset.

    Args:
      seed: seeds the images (the shipped demo weights use seed 0).
      classes_per_primary: secondary classes per primary concept (1..6).
      num_primaries: primary concepts (1..4), taken in the order of
        ``PRIMARIES``.
      train_per_class: train images per class.
      val_per_class: val images per class.
      image_size: height and width of the images.
      noise: std of the pixel noise (raw pixels in [0, 1]).
      order_seed: seeds the search's batch order (``concept_batch``);
        defaults to ``seed``.
    """
    if not 1 <= num_primaries <= len(PRIMARIES):
      raise ValueError(f"num_primaries must be in 1..{len(PRIMARIES)} "
                       f"({PRIMARIES}), got {num_primaries}")
    if not 1 <= classes_per_primary <= MAX_CLASSES_PER_PRIMARY:
      raise ValueError(f"classes_per_primary must be in "
                       f"1..{MAX_CLASSES_PER_PRIMARY}, got "
                       f"{classes_per_primary}")
    for name, value in (("train_per_class", train_per_class),
                        ("val_per_class", val_per_class)):
      if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    if image_size < 8:
      raise ValueError(f"image_size must be at least 8, got {image_size}")
    self.seed = int(seed)
    self.noise = float(noise)
    self.train_per_class = int(train_per_class)
    self.val_per_class = int(val_per_class)
    self.order_seed = self.seed if order_seed is None else int(order_seed)
    self.image_size = int(image_size)
    self.classes_per_primary = int(classes_per_primary)
    self.primaries = list(PRIMARIES[:num_primaries])
    self.class_names = [
        secondary_name(primary, variant, classes_per_primary)
        for primary in self.primaries for variant in range(classes_per_primary)
    ]
    self.num_classes = len(self.class_names)
    self.hierarchy = {
        primary: list(range(p * classes_per_primary,
                            (p + 1) * classes_per_primary))
        for p, primary in enumerate(self.primaries)
    }
    self.aliases: dict[str, int] = {}
    self.wnids: list[str] | None = None
    self.label_of: np.ndarray | None = None  # labels are the class ids
    self.skipped_files: list[str] = []
    self._skipped: set[tuple[str, int, int]] = set()
    counts = {"train": train_per_class, "val": val_per_class}
    raw = {}
    for split_index, split in enumerate(SPLITS):
      raw[split] = np.stack([
          _render_class(self.primaries[class_id // classes_per_primary],
                        class_id % classes_per_primary, classes_per_primary,
                        counts[split], self.image_size, noise,
                        np.random.default_rng([self.seed, split_index,
                                               class_id]))
          for class_id in range(self.num_classes)
      ])
    self.mean = np.asarray(PIXEL_MEAN, np.float32)
    self.std = np.asarray(PIXEL_STD, np.float32)
    # [num_classes, images_per_class, H, W, 3], normalised.
    self._images = {split: (images - self.mean) / self.std
                    for split, images in raw.items()}

  def generation_params(self) -> dict[str, int | float]:
    """The parameters that determine the images (recorded with weights)."""
    return {"seed": self.seed, "num_primaries": len(self.primaries),
            "classes_per_primary": self.classes_per_primary,
            "train_per_class": self.train_per_class,
            "val_per_class": self.val_per_class,
            "image_size": self.image_size, "noise": self.noise}

  def _split(self, split: str) -> np.ndarray:
    if split not in self._images:
      raise ValueError(f"unknown split {split!r}; the demo dataset has "
                       f"{list(SPLITS)}")
    return self._images[split]

  def num_images(self, split: str, class_id: int) -> int:
    """Images of class ``class_id`` in ``split``."""
    base.check_class_ids([class_id], self.num_classes)
    return int(self._split(split).shape[1])

  def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole split: ``images [N, H, W, 3]`` and ``labels [N] int32``,
    class by class."""
    images = self._split(split)
    num_classes, per_class = images.shape[:2]
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    return images.reshape((-1,) + images.shape[2:]), labels

  def train_images(self, class_id: int) -> np.ndarray:
    """All train images of a class, ``[N, H, W, 3] float32`` normalised (a
    view; the decode-once cache of the device pipeline reads it)."""
    base.check_class_ids([class_id], self.num_classes)
    return self._images["train"][int(class_id)]

  def concept_batch(self, class_ids: Sequence[int], step: int,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The search's train batch for one step: ``[K, B, H, W, 3]``, ``[K, B]``.

    Row k holds images of ``class_ids[k]`` only, picked by
    :func:`nad_jax.data.base.sample_indices` with ``order_seed``.
    """
    base.check_class_ids(class_ids, self.num_classes)
    if batch_size < 1:
      raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    train = self._images["train"]
    count = train.shape[1]
    indices = np.stack([
        base.sample_indices(count, self.order_seed, int(class_id), step,
                            batch_size) for class_id in class_ids])
    images = train[np.asarray(class_ids)[:, None], indices]
    finite = np.isfinite(images).all(axis=(2, 3, 4))
    for k, b in zip(*np.nonzero(~finite)):
      # Like an unreadable file: the next finite image of the class.
      class_id = int(class_ids[k])
      for offset in range(count):
        index = (int(indices[k, b]) + offset) % count
        if base.is_finite_image(train[class_id, index]):
          images[k, b] = train[class_id, index]
          break
        self.skip("train", class_id, index)
      else:
        raise errors.DataError(
            f"demo class {class_id} {self.class_names[class_id]!r} has no "
            f"finite train image")
    labels = np.repeat(np.asarray(class_ids, np.int32)[:, None], batch_size,
                       axis=1)
    return images, labels

  def skip(self, split: str, class_id: int, index: int,
           reason: str = "non-finite pixel values") -> None:
    """Records an image as skipped (once) and logs it (the decode-once
    cache of the device pipeline calls it too)."""
    if (split, class_id, index) in self._skipped:
      return
    self._skipped.add((split, class_id, index))
    name = f"demo/{split}/{class_id}/{index}"
    self.skipped_files.append(name)
    logging.warning("skipping image %s (class %d %r): %s", name, class_id,
                    self.class_names[class_id], reason)

  def eval_batches(self, class_id: int, batch_size: int,
                   max_images: int | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The val images of ``class_id`` in fixed order, ``batch_size`` at a time
    (the last batch may be smaller)."""
    base.check_class_ids([class_id], self.num_classes)
    if batch_size < 1:
      raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    images = self._images["val"][class_id]
    if max_images is not None:
      images = images[:max_images]
    for start in range(0, len(images), batch_size):
      batch = images[start:start + batch_size]
      finite = np.isfinite(batch).all(axis=(1, 2, 3))
      for b in np.flatnonzero(~finite):
        self.skip("val", int(class_id), start + int(b))
      batch = batch[finite]
      if len(batch):
        yield batch, np.full(len(batch), class_id, np.int32)


def demo_data_config() -> ml_collections.ConfigDict:
  """The defaults of ``config.data.demo`` (see :func:`build_demo_dataset`)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_primaries = 4
  config.classes_per_primary = 4
  config.train_per_class = 512
  config.val_per_class = 64
  config.image_size = 32
  config.noise = 0.14
  return config


def build_demo_dataset(config: ml_collections.ConfigDict,
                       cache_dir: str | None = None) -> DemoDataset:
  """Builds the demo dataset from an experiment config.

  The signature fits ``nad_jax.data.DATASET_BUILDERS``; ``cache_dir`` is
  ignored (the images are regenerated in about 2 s).

  Reads ``config.data.demo`` (fields of :func:`demo_data_config`: ``seed``
  seeds the images, 0 for the shipped weights; ``num_primaries``,
  ``classes_per_primary``, ``train_per_class``, ``val_per_class``,
  ``image_size``, ``noise``), ``config.seed`` (the search's batch order) and
  ``config.model.image_size``, which must equal the demo's image size.
  Missing ``config.data.demo`` fields take the defaults.
  """
  del cache_dir
  demo = demo_data_config()
  if "demo" in config.data:
    unknown = sorted(set(config.data.demo.keys()) - set(demo.keys()))
    if unknown:
      raise ValueError(f"unknown config.data.demo fields {unknown}; known: "
                       f"{sorted(demo.keys())}")
    demo.update(config.data.demo)
  if config.data.get("augment", "none") != "none":
    raise ValueError(f"config.data.augment={config.data.augment!r}: the demo "
                     f"dataset has no augmentation, set it to 'none'")
  if int(config.model.image_size) != int(demo.image_size):
    raise ValueError(
        f"config.model.image_size={config.model.image_size} but the demo "
        f"images are {demo.image_size}x{demo.image_size} "
        f"(config.data.demo.image_size); set both to the same value")
  return DemoDataset(seed=demo.seed,
                     classes_per_primary=demo.classes_per_primary,
                     num_primaries=demo.num_primaries,
                     train_per_class=demo.train_per_class,
                     val_per_class=demo.val_per_class,
                     image_size=demo.image_size, noise=demo.noise,
                     order_seed=config.seed)
