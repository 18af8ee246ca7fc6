"""Quantization of pixels into bins and the uniform dequantization Glow trains on.

    bins = floor(pixel / 2**(8 - n_bits))          integer in [0, n_bins), n_bins = 2**n_bits
    x    = (bins + u) / n_bins - 0.5,  u ~ U[0, 1)  float in [-0.5, 0.5), fresh u every epoch

so that -log p(x) + D * log(n_bins) upper-bounds the discrete code length, D = H * W * C.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def check_n_bits(n_bits: int) -> None:
  if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)) or not 1 <= n_bits <= 8:
    raise ValueError(f'n_bits must be an integer in 1..8, got {n_bits!r}')


def reduce_bits(images: tf.Tensor | np.ndarray, n_bits: int) -> tf.Tensor:
  """Integer pixels 0..255 `[..., H, W, C]` -> int32 bins floor(x / 2**(8 - n_bits)) in [0, 2**n_bits)."""
  check_n_bits(n_bits)
  return tf.bitwise.right_shift(tf.cast(images, tf.int32), 8 - n_bits)


def dequantize(bins: tf.Tensor | np.ndarray, n_bins: int, seed: tf.Tensor | None = None) -> tf.Tensor:
  """Integer bins in [0, n_bins) -> float32 x = (bins + u) / n_bins - 0.5 in [-0.5, 0.5), same shape.

  u ~ U[0, 1) is drawn afresh on every call, or from `seed` (a stateless seed, int `[2]`) when given.
  In float32, u close to 1 can round x onto the next bin's lower edge (about 1e-5 of values); those
  values are moved to their bin's centre so that floor((x + 0.5) * n_bins) == bins always holds.
  """
  bins = tf.cast(bins, tf.float32)
  if seed is None:
    u = tf.random.uniform(tf.shape(bins), dtype=tf.float32)
  else:
    u = tf.random.stateless_uniform(tf.shape(bins), seed=seed, dtype=tf.float32)
  x = (bins + u) / n_bins - 0.5
  in_bin = tf.equal(tf.floor((x + 0.5) * n_bins), bins)
  return tf.where(in_bin, x, (bins + 0.5) / n_bins - 0.5)


def to_uint8(x: tf.Tensor | np.ndarray, n_bins: int) -> tf.Tensor:
  """Model-space x (about [-0.5, 0.5)) -> displayable uint8 pixels, same shape.

  bin = clip(floor((x + 0.5) * n_bins), 0, n_bins - 1); pixel = round(bin * 255 / (n_bins - 1)).
  Samples may leave [-0.5, 0.5); the clip maps them to the extreme bins.
  """
  if n_bins < 2:
    raise ValueError(f'n_bins must be >= 2, got {n_bins}')
  b = tf.clip_by_value(tf.floor((tf.cast(x, tf.float32) + 0.5) * n_bins), 0.0, n_bins - 1.0)
  return tf.cast(tf.round(b * (255.0 / (n_bins - 1))), tf.uint8)
