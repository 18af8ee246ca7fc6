"""Nalisnick et al. 2019b's typicality test, a test on batches of M inputs (see `tfp_glow.ood`):

  eps(batch) = |mean_m bits_per_dim(x_m) - H|,   H = mean bits/dim of training data (`training_entropy`)

and its threshold, a bootstrap quantile of eps over held-out in-distribution batches (`TypicalityTest`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Iterable

import numpy as np
import tensorflow as tf

from tfp_glow.names import TYPICALITY_IMAGES
from tfp_glow.ood.scores import bits_per_dim, checked_images, finite_values

if TYPE_CHECKING:
  from numpy.typing import ArrayLike

  from tfp_glow.training.model import GlowModel


def training_entropy(
  model: GlowModel,
  train_data: np.ndarray | tf.Tensor | Iterable,
  max_images: int = TYPICALITY_IMAGES,
  samples: int = 1,
  seed: int = 0,
  batch_size: int = 256,
) -> tuple[float, int]:
  """(H, count): typicality's H, the mean bits/dim of training data, estimated from at most `max_images`
  of them, streamed: a running sum over batches, so memory holds one batch of images and its per-image
  values, never the split. Returns the estimate and how many images it used.

  `train_data`: images [N, H, W, C] (more than `max_images` of them: a random subset, drawn with `seed`),
  or an iterable of batches (a `tf.data.Dataset` of images or of (images, labels); labels are not used,
  conditional models give the marginal): its first `max_images` images, so pass it shuffled (the CLI does,
  with a fixed seed). The batch starting at image i is scored with seed + i (as `bits_per_dim`), so a
  stream of `batch_size` batches gives exactly the mean of `bits_per_dim` over the same images.

  Why 10,000 by default (TYPICALITY_IMAGES): H enters the test as |mean of M images - H|, whose spread over
  in-distribution batches is sigma / sqrt(M) (sigma: the per-image spread of bits/dim); H's own standard
  error is sigma / sqrt(N), sqrt(M / N) of that: 3% for the default M = 8, small next to the threshold,
  while the cost stays that of one pass over a test-set-sized sample (the whole of ImageNet 64's
  1.28M-image training split would take over a hundred times as long, for no visible change)."""
  if not isinstance(max_images, (int, np.integer)) or max_images < 1:
    raise ValueError(f'training_entropy: max_images must be an integer >= 1, got {max_images!r}.')
  if not isinstance(train_data, (np.ndarray, tf.Tensor)) and isinstance(train_data, Iterable):
    batches = train_data  # a stream: read batch by batch, up to max_images
  else:
    images = checked_images(train_data)
    n = int(images.shape[0])
    if n > max_images:
      keep = np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
      images = tf.gather(images, keep)
    batches = (images[i : i + batch_size] for i in range(0, int(images.shape[0]), batch_size))
  total, count = 0.0, 0
  for batch in batches:
    images = checked_images(batch[0] if isinstance(batch, (tuple, list)) else batch)[: max_images - count]
    if int(images.shape[0]) == 0:
      continue
    values = finite_values(
      bits_per_dim(model, images, samples, seed + count, batch_size), 'training bits/dim'
    )
    total, count = total + float(np.sum(values)), count + values.size
    if count >= max_images:
      break  # read no further batch
  if count == 0:
    raise ValueError('ood: the training data for typicality holds no images.')
  return total / count, count


@dataclasses.dataclass
class TypicalityTest:
  """Nalisnick et al. 2019b's typicality test for batches of M inputs:

    eps(batch) = |mean_m bits_per_dim(x_m) - H|,   H = mean bits/dim of training data
    reject (OOD) if eps > threshold,  threshold = the (1 - alpha) quantile of eps over `bootstraps` batches
                                                  drawn with replacement from held-out in-distribution data

  Use: test = TypicalityTest.fit(train_bpd, heldout_bpd, batch_size=8)
       test.scores(bpd)      # eps of random batches of M images of bpd;  test.is_ood(bpd)
  or, with H streamed from a large split: H, _ = training_entropy(model, train_ds)
       test = TypicalityTest.from_entropy(H, heldout_bpd, batch_size=8)
  """

  entropy: float  # H, bits/dim
  threshold: float  # on eps, bits/dim
  batch_size: int
  alpha: float

  @classmethod
  def fit(
    cls,
    train_bpd: ArrayLike,
    heldout_bpd: ArrayLike,
    batch_size: int = 8,
    alpha: float = 0.01,
    bootstraps: int = 1000,
    seed: int = 0,
  ) -> TypicalityTest:
    entropy = float(
      np.mean(finite_values(train_bpd, 'train_bpd'))
    )  # the arguments are checked by from_entropy
    return cls.from_entropy(entropy, heldout_bpd, batch_size, alpha, bootstraps, seed)

  @classmethod
  def from_entropy(
    cls,
    entropy: float,
    heldout_bpd: ArrayLike,
    batch_size: int = 8,
    alpha: float = 0.01,
    bootstraps: int = 1000,
    seed: int = 0,
  ) -> TypicalityTest:
    """As `fit`, with H given (e.g. by `training_entropy`)."""
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'TypicalityTest: batch_size must be an integer >= 1, got {batch_size!r}.')
    if not 0.0 < alpha < 1.0:
      raise ValueError(f'TypicalityTest: alpha must be in (0, 1), got {alpha!r}.')
    entropy = float(finite_values([entropy], 'entropy')[0])
    eps = _batch_eps(finite_values(heldout_bpd, 'heldout_bpd'), entropy, batch_size, bootstraps, seed)
    return cls(entropy, float(np.quantile(eps, 1.0 - alpha)), batch_size, alpha)

  def scores(self, bpd: ArrayLike, batches: int = 200, seed: int = 1) -> np.ndarray:
    """eps [batches] of `batches` random batches (with replacement) of `batch_size` images of `bpd`."""
    return _batch_eps(finite_values(bpd, 'bpd'), self.entropy, self.batch_size, batches, seed)

  def is_ood(self, bpd: ArrayLike) -> bool:
    """The test on one batch (all of `bpd`, any size: the threshold is for `batch_size`)."""
    return bool(abs(float(np.mean(finite_values(bpd, 'bpd'))) - self.entropy) > self.threshold)


def _batch_eps(bpd: np.ndarray, entropy: float, batch_size: int, batches: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, bpd.size, size=(batches, batch_size))
  return np.abs(bpd[picks].mean(axis=1) - entropy)
