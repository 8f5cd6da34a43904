"""Trains the demo networks on the demo dataset and saves their weights.

  python -m nad_jax.train_demo --model=demo_vgg --output=/tmp/demo_vgg
  python -m nad_jax.train_demo --all   # remakes nad_jax/assets/demo_weights

AdamW with a warm-up + cosine learning rate, cross-entropy, no augmentation
(the dataset already varies position, scale and colour; flips would change
the stripes' classes). Prints step, loss and accuracy as it goes, then the
val accuracy overall and per primary concept, and saves a params checkpoint
(``nad_jax.params_io``) whose meta records the architecture, the dataset's
generation parameters, the training settings and the val accuracy.

Memory: the dataset (113 MB for the defaults) plus one batch of activations
and gradients (a few MB at batch 128).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nad_jax import models
from nad_jax import params_io
from nad_jax.data import demo
from nad_jax.models import demo_nets

_MODEL = flags.DEFINE_enum("model", "demo_vgg", sorted(demo_nets.MODELS),
                           "Demo network to train.")
_ALL = flags.DEFINE_bool(
    "all", False, "Train all demo networks; they go to --output/<name>, or "
    "to the shipped weights nad_jax/assets/demo_weights/<name> when "
    "--output is not given.")
_OUTPUT = flags.DEFINE_string("output", "", "Params checkpoint directory to "
                              "write (a parent directory with --all).")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds initialisation and batch "
                             "order.")
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "Seed of the demo images.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per step.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Peak learning "
                                    "rate.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.05,
                                   "AdamW's decoupled weight decay.")
_FORCE = flags.DEFINE_bool("force", False, "Overwrite existing checkpoints.")


def evaluate(module, variables: dict[str, Any], dataset: demo.DemoDataset,
             batch_size: int = 256) -> dict[str, Any]:
  """Top-1 accuracy on the val split: overall, per primary, per class."""
  apply = jax.jit(lambda images: module.apply(variables, images)[0])
  correct = np.zeros(dataset.num_classes)
  total = np.zeros(dataset.num_classes)
  for class_id in range(dataset.num_classes):
    for images, labels in dataset.eval_batches(class_id, batch_size):
      predictions = np.asarray(jnp.argmax(apply(images), axis=-1))
      correct[class_id] += np.sum(predictions == labels)
      total[class_id] += len(labels)
  per_class = correct / total
  return {
      "val_accuracy": float(correct.sum() / total.sum()),
      "val_accuracy_per_primary": {
          primary: float(correct[ids].sum() / total[ids].sum())
          for primary, ids in dataset.hierarchy.items()},
      "val_accuracy_per_class": {
          name: float(acc) for name, acc in zip(dataset.class_names,
                                                per_class)},
  }


def train(model_name: str, dataset: demo.DemoDataset, steps: int, seed: int,
          batch_size: int = 128, learning_rate: float = 3e-3,
          weight_decay: float = 0.05, log_every: int = 50,
          log: Callable[[str], None] = print
          ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Trains demo network ``model_name`` on ``dataset``'s train split.

  Args:
    model_name: a key of ``nad_jax.models.demo_nets.MODELS``.
    dataset: the demo dataset.
    steps: optimizer steps (at least 1).
    seed: seeds the initialisation and the batch order.
    batch_size: images per step.
    learning_rate: peak learning rate of the warm-up + cosine schedule.
    weight_decay: AdamW's decoupled weight decay.
    log_every: print progress every this many steps (0 = never).
    log: where progress lines go.

  Returns:
    ``(variables, metrics)``: the Flax variables (``params``,
    ``batch_stats``) as numpy arrays, and a dict with ``train_loss`` /
    ``train_accuracy`` (mean over the last ``log_every`` steps, or all
    steps), the :func:`evaluate` results, ``steps`` and ``train_seconds``.
  """
  if model_name not in demo_nets.MODELS:
    raise ValueError(f"unknown demo network {model_name!r}; known: "
                     f"{sorted(demo_nets.MODELS)}")
  if steps < 1:
    raise ValueError(f"steps must be at least 1, got {steps}")
  module = models.get_model(model_name, num_classes=dataset.num_classes)
  images, labels = dataset.split_arrays("train")
  rng = np.random.default_rng(seed)
  variables = jax.jit(module.init)(jax.random.PRNGKey(seed), images[:1])
  params, batch_stats = variables["params"], variables["batch_stats"]

  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate,
      warmup_steps=max(1, steps // 20), decay_steps=steps)
  optimizer = optax.adamw(schedule, weight_decay=weight_decay)
  opt_state = optimizer.init(params)

  def loss_fn(params, batch_stats, batch_images, batch_labels):
    (logits, _), new_state = module.apply(
        {"params": params, "batch_stats": batch_stats}, batch_images,
        train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch_labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch_labels)
    return loss, (new_state["batch_stats"], accuracy)

  @jax.jit
  def train_step(params, batch_stats, opt_state, batch_images, batch_labels):
    (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, batch_stats, batch_images,
                               batch_labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, batch_stats, opt_state, loss, accuracy

  order = rng.permutation(len(images))
  position = 0
  window_loss, window_accuracy = [], []
  start = time.time()
  for step in range(1, steps + 1):
    if position + batch_size > len(order):
      order, position = rng.permutation(len(images)), 0
    batch = order[position:position + batch_size]
    position += batch_size
    params, batch_stats, opt_state, loss, accuracy = train_step(
        params, batch_stats, opt_state, images[batch], labels[batch])
    window_loss.append(float(loss))
    window_accuracy.append(float(accuracy))
    if log_every and (step % log_every == 0 or step == steps):
      log(f"{model_name} step {step}/{steps}: loss "
          f"{np.mean(window_loss):.4f}, accuracy "
          f"{np.mean(window_accuracy):.4f} ({time.time() - start:.1f} s)")
      if step != steps:
        window_loss, window_accuracy = [], []
  train_seconds = time.time() - start

  variables = jax.tree.map(np.asarray,
                           {"params": params, "batch_stats": batch_stats})
  metrics = {"train_loss": float(np.mean(window_loss)),
             "train_accuracy": float(np.mean(window_accuracy)),
             "steps": steps, "train_seconds": train_seconds}
  metrics.update(evaluate(module, variables, dataset))
  log(f"{model_name} val accuracy {metrics['val_accuracy']:.4f}; per "
      f"primary " + ", ".join(
          f"{p} {a:.4f}"
          for p, a in metrics["val_accuracy_per_primary"].items()))
  return variables, metrics


def save(path: str, model_name: str, variables: dict[str, Any],
         metrics: dict[str, Any], dataset: demo.DemoDataset,
         training: dict[str, Any], force: bool = False) -> None:
  """Writes a params checkpoint of a trained demo network (atomically)."""
  if os.path.exists(path) and not force:
    raise FileExistsError(f"{path} exists; pass --force to overwrite it")
  meta = {
      "arch": model_name,
      "num_classes": dataset.num_classes,
      "source": "nad_jax.train_demo",
      "dataset": dataset.generation_params(),
      "class_names": list(dataset.class_names),
      "training": dict(training),
      "val_accuracy": metrics["val_accuracy"],
      "val_accuracy_per_primary": metrics["val_accuracy_per_primary"],
      "val_accuracy_per_class": metrics["val_accuracy_per_class"],
      "steps": metrics["steps"],
  }
  params_io.save_variables(path, variables, meta, force=force)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _ALL.value and not _OUTPUT.value:
    raise app.UsageError("give --output=DIR (or --all)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # hide Orbax's INFO lines
  names = sorted(demo_nets.MODELS) if _ALL.value else [_MODEL.value]
  if _ALL.value and _OUTPUT.value:
    outputs = [os.path.join(_OUTPUT.value, name) for name in names]
  elif _ALL.value:
    outputs = [demo_nets.weights_path(name) for name in names]
  else:
    outputs = [_OUTPUT.value]
  for path in outputs:  # fail before training, not after
    if os.path.exists(path) and not _FORCE.value:
      raise app.UsageError(f"{path} exists; pass --force to overwrite it")

  start = time.time()
  dataset = demo.DemoDataset(seed=_DATA_SEED.value)
  print(f"demo dataset: {dataset.num_classes} classes, "
        f"{dataset.num_images('train', 0)} train + "
        f"{dataset.num_images('val', 0)} val images each "
        f"({time.time() - start:.1f} s)", flush=True)
  training = {"steps": _STEPS.value, "seed": _SEED.value,
              "batch_size": _BATCH_SIZE.value,
              "learning_rate": _LEARNING_RATE.value,
              "weight_decay": _WEIGHT_DECAY.value,
              "optimizer": "adamw, warmup + cosine",
              "command": " ".join(["python -m nad_jax.train_demo"]
                                  + sys.argv[1:])}
  for name, path in zip(names, outputs):
    variables, metrics = train(
        name, dataset, _STEPS.value, _SEED.value,
        batch_size=_BATCH_SIZE.value, learning_rate=_LEARNING_RATE.value,
        weight_decay=_WEIGHT_DECAY.value,
        log=lambda line: print(line, flush=True))
    save(path, name, variables, metrics, dataset, training,
         force=_FORCE.value)
    print(f"saved {name} to {path}", flush=True)


if __name__ == "__main__":
  app.run(main)
