"""The default gradient of a level's step loop, with a backward loop built by hand.

TensorFlow differentiates a `tf.while_loop` by rewriting it: every intermediate tensor of the body that the
gradient needs is pushed onto an accumulator each iteration (50 per step here, 24 of them bookkeeping of
the parameter reads), and a gradient body is generated from the forward body. Tracing and optimizing that
machinery was most of the first training step. Here the loop keeps exactly what the backward pass needs,
and the backward pass is one more loop:

  forward,  k = 0 .. K-1:   store x_k and the coupling network's activations (a1, a2, pre) of step k
                            x_{k+1}, ld_k = step_k(x_k)
  backward, k = K-1 .. 0:   recompute the cheap layers of step k from x_k under a tape (actnorm, the 1x1
                            convolution, the coupling's arithmetic given the stored network output);
                            the network's VJP from its stored activations (`nets.coupling_network_vjp`:
                            the same convolution-gradient kernels autodiff would use, nothing recomputed)

So the stored memory is that of plain backpropagation (the network activations dominate it) and no
convolution runs twice. Gradients equal TensorFlow's own to rounding (`tests/test_stored_loop.py`).
It applies where a gradient tape records (a training step; not evaluation, sampling or export, which
store nothing), to a stack's steps (`tfp_glow.step_loop.shared_stack`) whose last layer is an
`AffineCoupling` with the default network (every Glow level with its default network); anything else, and
XLA, keeps TensorFlow's own gradient.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
from tensorflow.python.eager import record  # could_possibly_record: is a gradient tape active

from tfp_glow.bijectors.base import GlowBijector
from tfp_glow.bijectors.coupling import AffineCoupling
from tfp_glow.step_loop import (
  apply_step,
  gradient_inputs,
  read_step,
  shared_stack,
  stacked_parameters,
  tf_variable,
)

StepBijectors = Sequence[GlowBijector]


def applies(steps: Sequence[StepBijectors]) -> bool:
  """True if a gradient tape is recording (so the gradient will be taken here: without one, as in
  evaluation, sampling or a SavedModel, nothing is stored, and a gradient taken later by TensorFlow's
  own means still works) and `steps` are a stack's (>= 2) whose last layer is an AffineCoupling with the
  default network."""
  coupling = steps[0][-1] if steps else None
  return (
    record.could_possibly_record()
    and len(steps) >= 2
    and isinstance(coupling, AffineCoupling)
    and coupling.parameter_variables() is not None
    and shared_stack(steps) is not None
  )


def apply_steps_stored(steps: Sequence[StepBijectors], x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Image -> latent through a stack's steps, as `step_loop.apply_steps_looped`: (y [N, h, w, c],
  log-det [N]), with the hand-built backward loop of the module docstring."""
  k_steps, template = len(steps), list(steps[0])
  *head, coupling = template
  n_head = sum(len(b.parameter_variables()) for b in head)
  stack = shared_stack(steps)
  position = {tf_variable(v).ref(): j for j, v in enumerate(stack)}

  @tf.custom_gradient
  def block(x):
    columns = stacked_parameters(steps)

    def forward(k, h, log_det, inputs, a1s, a2s, pres):
      parameters = read_step(columns, k)
      mid, ld_head = apply_step(head, parameters[:n_head], h, inverse=True)
      y, ld, (a1, a2, pre) = coupling.inverse_with_activations(parameters[n_head:], mid)
      stored = (inputs.write(k, h), a1s.write(k, a1), a2s.write(k, a2), pres.write(k, pre))
      return (k + 1, y, log_det + ld_head + ld, *stored)

    compute = coupling.network.compute_dtype
    arrays = [tf.TensorArray(x.dtype, size=k_steps)] + [
      tf.TensorArray(compute, size=k_steps) for _ in range(3)
    ]
    log_det = tf.zeros(tf.shape(x)[:1], x.dtype)
    _, y, log_det, *stored = tf.while_loop(
      lambda k, *_: k < k_steps, forward, (tf.constant(0), x, log_det, *arrays), maximum_iterations=k_steps
    )

    def grad(dy, dlog_det, variables=None):
      variables, dlog_det = gradient_inputs(variables, position, dlog_det, y)
      wanted = sorted({position[v.ref()] for v in variables})
      columns = stacked_parameters(steps)  # read afresh (a TensorArray's element is read once)
      slots = [
        tf.TensorArray(columns[j].dtype, size=k_steps, element_shape=stack[j].shape[1:]) for j in wanted
      ]

      def backward(i, dy, slots):
        k = k_steps - 1 - i
        parameters = read_step(columns, k)
        x_k, *activations = (s.read(k) for s in stored)
        dx, grads = _step_vjp(head, coupling, n_head, parameters, x_k, activations, dy, dlog_det)
        step_grads = [tf.zeros_like(parameters[j]) if grads[j] is None else grads[j] for j in wanted]
        return i + 1, dx, [s.write(k, g) for s, g in zip(slots, step_grads)]

      _, dx, slots = tf.while_loop(
        lambda i, *_: i < k_steps, backward, (tf.constant(0), dy, slots), maximum_iterations=k_steps
      )
      stacked = {j: s.stack() for j, s in zip(wanted, slots)}  # [K, ...]: each variable is a whole stack
      return dx, [stacked[position[v.ref()]] for v in variables]

    return (y, log_det), grad

  return block(x)


def _step_vjp(head, coupling, n_head, parameters, x, activations, dy, dlog_det):
  """(dx, [d parameter, in `parameters`' order; None if unused]) of one step at its stored input x."""
  head_floats = [p for p in parameters[:n_head] if p.dtype.is_floating]
  h = tf.stop_gradient(coupling.network_output_from(parameters[n_head:], activations))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, *head_floats, h])
    mid, ld_head = apply_step(head, parameters[:n_head], x, inverse=True)
    x_a, x_b = coupling.split(mid)
    z_b, ld = coupling.couple(x_b, h)
  dy_a, dy_b = coupling.split(dy)
  if ld.shape.rank == 0:  # additive: a constant log-det
    dh, dx_b = tape.gradient(z_b, [h, x_b], output_gradients=dy_b)
  else:
    dh, dx_b = tape.gradient([z_b, ld], [h, x_b], output_gradients=[dy_b, dlog_det])
  dx_a, network_grads = coupling.network_vjp(parameters[n_head:], x_a, activations, dh)
  d_mid = tf.concat([dy_a + dx_a, dx_b], axis=-1)
  g = iter(tape.gradient([mid, ld_head], [x, *head_floats], output_gradients=[d_mid, dlog_det]))
  del tape
  dx = next(g)
  head_grads = [next(g) if p.dtype.is_floating else None for p in parameters[:n_head]]
  return dx, [*head_grads, *network_grads]
