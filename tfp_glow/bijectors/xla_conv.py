"""The coupling network's convolutions as XLA:CPU runs them fast inside a loop: every convolution of the
forward pass AND of its gradient written in the one layout Eigen's convolution kernel takes.

Why: XLA:CPU runs a convolution through Eigen only if it is "canonical" (input NHWC = dim labels b01f,
kernel HWIO = 01io, output NHWC). TensorFlow's convolution gradients lower to non-canonical ones
(Conv2DBackpropInput: kernel 01oi; Conv2DBackpropFilter: input f01b, kernel i01o, output 01bf). XLA:CPU's
`ConvCanonicalization` pass rewrites them into transposes + a canonical convolution, but only in the ENTRY
computation: inside a `while` body (a level's K steps as one loop, `tfp_glow.flow.stack`) they stay
non-canonical and are emitted as naive loop nests (`..._elemental_kernel_module` in an `--xla_dump_to` dump),
tens of times slower. Written here by hand, each is one canonical convolution wherever it sits:

  y  = conv(x, k)                                     x [N, H, W, C], k [kh, kw, C, O], stride 1, 'SAME'
  dx = conv(dy, transpose(reverse(k, h, w), i <-> o))  'SAME' (odd kh, kw: symmetric padding)
  dk = transpose(conv(x^T, dy^T), [1, 2, 0, 3])        x^T = x as [C, H, W, N] (channels as the batch),
                                                      dy^T = dy as [H, W, N, O] (a kernel); padding
                                                      (kh-1)/2, (kw-1)/2: output [C, kh, kw, O]

Outside XLA these are plain `tf.nn.conv2d` and TensorFlow's own gradient kernels (oneDNN), unchanged. Higher
orders (a gradient of these gradients) and forward mode differentiate the convolutions above with TensorFlow's
own rules: exact, but those second-order convolutions are not canonical (`tests/test_xla_conv.py`).
"""

from __future__ import annotations

import tensorflow as tf


def conv2d(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """`tf.nn.conv2d(x, kernel, 1, 'SAME')`; traced for XLA, with the canonical gradient of this module."""
  if not _xla():
    return tf.nn.conv2d(x, kernel, 1, 'SAME')
  return _canonical_conv2d(x, kernel)


def conv2d_input_gradient(dy: tf.Tensor, kernel: tf.Tensor, input_shape: tf.Tensor) -> tf.Tensor:
  """d(sum(dy * conv2d(x, kernel))) / dx, [N, H, W, C]."""
  if not _xla():
    return tf.raw_ops.Conv2DBackpropInput(
      input_sizes=input_shape, filter=kernel, out_backprop=dy, strides=[1, 1, 1, 1], padding='SAME'
    )
  return _input_gradient(dy, kernel)


def conv2d_filter_gradient(x: tf.Tensor, dy: tf.Tensor, kernel_shape: tf.Tensor) -> tf.Tensor:
  """d(sum(dy * conv2d(x, kernel))) / dkernel, [kh, kw, C, O]."""
  if not _xla():
    return tf.raw_ops.Conv2DBackpropFilter(
      input=x, filter_sizes=kernel_shape, out_backprop=dy, strides=[1, 1, 1, 1], padding='SAME'
    )
  return _filter_gradient(x, dy, kernel_shape)


@tf.custom_gradient
def _canonical_conv2d(x, kernel):
  def grad(dy):
    return _input_gradient(dy, kernel), _filter_gradient(x, dy, tf.shape(kernel))

  return tf.nn.conv2d(x, kernel, 1, 'SAME'), grad


def _input_gradient(dy, kernel):
  _check_odd(kernel.shape)
  flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])  # [kh, kw, O, C]
  return tf.nn.conv2d(dy, flipped, 1, 'SAME')


def _filter_gradient(x, dy, kernel_shape):
  kh, kw = (int(d) for d in tf.get_static_value(kernel_shape)[:2])
  _check_odd((kh, kw))
  x_t = tf.transpose(x, [3, 1, 2, 0])  # [C, H, W, N]: channels as the batch, the batch as features
  dy_t = tf.transpose(dy, [1, 2, 0, 3])  # [H, W, N, O]: a kernel
  padding = [[0, 0], [(kh - 1) // 2] * 2, [(kw - 1) // 2] * 2, [0, 0]]
  return tf.transpose(tf.nn.conv2d(x_t, dy_t, 1, padding), [1, 2, 0, 3])  # [C, kh, kw, O] -> [kh, kw, C, O]


def _check_odd(shape):
  if shape[0] is not None and (shape[0] % 2 == 0 or shape[1] % 2 == 0):
    raise ValueError(f'xla_conv: kernels of odd size only (symmetric SAME padding), got {tuple(shape[:2])}.')


def _xla() -> bool:
  from tfp_glow.flow.xla import tracing_for_xla  # noqa: PLC0415  (tfp_glow.flow imports this package)

  return tracing_for_xla()
