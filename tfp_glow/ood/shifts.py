"""Inputs made unlike the training data: `shifted` OOD test sets, and `perturb`ed images (a background
model's training data for `likelihood_ratio`, Ren et al. 2019), one batch or a whole `tf.data.Dataset`.

Images are in the model's scale [-0.5, 0.5), [N, H, W, C], dequantized or as bin centres.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfp_glow import data as glow_data
from tfp_glow.dequantization import bins_of
from tfp_glow.names import OOD_SHIFTS as SHIFTS
from tfp_glow.ood.scores import checked_images


def perturb(
  images: np.ndarray | tf.Tensor, fraction: float, n_bins: int, seed: tf.Tensor | None = None
) -> tf.Tensor:
  """Ren et al. 2019's background training data: each pixel replaced, with probability `fraction`, by a
  uniformly random bin (then dequantized again), same shape; images in [-0.5, 0.5) (dequantized).
  `seed`: a stateless seed (int [2]), else fresh noise."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'perturb: fraction must be in [0, 1], got {fraction!r}.')
  images = tf.convert_to_tensor(images, tf.float32)
  shape = tf.shape(images)
  if seed is None:
    replace = tf.random.uniform(shape) < fraction
    noise_bins = tf.random.uniform(shape, 0, n_bins, tf.int32)
    seed = tf.random.uniform([2], 0, 2**31 - 1, tf.int32)
  else:
    seeds = tf.random.experimental.stateless_split(seed, 3)
    replace = tf.random.stateless_uniform(shape, seeds[0]) < fraction
    noise_bins = tf.random.stateless_uniform(shape, seeds[1], 0, n_bins, tf.int32)
    seed = seeds[2]
  bins = tf.where(replace, tf.cast(noise_bins, tf.float32), bins_of(images, n_bins))
  return glow_data.dequantize(bins, n_bins, seed=seed)


def perturbed_dataset(
  dataset: tf.data.Dataset, fraction: float, n_bins: int, seed: int | None = None
) -> tf.data.Dataset:
  """A `tf.data.Dataset` of image batches (or (images, labels)) with its images `perturb`ed, fresh noise each
  pass: the training data of a background model.

  The noise is stateless, seeded per batch from a `tf.data.Dataset.random` stream that re-randomizes on
  every iteration (as the data pipeline's dequantization noise): each epoch gets new noise, and `seed`
  makes the sequence of epochs reproducible. (A stateful random op in the map would replay the same noise
  every epoch under a global seed: the background model would see one fixed perturbation.)"""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'the background noise fraction must be in (0, 1], got {fraction!r}.')
  noise_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

  def apply(batch, noise_seed):
    batch = batch if isinstance(batch, tuple) else (batch,)
    images = perturb(batch[0], fraction, n_bins, seed=noise_seed)
    return images if len(batch) == 1 else (images, *batch[1:])

  return tf.data.Dataset.zip((dataset, noise_seeds)).map(apply, num_parallel_calls=tf.data.AUTOTUNE)


def shifted(images: np.ndarray | tf.Tensor, shift: str, n_bins: int, seed: int = 0) -> tf.Tensor:
  """OOD test sets made from in-distribution images [N, H, W, C] in [-0.5, 0.5) (as bin centres, same shape):

  noise:         every pixel a uniformly random bin        constant:      each image one random bin
  inverted:      b -> n_bins - 1 - b                        upside_down:   rows reversed
  half_contrast: b -> floor(b / 2)
  """
  b = bins_of(checked_images(images), n_bins)
  rng = np.random.default_rng(seed)
  if shift == 'noise':
    b = tf.constant(rng.integers(0, n_bins, size=b.shape), tf.float32)
  elif shift == 'constant':
    b = tf.ones_like(b) * tf.constant(rng.integers(0, n_bins, size=[b.shape[0], 1, 1, 1]), tf.float32)
  elif shift == 'inverted':
    b = n_bins - 1 - b
  elif shift == 'upside_down':
    b = tf.reverse(b, axis=[1])
  elif shift == 'half_contrast':
    b = tf.floor(b / 2)
  else:
    raise ValueError(f'ood: unknown shift {shift!r}; accepted: {", ".join(SHIFTS)}.')
  return (b + 0.5) / n_bins - 0.5
