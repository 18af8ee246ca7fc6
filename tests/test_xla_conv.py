"""tfp_glow.bijectors.xla_conv: the coupling network's convolutions and their gradients written in the one
layout XLA:CPU runs through Eigen inside a loop equal TensorFlow's own convolution and its gradients."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_glow.bijectors import xla_conv


def inputs(kernel_size, channels=5, out=7):
  x = tf.random.stateless_normal([3, 6, 8, channels], (1, 2), dtype=tf.float64)
  kernel = tf.random.stateless_normal([kernel_size, kernel_size, channels, out], (3, 4), dtype=tf.float64)
  dy = tf.random.stateless_normal([3, 6, 8, out], (5, 6), dtype=tf.float64)
  return x, kernel, dy


def plain_vjp(x, kernel, dy):
  with tf.GradientTape() as tape:
    tape.watch([x, kernel])
    y = tf.nn.conv2d(x, kernel, 1, 'SAME')
  return [y, *tape.gradient(y, [x, kernel], output_gradients=dy)]


@pytest.mark.slow  # two XLA compilations
@pytest.mark.parametrize('kernel_size', [1, 3])
def test_under_xla_the_convolution_and_its_gradients_equal_tensorflows(kernel_size):
  x, kernel, dy = inputs(kernel_size)

  @tf.function(jit_compile=True)
  def canonical(x, kernel, dy):
    with tf.GradientTape() as tape:
      tape.watch([x, kernel])
      y = xla_conv.conv2d(x, kernel)
    dx, dk = tape.gradient(y, [x, kernel], output_gradients=dy)
    # the hand-built VJP (tfp_glow.flow.kernels) calls the two gradients directly
    direct = (
      xla_conv.conv2d_input_gradient(dy, kernel, tf.shape(x)),
      xla_conv.conv2d_filter_gradient(x, dy, tf.shape(kernel)),
    )
    return [y, dx, dk, *direct]

  y, dx, dk, dx2, dk2 = canonical(x, kernel, dy)
  y0, dx0, dk0 = plain_vjp(x, kernel, dy)
  for a, b in ((y, y0), (dx, dx0), (dk, dk0), (dx2, dx0), (dk2, dk0)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
  hlo = canonical.experimental_get_compiler_ir(x, kernel, dy)(stage='hlo')
  assert 'dim_labels=b01f_01io->b01f' in hlo
  assert 'dim_labels=b01f_01oi' not in hlo and 'f01b' not in hlo  # TF's own gradient layouts


def test_outside_xla_it_is_tensorflows_own_convolution():
  x, kernel, dy = inputs(3)
  graph = tf.function(lambda x, k: xla_conv.conv2d(x, k)).get_concrete_function(x, kernel).graph
  ops = {op.type for op in graph.get_operations()}
  assert 'Conv2D' in ops and 'IdentityN' not in ops  # no custom gradient: TF's (oneDNN) gradient kernels


def test_even_kernels_are_refused_under_xla():
  x = tf.zeros([1, 4, 4, 2])
  with pytest.raises(ValueError, match='odd size'):
    tf.function(lambda x: tf.gradients(xla_conv.conv2d(x, tf.ones([2, 2, 2, 3])), x), jit_compile=True)(x)


@pytest.mark.slow  # two XLA compilations
def test_under_xla_second_order_and_forward_mode_equal_tensorflows():
  """The canonical gradient is itself made of differentiable convolutions: a Hessian-vector product (the
  gradient of a gradient) and a Jacobian-vector product (forward mode) through it equal TensorFlow's own.
  (The second order differentiates those convolutions with TensorFlow's own gradients: right, though not in
  the canonical layout; only the first order, what training runs, is kept canonical.)"""
  x, kernel, dy = inputs(3)
  v = tf.random.stateless_normal(x.shape, (7, 8), dtype=tf.float64)
  tangent = tf.random.stateless_normal(kernel.shape, (9, 10), dtype=tf.float64)

  def second_order_and_jvp(conv):
    with tf.GradientTape() as outer:
      outer.watch(kernel)
      with tf.GradientTape() as inner:
        inner.watch(x)
        y = conv(x, kernel)
        loss = tf.reduce_sum(tf.tanh(y) * dy)
      dx = inner.gradient(loss, x)
      directional = tf.reduce_sum(dx * v)
    hessian_vector = outer.gradient(directional, kernel)  # d/dk of <d loss/dx, v>
    with tf.autodiff.ForwardAccumulator(kernel, tangent) as accumulator:
      y = conv(x, kernel)
    return hessian_vector, accumulator.jvp(y)

  under_xla = tf.function(lambda: second_order_and_jvp(xla_conv.conv2d), jit_compile=True)()
  plain = second_order_and_jvp(lambda a, b: tf.nn.conv2d(a, b, 1, 'SAME'))
  for a, b in zip(under_xla, plain):
    assert a is not None and b is not None
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
