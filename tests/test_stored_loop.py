"""The default gradient of a level's loop, built by hand (tfp_glow.stored_loop): TensorFlow's own gradient,
from stored activations, and the path every default Glow level takes."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from bijector_checks import perturb

import tfp_glow as tg
from tfp_glow import step_loop, stored_loop


def level_steps(glow, level=0):
  return [s.bijectors() for s in glow.levels[level].steps]


def loss_and_gradients(fn, steps, x, variables):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y, log_det = fn(steps, x)
    loss = tf.reduce_sum(tf.sin(3 * y)) + tf.reduce_sum(log_det**2)
  return y, log_det, tape.gradient(loss, [x, *variables])


@pytest.mark.parametrize(
  'coupling, permutation', [('affine', 'conv_lu'), ('affine', 'conv'), ('additive', 'reverse')]
)
@pytest.mark.parametrize('graph', [False, True], ids=['eager', 'graph'])
def test_the_hand_built_backward_equals_tensorflows_gradient(coupling, permutation, graph):
  glow = tg.Glow(
    (8, 8, 2),
    levels=1,
    steps=3,
    width=8,
    coupling=coupling,
    permutation=permutation,
    seed=0,
    dtype=tf.float64,
  )
  perturb(glow, 0.1)
  steps = level_steps(glow)
  with tf.GradientTape():
    assert stored_loop.applies(steps)
  assert not stored_loop.applies(steps)  # no tape recording: nothing to store
  variables = glow.trainable_variables
  x = tf.random.stateless_normal([3, 4, 4, 8], (1, 2), dtype=tf.float64)
  run = tf.function(loss_and_gradients, autograph=False) if graph else loss_and_gradients
  y, log_det, grads = run(stored_loop.apply_steps_stored, steps, x, variables)
  y0, log_det0, grads0 = loss_and_gradients(step_loop.apply_steps_looped, steps, x, variables)
  np.testing.assert_allclose(y, y0, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(log_det, log_det0, rtol=1e-12, atol=1e-12)
  for g, g0, name in zip(grads, grads0, ['x'] + [v.name for v in variables]):
    if g0 is None:  # the exit's prior: not part of these steps
      assert g is None, name
      continue
    assert np.any(np.abs(g0) > 1e-8), name
    np.testing.assert_allclose(g, g0, rtol=1e-9, atol=1e-12, err_msg=name)


def test_under_bfloat16_the_hand_built_backward_follows_tensorflows_gradient():
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    glow = tg.Glow((8, 8, 2), levels=1, steps=3, width=8, seed=0)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  perturb(glow, 0.1)
  steps = level_steps(glow)
  assert glow.levels[0].steps[0].coupling.network.compute_dtype == 'bfloat16'
  x = tf.random.stateless_normal([3, 4, 4, 8], (1, 2))
  variables = [v for v in glow.trainable_variables if 'prior' not in v.name]
  _, _, grads = tf.function(loss_and_gradients, autograph=False)(
    stored_loop.apply_steps_stored, steps, x, variables
  )
  _, _, grads0 = tf.function(loss_and_gradients, autograph=False)(
    step_loop.apply_steps_looped, steps, x, variables
  )
  for g, g0, name in zip(grads, grads0, ['x'] + [v.name for v in variables]):
    assert g.dtype == g0.dtype == tf.float32, name
    scale = np.max(np.abs(g0))
    np.testing.assert_allclose(g, g0, atol=2e-2 * scale, err_msg=name)


def test_every_default_level_trains_through_it(monkeypatch):
  calls = []
  original = stored_loop.apply_steps_stored

  def counting(steps, x):
    calls.append(len(steps))
    return original(steps, x)

  monkeypatch.setattr(stored_loop, 'apply_steps_stored', counting)
  glow = tg.Glow((8, 8, 1), levels=2, steps=2, width=4, seed=0)
  x = tf.random.stateless_uniform([2, 8, 8, 1], (3, 4)) - 0.5

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_sum(glow.inverse_log_det_jacobian(x, 3))
    return tape.gradient(loss, glow.trainable_variables)

  step(x)
  assert calls == [2, 2]  # one call per level
  # Not without a tape (evaluation, sampling, export store nothing), not under XLA (TensorFlow's gradient
  # of unrolled steps), not with a memory-saving mode.
  calls.clear()
  tf.function(lambda x: glow.inverse_log_det_jacobian(x, 3))(x)
  tf.function(step.python_function, jit_compile=True)(x)
  saving = tg.Glow((8, 8, 1), levels=2, steps=2, width=4, seed=0, memory_saving='checkpoint')
  tf.function(lambda x: saving.inverse_log_det_jacobian(x, 3))(x)
  assert calls == []
