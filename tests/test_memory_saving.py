"""Memory-saving gradients (tfp_glow.reversible): the same gradients as plain backprop, in every mode."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from bijector_checks import perturb

import tfp_glow as tg
from tfp_glow.training.model import GlowModel


def glow_pair(mode, **kwargs):
  """A perturbed float64 Glow and a copy of it (same values) with `memory_saving=mode`."""
  args = dict(image_shape=(8, 8, 2), levels=2, steps=2, width=8, seed=0, dtype=tf.float64)
  args.update(kwargs)
  plain = tg.Glow(**args)
  perturb(plain, 0.1)
  saving = tg.Glow(**args, memory_saving=mode)
  for v, w in zip(saving.variables, plain.variables):
    v.assign(w)
  return plain, saving


def gradients(glow, x, labels, graph):
  def grad(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      enc = glow.encode_with_log_det(x, labels)
      # Every output matters: the log-det, every level's latent, the top activations.
      loss = tf.reduce_sum(enc.log_det) + sum(tf.reduce_sum(tf.sin(3 * z)) for z in enc.latents)
      loss += tf.reduce_sum(enc.top**2)
    return tape.gradient(loss, [x, *glow.trainable_variables])

  return [tf.convert_to_tensor(g) for g in (tf.function(grad) if graph else grad)(x)]


@pytest.mark.parametrize(
  'mode, graph', [('inverse', False), ('inverse', True), ('checkpoint', True)], ids=['eager', 'graph', 'ckpt']
)
def test_memory_saving_gradients_equal_plain_backprop(mode, graph):
  plain, saving = glow_pair(mode, num_classes=3, permutation='conv')
  x = tf.random.stateless_uniform([3, 8, 8, 2], (1, 2), dtype=tf.float64) - 0.5
  labels = tf.constant([0, 2, 1])
  expected = gradients(plain, x, labels, graph=False)
  got = gradients(saving, x, labels, graph)
  assert len(got) == len(expected) == 1 + len(plain.trainable_variables)
  for g, e, name in zip(got, expected, ['x'] + [v.name for v in plain.trainable_variables]):
    assert g is not None, name
    assert np.any(np.abs(e) > 1e-6), f'{name}: zero gradient, the test would not see a difference'
    np.testing.assert_allclose(g, e, rtol=1e-7, atol=1e-9, err_msg=name)


def test_memory_saving_with_additive_coupling_and_shuffle_under_xla():
  plain, saving = glow_pair(True, levels=1, coupling='additive', permutation='shuffle')
  assert saving.memory_saving == 'inverse'
  x = tf.random.stateless_uniform([2, 8, 8, 2], (3, 4), dtype=tf.float64) - 0.5
  expected = gradients(plain, x, None, graph=False)

  @tf.function(jit_compile=True)
  def xla(x):
    return gradients(saving, x, None, graph=False)

  for g, e in zip(xla(x), expected):
    np.testing.assert_allclose(g, e, rtol=1e-7, atol=1e-9)


def test_bad_memory_saving_mode_is_refused():
  with pytest.raises(ValueError, match='memory_saving must be'):
    tg.Glow((8, 8, 1), levels=1, steps=1, width=4, memory_saving='offload')


def test_fit_step_with_memory_saving_equals_the_plain_step():
  """One Keras `fit` step (SGD, so the update is the gradient) from the same perturbed weights."""
  x = tf.random.stateless_uniform([16, 8, 8, 1], (5, 6)) - 0.5
  models = []
  for mode in (False, True):
    model = GlowModel((8, 8, 1), levels=2, steps=2, width=8, n_bins=17, seed=0, memory_saving=mode)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    models.append(model)
  plain, saving = models
  plain.initialize(x)
  perturb(plain.glow, 0.1)
  saving.set_weights(plain.get_weights())
  assert saving.is_initialized
  before = [v.numpy() for v in plain.trainable_variables]
  for model in models:
    model.fit(x, batch_size=16, epochs=1, verbose=0, shuffle=False)
  for v_plain, v_saving, w0 in zip(plain.trainable_variables, saving.trainable_variables, before):
    step = v_saving.numpy() - w0
    assert np.any(np.abs(step) > 1e-6), f'{v_saving.path} was not trained'
    np.testing.assert_allclose(step, v_plain.numpy() - w0, rtol=2e-3, atol=1e-6, err_msg=v_saving.path)
