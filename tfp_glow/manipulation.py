"""Semantic manipulation in the latent space (Kingma & Dhariwal 2018, section 5, on CelebA attributes).

From labelled images, an attribute's direction is the mean latent of the images that have it minus the
mean latent of those that do not, level by level:

    d_l = mean_{n: a_n} eps_l(x_n) - mean_{n: not a_n} eps_l(x_n)        [h_l, w_l, c_l] per level l

and an image moves along it by decoding its latent plus a multiple of the direction:

    x(alpha) = decode(eps(x) + alpha * d),   alpha = 0 gives back x (up to float round-off)

  direction = attribute_direction(model, images, has_attribute)   # images [N, H, W, C], bools [N]
  row = manipulate(model, image, direction, alphas=[-1, -0.5, 0, 0.5, 1])   # [5, H, W, C] floats

The model is any object with GlowModel's `encode(images, labels)` / `decode(latents, labels)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, TypeAlias

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
  from tfp_glow.training.model import GlowModel

Images: TypeAlias = tf.Tensor | np.ndarray  # images [N, H, W, C] (or labels [N], a mask [N])


def encode_in_batches(
  model: GlowModel, images: Images, labels: Images | None = None, batch_size: int = 256
) -> list[tf.Tensor]:
  """Per-level latents [N, h_l, w_l, c_l] of images [N, H, W, C], encoded `batch_size` at a time."""
  images = tf.convert_to_tensor(images)
  n = int(images.shape[0])
  parts = []
  for start in range(0, n, batch_size):
    batch_labels = None if labels is None else labels[start : start + batch_size]
    parts.append(model.encode(images[start : start + batch_size], batch_labels))
  return [tf.concat(level, axis=0) for level in zip(*parts)]


def attribute_direction(
  model: GlowModel,
  images: Images,
  has_attribute: Images | Sequence[bool],
  labels: Images | None = None,
  batch_size: int = 256,
) -> list[tf.Tensor]:
  """Mean latent of the images with the attribute minus that of the images without, per level.

  images: [N, H, W, C] in the model's scale; has_attribute: bools [N] (both groups non-empty);
  labels: class labels [N] for a class-conditional model. Returns [d_1, ..., d_L], d_l [h_l, w_l, c_l].
  """
  mask = np.asarray(has_attribute, dtype=bool).reshape(-1)
  n = int(tf.convert_to_tensor(images).shape[0])
  if mask.shape[0] != n:
    raise ValueError(f'attribute_direction: {n} images but {mask.shape[0]} has_attribute flags.')
  if mask.all() or not mask.any():
    raise ValueError(
      f'attribute_direction: needs images with and without the attribute, got {int(mask.sum())} with '
      f'and {int((~mask).sum())} without.'
    )
  latents = encode_in_batches(model, images, labels, batch_size)
  return [
    tf.reduce_mean(tf.boolean_mask(z, mask), axis=0) - tf.reduce_mean(tf.boolean_mask(z, ~mask), axis=0)
    for z in latents
  ]


def manipulate(
  model: GlowModel,
  image: Images,
  direction: Sequence[tf.Tensor],
  alphas: Sequence[float],
  label: int | tf.Tensor | None = None,
) -> tf.Tensor:
  """Decodes `image` [H, W, C] moved along `direction` by each alpha: [len(alphas), H, W, C] floats.

  x(alpha) = decode(encode(x) + alpha * d); alpha = 0 is the reconstruction of x.
  label: the image's class, for a class-conditional model (kept for every alpha).
  """
  alphas = [float(a) for a in alphas]
  if not alphas:
    raise ValueError('manipulate: give at least one alpha.')
  image = tf.convert_to_tensor(image)
  if image.shape.rank != 3:
    raise ValueError(f'manipulate: expected one image [H, W, C], got shape {image.shape}.')
  labels = None if label is None else tf.constant([int(label)], tf.int32)
  latents = model.encode(image[tf.newaxis], labels)
  if len(direction) != len(latents):
    raise ValueError(f'manipulate: the direction has {len(direction)} levels, the model {len(latents)}.')
  a = tf.constant(alphas, latents[0].dtype)[:, tf.newaxis, tf.newaxis, tf.newaxis]
  moved = [z + a * tf.cast(d, z.dtype)[tf.newaxis] for z, d in zip(latents, direction)]
  return model.decode(moved, None if labels is None else tf.repeat(labels, len(alphas)))
