"""Largest differences between the Flax networks and torchvision.

Usage (needs torch + torchvision)::

  python benchmarks/parity_numbers.py [--sizes 224,200] [--batch_size 2] \\
      [--archs vgg16,resnet50,densenet121 | --archs all]

Random torchvision weights (seed 0; BatchNorm affine and running statistics
set to random non-trivial values), converted with
``weights_conversion.convert_torchvision``, run on the same N(0, 1) input;
JAX at the highest matmul precision, torch with TF32 off, float32. Prints,
per network and size, the largest relative difference
(``max |flax - torch| / max |torch|``) over the gate sites, the site where
it occurs, and the one at the logits (markdown).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import torch
import torchvision

from weights_conversion import convert_torchvision
# pylint: enable=wrong-import-position


def random_state_dict(arch: str) -> dict[str, torch.Tensor]:
  torch.manual_seed(0)
  model = getattr(torchvision.models, arch)(weights=None)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.3)
        module.running_mean.normal_(0.0, 0.5)
        module.running_var.uniform_(0.3, 2.3)
  return model.state_dict()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="224,200")
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--archs", default="vgg16,resnet50,densenet121",
                      help="comma-separated torchvision names, or 'all'")
  args = parser.parse_args()
  archs = (list(convert_torchvision.ARCHS) if args.archs == "all"
           else args.archs.split(","))
  print("| network | input | worst site (rel) | logits (rel) | logits (abs) |")
  print("|---|---|---|---|---|")
  for arch in archs:
    state_dict = random_state_dict(arch)
    variables = convert_torchvision.convert_state_dict(arch, state_dict)
    for size in (int(s) for s in args.sizes.split(",")):
      diffs = convert_torchvision.compare_with_torchvision(
          arch, variables, state_dict, image_size=size,
          batch_size=args.batch_size)
      sites = {k: v for k, v in diffs.items() if k != "logits"}
      worst = max(sites, key=lambda k: sites[k][1])
      print(f"| {arch} | {size} | {sites[worst][1]:.1e} ({worst}) | "
            f"{diffs['logits'][1]:.1e} | {diffs['logits'][0]:.1e} |",
            flush=True)


if __name__ == "__main__":
  main()
