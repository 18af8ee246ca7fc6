"""How a level's K steps are differentiated, image -> latent: the one gradient switch of the flow.

  gradient      what the backward pass has                            memory of a level's steps
  'autodiff'    TensorFlow's own gradient of the loop (or the          every step's activations (the
                unrolled steps): every autodiff mode, any order        coupling networks' dominate)
  'stored'      a hand-built backward loop over stored step inputs     the same; no convolution runs
                and coupling-network activations (`kernels`)           twice; a smaller, faster graph
  'checkpoint'  the same loop over stored step inputs; each step       O(K C) per pixel: inputs only
                recomputed under a tape
  'inverse'     the same loop; each step's input rebuilt from its      O(one step): nothing stored
                output through the exact inverse (Gomez et al. 2017)

The three hand-built gradients are first order. A custom gradient is plain autodiff's answer only for a
first-order gradient, so each steps aside to TensorFlow's own wherever more may be asked (`tape_state`):
  - at the forward pass, if a nested tape or a forward accumulator watches the input or the parameters
    (second order, `tf.autodiff.ForwardAccumulator`): the level runs with 'autodiff';
  - in the backward pass, if a tape records the gradient computation itself: the level's gradient is
    recomputed with TensorFlow's own, so that the outer tape differentiates plain autodiff;
  - without a tape at all (evaluation, sampling, export) nothing is stored.
GlowModel's training step takes only first-order gradients: it says so by passing its gradient as
`training_gradient` (through `GlowDistribution.log_prob_parts` and `Glow.encode_with_log_det`), and the level
gradient then applies without asking TensorFlow anything.

Where the hand-built loop cannot be faster, 'stored' is 'autodiff': for a StepList and a one-step stack (unrolled
steps, whose plain gradient stores the same). Under XLA every mode keeps its loops (one XLA `while` each, with a
known trip count: `tfp_glow.flow.stack`), so compile time does not grow with K.
Gradients equal TensorFlow's own to rounding in every mode (tests/test_autodiff_modes.py).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_glow.flow import kernels, tape_state
from tfp_glow.flow.stack import Steps, StepStack
from tfp_glow.names import GRADIENTS


def check_gradient(gradient: str | None = None) -> str:
  """The gradient of a level: `gradient` (one of GRADIENTS), 'autodiff' where None. (The deprecated
  `memory_saving` spelling is mapped before this, once: `tfp_glow.specs.gradient_of`.)"""
  gradient = 'autodiff' if gradient is None else gradient
  if gradient not in GRADIENTS:
    raise ValueError(f'gradient must be one of {GRADIENTS}, got {gradient!r}.')
  return gradient


def encode_level(
  steps: Steps,
  x: tf.Tensor,
  gradient: str,
  training_gradient: str | None = None,
  context: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Image -> latent through a level's steps, (y [N, h, w, c], log-det [N]), differentiated with `gradient`,
  as the module docstring says. `training_gradient` (one of GRADIENTS; a training step whose only gradient
  is first order, e.g. GlowModel.train_step): differentiated with it instead, without asking TensorFlow
  whether a higher order may be taken. `context` ([N, E] or None): the couplings' conditioner context, one
  more input of the level whose gradient (summed over the steps) the hand-built loops return too."""
  training = None if training_gradient is None else check_gradient(training_gradient)
  gradient = training or gradient
  if gradient == 'stored' and (not isinstance(steps, StepStack) or steps.unrolled()):
    gradient = 'autodiff'  # TensorFlow's own gradient of unrolled steps stores the same
  if gradient == 'autodiff':
    return steps.encode(x, context=context)
  extra = [] if context is None else [context]
  if isinstance(steps, StepStack):
    values = [tf.convert_to_tensor(v) for v in steps.variables]  # read once, outside the custom gradient
    if not training and (
      not tape_state.recording() or tape_state.higher_order_possible([x, *values, *extra])
    ):
      return steps.encode(x, values, context)  # no gradient, or more than a first-order one: plain autodiff
    return _stack_gradient(steps, x, values, gradient, ask=not training, context=context)
  handles = [_tf_variable(v).handle for v in steps.variables]
  if not training and (not tape_state.recording() or tape_state.higher_order_possible([x, *handles, *extra])):
    return steps.encode(x, context=context)
  return _list_gradient(steps, x, gradient, ask=not training, context=context)


def _stack_gradient(stack: StepStack, x, values, gradient, ask, context=None):
  """The hand-built backward loop of a StepStack: (y, log-det), with its gradient for x, the stacks and (where
  given) the context, one more input whose gradient the backward loop carries and sums over the steps."""
  k_steps, unroll = len(stack), stack.unrolled()
  *head, coupling = stack.template
  n_head = len(values) - len(coupling.parameter_variables())
  n_values, extra = len(values), [] if context is None else [context]
  fast = kernels.has_kernels(coupling)  # the network's VJP from its activations, no recomputation
  store_inputs = gradient in ('stored', 'checkpoint')
  store_activations = gradient == 'stored' and fast
  trainable = [
    v.dtype.is_floating and getattr(var, 'trainable', True) for v, var in zip(values, stack.variables)
  ]

  @tf.custom_gradient
  def level(x, *inputs):
    values, context = inputs[:n_values], (inputs[n_values] if extra else None)
    columns = stack.parameter_columns(unroll, values)

    def forward(k, h, log_det, stored):
      parameters = stack.step_parameters(columns, k)
      if store_activations:
        mid, ld_head = stack.apply_step(parameters[:n_head], h, inverse=True, layers=head)
        y, ld, activations = kernels.forward_with_activations(coupling, parameters[n_head:], mid, context)
        ld, kept = ld_head + ld, (h, *activations)
      else:
        y, ld = stack.apply_step(parameters, h, inverse=True, context=context)
        kept = (h,) if store_inputs else ()
      return k + 1, y, log_det + ld, [_write(s, k, t, unroll) for s, t in zip(stored, kept)]

    dtypes = [x.dtype] if store_inputs else []
    dtypes += [coupling.network.compute_dtype] * 3 if store_activations else []
    log_det = tf.zeros(tf.shape(x)[:1], x.dtype)
    stored = [_new_array(k_steps, unroll, dtype) for dtype in dtypes]
    y, log_det, stored = _run(forward, k_steps, unroll, x, log_det, stored)
    if not unroll and tf.executing_eagerly():  # an eager TensorArray cannot be read inside a graph (pfor)
      stored = [s.stack() for s in stored]

    def grad(dy, dlog_det, variables=None):
      if variables:
        raise ValueError(f'{stack.template[0].name}: the level reads variables that are not its stacks.')
      if dlog_det is None:
        dlog_det = tf.zeros(tf.shape(y)[:1], y.dtype)
      if ask and tape_state.recording():  # a gradient of this gradient will be taken: plain autodiff
        encode = lambda x, *v: stack.encode(x, v[:n_values], *v[n_values:])  # noqa: E731
        return _autodiff_vjp(encode, [x, *inputs], dy, dlog_det)
      columns = stack.parameter_columns(unroll, values)
      kept = [_reader(s, k_steps) for s in stored]
      floats = [j for j in range(len(values)) if trainable[j]]  # e.g. not the LU form's fixed signs

      def backward(i, y_k, carry, slots):
        dy, d_context = carry if extra else (carry, None)  # d_context: the sum over the steps after k
        k = k_steps - 1 - i
        parameters = stack.step_parameters(columns, k)
        if store_inputs:
          x_k, activations = _read(kept[0], k), [_read(s, k) for s in kept[1:]] or None
        else:
          x_k, activations = _invert_step(stack, parameters, _after(y_k, dy), n_head, fast, context)
        if activations is not None:
          dx, grads, dc = kernels.step_vjp(stack, parameters, x_k, activations, dy, dlog_det, context)
        else:
          dx, grads, dc = _recomputed_vjp(stack, parameters, x_k, dy, dlog_det, context)
        step_grads = [tf.zeros_like(parameters[j]) if grads[j] is None else grads[j] for j in floats]
        carry = (dx, d_context if dc is None else d_context + dc) if extra else dx
        return i + 1, x_k, carry, [_write(s, k, g, unroll) for s, g in zip(slots, step_grads)]

      slots = [_new_array(k_steps, unroll, values[j].dtype, values[j].shape[1:]) for j in floats]
      carry = (dy, tf.zeros_like(context)) if extra else dy
      _, carry, slots = _run(backward, k_steps, unroll, y, carry, slots)
      dx, d_context = carry if extra else (carry, None)
      stacked = dict(zip(floats, (_stacked(s) for s in slots)))  # [K, ...]: each value is a whole stack
      return [dx, *[stacked.get(j) for j in range(len(values))], *([d_context] if extra else [])]

    return (y, log_det), grad

  return level(x, *values, *extra)


def _list_gradient(steps, x, gradient, ask, context=None):
  """'checkpoint' or 'inverse' for a StepList (steps owning their variables, or views of a stack's), unrolled;
  the gradient of `context` (where given) summed over the steps."""
  owner: dict = {}  # variable -> the steps that read it (a stack's variable: every step)
  for k, s in enumerate(steps):
    for b in s.bijectors():
      for v in b.trainable_variables:
        owner.setdefault(_tf_variable(v).ref(), set()).add(k)
  extra = [] if context is None else [context]

  @tf.custom_gradient
  def level(x, *extra):
    context = extra[0] if extra else None
    inputs, h, log_det = [], x, tf.zeros(tf.shape(x)[:1], x.dtype)
    for k in range(len(steps)):
      inputs.append(h if gradient == 'checkpoint' else None)
      h, ld = steps.apply_step(k, h, inverse=True, context=context)
      log_det += ld
    y = h

    def grad(dy, dlog_det, variables=None):
      variables = list(variables or [])
      if dlog_det is None:
        dlog_det = tf.zeros(tf.shape(y)[:1], y.dtype)
      n = 1 + len(extra)  # the level's inputs: x and the context
      if ask and tape_state.recording():
        with tf.GradientTape() as tape:
          tape.watch([x, *extra])
          y_again, ld = steps.encode(x, context=context)
        g = tape.gradient([y_again, ld], [x, *extra, *variables], output_gradients=[dy, dlog_det])
        return (g[0] if n == 1 else g[:n]), g[n:]
      for v in variables:
        if v.ref() not in owner:
          raise ValueError(
            f"The variable {v.name} is read inside the flow's steps but is no step's parameter."
          )
      grads, y_k, d_context = {}, y, [tf.zeros_like(c) for c in extra]
      for k in reversed(range(len(steps))):
        if gradient == 'inverse':
          x_k = tf.stop_gradient(steps.apply_step(k, _after(y_k, dy), inverse=False, context=context)[0])
        else:
          x_k = inputs[k]
        mine = [v for v in variables if k in owner[v.ref()]]
        with tf.GradientTape() as tape:
          tape.watch([x_k, *extra])
          y_again, ld = steps.apply_step(k, x_k, inverse=True, context=context)
        g = tape.gradient([y_again, ld], [x_k, *extra, *mine], output_gradients=[dy, dlog_det])
        dy, y_k = g[0], x_k
        d_context = [d if gc is None else d + gc for d, gc in zip(d_context, g[1:n])]
        for v, gv in zip(mine, g[n:]):  # a stack's variable sums its steps' gradients
          before = grads.get(v.ref())
          grads[v.ref()] = gv if before is None or gv is None else tf.convert_to_tensor(before) + gv
      return (dy if n == 1 else [dy, *d_context]), [grads.get(v.ref()) for v in variables]

    return (y, log_det), grad

  return level(x, *extra)


# ---- the pieces of the backward loop -------------------------------------------------------------


def _invert_step(stack, parameters, y, n_head, fast, context=None):
  """Step k's input from its output y, and its network's activations (None unless `fast`): one network
  evaluation both inverts the coupling and gives the activations its VJP needs."""
  if not fast:
    return tf.stop_gradient(stack.apply_step(parameters, y, inverse=False, context=context)[0]), None
  *head, coupling = stack.template
  mid, activations = kernels.invert_with_activations(coupling, parameters[n_head:], y, context)
  x = stack.apply_step(parameters[:n_head], mid, inverse=False, layers=head)[0]
  return tf.stop_gradient(x), [tf.stop_gradient(a) for a in activations]


def _recomputed_vjp(stack, parameters, x, dy, dlog_det, context=None):
  """(dx, [d parameter; None if unused or not a float], d context or None) of one step recomputed at x under
  a tape."""
  floats = [p for p in parameters if p.dtype.is_floating]
  extra = [] if context is None else [context]
  with tf.GradientTape() as tape:
    tape.watch([x, *floats, *extra])
    y, log_det = stack.apply_step(parameters, x, inverse=True, context=context)
  g = iter(tape.gradient([y, log_det], [x, *floats, *extra], output_gradients=[dy, dlog_det]))
  dx = next(g)
  grads = [next(g) if p.dtype.is_floating else None for p in parameters]
  return dx, grads, next(g, None)


def _autodiff_vjp(fn, inputs, dy, dlog_det):
  """TensorFlow's own VJP of fn(*inputs) -> (y, log-det), recorded by any tape that is active."""
  floats = [t for t in inputs if t.dtype.is_floating]
  with tf.GradientTape() as tape:
    tape.watch(floats)
    y, log_det = fn(*inputs)
  g = iter(tape.gradient([y, log_det], floats, output_gradients=[dy, dlog_det]))
  return [next(g) if t.dtype.is_floating else None for t in inputs]


def _after(x: tf.Tensor, dependency: tf.Tensor) -> tf.Tensor:
  """x, computable only once `dependency` is: without it the executor would rebuild every step's input as
  soon as the level's output exists, long before the gradients arrive, and hold them all at once. A data
  dependency, since XLA ignores control dependencies."""
  probe = tf.cast(tf.reduce_max(tf.reshape(dependency, [-1])[:1]), tf.bool)
  zero = tf.where(tf.equal(probe, probe), 0.0, 1.0)  # always 0 (a NaN casts to True), never folded
  return x + tf.cast(zero, x.dtype)


def _run(body, k_steps, unroll, h, carry, arrays):
  """body(i, h, carry, arrays) for i = 0 .. K-1, as one tf.while_loop or (`unroll`) from Python."""
  if unroll:
    for i in range(k_steps):
      _, h, carry, arrays = body(i, h, carry, arrays)
    return h, carry, arrays
  _, h, carry, arrays = tf.while_loop(
    lambda i, *_: i < k_steps, body, (tf.constant(0), h, carry, arrays), maximum_iterations=k_steps
  )
  return h, carry, arrays


def _new_array(size, unroll, dtype, element_shape=None):
  return [None] * size if unroll else tf.TensorArray(dtype, size=size, element_shape=element_shape)


def _write(array, k, value, unroll):
  if unroll:
    return [*array[:k], value, *array[k + 1 :]]
  return array.write(k, value)


def _reader(stored, k_steps):
  """A stored array as something `_read` can index: a list, a TensorArray, or (eager) a stacked tensor."""
  if isinstance(stored, tf.Tensor):
    return tf.TensorArray(stored.dtype, size=k_steps, element_shape=stored.shape[1:]).unstack(stored)
  return stored


def _read(array, k):
  return array[k] if isinstance(array, list) else array.read(k)


def _stacked(array):
  return tf.stack(array) if isinstance(array, list) else array.stack()


def _tf_variable(v):
  """The tf.Variable behind a Keras variable (what a custom gradient's `variables` holds)."""
  return v.value if isinstance(v, keras.Variable) else v
