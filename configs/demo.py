"""The embedded demo: NAD on three small networks, no data, no downloads.

    python -m nad_jax.main --config=configs/demo.py --workdir=runs/demo

Searches the concept feature path of each of the 16 classes of the
procedural demo dataset (4 primary concepts x 4 classes) in three networks
trained on it and shipped with the package (plain VGG-style, residual
ResNet-style, concat DenseNet-style), evaluates the paths, and writes
``runs/demo/report.md`` comparing I, path accuracy, unit usage and how well
path similarity recovers the planted hierarchy, plus figures per network.
About 2 minutes on 2 CPU cores (benchmarks/RESULTS.md). ``:vgg``,
``:resnet`` or ``:densenet`` runs one network only.
"""

from nad_jax import config_lib
from nad_jax.data import demo as demo_data

_NETWORKS = {"vgg": "demo_vgg", "resnet": "demo_resnet",
             "densenet": "demo_densenet"}


def get_config(arg=None):
  config = config_lib.base_config()
  config.seed = 0
  config.model.name = "demo_vgg"
  config.model.num_classes = 16
  config.model.image_size = 32
  config.data.source = "demo"
  # The generated images (seed 0 is what the shipped weights were trained
  # on); --config.data.demo.* overrides.
  config.data.demo = demo_data.demo_data_config()

  config.objective.name = "paper"
  config.search.num_steps = 150
  config.search.batch_size = 16
  config.search.concepts_per_step = 16
  config.search.num_seeds = 1
  config.search.checkpoint_every = 50
  config.search.log_every = 25
  config.eval.batch_size = 64
  # The demo nets take any input size: also score the 2x2 mosaics at full
  # size (64 px), where the 32 px objects keep their trained scale.
  config.analysis.mosaic_full_size = True

  # Hyperparameters per network (the paper tunes alpha and lambda per
  # architecture). Chosen on the demo (docs/demo.md has the sweep): with
  # lambda = 1 paths keep 35-60% of the units at full path accuracy; smaller
  # lambda keeps nearly every unit, larger ones empty the paths.
  config.hparams_by_model = {
      "demo_vgg": {"alpha": 0.5, "lam": 1.0, "beta": 1.0},
      "demo_resnet": {"alpha": 0.5, "lam": 1.0, "beta": 1.0},
      "demo_densenet": {"alpha": 0.5, "lam": 1.0, "beta": 1.0},
  }
  if arg in (None, "", "all"):
    config.compare = ("demo_vgg", "demo_resnet", "demo_densenet")
  elif arg in _NETWORKS:
    name = _NETWORKS[arg]
    config.model.name = name
    config.optim.alpha = config.hparams_by_model[name]["alpha"]
    config.objective.lam = config.hparams_by_model[name]["lam"]
    config.objective.beta = config.hparams_by_model[name]["beta"]
  else:
    raise ValueError(f"configs/demo.py: unknown variant {arg!r}; use one of "
                     f"{sorted(_NETWORKS)} or nothing for all three")
  return config
