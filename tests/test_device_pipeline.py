"""The search fed by the device pipeline vs the host pipeline; resume."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from nad_jax import config_lib
from nad_jax import objectives
from nad_jax import optim
from nad_jax import search
from nad_jax.data import batch_source
from nad_jax.data import folder
from nad_jax.data import preprocess
from tests import data_photos
from tests import tiny

SIZE = 32
OBJECTIVE = functools.partial(objectives.paper_objective, lam=0.05)


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
  """Three classes of real photos (one portrait, one greyscale)."""
  root = str(tmp_path_factory.mktemp("pipeline_photos"))
  foolbox = list(data_photos.foolbox_imagenet())
  layout = {"a": [data_photos.skimage_photo(n) for n in
                  ("chelsea.png", "coffee.png", "coins.png")],
            "b": foolbox[:4], "c": foolbox[4:7]}
  for split in ("train", "val"):
    for name, paths in layout.items():
      class_dir = os.path.join(root, split, name)
      os.makedirs(class_dir)
      for path in paths:
        shutil.copy(path, class_dir)
  portrait = Image.open(layout["a"][0]).transpose(Image.Transpose.ROTATE_90)
  portrait.save(os.path.join(root, "train", "a", "portrait.png"))
  return root


def _boxes(class_id, step, b, height, width):
  """Fixed boxes and flips, the same for both pipelines."""
  rng = np.random.default_rng([class_id, step, b])
  box = preprocess.random_resized_crop_params(height, width, rng)
  return (*box, bool((step + b + class_id) % 2))


def _search(dataset, batches, concept_ids=(0, 1, 2), **kwargs):
  model = tiny.TinyNet(3)
  return search.disentangle(
      model, tiny.tiny_variables(3, image_size=SIZE), dataset, concept_ids,
      objective=OBJECTIVE, optimizer=optim.nad_optimizer(0.3),
      num_steps=5, batch_size=4, concepts_per_step=2, seed=0,
      log_every=0, batches=batches, **kwargs)


def _device(dataset, **kwargs):
  return batch_source.DeviceBatches(
      dataset, batch_size=4, seed=0, image_size=SIZE,
      augment=dataset.augment, **kwargs)


def test_device_search_equals_host_search_given_the_same_boxes(photo_root):
  host_ds = folder.FolderDataset(photo_root, image_size=SIZE,
                                 augment="random_resized_crop")
  host_ds.box_source = _boxes
  host = _search(host_ds, batch_source.HostBatches(host_ds, 4))
  device_ds = folder.FolderDataset(photo_root, image_size=SIZE,
                                   augment="random_resized_crop")
  # A canvas that holds every photo unscaled: pixels within 2 levels.
  batches = _device(device_ds, max_size=(400, 600), box_source=_boxes)
  device = _search(device_ds, batches)
  batches.close()
  np.testing.assert_array_equal(device.steps_done, [5, 5, 5])
  for site, logits in host.gate_logits.items():
    # The 1-2 level pixel differences moved the gate logits by at most
    # 7e-4 (measured); the smallest |logit| is 4e-3, so the paths agree.
    np.testing.assert_allclose(device.gate_logits[site], logits, atol=2e-3)
    np.testing.assert_array_equal(device.paths[site], host.paths[site])
  init = search.init_gate_logits(0, [0, 1, 2], 1, tiny.TinyNet(3).gate_sites())
  assert np.abs(host.gate_logits["site00"] - init["site00"]).max() > 0.1
  # (Without the injected boxes the pipelines draw different random boxes
  # and the searches differ.)


def test_eval_crops_search_equals_host_search(photo_root):
  host_ds = folder.FolderDataset(photo_root, image_size=SIZE, augment="none")
  host = _search(host_ds, batch_source.HostBatches(host_ds, 4))
  device_ds = folder.FolderDataset(photo_root, image_size=SIZE,
                                   augment="none")
  device = _search(device_ds, _device(device_ds))
  for site, logits in host.gate_logits.items():
    np.testing.assert_allclose(device.gate_logits[site], logits, atol=1e-5)


@pytest.fixture(scope="module")
def uninterrupted(photo_root):
  """A device-pipeline search with random boxes, and its step function."""
  dataset = folder.FolderDataset(photo_root, image_size=SIZE,
                                 augment="random_resized_crop")
  batches = _device(dataset, max_size=(96, 128))
  step_fn = search.make_search_step(tiny.TinyNet(3), OBJECTIVE,
                                    optim.nad_optimizer(0.3),
                                    batches.make_batch)
  return _search(dataset, batches, step_fn=step_fn), step_fn


def test_resumed_device_search_equals_uninterrupted(photo_root, tmp_path,
                                                    uninterrupted):
  whole, step_fn = uninterrupted
  dataset = folder.FolderDataset(photo_root, image_size=SIZE,
                                 augment="random_resized_crop")
  workdir = str(tmp_path / "run")
  # Stop inside the first chunk, then resume (with the cache in host
  # memory this time: the same images and boxes). The first run shares
  # the compiled step (make_batch reads only settings).
  first = _search(dataset, _device(dataset, max_size=(96, 128)),
                  workdir=workdir, stop_after_steps=3, step_fn=step_fn)
  assert not np.all(first.done)
  resumed = _search(dataset, _device(dataset, max_size=(96, 128),
                                     placement="host"), workdir=workdir)
  assert np.all(resumed.done)
  for site, logits in whole.gate_logits.items():
    np.testing.assert_allclose(resumed.gate_logits[site], logits, rtol=1e-6,
                               atol=1e-6)


def test_from_config_picks_the_pipeline(photo_root):
  config = config_lib.base_config()
  config.data.source = "folder"
  config.data.root = photo_root
  dataset = folder.FolderDataset(photo_root)
  assert isinstance(batch_source.from_config(config, dataset),
                    batch_source.HostBatches)  # 'auto' on the CPU
  config.data.pipeline = "device"
  device = batch_source.from_config(config, dataset)
  assert isinstance(device, batch_source.DeviceBatches)
  assert device.builder.max_size == (224, 224)  # augment 'none': eval crops
  device.close()
  config.data.pipeline = "gpu"
  with pytest.raises(ValueError, match="config.data.pipeline"):
    batch_source.from_config(config, dataset)


_TWO_DEVICES = """
import sys
import jax
import numpy as np
assert len(jax.devices()) == 2, jax.devices()
from nad_jax.data import folder
from tests import test_device_pipeline as t
dataset = folder.FolderDataset(sys.argv[1], image_size=t.SIZE,
                               augment="random_resized_crop")
result = t._search(dataset, t._device(dataset, max_size=(96, 128)))
np.savez(sys.argv[2], **result.gate_logits)
"""


def test_cache_sharded_over_two_devices_gives_the_same_search(
    photo_root, tmp_path, uninterrupted):
  out = tmp_path / "two.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", _TWO_DEVICES, photo_root, str(out)],
                 check=True, cwd=root, env=env, timeout=600)
  two = np.load(out)
  one, _ = uninterrupted
  for site, logits in one.gate_logits.items():
    np.testing.assert_allclose(two[site], logits, rtol=1e-5, atol=1e-5)
