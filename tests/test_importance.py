"""Importance-weighted bits/dim: exact where the optimal q is known, the log-sum-exp over chunks, never above
the single-sample bound, tightening with S."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy.special import logsumexp
from scipy.stats import norm

from tests.helpers import digits, tiny_model
from tfp_glow import dequantization as dq
from tfp_glow.distribution import bits_per_dim
from tfp_glow.testing import perturb

tfd = tfp.distributions
N_BINS = 17


class _Posterior:
  """q(u|b) = p(u|b), the exact posterior of a factorized normal p over x = (b + u) / n_bins - 0.5:
  every importance weight is then P(b) n_bins^D, so every estimate is exact."""

  def __init__(self, loc, scale):
    self.loc, self.scale = loc, scale

  def sample_and_log_prob(self, bins, seed=None):
    lo, hi = bins / N_BINS - 0.5, (bins + 1) / N_BINS - 0.5
    truncated = tfd.TruncatedNormal(self.loc, self.scale, lo, hi)
    x = truncated.sample(seed=seed)
    u = tf.clip_by_value((x + 0.5) * N_BINS - bins, 0.0, 1.0 - 1e-6)
    # density of u = (x + 0.5) n - b: q(u) = p_trunc(x) / n
    return u, tf.reduce_sum(truncated.log_prob(x) - np.log(N_BINS), axis=[1, 2, 3])


def test_estimate_is_exact_with_the_optimal_q_for_every_s():
  shape = (4, 4, 1)
  rng = np.random.default_rng(0)
  loc = rng.uniform(-0.3, 0.3, shape).astype(np.float32)
  scale = rng.uniform(0.1, 0.3, shape).astype(np.float32)
  p = tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=3)
  bins = tf.constant(rng.integers(0, N_BINS, size=(5, *shape)), tf.float32)
  b = bins.numpy()
  # -log2 P(b) / D from the normal CDF, bin by bin
  p_bin = norm.cdf(((b + 1) / N_BINS - 0.5 - loc) / scale) - norm.cdf((b / N_BINS - 0.5 - loc) / scale)
  exact = -np.log2(p_bin).sum(axis=(1, 2, 3)) / 16
  q = _Posterior(loc, scale)
  for samples in (1, 7):
    log_p = dq.importance_weighted_log_prob(p, bins, N_BINS, samples, q, seed=(1, 2), bins=True)
    np.testing.assert_allclose(bits_per_dim(log_p, 16, N_BINS).numpy(), exact, rtol=2e-4)
  # The uniform q has the same limit: within the Monte-Carlo error at S = 2000.
  log_p = dq.importance_weighted_log_prob(p, bins, N_BINS, 2000, seed=(3, 4), bins=True)
  np.testing.assert_allclose(bits_per_dim(log_p, 16, N_BINS).numpy(), exact, atol=0.01)


class _Recording:
  """Wraps a log p and a q, keeping every (x, log p(x) - log q(u|b)) they produced."""

  def __init__(self, log_prob, dequantizer):
    self.log_prob_fn, self.dequantizer, self.calls, self.log_q = log_prob, dequantizer, [], []

  def sample_and_log_prob(self, bins, seed=None):
    u, log_q = self.dequantizer.sample_and_log_prob(bins, seed=seed)
    self.log_q.append(log_q.numpy())
    return u, log_q

  def log_prob(self, x):
    value = self.log_prob_fn(x)
    self.calls.append((x.numpy(), value.numpy()))
    return value


@pytest.mark.parametrize('max_images', [4096, 7, 3])
def test_chunked_log_sum_exp_equals_a_direct_computation_over_the_same_draws(max_images):
  model = tiny_model()
  perturb(model.glow, 0.05)
  n, samples = 5, 9
  images = next(iter(digits('test', batch_size=n, shuffle=False)))
  record = _Recording(model.distribution.log_prob, dq.UniformDequantizer())
  got = dq.importance_weighted_log_prob(
    record, images, N_BINS, samples, record, seed=(0, 1), max_images=max_images
  )
  assert max(x.shape[0] for x, _ in record.calls) <= max(max_images, 1)
  # Group every weight by the image whose bins it dequantized.
  image_bins = dq.bins_of(images, N_BINS).numpy().reshape(n, -1)
  weights = [[] for _ in range(n)]
  for (x, log_p), log_q in zip(record.calls, record.log_q):
    x_bins = dq.bins_of(x, N_BINS).numpy().reshape(len(x), -1)
    for row, w in zip(x_bins, log_p - log_q):
      weights[int(np.flatnonzero((image_bins == row).all(axis=1))[0])].append(w)
  assert [len(w) for w in weights] == [samples] * n
  direct = np.array([logsumexp(w) - np.log(samples) for w in weights])
  np.testing.assert_allclose(got.numpy(), direct, rtol=1e-5)


def _bpd(model, images, samples, seed):
  return model.evaluate_bits_per_dim(images, samples=samples, seed=seed, per_image=True)


def test_not_above_the_single_sample_bound_and_tightening_with_s():
  """Monte-Carlo error: the single-sample bound's mean over R = 16 draws per image and its standard error
  (from each image's variance over its draws; the images are the same throughout); IW estimates are averaged over R = 4 repeats. Each S is compared
  with a margin of 3 standard errors, and the whole 1 -> 64 gap must exceed its own error."""
  model = tiny_model(steps=2, width=16)
  images = next(iter(digits('test', batch_size=32, shuffle=False)))
  model.initialize(images)
  perturb(model.glow, 0.1)
  single = np.stack([_bpd(model, images, 1, seed) for seed in range(16)])  # [R, N]
  # the images are fixed: only the draws vary, so the error is that of the per-image means over R draws
  se_single = np.sqrt(single.var(axis=0, ddof=1).sum() / single.shape[0]) / single.shape[1]
  means = {1: single.mean()}
  errors = {1: se_single}
  for samples in (4, 64):
    runs = np.stack([_bpd(model, images, samples, 100 + seed).mean() for seed in range(4)])
    means[samples], errors[samples] = runs.mean(), runs.std(ddof=1) / 2 + 1e-6
  assert means[64] <= means[1] + 3 * se_single
  assert means[4] <= means[1] + 3 * np.hypot(errors[1], errors[4])
  assert means[64] <= means[4] + 3 * np.hypot(errors[4], errors[64])
  assert means[1] - means[64] > 3 * np.hypot(errors[1], errors[64])  # it does tighten


def test_samples_must_be_a_positive_integer():
  model = tiny_model()
  x = next(iter(digits('test', batch_size=4, take=1)))
  for bad in (0, -3, 2.5):
    with pytest.raises(ValueError, match='samples must be an integer >= 1'):
      model.evaluate_bits_per_dim(x, samples=bad)
  with pytest.raises(ValueError, match='max_images must be an integer >= 1'):
    dq.importance_weighted_log_prob(model.distribution, x, N_BINS, 2, max_images=0)


def test_on_a_dataset_it_is_the_mean_over_images_and_single_sample_matches_evaluate():
  model = tiny_model()
  perturb(model.glow, 0.05)
  ds = digits('test', batch_size=64, shuffle=False)
  per_image = model.evaluate_bits_per_dim(ds, samples=1, seed=0, per_image=True)
  assert per_image.shape == (297,)
  assert model.evaluate_bits_per_dim(ds, samples=1, seed=0) == pytest.approx(per_image.mean(), rel=1e-6)
  keras_bpd = model.evaluate(ds, verbose=0, return_dict=True)['bits_per_dim']  # the data's own uniform noise
  assert abs(per_image.mean() - keras_bpd) < 4 * per_image.std() / np.sqrt(per_image.size)
