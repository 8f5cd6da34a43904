"""End-to-end search benchmark: the real loop, a few chunks, one network.

    python benchmarks/bench_e2e.py --model=vgg16 --compute_dtype=bfloat16 \
        --concepts=auto --data_root=/data/synthetic_imagenet --chunks=2 \
        --steps=40 --results=out.md

Runs ``nad_jax.pipeline.search_paths`` (data, step, host looks every
``log_every`` steps, Orbax checkpoints) as ``python -m nad_jax.main`` does,
for ``--chunks`` chunks of K concepts x ``--steps`` steps, after a warm-up
run that compiles the step (and, with ``--concepts=auto``, picks K). Data:
an ImageNet-shaped JPEG folder (``--data_root``: ``train/<class>/*.jpg``
and ``val/<class>/``; e.g. from benchmarks/make_synthetic_imagenet.py), or,
without one, a small folder of 500x375 JPEGs (quality 90) generated into
``--workdir`` (``--generate_per_class`` images per class); the demo
networks use the demo dataset. Weights are random (He-normal) for the
ImageNet networks: speed does not depend on them.

Reports (one markdown row, appended to ``--results``):

* image-steps/s: K * B * steps / wall time of the timed run (steady state:
  compilation excluded; chunk switches, data, host looks and checkpoint
  saves included);
* device step: the same compiled step replayed on its last inputs, alone
  (``block_until_ready`` each), i.e. what the device needs per step;
* data wait: 1 - steps * device step / wall time, the share of the wall
  time the device is not computing a step (waiting for data or the host);
* FLOPs: XLA's ``cost_analysis()`` of the compiled step; MFU = FLOPs x
  steps/s over the bf16 matmul peak measured here (``--peak_n`` square
  bf16 matmuls on the same device), for the run and for the device step;
* host cores busy: process CPU time (all threads) / wall time;
* peak memory: the device's ``peak_bytes_in_use`` (GPU/TPU) or the
  process's peak RSS (CPU, labelled so);
* projected: the authors' full schedule, 1000 classes x 1700 steps x 16
  images = ceil(1000 / K) chunks x 1700 steps at the measured wall time
  per step (the measured chunks are short, so the per-chunk costs weigh
  more here than in the real run).

Memory: the network, K concepts' step (see ``nad_jax.memory``), a params
checkpoint of the random weights on disk, and the generated images.
"""

from __future__ import annotations

import datetime
import logging as std_logging
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from nad_jax import config_lib
from nad_jax import models
from nad_jax import params_io
from nad_jax import pipeline
from nad_jax import search
from nad_jax.data import decode_cache

_MODEL = flags.DEFINE_string("model", "vgg16", "Model name.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "bfloat16",
                           list(search.COMPUTE_DTYPES), "Compute dtype.")
_REMAT = flags.DEFINE_bool("remat", False, "search.remat.")
_CONCEPTS = flags.DEFINE_string("concepts", "auto", "K: a number or auto.")
_MEMORY_LIMIT = flags.DEFINE_float("memory_limit_gb", 0.0,
                                   "search.memory_limit_gb (0: free memory).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per concept.")
_STEPS = flags.DEFINE_integer("steps", 40, "Steps per chunk (timed run).")
_CHUNKS = flags.DEFINE_integer("chunks", 2, "Chunks in the timed run.")
_PIPELINE = flags.DEFINE_string(
    "pipeline", "", "config.data.pipeline (host, device or auto); empty: "
    "the config's default.")
_WORKERS = flags.DEFINE_integer("num_workers", 0,
                                "config.data.num_workers (host threads).")
_DATA_ROOT = flags.DEFINE_string("data_root", "", "ImageNet-shaped folder.")
_PER_CLASS = flags.DEFINE_integer("generate_per_class", 64,
                                  "Generated images per class (no folder).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input size.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Scratch (default: a tmp dir).")
_PEAK_N = flags.DEFINE_integer("peak_n", 0, "Matmul size for the peak (0: "
                               "8192 on an accelerator, 1024 on a CPU).")
_RESULTS = flags.DEFINE_string("results", "", "Markdown file to append to.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "search.log_every.")
_RUNS = flags.DEFINE_string(
    "runs", "", "Several runs in this process, comma-separated "
    "dtype:pipeline:concepts (e.g. bfloat16:device:auto,bfloat16:host:32); "
    "empty: one run from --compute_dtype, --pipeline, --concepts.")
_GENERATE_CLASSES = flags.DEFINE_integer(
    "generate_classes", 0, "Only write a folder of this many classes x "
    "--generate_per_class JPEGs into --data_root (parallel), then exit.")

HEADER = ("| model | dtype | pipeline | K | B | image-steps/s | device step "
          "ms | wall step ms | TFLOP/step | MFU run / device | bf16 peak "
          "TFLOP/s | data wait | host cores busy | peak memory GiB | "
          "1000 classes x 1700 steps | machine | commit | date |")


def machine() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    name = platform.processor() or "CPU"
    try:
      out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
      name = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                  if line.startswith("Model name"))
    except (OSError, StopIteration):
      pass
    return f"{name}, {os.cpu_count()} cores"
  return f"{device.device_kind} x{jax.device_count()}, {os.cpu_count()} cores"


def commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT,
                          capture_output=True, text=True).stdout.strip()
  except OSError:
    return "?"


def matmul_peak(n: int, dtype=jnp.bfloat16, repeats: int = 5) -> float:
  """FLOP/s of the best of ``repeats`` jitted n x n x n matmuls."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best


def _write_class(args) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root, split, class_index, count = args
  rng = np.random.default_rng([class_index, len(split)])
  folder = os.path.join(root, split, f"class{class_index:04d}")
  os.makedirs(folder, exist_ok=True)
  for i in range(count):
    w, h = (500, 375) if i % 2 == 0 else (375, 500)
    small = rng.uniform(0, 255, size=(h // 25, w // 25, 3))
    image = np.asarray(Image.fromarray(small.astype(np.uint8)).resize(
        (w, h), Image.BILINEAR), np.float32)
    image += rng.normal(0, 12, size=image.shape)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def generate_folder(root: str, num_classes: int, per_class: int,
                    val_per_class: int = 2) -> None:
  """ImageNet-shaped JPEGs: 500x375 or 375x500, quality 90, smooth colour
  fields with noise; one process per core."""
  jobs = [(root, split, c, count)
          for split, count in (("train", per_class), ("val", val_per_class))
          for c in range(num_classes)]
  with multiprocessing.get_context("spawn").Pool() as pool:
    pool.map(_write_class, jobs)


class RecordingStep:
  """The search step, kept across runs (it compiles once) and recording
  its last call, so it can be replayed alone and analysed."""

  def __init__(self, step_fn):
    self.step_fn = step_fn
    self.last = None

  def lower(self, *args):
    return self.step_fn.lower(*args)

  def __call__(self, variables, chunk, *rest):
    out = self.step_fn(variables, chunk, *rest)
    self.last = (variables, rest, out[0])
    return out

  def replay(self, repeats: int) -> float:
    """Median seconds of the device step on the last inputs."""
    variables, rest, chunk = self.last
    times = []
    for _ in range(repeats + 1):
      start = time.perf_counter()
      chunk, metrics = self.step_fn(variables, chunk, *rest)
      jax.block_until_ready((chunk, metrics))
      times.append(time.perf_counter() - start)
    self.last = (variables, rest, chunk)
    return float(np.median(times[1:]))

  def flops(self) -> float:
    variables, rest, chunk = self.last
    analysis = self.step_fn.lower(variables, chunk, *rest).compile(
    ).cost_analysis()
    if isinstance(analysis, list):
      analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


def build_config(workdir: str, dtype: str, pipeline_name: str,
                 concepts: str):
  """The run's config; random weights are written once into ``workdir``."""
  config = config_lib.base_config()
  name = _MODEL.value
  config.model.name = name
  config.model.image_size = _IMAGE_SIZE.value
  config.report.figures = False
  config.search.concepts_per_step = (concepts if concepts == "auto"
                                     else int(concepts))
  config.search.compute_dtype = dtype
  config.search.remat = _REMAT.value
  config.search.memory_limit_gb = _MEMORY_LIMIT.value
  config.search.batch_size = _BATCH.value
  config.search.log_every = _LOG_EVERY.value
  config.search.checkpoint_every = 10 ** 9  # saves at each chunk end
  config.data.num_workers = _WORKERS.value
  if pipeline_name:
    config.data.pipeline = pipeline_name
  if name.startswith("demo_"):
    config.model.num_classes = 16
    config.model.image_size = 32
    config.data.source = "demo"
    return config
  config.model.num_classes = 1000
  config.data.source = "folder"
  config.data.labels = "position"
  config.data.augment = "random_resized_crop"
  config.data.root = _DATA_ROOT.value or os.path.join(workdir, "images")
  weights = os.path.join(workdir, f"weights_{name}")
  if not os.path.isdir(weights):
    model = models.get_model(name, num_classes=1000)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 224, 224, 3)))
    rng = np.random.default_rng(0)

    def random_leaf(path, leaf):
      key = jax.tree_util.keystr(path[-1:])
      if "kernel" in key:
        scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape, np.float32)
                * np.float32(scale))
      if "var" in key or "scale" in key:
        return np.ones(leaf.shape, np.float32)
      return np.zeros(leaf.shape, np.float32)

    params_io.save_variables(
        weights, jax.tree_util.tree_map_with_path(random_leaf, shapes),
        {"arch": name, "num_classes": 1000, "source": "random He-normal"})
  config.model.checkpoint = weights
  return config


class _HideOrbaxInfo(std_logging.Filter):
  def filter(self, record):
    return record.levelno > std_logging.INFO or "/orbax/" not in (
        record.pathname)


_STEPS_BY_KEY: dict = {}
_make_search_step = search.make_search_step


def _recording_make_step(model, objective, optimizer, make_batch=None,
                         **kwargs):
  """``search.make_search_step``, one recorded step per batch source kind,
  dtype and remat (a source's ``make_batch`` depends only on the config, so
  the warm-up's compiled step serves the timed run)."""
  source = type(getattr(make_batch, "__self__", None)).__name__
  key = (type(model).__name__, source, tuple(sorted(kwargs.items())))
  if key not in _STEPS_BY_KEY:
    _STEPS_BY_KEY[key] = RecordingStep(
        _make_search_step(model, objective, optimizer, make_batch, **kwargs))
  _STEPS_BY_KEY["last"] = _STEPS_BY_KEY[key]
  return _STEPS_BY_KEY[key]


def run_one(workdir: str, dtype: str, pipeline_name: str, concepts: str,
            peak: float) -> str:
  """One timed run; returns its markdown row."""
  config = build_config(workdir, dtype, pipeline_name, concepts)
  tag = f"{dtype}_{pipeline_name or 'default'}_{concepts}"
  model, variables, dataset, concept_ids = pipeline.load_inputs(
      config, workdir)
  # Warm-up: compile (and pick K) on the first concepts, 2 steps.
  with config.unlocked():
    config.search.num_steps = 2
    config.search.stop_after_steps = 2
  # (auto K is at most the concepts it is given: leave room for --chunks.)
  pipeline.search_paths(config, os.path.join(workdir, f"warmup_{tag}"),
                        model, variables, dataset,
                        concept_ids[:max(1, len(concept_ids) // _CHUNKS.value)])
  step = _STEPS_BY_KEY["last"]
  k = int(step.last[2]["stable"].shape[0])
  total = k * _CHUNKS.value
  if len(concept_ids) < total:
    raise ValueError(f"K={k} x {_CHUNKS.value} chunks needs {total} "
                     f"classes; the data has {len(concept_ids)} (give a "
                     f"larger --data_root or fewer --chunks)")
  with config.unlocked():
    config.search.num_steps = _STEPS.value
    config.search.stop_after_steps = 0
    config.search.concepts_per_step = k
  cpu0, wall0 = time.process_time(), time.perf_counter()
  pipeline.search_paths(config, os.path.join(workdir, f"timed_{tag}"), model,
                        variables, dataset, concept_ids[:total])
  wall = time.perf_counter() - wall0
  cpu = time.process_time() - cpu0
  steps = _CHUNKS.value * _STEPS.value

  device_step = step.replay(5)
  flops = step.flops()
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    peak_memory = f"{stats['peak_bytes_in_use'] / 2**30:.1f}"
  else:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_memory = f"{rss / 2**30:.1f} (host RSS)"
  b = _BATCH.value
  rate = k * b * steps / wall
  wall_step = wall / steps
  projected_h = -(-1000 // k) * 1700 * wall_step / 3600
  shown_pipeline = decode_cache.resolve_pipeline(config.data.pipeline)
  if config.data.source == "demo":
    shown_pipeline += " (demo data)"
  shown_dtype = dtype + (" remat" if _REMAT.value else "")
  auto = " (auto)" if concepts == "auto" else ""
  return (f"| {_MODEL.value} | {shown_dtype} | {shown_pipeline} | "
          f"{k}{auto} | {b} | {rate:.0f} | {device_step * 1e3:.1f} | "
          f"{wall_step * 1e3:.1f} | {flops / 1e12:.3g} | "
          f"{100 * flops / wall_step / peak:.0f}% / "
          f"{100 * flops / device_step / peak:.0f}% | {peak / 1e12:.3g} | "
          f"{100 * max(0.0, 1 - steps * device_step / wall):.0f}% | "
          f"{cpu / wall:.1f} | {peak_memory} | {projected_h:.2f} h | "
          f"{machine()} | {commit()} | "
          f"{datetime.date.today().isoformat()} |")


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_HideOrbaxInfo())
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="bench_e2e_")
  os.makedirs(workdir, exist_ok=True)
  if _GENERATE_CLASSES.value:
    generate_folder(_DATA_ROOT.value or os.path.join(workdir, "images"),
                    _GENERATE_CLASSES.value, _PER_CLASS.value)
    return
  runs = [r.split(":") for r in _RUNS.value.split(",")] if _RUNS.value \
      else [[_DTYPE.value, _PIPELINE.value, _CONCEPTS.value]]
  if not _MODEL.value.startswith("demo_") and not _DATA_ROOT.value:
    if any(concepts == "auto" for _, _, concepts in runs):
      raise ValueError("--concepts=auto needs --data_root with enough "
                       "classes for the K it picks x --chunks")
    root = os.path.join(workdir, "images")
    if not os.path.isdir(root):
      generate_folder(root, max(int(c) for _, _, c in runs) * _CHUNKS.value,
                      _PER_CLASS.value)
  search.make_search_step = _recording_make_step
  accelerator = jax.devices()[0].platform != "cpu"
  peak = matmul_peak(_PEAK_N.value or (8192 if accelerator else 1024))
  print(HEADER, flush=True)
  for dtype, pipeline_name, concepts in runs:
    try:
      row = run_one(workdir, dtype, pipeline_name, concepts, peak)
    except Exception as e:  # pylint: disable=broad-exception-caught
      row = (f"| {_MODEL.value} | {dtype} | {pipeline_name or 'host'} | "
             f"{concepts} | failed: {type(e).__name__}: "
             f"{str(e)[:300]} |")
      logging.exception("run %s failed", (dtype, pipeline_name, concepts))
    print(row, flush=True)
    if _RESULTS.value:
      new = not os.path.exists(_RESULTS.value)
      with open(_RESULTS.value, "a") as f:
        if new:
          f.write(HEADER + "\n" + "|---" * (HEADER.count("|") - 1) + "|\n")
        f.write(row + "\n")


if __name__ == "__main__":
  app.run(main)
