"""The Glow bijector and distribution: construction errors, priors, encode/decode, TFP composition."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_glow as tg
from tfp_glow.testing import perturb

tfd = tfp.distributions


def small_glow(**kwargs):
  args = dict(image_shape=(8, 8, 1), levels=2, steps=2, width=8, seed=0)
  args.update(kwargs)
  return tg.Glow(**args)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(image_shape=(6, 8, 1), levels=2), 'divisible by 2\\*\\*levels = 4'),
    (dict(image_shape=(8, 8)), 'image_shape must be \\(H, W, C\\)'),
    (dict(levels=0), 'levels must be a positive integer'),
    (dict(coupling='splin'), 'coupling must be one of'),
    (dict(permutation='random'), 'permutation must be one of'),
    (dict(num_classes=1), 'num_classes'),
    (dict(dtype=tf.float16), 'float32 or float64'),
  ],
)
def test_bad_construction_is_refused_with_a_clear_error(kwargs, message):
  with pytest.raises((ValueError, TypeError), match=message):
    small_glow(**kwargs)


def test_layer_level_construction_errors():
  with pytest.raises(ValueError, match='channels must be an integer >= 2'):
    tg.AffineCoupling(1)
  with pytest.raises(ValueError, match='must output 4 channels'):
    tg.AffineCoupling(4, network=keras.Sequential([keras.Input((None, None, 2)), keras.layers.Conv2D(3, 1)]))
  with pytest.raises(ValueError, match='not a permutation'):
    tg.ChannelPermutation([0, 0, 1])
  with pytest.raises(ValueError, match='divisible by 2'):
    tg.Squeeze().inverse(tf.zeros([1, 3, 4, 1]))


def test_bad_input_is_refused_with_a_clear_error():
  glow = small_glow(validate_args=True)
  dist = tg.GlowDistribution(glow)
  with pytest.raises(ValueError, match='expected images of shape \\[..., 8, 8, 1\\]'):
    dist.log_prob(tf.zeros([2, 8, 4, 1]))
  with pytest.raises(ValueError, match='expected 1 channels'):
    dist.log_prob(tf.zeros([2, 8, 8, 3]))
  with pytest.raises(ValueError, match='rank >= 3'):
    glow.inverse(tf.zeros([8, 8]))
  with pytest.raises((TypeError, ValueError), match='float32'):
    dist.log_prob(tf.zeros([2, 8, 8, 1], tf.float64))
  with pytest.raises(tf.errors.InvalidArgumentError, match='NaN or Inf'):
    dist.log_prob(tf.fill([2, 8, 8, 1], np.nan))
  with pytest.raises(ValueError, match='temperature must be > 0'):
    dist.sample(2, temperature=0.0)
  with pytest.raises(ValueError, match='not class-conditional'):
    dist.log_prob(tf.zeros([2, 8, 8, 1]), labels=tf.constant([0, 1]))


def test_conditional_needs_labels_and_labels_change_the_density():
  glow = small_glow(num_classes=3)
  perturb(glow)
  dist = tg.GlowDistribution(glow)
  x = tf.random.uniform([2, 8, 8, 1]) - 0.5
  with pytest.raises(ValueError, match='pass labels='):
    dist.log_prob(x)
  lp0 = dist.log_prob(x, labels=tf.constant([0, 0]))
  lp1 = dist.log_prob(x, labels=tf.constant([1, 1]))
  assert np.all(np.abs(lp0 - lp1) > 1e-3)
  samples = dist.sample(2, labels=tf.constant([2, 2]))
  assert samples.shape == (2, 8, 8, 1)


def test_priors_start_as_standard_normal():
  """A fresh Glow's split and top priors are N(0, 1) (TFP's Glow starts its exits at std exp(-2))."""
  glow = small_glow()
  h = tf.random.normal([2, 4, 4, 4])
  split = glow.levels[0].exit
  np.testing.assert_allclose(split.inverse(h), h, atol=1e-7)
  assert glow.levels[-1].exit is not None
  np.testing.assert_allclose(glow.levels[-1].exit.inverse_log_det_jacobian(tf.zeros([1, 2, 2, 8]), 3), 0.0)


def test_log_prob_is_base_density_plus_log_det_and_matches_transformed_distribution():
  glow = small_glow()
  perturb(glow)
  dist = tg.GlowDistribution(glow)
  x = tf.random.uniform([4, 8, 8, 1]) - 0.5
  eps = glow.inverse(x)
  expected = tfd.Sample(tfd.Normal(0.0, 1.0), (8, 8, 1)).log_prob(
    tf.identity(eps)
  ) + glow.inverse_log_det_jacobian(tf.identity(x), 3)
  np.testing.assert_allclose(dist.log_prob(tf.identity(x)), expected, rtol=1e-5)
  plain = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), (8, 8, 1)), glow)
  np.testing.assert_allclose(plain.log_prob(tf.identity(x)), expected, rtol=1e-5)


class CountingNetwork(keras.layers.Layer):
  """A coupling network that counts its evaluations (eagerly)."""

  def __init__(self, out_channels):
    super().__init__()
    self.conv = keras.layers.Conv2D(out_channels, 3, padding='same')
    self.calls = 0

  def build(self, input_shape):
    self.conv.build(input_shape)

  def call(self, x):
    self.calls += 1
    return self.conv(x)

  def compute_output_shape(self, input_shape):
    return self.conv.compute_output_shape(input_shape)


def test_each_coupling_network_runs_once_per_log_prob():
  nets = []
  glow = tg.Glow(
    (4, 4, 1), levels=1, steps=3, coupling_network=lambda i, o: nets.append(CountingNetwork(o)) or nets[-1]
  )
  dist = tg.GlowDistribution(glow)
  dist.log_prob(tf.random.uniform([2, 4, 4, 1]))
  assert [n.calls for n in nets] == [1, 1, 1]
  # The same holds for one coupling inside a plain TFP TransformedDistribution.
  net = CountingNetwork(4)
  coupling = tg.AffineCoupling(4, network=net)
  td = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), (2, 2, 4)), coupling)
  net.calls = 0
  td.log_prob(tf.random.normal([3, 2, 2, 4]))
  assert net.calls == 1


def test_sample_temperature_scales_the_latent():
  glow = small_glow()
  perturb(glow)
  dist = tg.GlowDistribution(glow)
  cold = dist.sample(64, temperature=0.1, seed=(1, 2))
  warm = dist.sample(64, temperature=1.0, seed=(1, 2))
  np.testing.assert_allclose(glow.inverse(cold), 0.1 * glow.inverse(warm), rtol=1e-3, atol=1e-4)
  assert np.std(glow.inverse(cold)) < 0.2 < np.std(glow.inverse(warm))


def test_encode_decode_round_trip_and_latent_shapes():
  glow = small_glow()
  perturb(glow)
  x = tf.random.uniform([3, 8, 8, 1]) - 0.5
  latents = glow.encode(x)
  assert [tuple(z.shape[1:]) for z in latents] == glow.latent_shapes == [(4, 4, 2), (2, 2, 8)]
  assert sum(np.prod(s) for s in glow.latent_shapes) == 64
  np.testing.assert_allclose(glow.decode(latents), x, atol=1e-5)
  enc = glow.encode_with_log_det(x)
  np.testing.assert_allclose(enc.log_det, glow.inverse_log_det_jacobian(tf.identity(x), 3), rtol=1e-5)
  with pytest.raises(ValueError, match='expects 2 latents'):
    glow.decode(latents[:1])


def test_other_base_distribution_and_tfp_minimize_trains_every_parameter():
  glow = small_glow(image_shape=(4, 4, 1), levels=1, steps=1)
  glow.initialize(tf.random.uniform([16, 4, 4, 1]) - 0.5)
  base = tfd.Sample(tfd.StudentT(df=5.0, loc=0.0, scale=1.0), (4, 4, 1))
  dist = tg.GlowDistribution(glow, base_distribution=base)
  x = tf.random.uniform([32, 4, 4, 1]) * 0.2
  before = [v.numpy().copy() for v in glow.trainable_variables]
  losses = tfp.math.minimize(
    lambda: -tf.reduce_mean(dist.log_prob(x)),
    num_steps=5,
    optimizer=keras.optimizers.Adam(1e-2),
    trainable_variables=dist.trainable_variables,
  )
  assert losses[-1] < losses[0]
  for v, old in zip(glow.trainable_variables, before):
    assert not np.allclose(v.numpy(), old), v.name


@pytest.mark.slow
def test_distribution_in_tf_function_and_xla_with_unknown_batch():
  glow = small_glow(num_classes=2)
  perturb(glow)
  dist = tg.GlowDistribution(glow)
  x = tf.random.uniform([3, 8, 8, 1]) - 0.5
  y = tf.constant([0, 1, 1])
  eager = dist.log_prob(x, labels=y)
  for jit in (False, True):
    f = tf.function(
      lambda x, y: dist.log_prob(x, labels=y),
      jit_compile=jit,
      input_signature=[tf.TensorSpec([None, 8, 8, 1]), tf.TensorSpec([None], tf.int32)],
    )
    np.testing.assert_allclose(f(x, y), eager, rtol=1e-5)
    s = tf.function(
      lambda n: dist.sample(n, labels=tf.zeros([n], tf.int32), temperature=0.7), jit_compile=jit
    )
    assert s(tf.constant(2)).shape[1:] == (8, 8, 1)


def test_variables_visible_through_tfp_containers():
  """A GlowDistribution inside another TFP distribution still exposes the flow's variables."""
  dists = [tg.GlowDistribution(small_glow(seed=s)) for s in (0, 1)]
  mixture = tfd.Mixture(tfd.Categorical(logits=tf.Variable([0.0, 0.0])), dists)
  flow_vars = {id(v) for d in dists for v in d.trainable_variables}
  assert flow_vars and flow_vars <= {id(v) for v in mixture.trainable_variables}
  x = tf.random.uniform([2, 8, 8, 1]) - 0.5
  assert mixture.log_prob(x).shape == (2,)


@pytest.mark.parametrize(
  'kwargs',
  [
    dict(),
    dict(coupling='spline', conditioner='transformer', conditioner_settings=dict(depth=1, width=8, heads=2)),
    dict(num_classes=3, class_context=4),
  ],
  ids=['conv', 'transformer', 'class_context'],
)
def test_a_seeded_glow_starts_from_the_same_weights_every_time_and_leaves_pythons_random_alone(kwargs):
  """seed= fixes every initial value (the conditioners' Glorot draws and a class embedding too, not only the
  rotations), without the user's global seed; the caller's `random` stream is not consumed."""
  import random

  def weights(seed):
    return [np.asarray(v) for v in small_glow(seed=seed, **kwargs).variables]

  random.seed(11)
  expected = random.random()
  random.seed(11)
  first = weights(3)
  assert random.random() == expected  # the build took nothing from the caller's stream
  second = weights(3)  # from another state of `random`
  assert all(np.array_equal(a, b) for a, b in zip(first, second))
  assert any(not np.array_equal(a, b) for a, b in zip(first, weights(4)))
  assert any(not np.array_equal(a, b) for a, b in zip(weights(None), weights(None)))
  keras.utils.set_random_seed(5)  # seed None: Keras' global seed rules, as in any Keras model
  again = weights(None)
  keras.utils.set_random_seed(5)
  assert all(np.array_equal(a, b) for a, b in zip(again, weights(None)))


def test_two_flows_built_alike_are_different_functions_to_tfps_cache():
  """TFP keys its bijector cache (and ==) on the constructor's arguments; ours keep their parameters in Keras
  layers, so two flows built with the same arguments must not hand each other cached results."""
  x = tf.constant(np.random.default_rng(3).uniform(-0.5, 0.5, (2, 8, 8, 1)), tf.float32)
  a, b = small_glow(), small_glow()
  perturb(a, 0.05, seed=1)
  perturb(b, 0.05, seed=2)
  za, zb = a.inverse(x), b.inverse(x)  # the same tensor x
  assert np.abs(zb - b.inverse(tf.identity(x))).max() == 0  # b's own answer, not a's cached one
  assert np.abs(za - zb).max() > 1e-3 and a != b
  dist_a, dist_b = tg.GlowDistribution(a), tg.GlowDistribution(b)
  log_p_a, log_p_b = dist_a.log_prob(x), dist_b.log_prob(x)
  np.testing.assert_array_equal(log_p_b, dist_b.log_prob(tf.identity(x)))
  assert np.abs(log_p_a - log_p_b).max() > 1e-3
  assert a.inverse(x) is za and a == a  # one flow still caches its own results (the log-det with the value)
  for layer_a, layer_b in zip(a.levels[0].steps[0].bijectors(), b.levels[0].steps[0].bijectors()):
    assert layer_a != layer_b  # actnorm, 1x1 convolution, coupling: each with its own parameters
