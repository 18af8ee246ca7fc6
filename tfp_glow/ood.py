"""Out-of-distribution scores from a flow's likelihood, and their evaluation metrics.

Nalisnick et al. 2019 showed that flows (Glow among them) can give inputs unlike the training data a
*higher* likelihood; the fixes are scores built on the likelihood. Every per-image score here is in
bits/dim and oriented the same way: **larger = more likely out-of-distribution**.

  bits_per_dim(x)          = -log2 P(x) / D                      (raw likelihood; the model's bound)
  complexity(x)            = 8 * len(PNG(x)) / D                 (Serra et al. 2020: L(x), a generic
                                                                  lossless code length, bits/dim)
  complexity_corrected(x)  = bits_per_dim(x) - complexity(x)     (S(x) = -log2 p(x) - L(x), per dim)
  likelihood_ratio(x)      = bits_per_dim(x) - bits_per_dim_0(x)  (Ren et al. 2019: -(log p - log p_0)/(D ln 2),
                                                                  p_0 a background model trained on
                                                                  `perturb`ed inputs)
  typicality(batch of M)   = |mean_m bits_per_dim(x_m) - H|       (Nalisnick et al. 2019b: H the mean on
                                                                  training data; a batch test, see
                                                                  `TypicalityTest` for its threshold)

Both -log2 P(x) and L(x) are code lengths of the same discrete image (its bins; the PNG holds the uint8
image, a one-to-one map of the bins), so their difference is in consistent units. PNG's fixed overhead
(about 70 bytes) shifts L by a constant, which no threshold-free metric sees.

Class-conditional models (`num_classes` = K) are scored through their marginal over labels (no label is
needed at test time, and an OOD input has none):

  log p(x) = logsumexp_y [log p(x|y) + log pi(y)],   pi(y) = 1 / K

pi is uniform because a `GlowModel` learns no class prior (its `class_predictor` is a classifier of the top
latent, not a prior over labels); this is the density of a model trained on class-balanced data. It costs
K passes of the flow per image.

Metrics (scikit-learn, OOD = the positive class): AUROC, AUPR, FPR at 95% TPR.
Images everywhere are in the model's scale [-0.5, 0.5) (as `GlowModel.log_prob` takes them), [N, H, W, C].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import numpy as np
import tensorflow as tf

from tfp_glow import data as glow_data
from tfp_glow.dequantization import bins_of
from tfp_glow.names import OOD_SCORES as SCORES
from tfp_glow.names import OOD_SHIFTS as SHIFTS
from tfp_glow.names import TYPICALITY_IMAGES


class NonFiniteError(ValueError):
  """A score or its input holds NaN or Inf (a diverged model?)."""


def _images(images) -> tf.Tensor:
  images = tf.convert_to_tensor(images, tf.float32)
  if images.shape.rank != 4:
    raise ValueError(f'ood: expected images [N, H, W, C], got shape {images.shape}.')
  return images


def bits_per_dim(model, images, samples: int = 1, seed: int = 0, batch_size: int = 256) -> np.ndarray:
  """Per-image bits/dim [N] under a `GlowModel`: its dequantization bound with `samples` importance
  samples (`GlowModel.evaluate_bits_per_dim`), with a fixed seed so that scores are reproducible (the
  chunk of `batch_size` images starting at image i uses seed + i).

  A class-conditional model is scored through its marginal over the K labels (uniform pi, see the module
  docstring). In bits/dim, with bpd_y(x) the bound of p(x|y) (the n_bins terms cancel):

    bpd(x) = -log2(sum_y pi(y) 2^(-D bpd_y(x))) / D = -logsumexp_y [log pi(y) - D ln2 bpd_y(x)] / (D ln 2)

  Every class sees the same dequantization draws u_s (same seed), so this is the importance-weighted bound
  of the marginal: sum_y pi(y) (1/S) sum_s w_sy = (1/S) sum_s p(x_s) / q(u_s|b)."""
  images = _images(images)
  parts = [
    _chunk_bits_per_dim(model, images[i : i + batch_size], samples, seed + i)
    for i in range(0, int(images.shape[0]), batch_size)
  ]
  return np.concatenate(parts) if parts else np.zeros([0], np.float32)


def _chunk_bits_per_dim(model, images: tf.Tensor, samples: int, seed: int) -> np.ndarray:
  """bits_per_dim of one chunk [n, H, W, C] -> [n]; the marginal over labels for a conditional model."""
  kwargs = dict(samples=samples, seed=seed, per_image=True)
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


def training_entropy(
  model,
  train_data,
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
    images = _images(train_data)
    n = int(images.shape[0])
    if n > max_images:
      keep = np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
      images = tf.gather(images, keep)
    batches = (images[i : i + batch_size] for i in range(0, int(images.shape[0]), batch_size))
  total, count = 0.0, 0
  for batch in batches:
    images = _images(batch[0] if isinstance(batch, (tuple, list)) else batch)[: max_images - count]
    if int(images.shape[0]) == 0:
      continue
    values = _finite(bits_per_dim(model, images, samples, seed + count, batch_size), 'training bits/dim')
    total, count = total + float(np.sum(values)), count + values.size
    if count >= max_images:
      break  # read no further batch
  if count == 0:
    raise ValueError('ood: the training data for typicality holds no images.')
  return total / count, count


def complexity(images, n_bins: int) -> np.ndarray:
  """L(x) [N] in bits/dim: 8 * (bytes of the PNG of the uint8 image) / D (Serra et al. 2020's compressor)."""
  images = _images(images)
  pixels = glow_data.to_uint8(images, n_bins)
  d = int(np.prod(images.shape[1:]))
  return np.array([8.0 * len(tf.io.encode_png(p, compression=9).numpy()) / d for p in pixels], np.float64)


def complexity_corrected(model, images, samples: int = 1, seed: int = 0) -> np.ndarray:
  """S(x) = bits_per_dim(x) - complexity(x) [N] (Serra et al. 2020): likelihood relative to how simple x is."""
  return bits_per_dim(model, images, samples, seed) - complexity(images, model.n_bins)


def likelihood_ratio(model, background, images, samples: int = 1, seed: int = 0) -> np.ndarray:
  """bits_per_dim(x) - background's bits_per_dim(x) [N] (Ren et al. 2019's -log likelihood ratio per dim):
  what the model explains beyond what a model of the perturbed data (background statistics) does."""
  if tuple(background.image_shape) != tuple(model.image_shape) or background.n_bins != model.n_bins:
    raise ValueError(
      f'likelihood_ratio: the background model is for images {background.image_shape} with '
      f'{background.n_bins} levels, the model for {model.image_shape} with {model.n_bins}.'
    )
  return bits_per_dim(model, images, samples, seed) - bits_per_dim(background, images, samples, seed)


def perturb(images: tf.Tensor, fraction: float, n_bins: int, seed=None) -> tf.Tensor:
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
    train_bpd,
    heldout_bpd,
    batch_size: int = 8,
    alpha: float = 0.01,
    bootstraps: int = 1000,
    seed: int = 0,
  ) -> TypicalityTest:
    entropy = float(np.mean(_finite(train_bpd, 'train_bpd')))  # the arguments are checked by from_entropy
    return cls.from_entropy(entropy, heldout_bpd, batch_size, alpha, bootstraps, seed)

  @classmethod
  def from_entropy(
    cls,
    entropy: float,
    heldout_bpd,
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
    entropy = float(_finite([entropy], 'entropy')[0])
    eps = _batch_eps(_finite(heldout_bpd, 'heldout_bpd'), entropy, batch_size, bootstraps, seed)
    return cls(entropy, float(np.quantile(eps, 1.0 - alpha)), batch_size, alpha)

  def scores(self, bpd, batches: int = 200, seed: int = 1) -> np.ndarray:
    """eps [batches] of `batches` random batches (with replacement) of `batch_size` images of `bpd`."""
    return _batch_eps(_finite(bpd, 'bpd'), self.entropy, self.batch_size, batches, seed)

  def is_ood(self, bpd) -> bool:
    """The test on one batch (all of `bpd`, any size: the threshold is for `batch_size`)."""
    return bool(abs(float(np.mean(_finite(bpd, 'bpd'))) - self.entropy) > self.threshold)


def _finite(values, name: str) -> np.ndarray:
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 0:
    raise ValueError(f'ood: {name} is empty.')
  if not np.all(np.isfinite(values)):
    raise NonFiniteError(f'ood: {name} holds NaN or Inf (a diverged model?).')
  return values


def _batch_eps(bpd: np.ndarray, entropy: float, batch_size: int, batches: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, bpd.size, size=(batches, batch_size))
  return np.abs(bpd[picks].mean(axis=1) - entropy)


def metrics(in_scores, out_scores) -> dict[str, float]:
  """{'auroc', 'aupr', 'fpr_at_95_tpr'} of scores where larger = OOD; OOD (out) is the positive class.

  FPR at 95% TPR: the fraction of in-distribution inputs flagged at the threshold that flags 95% of the OOD
  inputs (the smallest such FPR on the ROC curve)."""
  import sklearn.metrics  # pylint: disable=import-outside-toplevel  (lazy: only the metrics need it)

  in_scores, out_scores = _finite(in_scores, 'in_scores'), _finite(out_scores, 'out_scores')
  y = np.concatenate([np.zeros(in_scores.size), np.ones(out_scores.size)])
  s = np.concatenate([in_scores, out_scores])
  fpr, tpr, _ = sklearn.metrics.roc_curve(y, s)
  return dict(
    auroc=float(sklearn.metrics.roc_auc_score(y, s)),
    aupr=float(sklearn.metrics.average_precision_score(y, s)),
    fpr_at_95_tpr=float(np.min(fpr[tpr >= 0.95])),
  )


def score_table(
  model,
  in_images,
  out_sets: dict[str, object],
  scores=('bits_per_dim', 'complexity_corrected'),
  background=None,
  train_images=None,
  samples: int = 1,
  typicality_batch: int = 8,
  seed: int = 0,
  typicality_images: int = TYPICALITY_IMAGES,
) -> list[dict]:
  """Rows {score, out, auroc, aupr, fpr_at_95_tpr} for each score and each OOD set (name -> images), with
  `in_images` (held-out in-distribution images) as the negatives. 'likelihood_ratio' needs `background`
  (a GlowModel trained on `perturb`ed data); 'typicality' needs `train_images` (images or a stream of
  batches, of which at most `typicality_images` estimate H: `training_entropy`; `in_images` give the
  bootstrap threshold and the in-distribution batches). Raises `NonFiniteError` for a non-finite score."""
  unknown = [s for s in scores if s not in SCORES]
  if unknown:
    raise ValueError(f'ood: unknown score(s) {unknown}; accepted: {", ".join(SCORES)}.')
  if 'likelihood_ratio' in scores and background is None:
    raise ValueError('ood: the likelihood_ratio score needs a background model.')
  if 'typicality' in scores and train_images is None:
    raise ValueError('ood: the typicality score needs train_images (for the training entropy H).')
  bpd = lambda images: bits_per_dim(model, images, samples, seed)  # noqa: E731
  per_set = {'in': in_images, **out_sets}
  raw = {name: bpd(images) for name, images in per_set.items()}
  typicality = None
  if 'typicality' in scores:
    half = len(raw['in']) // 2  # threshold from one half of the held-out data, in-batches from the other
    entropy, _ = training_entropy(model, train_images, typicality_images, samples, seed)
    typicality = TypicalityTest.from_entropy(
      entropy, raw['in'][:half], batch_size=typicality_batch, seed=seed
    )
  computed = {}
  for score in scores:
    for name, images in per_set.items():
      if score == 'bits_per_dim':
        value = raw[name]
      elif score == 'complexity_corrected':
        value = raw[name] - complexity(images, model.n_bins)
      elif score == 'likelihood_ratio':
        value = raw[name] - bits_per_dim(background, images, samples, seed)
      else:
        value = typicality.scores(
          raw[name][len(raw[name]) // 2 :] if name == 'in' else raw[name], seed=seed + 1
        )
      computed[score, name] = value
  return [
    dict(score=score, out=name, **metrics(computed[score, 'in'], computed[score, name]))
    for score in scores
    for name in out_sets
  ]


def shifted(images, shift: str, n_bins: int, seed: int = 0) -> tf.Tensor:
  """OOD test sets made from in-distribution images [N, H, W, C] in [-0.5, 0.5) (as bin centres, same shape):

  noise:         every pixel a uniformly random bin        constant:      each image one random bin
  inverted:      b -> n_bins - 1 - b                        upside_down:   rows reversed
  half_contrast: b -> floor(b / 2)
  """
  b = bins_of(_images(images), n_bins)
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
