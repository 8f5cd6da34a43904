"""configs/{vgg16,resnet50,densenet121}.py and the family configs
configs/{vgg,resnet,densenet}.py: hyperparameters and no download.

The expected values are the paper's alpha and lambda (Sec. 5.1) and the
authors' code's beta, typed in here from docs/networks.md
(Hyperparameters); a family config gives every variant its paper network's
values.
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


# family config -> (paper network, its variants, typed in from torchvision's
# model builders, with their gate-site counts).
FAMILIES = {
    "vgg": ("vgg16", {"vgg11": 8, "vgg11_bn": 8, "vgg13": 10, "vgg13_bn": 10,
                      "vgg16": 13, "vgg16_bn": 13, "vgg19": 16,
                      "vgg19_bn": 16}),
    "resnet": ("resnet50", {"resnet18": 9, "resnet34": 17, "resnet50": 17,
                            "resnet101": 34, "resnet152": 51,
                            "resnext50_32x4d": 17, "resnext101_32x8d": 34,
                            "resnext101_64x4d": 34, "wide_resnet50_2": 17,
                            "wide_resnet101_2": 34}),
    "densenet": ("densenet121", {"densenet121": 8, "densenet161": 8,
                                 "densenet169": 8, "densenet201": 8}),
}
_FAMILY_CASES = [(family, variant) for family, (_, variants) in
                 sorted(FAMILIES.items()) for variant in sorted(variants)]


@pytest.mark.parametrize("family,variant", _FAMILY_CASES)
@pytest.mark.parametrize("dataset", [None, "places365"])
def test_family_config_takes_the_variant(family, variant, dataset):
  paper_network, variants = FAMILIES[family]
  arg = variant if dataset is None else f"{variant},{dataset}"
  config = _get_config(family, arg)
  dataset = dataset or "imagenet"
  alpha, lam, beta = HPARAMS[paper_network][dataset]
  num_classes, tfds_name = DATASETS[dataset]
  assert config.model.name == variant
  assert config.model.num_classes == num_classes
  assert config.model.checkpoint == ""
  assert config.data.name == tfds_name
  assert config.data.augment == "random_resized_crop"
  assert config.optim.alpha == pytest.approx(alpha)
  assert config.objective.lam == pytest.approx(lam)
  assert config.objective.beta == pytest.approx(beta)
  assert config.search.batch_size == 16
  assert len(models.get_model(variant).gate_sites()) == variants[variant]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_config_defaults_to_the_paper_network(family):
  paper_network, _ = FAMILIES[family]
  assert (_get_config(family, None).to_dict() ==
          _get_config(paper_network, None).to_dict())
  assert (_get_config(family, f"{paper_network},places365").to_dict() ==
          _get_config(paper_network, "places365").to_dict())


def test_family_config_refuses_unknown_variants_and_datasets():
  with pytest.raises(ValueError, match="unknown variant 'vgg17'.*vgg19_bn"):
    _get_config("vgg", "vgg17")
  with pytest.raises(ValueError, match="unknown variant 'resnet50'"):
    _get_config("densenet", "resnet50")
  with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
    _get_config("resnet", "resnet18,cifar10")


@pytest.mark.parametrize("family,variant", [("vgg", "vgg19_bn"),
                                            ("resnet", "resnext50_32x4d"),
                                            ("densenet", "densenet201")])
def test_family_missing_checkpoint_names_the_variant(family, variant):
  config = _get_config(family, variant)
  with pytest.raises(FileNotFoundError) as error:
    models.load_model(config.model)
  message = str(error.value)
  assert (f"convert_torchvision.py --arch {variant} --input" in message)
  assert f"{variant}-" in message  # torchvision's file name for the variant


def test_family_config_loads_a_checkpoint_of_its_variant(tmp_path):
  """config.model.name, the registry and the params meta agree."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nad_jax import params_io  # pylint: disable=g-import-not-at-top

  config = _get_config("resnet", "resnet18,places365")
  shapes = jax.eval_shape(models.get_model("resnet18", num_classes=365).init,
                          jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  variables = jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32),
                           shapes)
  params_io.save_variables(tmp_path / "ckpt", variables,
                           {"arch": "resnet18", "num_classes": 365})
  config.model.checkpoint = str(tmp_path / "ckpt")
  module, loaded = models.load_model(config.model)
  assert type(module).__name__ == "ResNet18"
  assert len(module.gate_sites()) == 9
  assert jax.tree.map(np.shape, loaded) == jax.tree.map(np.shape, variables)
  # A checkpoint of another variant is refused, naming both.
  config = _get_config("resnet", "resnet34,places365")
  config.model.checkpoint = str(tmp_path / "ckpt")
  with pytest.raises(ValueError, match="'resnet18', expected 'resnet34'"):
    models.load_model(config.model)
