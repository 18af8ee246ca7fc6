"""Memory-saving gradients for a block of flow steps: recompute activations instead of storing them.

Backpropagating through K steps of flow normally keeps every intermediate tensor of every step (the
coupling networks' hidden activations dominate: 2 x width channels per pixel per step), so training
memory grows linearly with depth. Two ways to trade compute for that memory, per level's block of steps:

  'inverse'     (the reference code's choice; Gomez et al. 2017, "The Reversible Residual Network")
                Only the block's output y_K is kept. The backward pass walks the steps last to first:
                  x_k = step_k^-1(y_k)                          exact inverse, no gradient recorded
                  (dx_k, dtheta_k) = vjp of step_k at x_k       one step's activations live at a time
                so memory is O(one step) whatever K is. Cost: each step runs its inverse and its forward
                once more in the backward pass (about 1.3-1.5x a plain step).
  'checkpoint'  `tf.recompute_grad` per step: each step's input x_k is kept (C channels per pixel, small
                next to the 2 x width hidden channels) and the step's forward is recomputed in the backward
                pass. Memory O(K * C) instead of O(K * width); no inverse needed.

Gradients agree with plain backpropagation to floating-point rounding (the inverse reconstructs x_k
exactly up to rounding; tests/test_memory_saving.py checks both against the standard gradients).

A step here is any sequence of `GlowBijector`s applied image -> latent with `inverse_and_log_det`
(the flow's direction for the likelihood, the one that is trained). Where a level's steps can run as
one loop (`tfp_glow.step_loop`), both modes are loops too: 'inverse' walks the steps backwards in one
tf.while_loop, 'checkpoint' recomputes inside the loop, so neither the graph nor the stored
activations grow with K; otherwise (a custom coupling network) the steps are unrolled.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tfp_glow import stored_loop
from tfp_glow.bijectors.base import GlowBijector
from tfp_glow.step_loop import (
  apply_step,
  apply_steps_looped,
  can_loop,
  flat_parameters,
  gradient_inputs,
  read_step,
  shared_stack,
  stacked_parameters,
  tf_variable,
)

MODES = ('inverse', 'checkpoint')
StepBijectors = Sequence[GlowBijector]


def check_mode(memory_saving: bool | str | None) -> str | None:
  """False/None -> None (store activations), True -> 'inverse', or one of MODES."""
  if memory_saving is None or memory_saving is False:
    return None
  if memory_saving is True:
    return 'inverse'
  if memory_saving not in MODES:
    raise ValueError(f'memory_saving must be False, True or one of {MODES}, got {memory_saving!r}.')
  return memory_saving


def apply_steps(steps: Sequence[StepBijectors], x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Image -> latent through `steps`: (y [N, h, w, c], sum of log-dets [N]). Plain backprop."""
  log_det = tf.zeros(tf.shape(x)[:1], x.dtype)
  for step in steps:
    for b in step:
      x, ld = b.inverse_and_log_det(x)
      log_det += ld
  return x, log_det


def invert_steps(steps: Sequence[StepBijectors], y: tf.Tensor) -> tf.Tensor:
  """Latent -> image through `steps` (the exact inverse of `apply_steps`' value)."""
  for step in reversed(steps):
    for b in reversed(step):
      y = b.forward_and_log_det(y)[0]
  return y


def run_steps(steps: Sequence[StepBijectors], x: tf.Tensor, mode: str | None) -> tuple[tf.Tensor, tf.Tensor]:
  """`apply_steps` with the gradient strategy `mode` (None, 'inverse' or 'checkpoint'), as one loop over
  the steps where they allow it (`tfp_glow.step_loop`: a graph that does not grow with K)."""
  looped = can_loop(steps)
  if looped or shared_stack(steps) is not None:  # a stack runs unrolled only under XLA or as one step
    unroll = not looped
    if mode is None and looped and stored_loop.applies(steps):
      return stored_loop.apply_steps_stored(steps, x)
    if mode is None:
      return apply_steps_looped(steps, x, unroll=unroll)
    if mode == 'checkpoint':
      return apply_steps_looped(steps, x, checkpoint=True, unroll=unroll)
    return _reversible_loop(steps, x, unroll)
  if mode is None:
    return apply_steps(steps, x)
  if mode == 'checkpoint':
    log_det = tf.zeros(tf.shape(x)[:1], x.dtype)
    for step in steps:
      x, ld = tf.recompute_grad(lambda x, step=step: apply_steps([step], x))(x)
      log_det += ld
    return x, log_det
  return _reversible_block(steps, x)


def _step_variables(step: StepBijectors) -> list[tf.Variable]:
  return [v for b in step for v in b.trainable_variables]


def _reversible_block(steps: Sequence[StepBijectors], x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  owner = {v.ref(): k for k, step in enumerate(steps) for v in _step_variables(step)}

  @tf.custom_gradient
  def block(x):
    # Under custom_gradient nothing inside is recorded for backprop: only y (captured by `grad`) is kept.
    y, log_det = apply_steps(steps, x)

    def grad(dy, dlog_det, variables=None):
      variables, dlog_det = gradient_inputs(variables, owner, dlog_det, y)
      grads = {}
      y_k = y
      for k in reversed(range(len(steps))):
        # Without this dependency the executor would reconstruct every x_k (and rerun every step) as soon
        # as y exists, long before the gradients arrive, and hold all those activations at once.
        y_k = _after(y_k, dy)
        x_k = tf.stop_gradient(invert_steps([steps[k]], y_k))
        step_vars = [v for v in variables if owner[v.ref()] == k]
        with tf.GradientTape() as tape:
          tape.watch(x_k)
          y_again, ld = apply_steps([steps[k]], x_k)
        g = tape.gradient([y_again, ld], [x_k, *step_vars], output_gradients=[dy, dlog_det])
        dy = g[0]
        grads.update({v.ref(): gv for v, gv in zip(step_vars, g[1:])})
        y_k = x_k
      return dy, [grads.get(v.ref()) for v in variables]

    return (y, log_det), grad

  return block(x)


def _after(x: tf.Tensor, dependency: tf.Tensor) -> tf.Tensor:
  """x, but computable only once `dependency` is: a data dependency (XLA ignores control dependencies)."""
  probe = tf.cast(tf.reduce_max(tf.reshape(dependency, [-1])[:1]), tf.bool)
  zero = tf.where(tf.equal(probe, probe), 0.0, 1.0)  # always 0 (a NaN casts to True), never folded
  return x + tf.cast(zero, x.dtype)


def _reversible_loop(steps: Sequence[StepBijectors], x: tf.Tensor, unroll: bool = False):
  """'inverse' mode for steps that run as one loop (`tfp_glow.step_loop`): the same backward walk as
  `_reversible_block`, as one tf.while_loop, so neither the graph nor the memory grows with K (`unroll`:
  the same body called K times from Python, for XLA). Returns (y [N, h, w, c], log-det [N])."""
  k_steps, template = len(steps), list(steps[0])
  stack = shared_stack(steps)
  if stack is not None:  # variable j holds parameter j of every step: its gradient is the whole stack
    owner = {tf_variable(v).ref(): (None, j) for j, v in enumerate(stack)}
    shapes = [v.shape[1:] for v in stack]
  else:
    owner = {
      tf_variable(v).ref(): (k, j)
      for k, step in enumerate(steps)
      for j, v in enumerate(flat_parameters(step))
    }
    shapes = [v.shape for v in flat_parameters(steps[0])]

  @tf.custom_gradient
  def block(x):
    y, log_det = apply_steps_looped(steps, x, unroll=unroll)

    def grad(dy, dlog_det, variables=None):
      variables, dlog_det = gradient_inputs(variables, owner, dlog_det, y)
      columns = stacked_parameters(steps, unroll)
      wanted = sorted({owner[v.ref()][1] for v in variables})  # positions of trainable parameters

      def body(i, y_k, dy, slots):
        k = k_steps - 1 - i
        y_k = _after(y_k, dy)  # see `_reversible_block`
        parameters = read_step(columns, k)
        x_k, dx_k, grads = _step_vjp(template, parameters, y_k, dy, dlog_det)
        step_grads = [tf.zeros_like(parameters[j]) if grads[j] is None else grads[j] for j in wanted]
        if unroll:
          slots = [[*s[:k], g, *s[k + 1 :]] for s, g in zip(slots, step_grads)]
        else:
          slots = [s.write(k, g) for s, g in zip(slots, step_grads)]
        return i + 1, x_k, dx_k, slots

      if unroll:
        slots, dx, y_k = [[None] * k_steps for _ in wanted], dy, y
        for i in range(k_steps):
          _, y_k, dx, slots = body(i, y_k, dx, slots)
        stacked = {j: tf.stack(s) for j, s in zip(wanted, slots)}  # [K, ...]
      else:
        slots = [tf.TensorArray(columns[j].dtype, size=k_steps, element_shape=shapes[j]) for j in wanted]
        _, _, dx, slots = tf.while_loop(
          lambda i, *_: i < k_steps, body, (tf.constant(0), y, dy, slots), maximum_iterations=k_steps
        )
        stacked = {j: s.stack() for j, s in zip(wanted, slots)}
      if stack is not None:  # each variable is a whole stack
        return dx, [stacked[owner[v.ref()][1]] for v in variables]
      per_step = {j: tf.unstack(g, num=k_steps) for j, g in stacked.items()}
      return dx, [per_step[owner[v.ref()][1]][owner[v.ref()][0]] for v in variables]

    return (y, log_det), grad

  return block(x)


def _step_vjp(template, parameters, y, dy, dlog_det):
  """One step's input x (rebuilt from its output y through the exact inverse) and the vector-Jacobian
  products of (y, log-det) at x: (x, dx, [d parameter, in `parameters`' order; None if unused]).

  A step that ends with a coupling layer taking its parameters as arguments evaluates the coupling's network
  once, not twice: the network's input is the untouched half, known from y, so one evaluation under the tape
  both inverts the coupling and gives its VJP (`AffineCoupling.input_and_vjp_with`); the layers before it
  (actnorm, permutation: no network) are inverted, then recomputed under the tape."""
  *head, coupling = template
  n_head = sum(len(b.parameter_variables()) for b in head)
  if not hasattr(coupling, 'input_and_vjp_with') or coupling.parameter_variables() is None:
    x = tf.stop_gradient(apply_step(template, parameters, y, inverse=False)[0])
    return _recomputed_vjp(template, parameters, x, dy, dlog_det)
  x_mid, dx_mid, coupling_grads = coupling.input_and_vjp_with(parameters[n_head:], y, dy, dlog_det)
  x = tf.stop_gradient(apply_step(head, parameters[:n_head], x_mid, inverse=False)[0])
  x, dx, head_grads = _recomputed_vjp(head, parameters[:n_head], x, dx_mid, dlog_det)
  return x, dx, [*head_grads, *coupling_grads]


def _recomputed_vjp(template, parameters, x, dy, dlog_det):
  """(x, dx, d parameters) of the layers `template` applied image -> latent at x, recomputed under a tape."""
  floats = [p for p in parameters if p.dtype.is_floating]
  with tf.GradientTape() as tape:
    tape.watch([x, *floats])
    y, log_det = apply_step(template, parameters, x, inverse=True)
  g = iter(tape.gradient([y, log_det], [x, *floats], output_gradients=[dy, dlog_det]))
  dx = next(g)
  return x, dx, [next(g) if p.dtype.is_floating else None for p in parameters]
