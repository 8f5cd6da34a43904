"""Analyses that run the network: activation maps, mosaic hit rates, ablations.

* ``activation_maps``: per gate site, the channel sum of the site's output,
  min-max scaled per image, resized to the input (bicubic) and binarised to
  its top ``mask_rate`` of pixels (paper Fig. 1 and 5), for the original
  network and any set of paths.
* ``build_mosaics`` / ``shrink_mosaics`` / ``mosaic_hit_rates``: the
  authors' hit rate. Four images of four random concepts are tiled into a
  2x2 mosaic of twice the input size and shrunk to the input size (PIL's
  antialiased bilinear, torchvision's ``Resize`` on PIL images); for each
  concept's path, the share of its top-``mask_rate`` activation pixels that
  fall in its own quadrant (chance 0.25).
* ``class_ablations``: the causal tests, per concept on its validation
  images: accuracy with only the path's units kept (sufficiency = path
  accuracy), with the path's units removed (necessity), and the same two
  with random paths of the same size per site (the control); plus the
  original network's softmax, for the top-k confusions.
* ``cross_class``: images of class d through the path of class c: does a
  path serve only its own class?

Conventions where the authors' scripts leave a choice: bicubic resizing is
Keys' cubic with a = -0.5 and half-pixel centres (PIL's ``BICUBIC`` and
``jax.image.resize``; torch's and OpenCV's bicubic use a = -0.75); the top
``mask_rate`` of pixels is every pixel at least as large as the k-th
largest, k = round(mask_rate * H * W) (ties at the threshold are all kept);
a map that is constant is all zeros after scaling (every pixel kept).

All forward passes are jitted and batched: a chunk of (image, gate set)
pairs runs as one ``jax.vmap``, padded to a fixed size so each function
compiles once. Memory: a chunk of ``batch_size`` pairs holds every site's
activation and, for maps, one ``[H, W]`` float32 map per pair and site
(VGG16 at 224 px, 13 sites, 64 pairs: about 170 MB).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# Quadrant q of a 2x2 mosaic: 0 top-left, 1 top-right, 2 bottom-left,
# 3 bottom-right.
NUM_QUADRANTS = 4


def _spatial_sites(model, variables, image_shape) -> list[str]:
  """The gate sites whose output has spatial axes ``[B, h, w, C]``."""
  shapes = jax.eval_shape(
      lambda v, x: model.apply(v, x)[1], variables,
      jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  return [site for site in model.gate_sites() if len(shapes[site].shape) == 4]


def _scaled_maps(activations, sites, out_size):
  """Channel sums -> min-max scaled -> bicubic to ``out_size`` ``[B, H, W]``."""
  maps = {}
  for site in sites:
    summed = jnp.sum(activations[site].astype(jnp.float32), axis=-1)
    low = jnp.min(summed, axis=(1, 2), keepdims=True)
    high = jnp.max(summed, axis=(1, 2), keepdims=True)
    span = high - low
    scaled = jnp.where(span > 0, (summed - low) / jnp.where(span > 0, span,
                                                            1.0), 0.0)
    maps[site] = jax.image.resize(
        scaled, (scaled.shape[0], out_size[0], out_size[1]), "bicubic")
  return maps


def top_pixels(maps: np.ndarray, mask_rate: float) -> np.ndarray:
  """Boolean mask of the top ``mask_rate`` of pixels of each ``[..., H, W]``
  map: pixels >= the k-th largest, k = max(1, round(mask_rate * H * W)).

  On the host with ``np.partition`` (linear time; XLA's CPU sort and top_k
  are about 50 times slower for these sizes).
  """
  maps = np.asarray(maps)
  height, width = maps.shape[-2:]
  pixels = height * width
  k = max(1, int(round(mask_rate * pixels)))
  flat = maps.reshape(-1, pixels)
  threshold = np.partition(flat, pixels - k, axis=-1)[:, pixels - k]
  return (flat >= threshold[:, None]).reshape(maps.shape)


def make_maps_fn(model, sites: Sequence[str], out_size: tuple[int, int]):
  """Jitted ``(variables, images [P, H, W, 3], gates {site: [P, C]})
  -> {site: [P, out_h, out_w]}``: each image through its own gate set."""
  sites = list(sites)

  def one(variables, image, gates):
    _, activations = model.apply(variables, image[None], gates=gates)
    return {site: m[0] for site, m in _scaled_maps(activations, sites,
                                                   out_size).items()}

  def maps_fn(variables, images, gates):
    return jax.vmap(one, in_axes=(None, 0, 0))(variables, images, gates)

  return jax.jit(maps_fn)


def activation_maps(model, variables, images: np.ndarray,
                    gate_sets: Sequence[Mapping[str, np.ndarray] | None],
                    mask_rate: float = 0.1,
                    sites: Sequence[str] | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Activation maps of each image under each gate set (Fig. 1, 5).

  Args:
    model, variables: the network.
    images: ``[B, H, W, 3]`` network inputs.
    gate_sets: G entries, each ``None`` (the original network) or a path
      ``{site: [C]}`` (0/1).
    mask_rate: share of pixels kept in the binary maps.
    sites: sites to map (default: every site with spatial output).

  Returns:
    ``(maps, masks)``: site -> float32 ``[G, B, H, W]`` scaled maps in the
    input's resolution, and site -> bool ``[G, B, H, W]`` top pixels.
  """
  images = np.asarray(images, np.float32)
  if sites is None:
    sites = _spatial_sites(model, variables, images.shape[1:])
  sites = list(sites)
  site_channels = model.gate_sites()
  num_sets, num_images = len(gate_sets), len(images)
  # Every (gate set, image) pair in one vmapped call; the original network
  # is the all-ones gate (x * 1 = x exactly).
  gates = {site: np.stack([
      np.ones(channels, np.float32) if g is None else
      np.asarray(g[site], np.float32) for g in gate_sets]).repeat(
          num_images, 0) for site, channels in site_channels.items()}
  pair_images = np.tile(images, (num_sets, 1, 1, 1))
  maps_fn = make_maps_fn(model, sites, images.shape[1:3])
  result = maps_fn(variables, jnp.asarray(pair_images),
                   {site: jnp.asarray(g) for site, g in gates.items()})
  maps = {site: np.asarray(result[site]).reshape(
      (num_sets, num_images) + images.shape[1:3]) for site in sites}
  masks = {site: top_pixels(value, mask_rate) for site, value in
           maps.items()}
  return maps, masks


# --------------------------------------------------------------------------
# Mosaics and the hit rate.
# --------------------------------------------------------------------------


def quadrant_masks(height: int, width: int) -> np.ndarray:
  """bool ``[4, H, W]``: the quadrants (rows < H // 2 are the top ones)."""
  rows = np.arange(height)[:, None] < height // 2
  cols = np.arange(width)[None, :] < width // 2
  return np.stack([rows & cols, rows & ~cols, ~rows & cols, ~rows & ~cols])


def tile_mosaic(tiles: np.ndarray) -> np.ndarray:
  """``[4, S, S, C]`` images -> one ``[2S, 2S, C]`` mosaic (quadrant order)."""
  top = np.concatenate([tiles[0], tiles[1]], axis=1)
  bottom = np.concatenate([tiles[2], tiles[3]], axis=1)
  return np.concatenate([top, bottom], axis=0)


def shrink_mosaics(mosaics: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes ``[M, H, W, C]`` to ``size`` like PIL's antialiased bilinear.

  The authors' preprocessing shrinks the 448 px mosaic to the 224 px input
  with torchvision's ``Resize`` on a PIL image, i.e. PIL ``BILINEAR`` with
  its antialiasing filter; ``jax.image.resize(..., 'linear',
  antialias=True)`` is that filter (the tests compare with PIL). Applied to
  normalised images, which commutes with the per-channel affine
  normalisation.
  """
  mosaics = jnp.asarray(mosaics, jnp.float32)
  return np.asarray(jax.image.resize(
      mosaics, (mosaics.shape[0],) + tuple(size) + (mosaics.shape[-1],),
      "linear", antialias=True))


def build_mosaics(dataset, concept_ids: Sequence[int], num_mosaics: int,
                  rng: np.random.Generator, images_per_class: int = 16,
                  concept_pool: Sequence[int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Mosaics of four validation images of four different random concepts.

  Args:
    dataset: serves validation images (``eval_batches``).
    concept_ids: the run's N concepts (class ids).
    num_mosaics: M.
    rng: numpy generator (which concepts, which images).
    images_per_class: each tile is one of the first this many validation
      images of its class.
    concept_pool: indices into ``concept_ids`` to draw from (default all).

  Returns:
    ``(mosaics [M, 2H, 2W, 3], quadrant_concepts [M, 4])`` with indices into
    ``concept_ids``.
  """
  pool = np.arange(len(concept_ids)) if concept_pool is None else np.asarray(
      concept_pool)
  if len(pool) < NUM_QUADRANTS:
    raise ValueError(f"mosaics need at least 4 concepts; got {len(pool)}")
  cache: dict[int, np.ndarray] = {}

  def images_of(index):
    if index not in cache:
      batches = [images for images, _ in dataset.eval_batches(
          int(concept_ids[index]), images_per_class, images_per_class)]
      if not batches:
        raise ValueError(f"class {concept_ids[index]} has no validation "
                         f"images for the mosaics")
      cache[index] = np.concatenate(batches)
    return cache[index]

  quadrant_concepts = np.stack([rng.choice(pool, NUM_QUADRANTS, replace=False)
                                for _ in range(num_mosaics)])
  mosaics = []
  for row in quadrant_concepts:
    tiles = []
    for index in row:
      images = images_of(int(index))
      tiles.append(images[rng.integers(len(images))])
    mosaics.append(tile_mosaic(np.stack(tiles)))
  return np.stack(mosaics).astype(np.float32), quadrant_concepts


def quadrant_shares(maps: np.ndarray, mask_rate: float) -> np.ndarray:
  """``[..., H, W]`` maps -> ``[..., 4]``: share of each map's top
  ``mask_rate`` pixels in each quadrant (``quadrant_masks``)."""
  top = top_pixels(maps, mask_rate)
  quadrants = quadrant_masks(*maps.shape[-2:]).astype(np.float64)
  counts = np.einsum("...hw,qhw->...q", top.astype(np.float64), quadrants)
  return counts / top.sum((-2, -1))[..., None]


def mosaic_hit_rates(model, variables, inputs: np.ndarray,
                     quadrant_concepts: np.ndarray,
                     path_sets: Mapping[str, np.ndarray],
                     mask_rate: float = 0.1, batch_size: int = 64,
                     sites: Sequence[str] | None = None) -> dict[str, Any]:
  """The authors' hit rate of each path on each mosaic.

  For mosaic m and quadrant q with concept c = ``quadrant_concepts[m, q]``,
  every path variant g of c (seeds, random controls) runs on the mosaic;
  per site, the share of its top ``mask_rate`` map pixels that lie in
  quadrant q is its hit.

  Args:
    model, variables: the network.
    inputs: ``[M, H, W, 3]`` network inputs (mosaics, shrunk or not).
    quadrant_concepts: ``[M, 4]`` concept index (row of ``path_sets``) of
      each quadrant.
    path_sets: site -> ``[N, G, C]`` 0/1 gates: G variants per concept.
    mask_rate: the share of pixels kept (authors: 0.1).
    batch_size: (image, gate set) pairs per forward chunk.
    sites: sites to score (default: every spatial site).

  Returns:
    ``sites`` (list) and ``hits`` float32 ``[M, 4, G, num_sites]``.
  """
  inputs = np.asarray(inputs, np.float32)
  if sites is None:
    sites = _spatial_sites(model, variables, inputs.shape[1:])
  sites = list(sites)
  num_mosaics = inputs.shape[0]
  num_variants = next(iter(path_sets.values())).shape[1]
  maps_fn = make_maps_fn(model, sites, inputs.shape[1:3])
  mosaic_index, quadrant, variant = np.meshgrid(
      np.arange(num_mosaics), np.arange(NUM_QUADRANTS),
      np.arange(num_variants), indexing="ij")
  mosaic_index, quadrant, variant = (mosaic_index.ravel(), quadrant.ravel(),
                                     variant.ravel())
  concept = quadrant_concepts[mosaic_index, quadrant]
  num_pairs = len(mosaic_index)
  hits = np.zeros((num_pairs, len(sites)), np.float32)
  for start in range(0, num_pairs, batch_size):
    index = np.arange(start, start + batch_size)
    real = index < num_pairs
    index = np.where(real, index, num_pairs - 1)
    gates = {site: jnp.asarray(p[concept[index], variant[index]], jnp.float32)
             for site, p in path_sets.items()}
    maps = maps_fn(variables, jnp.asarray(inputs[mosaic_index[index]]),
                   gates)
    shares = quadrant_shares(np.stack([np.asarray(maps[site])
                                       for site in sites], 1),
                             mask_rate)  # [P, sites, 4]
    own = shares[np.arange(len(index)), :, quadrant[index]]  # [P, sites]
    hits[index[real]] = own[real]
  return {"sites": sites,
          "hits": hits.reshape(num_mosaics, NUM_QUADRANTS, num_variants,
                               len(sites))}


# --------------------------------------------------------------------------
# Ablations: sufficiency, necessity, random controls, cross-class.
# --------------------------------------------------------------------------


def make_ablation_fn(model):
  """Jitted ``(variables, images [B, ...], gate_sets {site: [G, C]})`` ->
  ``(original_prediction [B], original_probabilities [B, O],
  gated_prediction [G, B])``."""

  def ablation_fn(variables, images, gate_sets):
    logits, _ = model.apply(variables, images)

    def gated(gates):
      gated_logits, _ = model.apply(variables, images, gates=gates)
      return jnp.argmax(gated_logits, axis=-1)

    return (jnp.argmax(logits, axis=-1), jax.nn.softmax(logits, axis=-1),
            jax.vmap(gated)(gate_sets))

  return jax.jit(ablation_fn)


def _padded_batches(dataset, class_id, batch_size, max_images):
  for images, labels in dataset.eval_batches(int(class_id), batch_size,
                                             max_images):
    count = len(labels)
    if count < batch_size:
      images = np.concatenate([images, np.repeat(
          images[-1:], batch_size - count, 0)])
    yield np.asarray(images, np.float32), np.asarray(labels), count


def class_ablations(model, variables, dataset, concept_ids: Sequence[int],
                    paths: Mapping[str, np.ndarray],
                    random_paths: Mapping[str, np.ndarray], *,
                    batch_size: int, max_images: int | None = None
                    ) -> dict[str, np.ndarray]:
  """Accuracy of each class with its path kept / removed, and controls.

  For concept i and its validation images, gate sets: its path per seed
  (kept), the complement of its path per seed (removed), and per random
  draw a random path with the same number of units per site (kept) and
  its complement (removed). All competing in the full argmax, as path
  accuracy does.

  Args:
    model, variables: the network.
    dataset: serves validation images (``eval_batches``).
    concept_ids: N class ids.
    paths: site -> bool ``[N, S, C]``.
    random_paths: site -> bool ``[N, D, C]`` (``analyses.random_paths_like``).
    batch_size: images per forward chunk (the last one padded).
    max_images: at most this many validation images per class.

  Returns:
    ``original [N]``, ``kept [N, S]``, ``removed [N, S]``,
    ``random_kept [N, D]``, ``random_removed [N, D]`` accuracies;
    ``mean_probabilities [N, O]`` (the original network's softmax averaged
    over the class's images), ``first_probabilities [N, O]`` (its first
    image's), ``output_of_concept [N]`` (the label the network must
    predict), ``num_images [N]``.
  """
  ablation_fn = make_ablation_fn(model)
  num_concepts = len(concept_ids)
  num_seeds = next(iter(paths.values())).shape[1]
  num_draws = next(iter(random_paths.values())).shape[1]
  out = {"original": np.zeros(num_concepts),
         "kept": np.zeros((num_concepts, num_seeds)),
         "removed": np.zeros((num_concepts, num_seeds)),
         "random_kept": np.zeros((num_concepts, num_draws)),
         "random_removed": np.zeros((num_concepts, num_draws)),
         "output_of_concept": np.zeros(num_concepts, np.int64),
         "num_images": np.zeros(num_concepts, np.int64)}
  mean_probabilities, first_probabilities = None, None
  for i, class_id in enumerate(concept_ids):
    gate_sets = {}
    for site in paths:
      kept = np.asarray(paths[site][i], np.float32)
      random_kept = np.asarray(random_paths[site][i], np.float32)
      gate_sets[site] = jnp.asarray(np.concatenate(
          [kept, 1 - kept, random_kept, 1 - random_kept]))
    hits = np.zeros(2 * num_seeds + 2 * num_draws)
    hits_original, count_all, probability_sum = 0, 0, None
    for images, labels, count in _padded_batches(dataset, class_id,
                                                 batch_size, max_images):
      prediction, probabilities, gated = ablation_fn(
          variables, jnp.asarray(images), gate_sets)
      prediction = np.asarray(prediction)[:count]
      probabilities = np.asarray(probabilities, np.float64)[:count]
      gated = np.asarray(gated)[:, :count]
      labels = labels[:count]
      if count_all == 0:
        out["output_of_concept"][i] = int(labels[0])
        if first_probabilities is None:
          first_probabilities = np.zeros((num_concepts,
                                          probabilities.shape[-1]))
          mean_probabilities = np.zeros_like(first_probabilities)
        first_probabilities[i] = probabilities[0]
      hits_original += int(np.sum(prediction == labels))
      hits += np.sum(gated == labels[None], axis=1)
      probability_sum = probabilities.sum(0) if probability_sum is None else (
          probability_sum + probabilities.sum(0))
      count_all += count
    if count_all == 0:
      raise ValueError(f"class {class_id} ({dataset.class_names[class_id]!r})"
                       f" has no validation images")
    accuracy = hits / count_all
    out["original"][i] = hits_original / count_all
    out["kept"][i] = accuracy[:num_seeds]
    out["removed"][i] = accuracy[num_seeds:2 * num_seeds]
    out["random_kept"][i] = accuracy[2 * num_seeds:2 * num_seeds + num_draws]
    out["random_removed"][i] = accuracy[2 * num_seeds + num_draws:]
    out["num_images"][i] = count_all
    mean_probabilities[i] = probability_sum / count_all
    logging.log_every_n_seconds(logging.INFO, "  ablations: %d/%d classes",
                                10, i + 1, num_concepts)
  out["mean_probabilities"] = mean_probabilities
  out["first_probabilities"] = first_probabilities
  return out


def cross_class(model, variables, dataset, concept_ids: Sequence[int],
                paths: Mapping[str, np.ndarray], output_of_concept: np.ndarray,
                *, batch_size: int, images_per_class: int
                ) -> dict[str, np.ndarray]:
  """Images of each class through each class's path.

  Args:
    model, variables: the network.
    dataset: serves validation images.
    concept_ids: X class ids (a subset of the run's concepts).
    paths: site -> bool ``[X, C]`` (one path per class, e.g. seed 0).
    output_of_concept: ``[X]`` the label of each class.
    batch_size: images per forward chunk.
    images_per_class: the first this many validation images of each class.

  Returns:
    ``accuracy [X, X]``: row c (path), column d (images): share of class
    d's images classified correctly (as d) through path c;
    ``predicted_as_path [X, X]``: share of class d's images classified as
    class c through path c.
  """
  ablation_fn = make_ablation_fn(model)
  num = len(concept_ids)
  gate_sets = {site: jnp.asarray(np.asarray(p, np.float32))
               for site, p in paths.items()}
  output_of_concept = np.asarray(output_of_concept)
  accuracy = np.zeros((num, num))
  predicted_as_path = np.zeros((num, num))
  for d, class_id in enumerate(concept_ids):
    correct, as_path, total = np.zeros(num), np.zeros(num), 0
    for images, labels, count in _padded_batches(dataset, class_id,
                                                 batch_size, images_per_class):
      _, _, gated = ablation_fn(variables, jnp.asarray(images), gate_sets)
      gated = np.asarray(gated)[:, :count]  # [X paths, count]
      correct += np.sum(gated == labels[:count][None], axis=1)
      as_path += np.sum(gated == output_of_concept[:, None], axis=1)
      total += count
    accuracy[:, d] = correct / max(total, 1)
    predicted_as_path[:, d] = as_path / max(total, 1)
  return {"accuracy": accuracy, "predicted_as_path": predicted_as_path}
