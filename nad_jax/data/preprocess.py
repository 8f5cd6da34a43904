"""Image preprocessing that matches torchvision, in numpy and PIL only.

The authors' code feeds its networks with torchvision transforms on PIL
images; this module reproduces them without torch:

* eval: ``Resize(256)`` (shorter side, PIL bilinear, which is antialiased) +
  ``CenterCrop(224)`` + ``ToTensor`` + ``Normalize(ImageNet mean, std)``;
* search-time augmentation (the authors' training transform):
  ``RandomResizedCrop(224, scale=(0.08, 1.25), ratio=(3/4, 4/3))`` +
  ``RandomHorizontalFlip()``, drawn from a ``numpy.random.Generator`` with
  the same sampling logic as torchvision's ``get_params`` (10 tries, then a
  centred fallback crop); the random numbers differ from torch's, the
  distribution is the same.

Outputs are ``[H, W, 3] float32`` (NHWC once batched). Other input sizes:
``image_size`` sets the crop and the eval resize is
``round(image_size * 256 / 224)``.

Memory: one decoded photo plus one float32 output (0.6 MB at 224x224).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
AUGMENTS = ("none", "random_resized_crop")
RRC_SCALE = (0.08, 1.25)  # the authors' setting (torchvision: (0.08, 1.0))
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def resize_size(image_size: int) -> int:
  """The eval resize (shorter side) for a crop of ``image_size`` (224 -> 256)."""
  return int(round(image_size * 256 / 224))


def to_pil_rgb(image: Image.Image | np.ndarray) -> Image.Image:
  """A PIL RGB image from a PIL image of any mode or a uint8 [H, W(, C)] array.

  Greyscale, palette, CMYK and alpha images go through PIL's
  ``convert('RGB')``, as torchvision's ``ImageFolder`` loader does (alpha is
  dropped, not composited).
  """
  if isinstance(image, np.ndarray):
    array = image
    if array.dtype != np.uint8:
      raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and
                                    array.shape[-1] not in (3, 4)):
      raise ValueError(f"expected an image array [H, W], [H, W, 1/3/4], got "
                       f"shape {array.shape}")
    image = Image.fromarray(array)
  if image.mode != "RGB":
    image = image.convert("RGB")
  return image


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
  """torchvision ``Resize(size)`` on a PIL image: shorter side to ``size``.

  The longer side is ``int(size * long / short)`` (truncated, as torchvision
  does); PIL's bilinear filter widens its support when shrinking, i.e. it is
  antialiased.
  """
  width, height = image.size
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = size, int(size * long / short)
  new_w, new_h = ((new_short, new_long) if width <= height
                  else (new_long, new_short))
  if (new_w, new_h) == (width, height):
    return image
  return image.resize((new_w, new_h), Image.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """torchvision ``CenterCrop(size)``: offsets ``int(round((H - size) / 2))``."""
  width, height = image.size
  if width < size or height < size:
    raise ValueError(f"image of {width}x{height} is smaller than the crop "
                     f"{size}x{size}")
  top = int(round((height - size) / 2.0))
  left = int(round((width - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


_SCALE = (1.0 / (255.0 * IMAGENET_STD.astype(np.float64))).astype(np.float32)
_OFFSET = (IMAGENET_MEAN.astype(np.float64) /
           IMAGENET_STD.astype(np.float64)).astype(np.float32)


def normalize(image: Image.Image) -> np.ndarray:
  """``ToTensor`` + ``Normalize(ImageNet mean, std)``, as [H, W, 3] float32.

  Computed as ``x / (255 std) - mean / std`` in two in-place passes over
  rows (numpy broadcasts a length-3 last axis slowly); equal to
  torchvision's ``(x / 255 - mean) / std`` within float32 rounding.
  """
  array = np.asarray(image, dtype=np.uint8)
  height, width, _ = array.shape
  pixels = array.reshape(height, width * 3).astype(np.float32)
  pixels *= np.tile(_SCALE, width)
  pixels -= np.tile(_OFFSET, width)
  return pixels.reshape(height, width, 3)


def eval_transform(image: Image.Image | np.ndarray,
                   image_size: int = 224) -> np.ndarray:
  """Resize(shorter side) + CenterCrop + normalise; returns [S, S, 3] float32."""
  image = to_pil_rgb(image)
  image = resize_shorter(image, resize_size(image_size))
  return normalize(center_crop(image, image_size))


def random_resized_crop_params(
    height: int, width: int, rng: np.random.Generator,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
  """torchvision ``RandomResizedCrop.get_params``: ``(top, left, h, w)``.

  Ten tries of a random area (``scale`` of the image area) and log-uniform
  aspect ratio; if none fits inside the image, a centred crop of the whole
  image clamped to ``ratio``.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image: Image.Image, top: int, left: int, height: int,
                 width: int, size: int) -> Image.Image:
  """torchvision ``resized_crop`` on PIL: crop, then bilinear resize."""
  image = image.crop((left, top, left + width, top + height))
  return image.resize((size, size), Image.BILINEAR)


def augment_transform(image: Image.Image | np.ndarray,
                      rng: np.random.Generator, image_size: int = 224,
                      scale: tuple[float, float] = RRC_SCALE,
                      ratio: tuple[float, float] = RRC_RATIO) -> np.ndarray:
  """RandomResizedCrop + RandomHorizontalFlip(0.5) + normalise.

  Returns:
    ``[image_size, image_size, 3] float32``; the same ``rng`` state gives
    the same output.
  """
  image = to_pil_rgb(image)
  width, height = image.size
  top, left, h, w = random_resized_crop_params(height, width, rng, scale,
                                               ratio)
  image = resized_crop(image, top, left, h, w, image_size)
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return normalize(image)


def crop_flip_normalize(image: Image.Image, box: tuple[int, int, int, int],
                        flip: bool, image_size: int = 224) -> np.ndarray:
  """:func:`augment_transform` with a given box ``(top, left, h, w)`` and
  flip instead of random ones."""
  top, left, h, w = (int(v) for v in box)
  image = resized_crop(to_pil_rgb(image), top, left, h, w, image_size)
  if flip:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return normalize(image)


def check_augment(augment: str) -> None:
  """Raises a ValueError naming ``augment`` if it is not in ``AUGMENTS``."""
  if augment not in AUGMENTS:
    raise ValueError(f"unknown augment {augment!r} (config.data.augment); "
                     f"known: {list(AUGMENTS)}")


def image_rng(seed: int, class_id: int, position: int) -> np.random.Generator:
  """The augmentation generator of one image draw of the search.

  ``position`` is the draw's number in the class's endless epoch-by-epoch
  sequence (``step * batch_size + b``), so a resumed search and an
  uninterrupted one augment alike.
  """
  return np.random.default_rng([seed, 0x5EA2C4, class_id, position])
