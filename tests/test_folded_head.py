"""A step's actnorm and 1x1 convolution run as one affine map per pixel, z = (W diag(s)) x + W b
(`Invertible1x1Conv.inverse_after_actnorm`, used by `StepStack.apply_step`): the same values, log-dets and
gradients as the two layers one after the other, the exact inverse, and no elementwise pass over the
activations (forward or backward)."""

import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.testing import perturb

ELEMENTWISE = {'Mul', 'AddV2', 'Add', 'Sub', 'RealDiv', 'Exp', 'Neg', 'Maximum', 'Select', 'SelectV2'}


def stack_and_head(permutation):
  glow = tg.Glow((8, 8, 2), levels=1, steps=2, width=8, seed=0, dtype=tf.float64, permutation=permutation)
  perturb(glow, 0.3)  # actnorm's log_scale and bias away from 0, W away from its rotation
  stack = glow.levels[0].steps
  actnorm, conv = stack.template[:2]
  n_head = 2 + len(conv.parameter_variables())
  parameters = stack.step_parameters(stack.parameter_columns(unroll=True), 1)[:n_head]  # step 1's slices
  return stack, (actnorm, conv), parameters


@pytest.mark.parametrize('permutation', ['conv_lu', 'conv'])
def test_the_folded_head_equals_actnorm_then_the_1x1_convolution(permutation):
  stack, (actnorm, conv), parameters = stack_and_head(permutation)
  x = tf.random.stateless_normal([3, 4, 4, 8], (1, 2), dtype=tf.float64)
  floats = [p for p in parameters if p.dtype.is_floating]

  def run(fn):
    with tf.GradientTape() as tape:
      tape.watch([x, *floats])
      z, log_det = fn(x)
      log_det = log_det * tf.ones([3], tf.float64)  # [N] on both sides (the layers' own log-dets are scalars)
      loss = tf.reduce_sum(tf.sin(3 * z)) + tf.reduce_sum(log_det**2)
    return z, log_det, tape.gradient(loss, [x, *floats])

  def one_after_the_other(x):
    h, ld_actnorm = actnorm.inverse_and_log_det_with(parameters[:2], x)
    z, ld_conv = conv.inverse_and_log_det_with(parameters[2:], h)
    return z, ld_actnorm + ld_conv

  z, log_det, grads = run(lambda x: stack.apply_step(parameters, x, inverse=True, layers=(actnorm, conv)))
  z0, log_det0, grads0 = run(one_after_the_other)
  np.testing.assert_allclose(z, z0, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(log_det, log_det0, rtol=1e-10, atol=1e-12)
  assert abs(float(log_det0[0])) > 1e-3  # perturbed: actnorm and W both add to the log-det
  for g, g0 in zip(grads, grads0):
    assert np.any(np.abs(g0) > 1e-8)
    np.testing.assert_allclose(g, g0, rtol=1e-9, atol=1e-12)
  x_back, inverse_log_det = stack.apply_step(parameters, z, inverse=False, layers=(actnorm, conv))
  np.testing.assert_allclose(x_back, x, rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(inverse_log_det, -log_det0, rtol=1e-9, atol=1e-10)


def test_the_head_makes_no_elementwise_pass_over_the_activations():
  """Only C x C work folds actnorm in: over the N H W pixels, one matrix product and bias forward, and the
  matrix products and bias reduction of its gradient; no per-pixel multiply or add (actnorm's were 2 forward,
  3 more backward)."""
  stack, head, parameters = stack_and_head('conv_lu')
  floats = [p for p in parameters if p.dtype.is_floating]

  @tf.function
  def head_and_gradient(x):
    with tf.GradientTape() as tape:
      tape.watch([x, *floats])
      z, log_det = stack.apply_step(parameters, x, inverse=True, layers=head)
    return tape.gradient(
      [z, log_det], [x, *floats], output_gradients=[tf.ones_like(z), tf.ones_like(log_det)]
    )

  graph = head_and_gradient.get_concrete_function(tf.TensorSpec([None, 4, 4, 8], tf.float64)).graph

  def over_pixels(op):  # the batch dimension is unknown only in tensors that hold every pixel
    return any(t.shape.rank and t.shape.rank >= 2 and t.shape[0] is None for t in op.outputs)

  per_pixel = [op for op in graph.get_operations() if over_pixels(op)]
  assert [op.name for op in per_pixel if op.type in ELEMENTWISE] == []
  assert sum(op.type == 'MatMul' for op in per_pixel) == 2  # z = x W'^T and dx = dz W' (dW' is C x C)
