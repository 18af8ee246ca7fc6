"""The per-image out-of-distribution scores, in bits/dim, larger = more likely OOD (see `tfp_glow.ood`):

  bits_per_dim(x)          = -log2 P(x) / D                       (the model's bound; the marginal over labels
                                                                    for a class-conditional model)
  complexity(x)            = 8 * len(PNG(x)) / D                  (Serra et al. 2020's L(x))
  complexity_corrected(x)  = bits_per_dim(x) - complexity(x)
  likelihood_ratio(x)      = bits_per_dim(x) - bits_per_dim_0(x)  (Ren et al. 2019, p_0 a background model)

Images are in the model's scale [-0.5, 0.5), [N, H, W, C]; every score is [N].
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from tfp_glow import data as glow_data

if TYPE_CHECKING:  # annotations only: training imports the flow, which the scores do not need at import
  from numpy.typing import ArrayLike

  from tfp_glow.training.model import GlowModel


class NonFiniteError(ValueError):
  """A score or its input holds NaN or Inf (a diverged model?)."""


def checked_images(images: np.ndarray | tf.Tensor) -> tf.Tensor:
  """`images` as a float32 tensor [N, H, W, C]; ValueError for another rank."""
  images = tf.convert_to_tensor(images, tf.float32)
  if images.shape.rank != 4:
    raise ValueError(f'ood: expected images [N, H, W, C], got shape {images.shape}.')
  return images


def finite_values(values: ArrayLike, name: str) -> np.ndarray:
  """`values` as a flat float64 array; ValueError if empty, NonFiniteError (naming `name`) for NaN or Inf."""
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 0:
    raise ValueError(f'ood: {name} is empty.')
  if not np.all(np.isfinite(values)):
    raise NonFiniteError(f'ood: {name} holds NaN or Inf (a diverged model?).')
  return values


def bits_per_dim(
  model: GlowModel, images: np.ndarray | tf.Tensor, samples: int = 1, seed: int = 0, batch_size: int = 256
) -> np.ndarray:
  """Per-image bits/dim [N] under a `GlowModel`: its dequantization bound with `samples` importance
  samples (`GlowModel.evaluate_bits_per_dim`), with a fixed seed so that scores are reproducible (the
  chunk of `batch_size` images starting at image i uses seed + i).

  A class-conditional model is scored through its marginal over the K labels (uniform pi, see the module
  docstring). In bits/dim, with bpd_y(x) the bound of p(x|y) (the n_bins terms cancel):

    bpd(x) = -log2(sum_y pi(y) 2^(-D bpd_y(x))) / D = -logsumexp_y [log pi(y) - D ln2 bpd_y(x)] / (D ln 2)

  Every class sees the same dequantization draws u_s (same seed), so this is the importance-weighted bound
  of the marginal: sum_y pi(y) (1/S) sum_s w_sy = (1/S) sum_s p(x_s) / q(u_s|b)."""
  images = checked_images(images)
  parts = [
    _chunk_bits_per_dim(model, images[i : i + batch_size], samples, seed + i)
    for i in range(0, int(images.shape[0]), batch_size)
  ]
  return np.concatenate(parts) if parts else np.zeros([0], np.float32)


def _chunk_bits_per_dim(model: GlowModel, images: tf.Tensor, samples: int, seed: int) -> np.ndarray:
  """bits_per_dim of one chunk [n, H, W, C] -> [n]; the marginal over labels for a conditional model."""
  kwargs: dict[str, Any] = dict(samples=samples, seed=seed, per_image=True)
  if not model.num_classes:
    return np.asarray(model.evaluate_bits_per_dim(images, **kwargs))
  n, k = int(images.shape[0]), int(model.num_classes)
  per_class = np.stack(  # [K, n]: bpd_y(x) for every label y
    [
      np.asarray(model.evaluate_bits_per_dim((images, tf.fill([n], y)), **kwargs), np.float64)
      for y in range(k)
    ]
  )
  d_ln2 = model.num_dims * math.log(2.0)
  terms = -math.log(k) - d_ln2 * per_class  # log pi(y) + log P(b|y) - D log n_bins
  top = np.max(terms, axis=0)  # a stable logsumexp over y; NaN stays NaN (checked by the scores' users)
  top = np.where(np.isfinite(top), top, 0.0)
  return -(top + np.log(np.sum(np.exp(terms - top), axis=0))) / d_ln2


def complexity(images: np.ndarray | tf.Tensor, n_bins: int) -> np.ndarray:
  """L(x) [N] in bits/dim: 8 * (bytes of the PNG of the uint8 image) / D (Serra et al. 2020's compressor)."""
  images = checked_images(images)
  pixels = glow_data.to_uint8(images, n_bins)
  d = int(np.prod(images.shape[1:]))
  return np.array([8.0 * len(tf.io.encode_png(p, compression=9).numpy()) / d for p in pixels], np.float64)


def complexity_corrected(
  model: GlowModel, images: np.ndarray | tf.Tensor, samples: int = 1, seed: int = 0
) -> np.ndarray:
  """S(x) = bits_per_dim(x) - complexity(x) [N] (Serra et al. 2020): likelihood relative to how simple x is."""
  return bits_per_dim(model, images, samples, seed) - complexity(images, model.n_bins)


def likelihood_ratio(
  model: GlowModel, background: GlowModel, images: np.ndarray | tf.Tensor, samples: int = 1, seed: int = 0
) -> np.ndarray:
  """bits_per_dim(x) - background's bits_per_dim(x) [N] (Ren et al. 2019's -log likelihood ratio per dim):
  what the model explains beyond what a model of the perturbed data (background statistics) does."""
  if tuple(background.image_shape) != tuple(model.image_shape) or background.n_bins != model.n_bins:
    raise ValueError(
      f'likelihood_ratio: the background model is for images {background.image_shape} with '
      f'{background.n_bins} levels, the model for {model.image_shape} with {model.n_bins}.'
    )
  return bits_per_dim(model, images, samples, seed) - bits_per_dim(background, images, samples, seed)
