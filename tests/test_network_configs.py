"""configs/{vgg16,resnet50,densenet121}.py: hyperparameters and no download.

The expected values are the paper's alpha and lambda (Sec. 5.1) and the
authors' code's beta, typed in here from docs/networks.md (Hyperparameters).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from nad_jax import models

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")

# network -> dataset -> (alpha, lambda, beta): paper Sec. 5.1 and the
# authors' code (docs/networks.md, Hyperparameters).
HPARAMS = {
    "vgg16": {"imagenet": (0.1, 6, 4.5), "places365": (0.1, 6, 5.0)},
    "resnet50": {"imagenet": (2.5, 0.03, 0.02),
                 "places365": (2.5, 0.023, 0.02)},
    "densenet121": {"imagenet": (0.6, 0.08, 0.02),
                    "places365": (0.6, 0.02, 0.02)},
}
DATASETS = {"imagenet": (1000, "imagenet2012"),
            "places365": (365, "places365_small")}


def _get_config(network: str, arg: str | None):
  path = os.path.join(CONFIG_DIR, f"{network}.py")
  spec = importlib.util.spec_from_file_location(f"config_{network}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("network", sorted(HPARAMS))
@pytest.mark.parametrize("dataset", [None, "imagenet", "places365"])
def test_config_has_the_papers_hyperparameters(network, dataset):
  config = _get_config(network, dataset)
  dataset = dataset or "imagenet"
  alpha, lam, beta = HPARAMS[network][dataset]
  num_classes, tfds_name = DATASETS[dataset]
  assert config.model.name == network
  assert config.model.num_classes == num_classes
  assert config.model.checkpoint == ""
  assert config.data.source == "tfds"
  assert config.data.name == tfds_name
  assert config.data.augment == "random_resized_crop"
  assert config.optim.alpha == pytest.approx(alpha)
  assert config.objective.lam == pytest.approx(lam)
  assert config.objective.beta == pytest.approx(beta)
  assert config.objective.name == "paper"
  assert config.search.batch_size == 16
  assert config.seed == 233
  assert len(models.get_model(network).gate_sites()) == {
      "vgg16": 13, "resnet50": 17, "densenet121": 8}[network]


@pytest.mark.parametrize("network", sorted(HPARAMS))
def test_missing_checkpoint_says_how_to_convert(network):
  config = _get_config(network, "places365")
  with pytest.raises(FileNotFoundError) as error:
    models.load_model(config.model)
  message = str(error.value)
  assert (f"python weights_conversion/convert_torchvision.py --arch {network} "
          "--input") in message
  assert "--config.model.checkpoint" in message
  config.model.checkpoint = "/nonexistent/ckpt"
  with pytest.raises(FileNotFoundError, match="convert_torchvision.py"):
    models.load_model(config.model)


def test_unknown_dataset_is_refused():
  with pytest.raises(ValueError, match="places365"):
    _get_config("vgg16", "cifar10")
