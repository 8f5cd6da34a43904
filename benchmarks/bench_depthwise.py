"""EfficientNet-Lite0's depthwise convolution: grouped conv vs shifted taps.

  python benchmarks/bench_depthwise.py [--batch=8] [--repeats=3]

Times (median of ``--repeats`` after compilation) of

* one depthwise layer of the network (block 1's 3x3 at 112x112x96, block
  3's 5x5 stride 2 at 56x56x144), forward and the gradient with respect to
  its input, with ``lax.conv_general_dilated(feature_group_count=C)``
  (``impl='conv'``) and with the sum of k*k strided slices times their taps
  (``impl='shifted'``);
* the whole EfficientNet-Lite0 (random weights, 224x224): the forward and
  the gradient of a loss of all 18 gated site activations with respect to
  the gates, what one NAD search step costs per image, with each form.

Prints a markdown table for benchmarks/RESULTS.md. Memory: a batch of
224x224 activations of the network and its backward pass (~0.3 GB at
batch 8).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from nad_jax.models import efficientnet_lite
# pylint: enable=wrong-import-position


def _time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def layer_rows(batch: int, repeats: int) -> list[str]:
  rows = []
  for size, channels, kernel, stride in ((112, 96, 3, 1), (56, 144, 5, 2)):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(
        (batch, size, size, channels)).astype(np.float32))
    times = {}
    for impl in ("conv", "shifted"):
      module = efficientnet_lite.DepthwiseConv(channels, kernel, stride, impl)
      variables = module.init(jax.random.key(0), x[:1])
      fwd = jax.jit(module.apply)
      grad = jax.jit(jax.grad(lambda v, x, m=module: jnp.sum(
          jnp.square(m.apply(v, x))), argnums=1))
      times[impl] = (_time(fwd, variables, x, repeats=repeats),
                     _time(grad, variables, x, repeats=repeats))
    rows.append(
        f"| depthwise {kernel}x{kernel} s{stride}, {size}x{size}x{channels} "
        f"| {batch} | {times['conv'][0]:.1f} / {times['conv'][1]:.1f} | "
        f"{times['shifted'][0]:.1f} / {times['shifted'][1]:.1f} | "
        f"{times['conv'][0] / times['shifted'][0]:.1f}x / "
        f"{times['conv'][1] / times['shifted'][1]:.1f}x |")
  return rows


def network_row(batch: int, repeats: int) -> str:
  images = jnp.asarray(np.random.default_rng(0).standard_normal(
      (batch, 224, 224, 3)).astype(np.float32))
  times = {}
  for impl in ("conv", "shifted"):
    model = efficientnet_lite.EfficientNetLite0(depthwise_impl=impl)
    variables = jax.jit(model.init)(jax.random.key(0), images[:1])
    gates = {s: jnp.full((c,), 0.5) for s, c in model.gate_sites().items()}

    def loss(g, v, x, model=model):
      logits, acts = model.apply(v, x, g)
      return sum(jnp.sum(jnp.square(a)) for a in acts.values()) + jnp.sum(
          logits)

    fwd = jax.jit(lambda v, x, model=model: model.apply(v, x)[0])
    grad = jax.jit(jax.grad(loss))
    times[impl] = (_time(fwd, variables, images, repeats=repeats),
                   _time(grad, gates, variables, images, repeats=repeats))
  return (f"| EfficientNet-Lite0, 224x224 (forward / gate gradient) | {batch} "
          f"| {times['conv'][0]:.0f} / {times['conv'][1]:.0f} | "
          f"{times['shifted'][0]:.0f} / {times['shifted'][1]:.0f} | "
          f"{times['conv'][0] / times['shifted'][0]:.1f}x / "
          f"{times['conv'][1] / times['shifted'][1]:.1f}x |")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  print(f"# {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {jax.devices()}, jax {jax.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}")
  print("| what | batch | conv ms (fwd / grad) | shifted ms (fwd / grad) "
        "| speed-up |")
  print("|---|---|---|---|---|")
  for row in layer_rows(args.batch, args.repeats):
    print(row, flush=True)
  print(network_row(args.batch, args.repeats), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
