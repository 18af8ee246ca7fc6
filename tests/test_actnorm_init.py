"""Actnorm's data-dependent initialization: explicit, idempotent, never triggered by sampling."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg


def test_actnorm_init_normalizes_per_channel_and_is_idempotent():
  actnorm = tg.ActNorm(3)
  x = tf.random.normal([64, 4, 4, 3]) * [2.0, 0.5, 3.0] + [1.0, -2.0, 0.3]
  assert not actnorm.is_initialized.numpy()
  actnorm.initialize(x)
  assert actnorm.is_initialized.numpy()
  z = actnorm.inverse(x)
  np.testing.assert_allclose(tf.reduce_mean(z, [0, 1, 2]), 0.0, atol=1e-4)
  np.testing.assert_allclose(tf.math.reduce_std(z, [0, 1, 2]), 1.0, atol=1e-3)
  before = [v.numpy().copy() for v in actnorm.trainable_variables]
  actnorm.initialize(x * 10 + 5)  # a second call is a no-op
  for v, old in zip(actnorm.trainable_variables, before):
    np.testing.assert_array_equal(v.numpy(), old)


def test_actnorm_init_inside_tf_function():
  actnorm = tg.ActNorm(2)
  x = tf.random.normal([32, 2, 2, 2]) * 4.0 + 1.0
  tf.function(actnorm.initialize)(x)
  np.testing.assert_allclose(tf.math.reduce_std(actnorm.inverse(x), [0, 1, 2]), 1.0, atol=1e-3)


def _actnorm_outputs(glow, x):
  """Each actnorm's output on x, walking the flow as Glow does (for checking its init)."""
  outputs, h = [], x
  for level in glow.levels:
    h = tf.nn.space_to_depth(h, 2)
    for step in level.steps:
      h = step.actnorm.inverse(h)
      outputs.append(h)
      h = step.coupling.inverse(step.permutation.inverse(h))
    if isinstance(level.exit, tg.SplitPrior):
      h = h[..., : h.shape[-1] // 2]
  return outputs


def test_glow_init_normalizes_every_actnorm_in_order():
  glow = tg.Glow((8, 8, 1), levels=2, steps=2, width=8, seed=0)
  for b in glow.trainable_variables:  # make the couplings non-trivial, so order matters
    b.assign(b + 0.1 * tf.random.normal(b.shape))
  for a in glow.actnorms:  # undo the perturbation of actnorm parameters (init is from zero state)
    a.layer.log_scale.assign(tf.zeros_like(a.layer.log_scale))
    a.layer.bias.assign(tf.zeros_like(a.layer.bias))
  x = tf.random.uniform([128, 8, 8, 1]) * 0.3 - 0.4
  glow.initialize(x)
  assert glow.is_initialized.numpy()
  for out in _actnorm_outputs(glow, x):
    np.testing.assert_allclose(tf.reduce_mean(out, [0, 1, 2]), 0.0, atol=1e-3)
    np.testing.assert_allclose(tf.math.reduce_std(out, [0, 1, 2]), 1.0, atol=1e-2)


def test_sampling_and_log_prob_do_not_initialize():
  glow = tg.Glow((4, 4, 1), levels=1, steps=2, width=8)
  dist = tg.GlowDistribution(glow)
  dist.sample(3)
  dist.log_prob(tf.zeros([2, 4, 4, 1]))
  assert not glow.is_initialized.numpy()
  for a in glow.actnorms:
    np.testing.assert_array_equal(a.layer.log_scale.numpy(), 0.0)


def test_degenerate_init_batch_warns_and_bounds_the_scale():
  """A batch of constant images: scale 1 (not 1 / 1e-6) on the constant channels, with a warning."""
  actnorm = tg.ActNorm(2)
  x = tf.concat([tf.fill([16, 4, 4, 1], 0.25), tf.random.normal([16, 4, 4, 1], seed=1) * 0.2], axis=-1)
  with pytest.warns(tg.bijectors.actnorm.DegenerateInitWarning, match='1 of 2 channels'):
    actnorm.initialize(x)
  log_scale = actnorm.layer.log_scale.numpy()
  assert log_scale[0] == 0.0 and abs(np.exp(-log_scale[1]) - tf.math.reduce_std(x[..., 1]).numpy()) < 1e-3
  np.testing.assert_allclose(tf.reduce_mean(actnorm.inverse(x), [0, 1, 2]), 0.0, atol=1e-5)


def test_glow_initialized_on_constant_images_keeps_sane_densities():
  model = tg.GlowModel((8, 8, 1), levels=2, steps=1, width=8, n_bins=17, seed=0)
  with pytest.warns(tg.bijectors.actnorm.DegenerateInitWarning):
    model.initialize(tf.fill([32, 8, 8, 1], 0.1))
  ordinary = tf.random.uniform([8, 8, 8, 1], -0.5, 0.5, seed=2)
  log_prob = model.log_prob(ordinary).numpy()
  assert np.all(np.isfinite(log_prob)) and np.max(np.abs(log_prob)) < 1e4, log_prob


def test_varied_images_do_not_warn():
  actnorm = tg.ActNorm(3)
  with warnings.catch_warnings():
    warnings.simplefilter('error', tg.bijectors.actnorm.DegenerateInitWarning)
    actnorm.initialize(tf.random.normal([16, 4, 4, 3], seed=3))
