"""A Glow level's K steps share one stack of variables per parameter ([K, ...], `GlowBijector.index`):
the same flow as K steps that each own their variables, with a variable count that does not grow with K."""

import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.bijectors import nets
from tfp_glow.bijectors.actnorm import ActNorm
from tfp_glow.bijectors.coupling import AffineCoupling
from tfp_glow.bijectors.invertible_conv import Invertible1x1Conv
from tfp_glow.bijectors.permutation import ChannelPermutation
from tfp_glow.bijectors.squeeze import Squeeze
from tfp_glow.testing import assert_bijective, perturb

ARGS = dict(image_shape=(8, 8, 2), levels=2, steps=3, width=8, seed=0, dtype=tf.float64)


def step_by_step_copy(glow: tg.Glow, **kwargs) -> tg.Glow:
  """The same flow built with per-step variables (a 'custom' network that is the default one), holding
  `glow`'s values: step k's variables get slice k of the stacks."""
  width = ARGS['width']
  copy = tg.Glow(
    **{**ARGS, **kwargs}, coupling_network=lambda i, o: nets.coupling_network(i, o, width, 'float64')
  )
  for level, level_copy in zip(glow.levels, copy.levels):
    for step, step_copy in zip(level.steps, level_copy.steps):
      for b, b_copy in zip(step.bijectors(), step_copy.bijectors()):
        own = b_copy.parameter_variables() or nets.coupling_network_weights(b_copy.network)
        for v, value in zip(own, b.current_parameters(), strict=True):
          v.assign(value)
    for v, w in zip(level_copy.exit.trainable_variables, level.exit.trainable_variables, strict=True):
      v.assign(w)
  return copy


@pytest.mark.parametrize('coupling, permutation', [('affine', 'conv_lu'), ('additive', 'shuffle')])
def test_stacked_levels_equal_the_same_flow_with_per_step_variables(coupling, permutation):
  glow = tg.Glow(**ARGS, coupling=coupling, permutation=permutation)
  perturb(glow, 0.1)
  copy = step_by_step_copy(glow, coupling=coupling, permutation=permutation)
  x = tf.random.stateless_uniform([3, 8, 8, 2], (1, 2), dtype=tf.float64) - 0.5

  def loss_and_grads(flow):
    with tf.GradientTape() as tape:
      z, log_det = flow.inverse_and_log_det(x)
      loss = tf.reduce_sum(tf.sin(3 * z)) + tf.reduce_sum(log_det**2)
    return z, log_det, tape.gradient(loss, flow.trainable_variables)

  z, log_det, grads = tf.function(loss_and_grads)(glow)
  z0, log_det0, grads0 = loss_and_grads(copy)
  np.testing.assert_allclose(z, z0, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(log_det, log_det0, rtol=1e-10, atol=1e-12)
  # Gradient of stack j, slice k == gradient of step k's own variable j.
  by_variable = {v.ref(): g for v, g in zip(copy.trainable_variables, grads0)}
  stacked = {v.ref(): g for v, g in zip(glow.trainable_variables, grads)}
  for level, level_copy in zip(glow.levels, copy.levels):
    for k, (step, step_copy) in enumerate(zip(level.steps, level_copy.steps)):
      for b, b_copy in zip(step.bijectors(), step_copy.bijectors()):
        own = b_copy.parameter_variables() or nets.coupling_network_weights(b_copy.network)
        for v_stack, v in zip(b.parameter_variables(), own):
          if v.trainable:
            assert np.any(np.abs(by_variable[v.value.ref()]) > 1e-8), v.path
            np.testing.assert_allclose(
              stacked[v_stack.value.ref()][k], by_variable[v.value.ref()], rtol=1e-9, atol=1e-12
            )
  np.testing.assert_allclose(copy.forward(z0), x, atol=1e-9)
  np.testing.assert_allclose(glow.forward(z), x, atol=1e-9)


def test_the_number_of_variables_does_not_grow_with_the_number_of_steps():
  counts = {k: len(tg.Glow(**{**ARGS, 'steps': k}).trainable_variables) for k in (1, 4)}
  assert counts[1] == counts[4]
  glow = tg.Glow(**{**ARGS, 'steps': 4})
  sizes = sum(int(np.prod(v.shape)) for v in glow.trainable_variables)
  per_step = tg.Glow(**{**ARGS, 'steps': 4}, coupling_network=lambda i, o: nets.coupling_network(i, o, 8))
  assert sizes == sum(int(np.prod(v.shape)) for v in per_step.trainable_variables)  # same parameters


def test_each_step_is_a_tfp_bijector_on_its_own_slice():
  glow = tg.Glow(**ARGS)
  perturb(glow, 0.1)
  step = glow.levels[0].steps[1]
  assert [b.index for b in step.bijectors()] == [1, 1, 1]
  x = tf.random.stateless_normal([2, 4, 4, 8], (5, 6), dtype=tf.float64)
  for b in step.bijectors():
    assert_bijective(b, x, {})
  # Step 1's actnorm is exactly a standalone ActNorm holding slice 1 of the stack.
  alone = ActNorm(8, dtype=tf.float64)
  for v, value in zip(alone.parameter_variables(), step.actnorm.current_parameters()):
    v.assign(value)
  np.testing.assert_allclose(step.actnorm.inverse(x), alone.inverse(x), rtol=1e-12)
  assert step.actnorm.current_parameters()[0].shape == [8]
  assert step.actnorm.parameter_variables()[0].shape == [3, 8]


def test_a_steps_actnorm_initializes_only_its_slice():
  actnorms = ActNorm.stacked(3, 4, dtype=tf.float64)
  x = tf.random.stateless_normal([64, 2, 2, 3], (1, 1), dtype=tf.float64) * 3 + 1
  actnorms[2].initialize(x)
  flags = actnorms[0].layer.initialized.numpy()
  np.testing.assert_array_equal(flags, [False, False, True, False])
  z = actnorms[2].inverse(x).numpy()
  np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-6)
  np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-4)
  log_scale = actnorms[0].layer.log_scale.numpy()
  assert np.all(log_scale[[0, 1, 3]] == 0) and np.all(log_scale[2] != 0)
  before = log_scale.copy()
  actnorms[2].initialize(x * 5)  # idempotent
  np.testing.assert_array_equal(actnorms[0].layer.log_scale.numpy(), before)


def test_stacks_start_like_their_per_step_layers():
  convs = Invertible1x1Conv.stacked(4, 3, seed=1, dtype=tf.float64)
  weights = [c.weight()[0].numpy() for c in convs]
  for w in weights:  # each step its own random rotation
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-10)
  assert not np.allclose(weights[0], weights[1])
  couplings = AffineCoupling.stacked(4, 5, width=64)
  kernel = couplings[0].network.conv_in_kernel.numpy()  # [K, 3, 3, 2, 64]
  limit = np.sqrt(6 / (9 * 2 + 9 * 64))  # Glorot-uniform with one step's fans
  assert kernel.shape == (5, 3, 3, 2, 64) and np.abs(kernel).max() <= limit
  assert np.abs(kernel).max() > 0.9 * limit and not np.allclose(kernel[0], kernel[1])
  np.testing.assert_array_equal(couplings[3].network.conv_out_kernel.numpy(), 0)  # identity at start
  perms = ChannelPermutation.stacked([[1, 0, 2], [2, 1, 0]])
  x = tf.reshape(tf.range(3.0), [1, 1, 1, 3])
  np.testing.assert_array_equal(perms[1].inverse(x).numpy().ravel(), [2, 1, 0])
  with pytest.raises(ValueError, match='not a permutation'):
    ChannelPermutation.stacked([[0, 1, 2], [0, 0, 1]])


def test_the_looped_actnorm_init_equals_the_step_by_step_init():
  glow = tg.Glow(**ARGS)
  perturb(glow, 0.3)
  flags = glow.levels[0].steps[0].actnorm.layer.initialized
  flags.assign([False, True, False])  # step 1 of level 0 keeps its (perturbed) values
  copy = step_by_step_copy(glow)
  copy.levels[0].steps[1].actnorm.layer.initialized.assign(True)
  x = tf.random.stateless_uniform([16, 8, 8, 2], (7, 7), dtype=tf.float64) - 0.5
  kept = glow.levels[0].steps[1].actnorm.current_parameters()
  glow.initialize(x)
  copy.initialize(x)
  assert bool(glow.is_initialized) and bool(copy.is_initialized)
  for level, level_copy in zip(glow.levels, copy.levels):
    for step, step_copy in zip(level.steps, level_copy.steps):
      for a, b in zip(step.actnorm.current_parameters(), step_copy.actnorm.current_parameters()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
  for a, b in zip(glow.levels[0].steps[1].actnorm.current_parameters(), kept):
    np.testing.assert_array_equal(a, b)
  z = glow.levels[0].steps[0].actnorm.inverse(Squeeze(2, dtype=tf.float64).inverse(x)).numpy()  # its input
  np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-8)
