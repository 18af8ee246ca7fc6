"""Dequantization: from integer bins to continuous images, and the bound it gives on the discrete likelihood.

Images are integer bins b in {0, ..., n_bins - 1}^D (D = H * W * C), which a density p over [-0.5, 0.5)^D
scores through noise u in [0, 1)^D:

  x = (b + u) / n_bins - 0.5
  P(b) = int_[0,1)^D p(x) n_bins^-D du = E_{u ~ q(u|b)} [p(x) n_bins^-D / q(u|b)]           (exact)
  log P(b) >= E_q [log p(x) - log q(u|b)] - D log n_bins                          (Jensen: the bound)
  bits/dim >= -log2 P(b) / D,  bits/dim = (-(log p(x) - log q(u|b)) + D log n_bins) / (D ln 2)

  - uniform (the paper, `UniformDequantizer`): q = U[0, 1)^D, log q = 0; the data pipeline adds this u.
  - variational (Ho et al. 2019, Flow++; `VariationalDequantizer`): q(u|b) a learned conditional flow,
    trained jointly with p on the same bound; the gap to -log P(b) is KL(q(u|b) || p(u|b)), so a better q
    gives a tighter bound (and a gradient signal that the uniform noise does not give).
  - importance-weighted (`importance_weighted_log_prob`), at evaluation:
      log P_S(b) = logsumexp_s [log p(x_s) - log q(u_s|b)] - log S - D log n_bins,   u_s ~ q(u|b)
    a lower bound on log P(b) for every S, increasing in expectation with S, -> log P(b) as S -> inf.

Every function here returns the *continuous* term log p(x) - log q(u|b) (in nats, per image, [N]), so that
`tfp_glow.distribution.bits_per_dim` turns it into bits/dim exactly as it does the uniform log p(x): the two
dequantizations give comparable numbers.

TFP level: any `log_prob` works (a `GlowDistribution`, its `log_prob` with labels bound, any callable
images -> [N]); `GlowModel(dequantization='variational')` is the Keras side (tfp_glow/training/model.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_glow.names import DEQUANTIZATIONS as DEQUANTIZATIONS  # re-exported: its home before

if TYPE_CHECKING:
  from tfp_glow.distribution import GlowDistribution

# u = sigmoid(y) rounds to 1.0 in float32 for y > ~17; kept below 1 so that x stays inside its bin.
_BELOW_ONE = 1.0 - 2.0**-24


def bins_of(images: tf.Tensor, n_bins: int) -> tf.Tensor:
  """Images in the model's scale [-0.5, 0.5) (dequantized or bin centres) -> their bins (float32, same shape):
  b = clip(floor((x + 0.5) * n_bins), 0, n_bins - 1)."""
  x = tf.cast(images, tf.float32)
  return tf.clip_by_value(tf.floor((x + 0.5) * n_bins), 0.0, n_bins - 1.0)


def _uniform(shape, seed) -> tf.Tensor:
  """U[0, 1) noise: from a stateless seed (int [2]) when given, else a fresh draw."""
  if seed is None:
    return tf.random.uniform(shape, dtype=tf.float32)
  return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)


class Dequantizer(Protocol):
  """q(u|b): what the functions below need of a dequantization distribution."""

  def sample_and_log_prob(
    self, bins: tf.Tensor, seed: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    """bins [N, H, W, C] -> (u [N, H, W, C] in [0, 1), log q(u|b) [N])."""


class UniformDequantizer:
  """q(u|b) = U[0, 1)^D: log q = 0 (the paper's dequantization, the default)."""

  def sample_and_log_prob(
    self, bins: tf.Tensor, seed: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    bins = tf.convert_to_tensor(bins, tf.float32)
    return _uniform(tf.shape(bins), seed), tf.zeros(tf.shape(bins)[:1], tf.float32)


def _checkerboard(height: int, width: int, parity: int) -> np.ndarray:
  """[H, W, 1] float32 mask, 1 where (h + w) % 2 == parity."""
  h, w = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  return ((h + w) % 2 == parity).astype(np.float32)[..., None]


def _log_sigmoid_derivative(y: tf.Tensor) -> tf.Tensor:
  """log sigmoid'(y) = log sigmoid(y) + log sigmoid(-y), elementwise and stable for large |y|."""
  return -tf.nn.softplus(-y) - tf.nn.softplus(y)


@keras.saving.register_keras_serializable(package='tfp_glow')
class VariationalDequantizer(keras.layers.Layer):
  """q(u|b), a conditional flow on the unit cube (Flow++'s variational dequantization, simplified):

    eps ~ Logistic(0, 1)^D                                     (u0 = sigmoid(eps) ~ U[0, 1)^D)
    c   = relu(conv3x3(bin centres))                           [N, H, W, width]
    y   = coupling_K o ... o coupling_1 (eps; c)               affine couplings on checkerboard masks m_k:
          y <- m y + (1 - m) (y exp(s) + t),  (s, t) = net_k([m y, c]),  s = 2 tanh(raw / 2)
    u   = sigmoid(y)
    log q(u|b) = log Logistic(eps) - sum_k sum (1 - m_k) s_k - sum log sigmoid'(y)

  Why this design: Flow++ uses a Gaussian base and logistic-mixture couplings with attention; here the
  couplings are plain affine (the same kind as Glow's, so nothing new to verify) and the base is the
  standard logistic, whose sigmoid is exactly U[0, 1). Small by default (K = 4 couplings, two per
  checkerboard parity, width 32, one context conv): q works at full resolution, where each conv costs more
  than one of the flow's (which run on squeezed images), and training time per epoch is a target; these are
  the settings BENCHMARKS.md's variational figures (bound, importance-weighted, seconds per epoch) were
  measured with (Flow++'s own q is larger still). The last layer of each coupling net starts at zero, so a
  fresh q is the uniform dequantization exactly (log q = 0): training starts from the paper's bound and can
  only tighten it. Checkerboard masks (not channel halves) because digits and MNIST have one
  channel. The layer computes in float32 under any Keras mixed policy: it is small, and log q needs the
  precision.

  Shapes: bins [N, H, W, C] (floats or ints in [0, n_bins)) -> u [N, H, W, C], log q [N].
  Use: q = VariationalDequantizer((8, 8, 1), n_bins=17); u, log_q = q.sample_and_log_prob(bins)
  """

  def __init__(
    self,
    image_shape: Sequence[int],
    n_bins: int,
    steps: int = 4,
    width: int = 32,
    name: str = 'dequantizer',
    **kwargs: Any,
  ):
    kwargs['dtype'] = 'float32'
    super().__init__(name=name, **kwargs)
    if not isinstance(steps, int) or steps < 1:
      raise ValueError(f'VariationalDequantizer: steps must be an integer >= 1, got {steps!r}.')
    if not isinstance(width, int) or width < 1:
      raise ValueError(f'VariationalDequantizer: width must be an integer >= 1, got {width!r}.')
    self.image_shape = tuple(int(d) for d in image_shape)
    self.n_bins, self.steps, self.width = int(n_bins), steps, width
    h, w, c = self.image_shape
    conv = lambda filters, name, zero=False: keras.layers.Conv2D(  # noqa: E731
      filters,
      3,
      padding='same',
      activation=None if zero else 'relu',
      kernel_initializer='zeros' if zero else 'glorot_uniform',
      dtype='float32',
      name=name,
    )
    self.context_net = conv(width, 'context')
    self.coupling_nets = [
      [conv(width, f'coupling_{k}_1'), conv(2 * c, f'coupling_{k}_2', zero=True)] for k in range(steps)
    ]
    self.context_net.build((None, h, w, c))
    for first, last in self.coupling_nets:
      first.build((None, h, w, c + width))
      last.build((None, h, w, width))
    self._masks = [_checkerboard(h, w, k % 2) for k in range(steps)]
    self.built = True

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      'image_shape': self.image_shape,
      'n_bins': self.n_bins,
      'steps': self.steps,
      'width': self.width,
    }

  def _context(self, bins: tf.Tensor) -> tf.Tensor:
    centres = (bins + 0.5) / self.n_bins - 0.5
    return self.context_net(centres)

  def sample_and_log_prob(
    self, bins: tf.Tensor, seed: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    """u ~ q(u|b) [N, H, W, C] in [0, 1) and log q(u|b) [N]; `seed`: a stateless seed (int [2])."""
    bins = tf.convert_to_tensor(bins, tf.float32)
    return self.from_uniform(tf.clip_by_value(_uniform(tf.shape(bins), seed), 2.0**-24, _BELOW_ONE), bins)

  def from_uniform(self, v: tf.Tensor, bins: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The flow itself: base noise v [N, H, W, C] in (0, 1) (eps = logit(v)) -> (u, log q(u|b) [N]).
    q(u|b) is the density of u = f(v) for v ~ U(0, 1)^D: log q(u|b) = -log |det df/dv|."""
    bins = tf.convert_to_tensor(bins, tf.float32)
    v = tf.convert_to_tensor(v, tf.float32)
    eps = tf.math.log(v) - tf.math.log1p(-v)  # Logistic(0, 1)
    log_q = tf.reduce_sum(_log_sigmoid_derivative(eps), axis=[1, 2, 3])  # the logistic density
    context = self._context(bins)
    y = eps
    for mask, (first, last) in zip(self._masks, self.coupling_nets):
      raw = last(first(tf.concat([y * mask, context], axis=-1)))
      log_s, t = tf.split(raw, 2, axis=-1)
      log_s = 2.0 * tf.tanh(log_s / 2.0) * (1.0 - mask)  # bounded scale: a stable start
      y = y * mask + (1.0 - mask) * (y * tf.exp(log_s) + t)
      log_q -= tf.reduce_sum(log_s, axis=[1, 2, 3])
    log_q -= tf.reduce_sum(_log_sigmoid_derivative(y), axis=[1, 2, 3])
    return tf.minimum(tf.sigmoid(y), _BELOW_ONE), log_q

  def call(self, bins: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return self.sample_and_log_prob(bins)


# images -> log p [N], or (images, labels=labels) -> log p [N] for a class-conditional model
LogProb = Callable[..., tf.Tensor]


def _log_prob_fn(distribution) -> LogProb:
  fn = getattr(distribution, 'log_prob', distribution)
  if not callable(fn):
    raise TypeError(
      f'expected a distribution with log_prob, or a callable images -> log p [N]; got {type(distribution).__name__}.'
    )
  return fn


def dequantize_with(
  dequantizer: Dequantizer | None,
  images_or_bins: tf.Tensor,
  n_bins: int,
  seed: tf.Tensor | None = None,
  bins: bool = False,
  dtype: tf.DType = tf.float32,
) -> tuple[tf.Tensor, tf.Tensor]:
  """(x = (b + u) / n_bins - 0.5 [N, H, W, C], log q(u|b) [N]), u ~ q(u|b) (uniform if `dequantizer` is None).

  `images_or_bins`: images in [-0.5, 0.5) (their bins are recovered, so already-dequantized images work),
  or integer bins if `bins=True`. `dtype`: of x and log q, the flow's (float32 or float64). The dequantizer
  draws u and computes log q in float32 whatever the flow's dtype (bins are exact integers there); x is
  then formed in `dtype`, so a float64 flow gets float64 images of the same u."""
  dtype = tf.as_dtype(dtype)
  b = tf.cast(images_or_bins, tf.float32) if bins else bins_of(images_or_bins, n_bins)
  u, log_q = (dequantizer or UniformDequantizer()).sample_and_log_prob(b, seed=seed)
  x = (tf.cast(b, dtype) + tf.cast(u, dtype)) / n_bins - 0.5
  return x, tf.cast(log_q, dtype)


def _flow_dtype(distribution, dtype) -> tf.DType:
  """The dtype the log-density works in: `dtype` if given, else the distribution's own (a `GlowDistribution`
  has one), else float32 (a plain callable)."""
  if dtype is not None:
    return tf.as_dtype(dtype)
  own = getattr(distribution, 'dtype', None)
  return tf.as_dtype(own) if own in (tf.float32, tf.float64) else tf.float32


def dequantized_log_prob(
  distribution: GlowDistribution | LogProb,
  images_or_bins: tf.Tensor,
  n_bins: int,
  dequantizer: Dequantizer | None = None,
  seed: tf.Tensor | None = None,
  bins: bool = False,
  labels: tf.Tensor | None = None,
  dtype: tf.DType | None = None,
) -> tf.Tensor:
  """The single-sample bound's continuous term log p(x) - log q(u|b) [N], u ~ q(u|b): pass it to
  `tfp_glow.distribution.bits_per_dim` (its mean over u is the training loss in bits/dim).

  `distribution`: a `GlowDistribution` (or any object with `log_prob`), or a callable images -> [N]
  (e.g. `lambda x: dist.log_prob(x, labels=y)`); `labels` [N], if given, go to it as `labels=`.
  `dtype`: of the images handed to it and of the result; default the distribution's `dtype` (float32 for
  a callable: pass tf.float64 for a callable around a float64 flow)."""
  dtype = _flow_dtype(distribution, dtype)
  x, log_q = dequantize_with(dequantizer, images_or_bins, n_bins, seed=seed, bins=bins, dtype=dtype)
  return tf.cast(_call(_log_prob_fn(distribution), x, labels), dtype) - log_q


def _call(log_prob: LogProb, x, labels):
  return log_prob(x) if labels is None else log_prob(x, labels=labels)


def importance_weighted_log_prob(
  distribution: GlowDistribution | LogProb,
  images_or_bins: tf.Tensor,
  n_bins: int,
  samples: int,
  dequantizer: Dequantizer | None = None,
  seed: tf.Tensor | None = None,
  bins: bool = False,
  labels: tf.Tensor | None = None,
  max_images: int = 4096,
  dtype: tf.DType | None = None,
) -> tf.Tensor:
  """log (1/S) sum_s exp(log p(x_s) - log q(u_s|b)) [N], u_s ~ q(u|b), s = 1..S (S = `samples`).

  With `bits_per_dim` this is the importance-weighted bits/dim: an upper bound on -log2 P(b) / D for every
  S, no larger than the single-sample bound in expectation, tightening as S grows. Computed stably (a
  running log-sum-exp over chunks) and in bounded memory: each pass of the flow sees at most `max_images`
  images (N * S would be 300k for 300 test digits at S = 1000). Runs eagerly chunk by chunk; wrap the
  flow's log_prob in a `tf.function` for speed (GlowModel.evaluate_bits_per_dim does).
  `seed`: a stateless seed (int [2]) makes the estimate reproducible; `labels` [N] as in
  `dequantized_log_prob`; `dtype` as there (the flow's: the images it gets and the result)."""
  if not isinstance(samples, (int, np.integer)) or samples < 1:
    raise ValueError(f'importance_weighted_log_prob: samples must be an integer >= 1, got {samples!r}.')
  if not isinstance(max_images, (int, np.integer)) or max_images < 1:
    raise ValueError(f'importance_weighted_log_prob: max_images must be an integer >= 1, got {max_images!r}.')
  log_prob = _log_prob_fn(distribution)
  dtype = _flow_dtype(distribution, dtype)
  b = tf.cast(images_or_bins, tf.float32) if bins else bins_of(images_or_bins, n_bins)
  n = int(b.shape[0]) if b.shape[0] is not None else int(tf.shape(b)[0])
  if n == 0:
    return tf.zeros([0], dtype)
  per_pass = max(1, min(samples, max_images // max(n, 1)))  # samples per flow pass
  if max_images < n:  # more images than one pass takes: split the images too
    return tf.concat(
      [
        importance_weighted_log_prob(
          distribution,
          b[i : i + max_images],
          n_bins,
          samples,
          dequantizer,
          None if seed is None else tf.random.experimental.stateless_fold_in(seed, 1_000_003 + i),
          bins=True,
          labels=None if labels is None else labels[i : i + max_images],
          max_images=max_images,
          dtype=dtype,
        )
        for i in range(0, n, max_images)
      ],
      0,
    )
  running = tf.fill([n], tf.constant(-np.inf, dtype))  # log sum_s w_s so far
  done, chunk = 0, 0
  while done < samples:
    s = min(per_pass, samples - done)
    tiled = tf.tile(b, [s, 1, 1, 1])  # [s * N, H, W, C], sample-major
    chunk_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, chunk)
    x, log_q = dequantize_with(dequantizer, tiled, n_bins, seed=chunk_seed, bins=True, dtype=dtype)
    tiled_labels = None if labels is None else tf.tile(tf.reshape(labels, [-1]), [s])
    log_w = tf.reshape(tf.cast(_call(log_prob, x, tiled_labels), dtype) - log_q, [s, n])
    running = tf.reduce_logsumexp(tf.concat([running[None], log_w], 0), axis=0)
    done, chunk = done + s, chunk + 1
  return running - math.log(samples)
