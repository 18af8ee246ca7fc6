"""Gradient kernels of one step whose coupling's conditioner is the default network (`has_kernels`): what the
hand-built backward loop of `tfp_glow.flow.gradients` ('stored' and 'inverse') computes per step, so that no
convolution runs twice. They hold for any elementwise transform (`tfp_glow.bijectors.transforms`): the transform
is differentiated under a tape and inverted through its own `uncouple`, never assumed affine.

A step is  head (actnorm -> permutation: no network)  ->  coupling (image -> latent):

  x_a, x_b = split(mid);   a1, a2, pre = activations of NN(x_a);   h = pre * exp(f * logs)
  z_b, ld  = couple(x_b, h)                                       (Coupling.couple, i.e. its transform)

With a context c [N, E] (a conditioner built with `context_size`), NN's first hidden layer also adds c @ W_c
(`tfp_glow.bijectors.nets.coupling_network_activations`), and the VJPs below also give d W_c and d c.

Given the step's input x and the network's activations (stored in the forward loop, or recomputed from the
step's output by `invert_step`, since NN's input x_a passes through the coupling unchanged), `step_vjp` gives
the vector-Jacobian products of (y, log-det) with respect to x and every parameter: the cheap layers are
recomputed under a tape (a transform with its own `couple_vjp`, the spline, is differentiated by it instead),
the network's VJP is taken from its activations (`network_vjp`, the same convolution-gradient kernels
TensorFlow's own gradient uses; under XLA those of `tfp_glow.bijectors.xla_conv`, which XLA:CPU runs fast inside
a loop). First order only: `tfp_glow.flow.gradients` steps aside to plain autodiff wherever a higher order is
asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import tensorflow as tf

from tfp_glow.bijectors import xla_conv
from tfp_glow.bijectors.coupling import Coupling
from tfp_glow.bijectors.nets import LOGSCALE_FACTOR, coupling_network_activations

if TYPE_CHECKING:
  from tfp_glow.bijectors.base import GlowBijector
  from tfp_glow.flow.stack import StepStack

Activations = tuple[tf.Tensor, tf.Tensor, tf.Tensor]  # a1, a2 [N, h, w, width]; pre [N, h, w, out]


def has_kernels(coupling: GlowBijector) -> bool:
  """True for a step of a stack whose last layer says that its conditioner has these kernels (the stacked conv
  network: `has_network_kernels`): asked of the layer, never decided by its class. Else (the transformer
  conditioner, a user's layer) `tfp_glow.flow.gradients` takes each step's VJP under a tape."""
  return bool(getattr(coupling, 'has_network_kernels', False))


def forward_with_activations(
  coupling: Coupling, parameters: list[tf.Tensor], mid: tf.Tensor, context: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor, Activations]:
  """The coupling image -> latent with `parameters` (and `context` [N, E] or None), also returning the network's
  activations: (z, log-det [N] or [], activations)."""
  x_a, x_b = coupling.split(mid)
  dtype = coupling.network.compute_dtype
  out, activations = coupling_network_activations(parameters, x_a, dtype, LOGSCALE_FACTOR, context)
  z_b, log_det = coupling.couple(x_b, tf.cast(out, coupling.dtype))
  return tf.concat([x_a, z_b], axis=-1), log_det, activations


def invert_with_activations(
  coupling: Coupling, parameters: list[tf.Tensor], z: tf.Tensor, context: tf.Tensor | None = None
) -> tuple[tf.Tensor, Activations]:
  """The coupling's input from its output z (x_a = z_a, x_b = the transform's `uncouple`), and the network's
  activations at x_a, from ONE network evaluation: (mid, activations)."""
  z_a, z_b = coupling.split(z)
  dtype = coupling.network.compute_dtype
  out, activations = coupling_network_activations(parameters, z_a, dtype, LOGSCALE_FACTOR, context)
  x_b, _ = coupling.uncouple(z_b, tf.cast(out, coupling.dtype))
  return tf.concat([z_a, x_b], axis=-1), activations


def network_output_from(
  coupling: Coupling, parameters: list[tf.Tensor], activations: Activations
) -> tf.Tensor:
  """The network's output h (the flow's dtype) from its activations, as it was computed."""
  compute = coupling.network.compute_dtype
  logs = tf.cast(parameters[6], compute)  # [k_in, b_in, k_hidden, b_hidden, k_out, b_out, logs, (W_c)]
  return tf.cast(activations[2] * tf.exp(logs * LOGSCALE_FACTOR), coupling.dtype)


def network_vjp(
  weights: Sequence[tf.Tensor],
  x: tf.Tensor,
  activations: Activations,
  d_out: tf.Tensor,
  compute_dtype: tf.DType | str,
  context: tf.Tensor | None = None,
) -> tuple[tf.Tensor, list[tf.Tensor], tf.Tensor | None]:
  """The VJP of the default network at x with cotangent d_out, from its `activations` (no convolution is
  recomputed): (dx in x's dtype, [d weight, ...] each in its weight's dtype, d context or None), in the weights'
  order [conv_in kernel, bias, conv_hidden kernel, bias, conv_out kernel, bias, logs, (context kernel W_c)]:

    out = pre * e, e = exp(f * logs):    d_pre = d_out * e;   d_logs = f * sum_NHW(d_out * pre * e)
    pre = conv(a2, k_out) + b_out:       d_k_out, d_b_out, d_a2 = conv/bias gradients of d_pre
    a2 = relu(conv(a1, k_hidden) + b):   d_z2 = d_a2 * (a2 > 0);  and so on down to d_z1 and dx
    z1 = conv(x, k_in) + b_in + c @ W_c: s = sum_HW(d_z1) [N, width];  d W_c = c^T s;  d c = s W_c^T
  """
  a1, a2, pre = activations
  k_in, _, k_hidden, _, k_out, _, logs = (tf.cast(w, compute_dtype) for w in weights[:7])
  d_out = tf.cast(d_out, compute_dtype)
  e = tf.exp(logs * LOGSCALE_FACTOR)
  d_logs = LOGSCALE_FACTOR * tf.reduce_sum(d_out * pre * e, axis=[0, 1, 2])
  x_c = tf.cast(x, compute_dtype)
  grads, d = [], d_out * e
  for inputs, kernel in ((a2, k_out), (a1, k_hidden), (x_c, k_in)):
    d_z1 = d  # after the loop: the first hidden layer's pre-activation's cotangent
    grads.append(xla_conv.conv2d_filter_gradient(inputs, d, tf.shape(kernel)))
    grads.append(tf.raw_ops.BiasAddGrad(out_backprop=d))
    d_inputs = xla_conv.conv2d_input_gradient(d, kernel, tf.shape(inputs))
    d = tf.raw_ops.ReluGrad(gradients=d_inputs, features=inputs) if inputs is not x_c else d_inputs
  d_k_out, d_b_out, d_k_hidden, d_b_hidden, d_k_in, d_b_in = grads
  ordered = [d_k_in, d_b_in, d_k_hidden, d_b_hidden, d_k_out, d_b_out, d_logs]
  d_context = None
  if context is not None:
    s = tf.reduce_sum(d_z1, axis=[1, 2])
    ordered.append(tf.matmul(tf.cast(context, compute_dtype), s, transpose_a=True))
    d_context = tf.cast(tf.matmul(s, tf.cast(weights[7], compute_dtype), transpose_b=True), context.dtype)
  return tf.cast(d, x.dtype), [tf.cast(g, w.dtype) for g, w in zip(ordered, weights)], d_context


def step_vjp(
  stack: StepStack,
  parameters: list[tf.Tensor],
  x: tf.Tensor,
  activations: Activations,
  dy: tf.Tensor,
  dlog_det: tf.Tensor,
  context: tf.Tensor | None = None,
) -> tuple[tf.Tensor, list[tf.Tensor | None], tf.Tensor | None]:
  """(dx, [d parameter in `parameters`' order; None where unused], d context or None) of one step of `stack` (a
  StepStack whose coupling `has_kernels`) at its input x, with the network's `activations` at that input."""
  *head, coupling = stack.template
  n_head = len(parameters) - len(coupling.parameter_variables())
  head_floats = [p for p in parameters[:n_head] if p.dtype.is_floating]
  h = tf.stop_gradient(network_output_from(coupling, parameters[n_head:], activations))
  couple_vjp = getattr(coupling.transform, 'couple_vjp', None)  # the transform's own VJP (the spline's)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, *head_floats, h])
    mid, ld_head = stack.apply_step(parameters[:n_head], x, inverse=True, layers=head)
    x_a, x_b = coupling.split(mid)
    if couple_vjp is None:
      z_b, ld = coupling.couple(x_b, h)
  dy_a, dy_b = coupling.split(dy)
  if couple_vjp is not None:  # no second trace of the transform under the tape
    dh, dx_b = couple_vjp(x_b, h, dy_b, dlog_det)
  elif ld.shape.rank == 0:  # additive: a constant log-det
    dh, dx_b = tape.gradient(z_b, [h, x_b], output_gradients=dy_b)
  else:
    dh, dx_b = tape.gradient([z_b, ld], [h, x_b], output_gradients=[dy_b, dlog_det])
  dtype = coupling.network.compute_dtype
  dx_a, network_grads, d_context = network_vjp(parameters[n_head:], x_a, activations, dh, dtype, context)
  d_mid = tf.concat([dy_a + dx_a, dx_b], axis=-1)
  g = iter(tape.gradient([mid, ld_head], [x, *head_floats], output_gradients=[d_mid, dlog_det]))
  del tape
  dx = next(g)
  head_grads = [next(g) if p.dtype.is_floating else None for p in parameters[:n_head]]
  return dx, [*head_grads, *network_grads], d_context
