"""Per-image geometry shared by the sources: central crop, antialiased resize, zero-padding to 32x32."""

from __future__ import annotations

import tensorflow as tf


def resize_uint8(images: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear resize with antialiasing (good for down-scaling), rounded back to uint8."""
  x = tf.image.resize(tf.cast(images, tf.float32), (size, size), method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def center_crop(image: tf.Tensor, size: int | None = None) -> tf.Tensor:
  """Central `size` x `size` crop of a `[H, W, C]` image; size None: the largest square."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  s = tf.minimum(h, w) if size is None else size
  top, left = (h - s) // 2, (w - s) // 2
  return image[top : top + s, left : left + s]


def padded_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
  """Shape after `pad_to_32`; rejects images that are already larger."""
  h, w, c = shape
  if h is None or w is None or h > 32 or w > 32:
    raise ValueError(f'pad_to_32 needs images of at most 32x32, these are {h}x{w}')
  return 32, 32, c


def pad_to_32_image(image: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
  """Zero-pad `[..., H, W, C]` of static `shape` to 32x32, centred (MNIST 28x28 -> 32x32 as the reference)."""
  h, w, _ = shape
  top, left = (32 - h) // 2, (32 - w) // 2
  paddings = [[0, 0]] * (len(image.shape) - 3) + [[top, 32 - h - top], [left, 32 - w - left], [0, 0]]
  return tf.pad(image, paddings)
