"""The tail every source shares: integer bins -> (cache) -> (shuffle) -> batch -> dequantize -> prefetch."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfp_glow.data.quantize import dequantize

MAX_SHUFFLE_BUFFER = 10_000
MAX_SHUFFLE_BYTES = 2**28
CACHES = (None, 'memory')  # or a file path prefix


def check_cache(cache: str | None) -> None:
  if cache is not None and (not isinstance(cache, str) or not cache):
    raise ValueError(f"cache must be None, 'memory' or a file path prefix, got {cache!r}")


def apply_cache(ds: tf.data.Dataset, cache: str | None) -> tf.data.Dataset:
  """None: nothing; 'memory': `Dataset.cache()` (decoded bins in RAM after the first epoch); any other
  string: `Dataset.cache(path)`, bins written to files with that prefix and read back later epochs."""
  if cache is None:
    return ds
  return ds.cache() if cache == 'memory' else ds.cache(cache)


def batch_and_dequantize(
  ds: tf.data.Dataset,
  n_bins: int,
  *,
  num_examples: int | None,
  cache: str | None,
  shuffle: bool,
  batch_size: int,
  drop_remainder: bool,
  seed: int | None,
) -> tf.data.Dataset:
  """Integer bins (uint8, maybe with labels) -> batches of dequantized float32 images.

  Noise comes after cache/shuffle so every epoch gets fresh u; it is drawn per batch from a
  `Dataset.random` stream that re-randomizes on each iteration (reproducible when `seed` is set).
  """
  ds = apply_cache(ds, cache)
  if shuffle:  # at most MAX_SHUFFLE_BYTES of decoded images wait in the buffer (256x256: ~1,400)
    spec = ds.element_spec[0] if isinstance(ds.element_spec, tuple) else ds.element_spec
    per_image = int(np.prod(spec.shape)) if spec.shape.is_fully_defined() else 1
    buffer = min(
      num_examples or MAX_SHUFFLE_BUFFER, MAX_SHUFFLE_BUFFER, max(1024, MAX_SHUFFLE_BYTES // per_image)
    )
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  noise_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

  def add_noise(batch, noise_seed):
    if isinstance(batch, tuple):
      return dequantize(batch[0], n_bins, seed=noise_seed), batch[1]
    return dequantize(batch, n_bins, seed=noise_seed)

  ds = tf.data.Dataset.zip((ds, noise_seeds)).map(add_noise, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def shuffled_indices(n: int, shuffle: bool, seed: int | None) -> tf.data.Dataset:
  """0..n-1, in a new random order on every iteration when `shuffle` (a full permutation, drawn in one
  op, so streaming sources shuffle file names, not decoded images, at no memory cost); else in order."""
  if not shuffle:
    return tf.data.Dataset.range(n)
  seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2).take(1)
  return seeds.map(
    lambda s: tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=s)
  ).unbatch()
