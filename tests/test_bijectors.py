"""The shared checks, run over every bijector and several whole Glows, in float64 with perturbed parameters."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.testing import (
  assert_bijective,
  assert_event_shapes,
  assert_graph_and_xla,
  assert_log_det_matches_jacobian,
  perturb,
)

F64 = tf.float64


def custom_network(in_channels, out_channels):
  """A user's own coupling network: any Keras layer with the right channel counts."""
  return keras.Sequential(
    [
      keras.Input((None, None, in_channels), dtype='float64'),
      keras.layers.Conv2D(6, 3, padding='same', activation='tanh', dtype='float64'),
      keras.layers.Conv2D(out_channels, 1, dtype='float64'),
    ]
  )


# name -> (factory, image shape [H, W, C], number of classes or None)
CASES = {
  'actnorm': (lambda: tg.ActNorm(4, dtype=F64), (2, 3, 4), None),
  'conv_lu': (lambda: tg.Invertible1x1Conv(4, seed=1, dtype=F64), (2, 3, 4), None),
  'conv_full': (lambda: tg.Invertible1x1Conv(4, lu_decomposed=False, seed=2, dtype=F64), (2, 3, 4), None),
  'reverse': (lambda: tg.ChannelPermutation.reverse(4, dtype=F64), (2, 3, 4), None),
  'shuffle': (lambda: tg.ChannelPermutation.shuffle(5, seed=3, dtype=F64), (2, 3, 5), None),
  'affine_coupling': (lambda: tg.AffineCoupling(4, width=8, dtype=F64), (3, 3, 4), None),
  'affine_coupling_odd': (lambda: tg.AffineCoupling(5, width=8, dtype=F64), (2, 2, 5), None),
  'additive_coupling': (lambda: tg.AffineCoupling(4, width=8, additive=True, dtype=F64), (3, 3, 4), None),
  'coupling_user_network': (
    lambda: tg.AffineCoupling(4, network=custom_network(2, 4), dtype=F64),
    (3, 3, 4),
    None,
  ),
  'squeeze': (lambda: tg.Squeeze(dtype=F64), (4, 2, 2), None),
  'split_prior': (lambda: tg.SplitPrior(4, dtype=F64), (3, 3, 4), None),
  'top_prior': (lambda: tg.TopPrior(4, dtype=F64), (2, 2, 4), None),
  'top_prior_conditional': (lambda: tg.TopPrior(4, num_classes=3, dtype=F64), (2, 2, 4), 3),
  'glow': (lambda: tg.Glow((4, 4, 2), levels=2, steps=2, width=8, seed=0, dtype=F64), (4, 4, 2), None),
  'glow_additive_shuffle_fixed_top': (
    lambda: tg.Glow(
      (4, 4, 1),
      levels=2,
      steps=1,
      width=8,
      coupling='additive',
      permutation='shuffle',
      learn_top=False,
      seed=1,
      dtype=F64,
    ),
    (4, 4, 1),
    None,
  ),
  'glow_conv_full_reverse': (
    lambda: tg.Glow((2, 4, 3), levels=1, steps=2, width=8, permutation='conv', seed=2, dtype=F64),
    (2, 4, 3),
    None,
  ),
  'glow_reverse_conditional': (
    lambda: tg.Glow(
      (4, 4, 1), levels=2, steps=1, width=8, permutation='reverse', num_classes=3, seed=3, dtype=F64
    ),
    (4, 4, 1),
    3,
  ),
  # Every level gradient (tfp_glow.flow.gradients) under the contract's Jacobians of both directions.
  **{
    f'glow_{gradient}': (
      lambda gradient=gradient: tg.Glow(
        (4, 4, 2), levels=2, steps=2, width=8, gradient=gradient, seed=5, dtype=F64
      ),
      (4, 4, 2),
      None,
    )
    for gradient in ('stored', 'checkpoint', 'inverse')
  },
  'glow_user_network_inverse': (
    lambda: tg.Glow(
      (2, 2, 1), levels=1, steps=2, coupling_network=custom_network, gradient='inverse', seed=4, dtype=F64
    ),
    (2, 2, 1),
    None,
  ),
  'glow_user_network': (
    lambda: tg.Glow((2, 2, 1), levels=1, steps=2, coupling_network=custom_network, seed=4, dtype=F64),
    (2, 2, 1),
    None,
  ),
}


def make(name):
  factory, image_shape, num_classes = CASES[name]
  bijector = factory()
  perturb(bijector)
  x = tf.random.stateless_normal([3, *image_shape], seed=[1, 2], dtype=F64) * 0.5
  kwargs = {} if num_classes is None else {'labels': tf.constant([0, 2, 1], tf.int32)}
  return bijector, x, kwargs


# The whole Glow through each hand-built gradient takes seconds per case: in the full run (--slow); the
# default run checks them against autodiff in tests/test_autodiff_modes.py.
SLOW = {'glow_stored', 'glow_checkpoint', 'glow_inverse', 'glow_user_network_inverse'}
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(CASES)]
# Tracing and XLA-compiling a whole Glow takes seconds: the default run compiles one (conditional); the
# variants' parts (conv, user network, additive coupling, shuffle) compile as single bijectors.
SLOW_XLA = SLOW | {
  'glow',
  'glow_conv_full_reverse',
  'glow_user_network',
  'glow_additive_shuffle_fixed_top',
}
NAMES_XLA = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_XLA else n for n in sorted(CASES)]


@pytest.mark.parametrize('name', NAMES)
def test_bijective_and_log_det(name):
  bijector, x, kwargs = make(name)
  z = assert_bijective(bijector, x, kwargs)
  assert_event_shapes(bijector, x, z)
  log_abs_det, _ = assert_log_det_matches_jacobian(bijector, x, kwargs)
  volume_preserving = name in ('reverse', 'shuffle', 'squeeze', 'additive_coupling')
  assert volume_preserving or np.all(np.abs(log_abs_det) > 1e-3), 'perturbation did not reach the log-det'


@pytest.mark.parametrize('name', NAMES_XLA)
def test_graph_unknown_batch_and_xla(name):
  bijector, x, kwargs = make(name)
  assert_graph_and_xla(bijector, x, kwargs)


@pytest.mark.parametrize('name', ['actnorm', 'affine_coupling', 'squeeze', 'glow_reverse_conditional'])
def test_any_batch_shape(name):
  """A batch of shape [2, 3], a single image (no batch), and batch size 1."""
  bijector, x, kwargs = make(name)
  z = bijector.inverse(x, **kwargs)
  ildj = bijector.inverse_log_det_jacobian(x, 3, **kwargs) * np.ones(3)
  x6 = tf.concat([x, x], 0)
  k6 = {k: tf.reshape(tf.concat([v, v], 0), [2, 3]) for k, v in kwargs.items()}
  z6 = bijector.inverse(tf.reshape(x6, [2, 3, *x.shape[1:]]), **k6)
  assert z6.shape == (2, 3, *z.shape[1:])
  np.testing.assert_allclose(z6[1], z, rtol=1e-6, atol=1e-9)
  ildj6 = bijector.inverse_log_det_jacobian(tf.reshape(x6, [2, 3, *x.shape[1:]]), 3, **k6)
  np.testing.assert_allclose(ildj6 * np.ones([2, 3]), np.stack([ildj, ildj]), rtol=1e-6)
  k1 = {k: v[0] for k, v in kwargs.items()}
  z1 = bijector.inverse(x[0], **k1)
  assert z1.shape == z.shape[1:]
  np.testing.assert_allclose(z1, z[0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('name', sorted(CASES))
def test_trainable_variables_all_listed_and_all_trained(name):
  """TFP's view (tf.Module walk) and Keras' view (bijector.layer) hold the same parameters, and a
  GradientTape step on the log-likelihood changes every one."""
  bijector, x, kwargs = make(name)
  tfp_view = {id(v) for v in bijector.trainable_variables}
  layer = bijector.layer
  keras_view = set() if layer is None else {id(v.value) for v in layer.trainable_weights}
  assert tfp_view == keras_view
  if not tfp_view:
    return
  before = [v.numpy().copy() for v in bijector.trainable_variables]
  with tf.GradientTape() as tape:
    z = bijector.inverse(x, **kwargs)
    loss = -tf.reduce_mean(
      -0.5 * tf.reduce_sum(z**2, [-3, -2, -1]) + bijector.inverse_log_det_jacobian(x, 3, **kwargs)
    )
  grads = tape.gradient(loss, bijector.trainable_variables)
  keras.optimizers.SGD(0.1).apply_gradients(zip(grads, bijector.trainable_variables))
  for v, old in zip(bijector.trainable_variables, before):
    assert not np.allclose(v.numpy(), old), f'{v.name} did not change'


def test_inside_tfp_chain_and_invert():
  """Our bijectors compose with TFP's: Chain lists their variables, Invert swaps directions."""
  import tensorflow_probability as tfp

  tfb = tfp.bijectors
  actnorm = tg.ActNorm(2, dtype=F64)
  perturb(actnorm)
  chain = tfb.Chain([tfb.Shift(tf.constant(0.5, F64)), actnorm, tg.Invertible1x1Conv(2, dtype=F64)])
  assert len(chain.trainable_variables) == 2 + 3  # actnorm (log_scale, bias) + LU (lower, upper, log|s|)
  x = tf.random.normal([2, 2, 2, 2], dtype=F64)
  np.testing.assert_allclose(chain.inverse(tf.identity(chain.forward(x))), x, atol=1e-9)
  inverted = tfb.Invert(actnorm)
  np.testing.assert_allclose(inverted.forward(x), actnorm.inverse(x))
