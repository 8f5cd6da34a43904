"""The config of the fault-injection tests: the tiny test network
(``tests/fault_runner.py`` registers it as ``tiny``) on a small demo
dataset (2 primaries x 2 classes of 8x8 images), 3 concepts in chunks of 2,
12 steps each, a checkpoint every 3 steps. A run takes a few seconds.
"""

from nad_jax import config_lib
from nad_jax.data import demo as demo_data


def get_config(arg=None):
  del arg
  config = config_lib.base_config()
  config.seed = 3
  config.model.name = "tiny"
  config.model.num_classes = 4
  config.model.image_size = 8
  config.data.source = "demo"
  config.data.demo = demo_data.demo_data_config()
  config.data.demo.num_primaries = 2
  config.data.demo.classes_per_primary = 2
  config.data.demo.train_per_class = 16
  config.data.demo.val_per_class = 8
  config.data.demo.image_size = 8
  config.data.classes = "0,1,3"
  config.objective.lam = 0.05
  config.optim.alpha = 0.3
  config.search.num_steps = 12
  config.search.batch_size = 4
  config.search.concepts_per_step = 2
  config.search.num_seeds = 2
  config.search.checkpoint_every = 3
  config.search.log_every = 1
  config.eval.batch_size = 8
  config.report.figures = False
  config.analysis.enabled = False  # tests/test_analyze.py covers them
  return config
