"""Search-time augmentation on the accelerator, inside the jitted step.

The device twin of :func:`nad_jax.data.preprocess.augment_transform`:
``RandomResizedCrop(scale 0.08-1.25, ratio 3/4-4/3)`` with torchvision's
ten-tries-then-centred-fallback rule, a horizontal flip with probability
1/2, and ImageNet normalisation, all drawn from a JAX key and computed with
``jax.numpy``, so they run under ``jit`` and ``vmap`` (one call per image,
vmapped over the batch and over concepts).

Crop boxes are drawn in the *original* image's pixel coordinates, exactly as
torchvision's ``get_params`` draws them; the pixels come from the stored
copy in the decode-once cache (:mod:`nad_jax.data.decode_cache`), which may
be a downscaled and transposed copy of the original (the box is mapped onto
it). The resize is ``jax.image.scale_and_translate`` with the antialiased
triangle ("linear") kernel, PIL's ``BILINEAR`` filter. PIL crops first and
then resizes, so its kernel never sees pixels outside the box; here the
whole stored canvas is resampled, so the box is applied as a coverage mask
and the result divided by the resampled mask (normalised convolution): for
an undownscaled image this is PIL's clipped, renormalised kernel exactly,
up to PIL's 8-bit fixed-point rounding. The result is rounded to the 8-bit
grid like PIL's output, then normalised.

Keys: :func:`batch_key` derives one key per (seed, class id, step), so a
resumed search draws the same boxes as an uninterrupted one.

Cost: per image one float32 copy of the stored canvas (4 bytes per stored
pixel and channel, e.g. 1.3 MB for 288x384) plus two small weight matrices;
about ``2 * S * Hc * Wc * 3 + 2 * S * S * Hc * 3`` FLOPs (0.3 GFLOP at
S=224 on a 288x384 canvas), under 1% of one VGG16 search step per image.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from nad_jax.data import preprocess

# Folded into the seed so these keys never equal the gate initialisation's.
_AUGMENT_STREAM = 0x5EA2C4
# Matmul precision of the resize. HIGHEST (float32) keeps the crops within
# 2 levels of PIL's; on GPUs DEFAULT (TF32) is several times cheaper and
# rounds about a quarter of a level differently (read at trace time;
# benchmarks/bench_device_data.py times both).
RESIZE_PRECISION = jax.lax.Precision.HIGHEST


def batch_key(seed: int | jax.Array, class_id: int | jax.Array,
              step: int | jax.Array) -> jax.Array:
  """The augmentation key of one concept's batch at one search step."""
  key = jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM)
  return jax.random.fold_in(jax.random.fold_in(key, class_id), step)


def _box_from_uniforms(uniforms: jax.Array, height: jax.Array,
                       width: jax.Array, scale: tuple[float, float],
                       ratio: tuple[float, float], tries: int) -> jax.Array:
  """:func:`rrc_box` from ``2 * tries + 2`` uniform [0, 1) numbers."""
  height = jnp.asarray(height, jnp.int32)
  width = jnp.asarray(width, jnp.int32)
  fheight = height.astype(jnp.float32)
  fwidth = width.astype(jnp.float32)
  target_area = fheight * fwidth * (
      scale[0] + (scale[1] - scale[0]) * uniforms[:tries])
  log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_low + (log_high - log_low)
                   * uniforms[tries:2 * tries])
  # jnp.round rounds half to even, as Python's round() in torchvision.
  w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(fits)
  found = jnp.any(fits)
  try_h, try_w = h[first], w[first]

  def offset(u, room):  # uniform over 0..room, as torch.randint(0, room+1)
    return jnp.minimum((u * (room + 1).astype(jnp.float32)).astype(jnp.int32),
                       room)

  try_top = offset(uniforms[2 * tries], height - try_h)
  try_left = offset(uniforms[2 * tries + 1], width - try_w)
  # The fallback: the whole image, its aspect ratio clamped to `ratio`.
  in_ratio = fwidth / fheight
  low, high = min(ratio), max(ratio)
  fall_h = jnp.where(in_ratio < low,
                     jnp.round(fwidth / low).astype(jnp.int32), height)
  fall_w = jnp.where(in_ratio > high,
                     jnp.round(fheight * high).astype(jnp.int32), width)
  fall_top = (height - fall_h) // 2
  fall_left = (width - fall_w) // 2
  return jnp.stack([jnp.where(found, try_top, fall_top),
                    jnp.where(found, try_left, fall_left),
                    jnp.where(found, try_h, fall_h),
                    jnp.where(found, try_w, fall_w)]).astype(jnp.int32)


def rrc_box(key: jax.Array, height: jax.Array, width: jax.Array,
            scale: tuple[float, float] = preprocess.RRC_SCALE,
            ratio: tuple[float, float] = preprocess.RRC_RATIO,
            tries: int = 10) -> jax.Array:
  """torchvision ``RandomResizedCrop.get_params`` as a jittable function.

  Draws ``tries`` (area, log aspect ratio) pairs at once and keeps the first
  whose box fits in the image; if none fits, the centred crop of the whole
  image clamped to ``ratio``. Same distribution as torchvision's (tested
  with two-sample tests), other random numbers. All from one uniform draw
  (one PRNG call compiles much faster than one per quantity).

  Args:
    key: a JAX PRNG key.
    height, width: the original image size (int scalars, may be traced).
    scale, ratio, tries: as torchvision's (the authors' scale 0.08-1.25).

  Returns:
    ``[4] int32``: ``(top, left, h, w)`` in original pixels.
  """
  uniforms = jax.random.uniform(key, (2 * tries + 2,), jnp.float32)
  return _box_from_uniforms(uniforms, height, width, scale, ratio, tries)


def augment_params(key: jax.Array, height: jax.Array, width: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """The crop box (:func:`rrc_box`) and the flip (bool, p = 1/2) of one
  image, from one uniform draw."""
  tries = 10
  uniforms = jax.random.uniform(key, (2 * tries + 3,), jnp.float32)
  box = _box_from_uniforms(uniforms[:-1], height, width, preprocess.RRC_SCALE,
                           preprocess.RRC_RATIO, tries)
  return box, uniforms[-1] < 0.5


def _coverage(size: int, start: jax.Array, length: jax.Array) -> jax.Array:
  """How much of each pixel ``[i, i + 1)`` lies in the interval
  ``[start, start + length)``."""
  pixels = jnp.arange(size, dtype=jnp.float32)
  return jnp.clip(jnp.minimum(pixels + 1.0, start + length)
                  - jnp.maximum(pixels, start), 0.0, 1.0)


def resized_crop(stored: jax.Array, stored_hw: jax.Array, orig_hw: jax.Array,
                 transposed: jax.Array, box: jax.Array,
                 size: int) -> jax.Array:
  """Crops ``box`` out of an image and resizes it to ``size`` x ``size``.

  Args:
    stored: ``[Hc, Wc, 3] uint8``, the cache's canvas; the image fills its
      top-left ``stored_hw`` corner, transposed (rows = original columns)
      where ``transposed``.
    stored_hw: ``[2] int32``, the stored image's rows and columns.
    orig_hw: ``[2] int32``, the original image's height and width.
    transposed: bool scalar.
    box: ``[4] int32`` ``(top, left, h, w)`` in original pixels.
    size: the output side (static).

  Returns:
    ``[size, size, 3] float32`` on the 8-bit grid (0..255, whole numbers),
    in the original orientation: PIL's ``image.crop(box).resize(size,
    BILINEAR)`` of the original image when the stored copy is not
    downscaled (within PIL's fixed-point rounding).
  """
  box = box.astype(jnp.float32)
  orig_hw = orig_hw.astype(jnp.float32)
  stored_hw = stored_hw.astype(jnp.float32)
  # The box and the original size in the stored orientation.
  top = jnp.where(transposed, box[1], box[0])
  left = jnp.where(transposed, box[0], box[1])
  h = jnp.where(transposed, box[3], box[2])
  w = jnp.where(transposed, box[2], box[3])
  orig_rows = jnp.where(transposed, orig_hw[1], orig_hw[0])
  orig_cols = jnp.where(transposed, orig_hw[0], orig_hw[1])
  # Original pixels -> stored pixels (1 unless the cache downscaled it).
  fy = stored_hw[0] / orig_rows
  fx = stored_hw[1] / orig_cols
  top, h, left, w = top * fy, h * fy, left * fx, w * fx
  rows, cols = stored.shape[0], stored.shape[1]
  row_mask = _coverage(rows, top, h)
  col_mask = _coverage(cols, left, w)
  resample = lambda x, shape, dim, s, t: jax.image.scale_and_translate(
      x, shape, (dim,), s[None], t[None], method="linear", antialias=True,
      precision=RESIZE_PRECISION)
  # Like PIL: the horizontal pass first, rounded to 8 bits (half up), then
  # the vertical pass; each divided by its resampled mask.
  scale_x, shift_x = size / w, -left * size / w
  scale_y, shift_y = size / h, -top * size / h
  image = stored.astype(jnp.float32) * col_mask[None, :, None]
  across = resample(image, (rows, size, 3), 1, scale_x, shift_x)
  across /= jnp.maximum(resample(col_mask, (size,), 0, scale_x, shift_x),
                        1e-6)[None, :, None]
  across = jnp.clip(jnp.floor(across + 0.5), 0.0, 255.0)
  down = resample(across * row_mask[:, None, None], (size, size, 3), 0,
                  scale_y, shift_y)
  down /= jnp.maximum(resample(row_mask, (size,), 0, scale_y, shift_y),
                      1e-6)[:, None, None]
  out = jnp.clip(jnp.floor(down + 0.5), 0.0, 255.0)
  return jnp.where(transposed, out.transpose(1, 0, 2), out)


def normalize(pixels: jax.Array) -> jax.Array:
  """``ToTensor`` + ``Normalize(ImageNet mean, std)`` of 0..255 pixels.

  The same float32 arithmetic as :func:`nad_jax.data.preprocess.normalize`:
  ``x / (255 std) - mean / std``.
  """
  scale = jnp.asarray(preprocess._SCALE)  # pylint: disable=protected-access
  offset = jnp.asarray(preprocess._OFFSET)  # pylint: disable=protected-access
  return pixels.astype(jnp.float32) * scale - offset


def augment_image(stored: jax.Array, stored_hw: jax.Array,
                  orig_hw: jax.Array, transposed: jax.Array, key: jax.Array,
                  size: int, box: jax.Array | None = None,
                  flip: jax.Array | None = None) -> jax.Array:
  """RandomResizedCrop + RandomHorizontalFlip + normalise of one image.

  Args:
    stored, stored_hw, orig_hw, transposed: one image of the cache (see
      :func:`resized_crop`).
    key: its key; draws the box (unless given) and the flip (unless given).
    size: output side.
    box: optional fixed ``[4]`` ``(top, left, h, w)`` in original pixels.
    flip: optional fixed bool scalar.

  Returns:
    ``[size, size, 3] float32``, normalised.
  """
  random_box, random_flip = augment_params(key, orig_hw[0], orig_hw[1])
  box = random_box if box is None else box
  flip = random_flip if flip is None else flip
  pixels = resized_crop(stored, stored_hw, orig_hw, transposed, box, size)
  pixels = jnp.where(flip, pixels[:, ::-1], pixels)
  return normalize(pixels)


def augment_stored(images: jax.Array, stored_hw: jax.Array,
                   orig_hw: jax.Array, transposed: jax.Array, key: jax.Array,
                   *, size: int, augment: str,
                   boxes: jax.Array | None = None,
                   flips: jax.Array | None = None) -> jax.Array:
  """The search images of one concept's step from its stored images.

  Args:
    images: ``[B, Hc, Wc, 3]``: canvases (``augment='random_resized_crop'``)
      or final crops (``augment='none'``: uint8 eval crops, normalised
      here; float32: already normalised, e.g. the demo's images).
    stored_hw, orig_hw: ``[B, 2] int32``; transposed ``[B] bool`` (unused
      for ``'none'``).
    key: the batch's key (:func:`batch_key`); image b uses
      ``fold_in(key, b)``.
    size: output side.
    augment: ``'random_resized_crop'`` or ``'none'``.
    boxes, flips: optional fixed ``[B, 4]`` boxes and ``[B]`` flips (tests,
      and the host/device equality check).

  Returns:
    ``[B, size, size, 3] float32``.
  """
  preprocess.check_augment(augment)
  if augment == "none":
    if images.dtype == jnp.uint8:
      return normalize(images)
    return images.astype(jnp.float32)
  batch = images.shape[0]
  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch))
  if boxes is None and flips is None:
    return jax.vmap(lambda *a: augment_image(*a, size))(
        images, stored_hw, orig_hw, transposed, keys)
  if boxes is None or flips is None:
    raise ValueError("give both boxes and flips, or neither")
  return jax.vmap(lambda *a: augment_image(*a[:5], size, *a[5:]))(
      images, stored_hw, orig_hw, transposed, keys, boxes, flips)


def device_concept_batch(row: dict[str, jax.Array], slots: jax.Array,
                         key: jax.Array, *, size: int, augment: str,
                         boxes: jax.Array | None = None,
                         flips: jax.Array | None = None
                         ) -> tuple[jax.Array, jax.Array]:
  """One concept's search batch drawn from its cached images (jittable).

  Args:
    row: one concept's row of a :class:`decode_cache.ChunkCache` on the
      device (``images [N, Hc, Wc, 3]``, ``stored_hw``, ``orig_hw``
      ``[N, 2]``, ``transposed [N]``, ``label`` scalar).
    slots: ``[B] int32`` cache slots of this step's images (a row of the
      chunk's index table, :func:`decode_cache.index_table`).
    key: :func:`batch_key` of (seed, class id, step).
    size, augment, boxes, flips: as :func:`augment_stored`.

  Returns:
    ``images [B, size, size, 3] float32`` and ``labels [B] int32``.
  """
  images = augment_stored(
      row["images"][slots], row["stored_hw"][slots], row["orig_hw"][slots],
      row["transposed"][slots], key, size=size, augment=augment, boxes=boxes,
      flips=flips)
  labels = jnp.broadcast_to(row["label"].astype(jnp.int32), slots.shape)
  return images, labels
