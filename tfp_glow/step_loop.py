"""A level's K steps of flow as one `tf.while_loop`: a graph whose size does not grow with K.

Unrolled, K steps put K copies of a step's ops into the graph, so tracing, TensorFlow's graph
optimizer and the first step's set-up all grow with K (most of a minute at K=32). Here each of a
step's parameters is stacked over the K steps, [K, ...], and one loop body applies step k with
slice k of every stack:

  image -> latent:  h_0 = x;      h_{k+1}, ld_k = step(params[k], h_k)            k = 0 .. K-1
  latent -> image:  h_K = z;      h_k, ld_k = step^-1(params[k], h_{k+1})        k = K-1 .. 0
  log-det = sum_k ld_k

with step = actnorm -> permutation -> coupling, each a `GlowBijector` that takes its parameters as
arguments (`parameter_variables`, `*_and_log_det_with`).

In a Glow level the stacks ARE the variables (`shared_stack`): each kind of layer keeps one Keras
variable [K, ...] per parameter (`ActNorm.stacked`, `Invertible1x1Conv.stacked`,
`AffineCoupling.stacked`), and each step's layer is a TFP bijector on slice k (`GlowBijector.index`).
So a level has 13 variables whatever K is (not 13 K): the loop reads each once, its gradient is one
[K, ...] tensor, and the optimizer, the guard and the saved file handle 13 variables per level. (Steps
whose layers own separate variables are stacked on the fly, and each step's gradient unstacked.) The
stacks are read through TensorArrays, as `tf.scan` does, so each iteration's parameter gradient lands
in its own slot; TensorFlow keeps each iteration's activations, as an unrolled graph would. Where a
gradient tape records, a Glow level's default gradient is built by hand instead (`tfp_glow.stored_loop`),
and `tfp_glow.reversible` builds its memory-saving loops from the same pieces.

A level runs as a loop when every step has the same kinds of layers with equal `loop_signature()`s
and parameter shapes (any of Glow's built-in layers and the default coupling network); a custom
coupling network runs unrolled. Under XLA (`jit_compile=True`, see `can_loop`) a stack's steps run
unrolled with the same body (`unroll=True`, the stacks split with one `tf.unstack` each).
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from tfp_glow.bijectors.actnorm import ActNorm, data_init
from tfp_glow.bijectors.base import GlowBijector
from tfp_glow.xla import tracing_for_xla

StepBijectors = Sequence[GlowBijector]


def can_loop(steps: Sequence[StepBijectors]) -> bool:
  """True if `steps` (>= 2 of them) can share one loop body (see the module docstring), and we are not
  tracing for XLA (`jit_compile=True`): measured on this project's CPU, XLA ran the loops' gradients 30x
  slower than unrolled steps (4 against 130 images/s, 5 GB peak), while it compiles unrolled steps well."""
  return loopable(steps) and not tracing_for_xla()


def loopable(steps: Sequence[StepBijectors]) -> bool:
  """True if `steps` (>= 2 of them) have the same kinds of layers with equal `loop_signature()`s and
  parameter shapes: one loop body (or one unrolled body with parameters as arguments) computes them all."""
  if len(steps) < 2:
    return False
  signatures = [tuple(b.loop_signature() for b in step) for step in steps]
  if any(s is None for s in signatures[0]) or any(s != signatures[0] for s in signatures):
    return False
  shapes = [[(p.shape, p.dtype) for p in flat_parameters(step)] for step in steps]
  return all(s == shapes[0] for s in shapes)


def shared_stack(steps: Sequence[StepBijectors]) -> list | None:
  """If `steps` are steps 0..K-1 of one stack (`GlowBijector.index`: each parameter one variable [K, ...],
  as in a Glow level), that stack's variables, flat in `apply_step`'s order; else None."""
  layers = [b.layer for b in steps[0]] if steps else []
  for k, step in enumerate(steps):
    if [b.index for b in step] != [k] * len(step) or [b.layer for b in step] != layers:
      return None
  if any(b.loop_signature() is None for b in steps[0]):
    return None
  variables = flat_parameters(steps[0])
  return variables if all(v.shape[0] == len(steps) for v in variables) else None


def flat_parameters(step: StepBijectors) -> list:
  """A step's parameter variables, its layers' `parameter_variables()` one after the other (for a step
  of a stack: the stacked variables)."""
  return [v for b in step for v in b.parameter_variables()]


def stacked_parameters(steps: Sequence[StepBijectors], unroll: bool = False) -> list:
  """Per parameter of a step, its K steps' values: a TensorArray (read k for step k), or with `unroll` a
  list (index k). A stack's variables are read once each; separate variables are read and stacked."""
  stack = shared_stack(steps)
  if stack is not None:
    values = [tf.convert_to_tensor(v) for v in stack]
    if unroll:
      return [tf.unstack(v, num=len(steps)) for v in values]  # gradient: one Pack per variable
    return [tf.TensorArray(v.dtype, size=len(steps), element_shape=v.shape[1:]).unstack(v) for v in values]
  columns = [[tf.convert_to_tensor(v) for v in column] for column in zip(*map(flat_parameters, steps))]
  if unroll:
    return columns
  return [
    tf.TensorArray(column[0].dtype, size=len(steps), element_shape=column[0].shape).unstack(tf.stack(column))
    for column in columns
  ]


def read_step(columns: list, k) -> list:
  """Step k's parameters from `stacked_parameters`' columns."""
  return [c[k] if isinstance(c, list) else c.read(k) for c in columns]


def apply_step(template: StepBijectors, parameters: Sequence[tf.Tensor], h: tf.Tensor, inverse: bool):
  """One step with `parameters` (flat, as `flat_parameters`): image -> latent if `inverse`, else
  latent -> image. Returns (h, log-det [N])."""
  layers, start = [], 0
  for b in template:
    n = len(b.parameter_variables())
    layers.append((b, list(parameters[start : start + n])))
    start += n
  log_det = tf.zeros(tf.shape(h)[:1], h.dtype)
  for bijector, p in layers if inverse else reversed(layers):
    h, ld = (bijector.inverse_and_log_det_with if inverse else bijector.forward_and_log_det_with)(p, h)
    log_det += ld
  return h, log_det


def apply_steps_looped(
  steps: Sequence[StepBijectors], x: tf.Tensor, checkpoint: bool = False, unroll: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
  """Image -> latent through `steps`, as `reversible.apply_steps`: (y [N, h, w, c], log-det [N]).
  `checkpoint`: each step under `tf.recompute_grad` (see `tfp_glow.reversible`). `unroll`: the same
  body, called K times from Python (for XLA, and for a stack of one step)."""
  return _loop(steps, x, inverse=True, checkpoint=checkpoint, unroll=unroll)


def invert_steps_looped(
  steps: Sequence[StepBijectors], z: tf.Tensor, unroll: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
  """Latent -> image through `steps`, last step first: (x [N, h, w, c], log-det [N])."""
  return _loop(steps, z, inverse=False, unroll=unroll)


def _loop(
  steps: Sequence[StepBijectors], h: tf.Tensor, inverse: bool, checkpoint: bool = False, unroll: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
  k_steps = len(steps)
  template = list(steps[0])  # step 0's layers compute every step, each with its own parameters
  columns = stacked_parameters(steps, unroll)

  def step(h, *parameters):
    return apply_step(template, parameters, h, inverse)

  if checkpoint:  # keep only each step's input; recompute its activations in the backward pass
    step = tf.recompute_grad(step)

  def body(k, h, log_det):
    h, ld = step(h, *read_step(columns, k if inverse else k_steps - 1 - k))
    return k + 1, h, log_det + ld

  log_det = tf.zeros(tf.shape(h)[:1], h.dtype)
  if unroll:
    for k in range(k_steps):
      _, h, log_det = body(k, h, log_det)
    return h, log_det
  _, h, log_det = tf.while_loop(
    lambda k, *_: k < k_steps, body, (tf.constant(0), h, log_det), maximum_iterations=k_steps
  )
  return h, log_det


def initialize_steps_looped(steps: Sequence[StepBijectors], h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Actnorm's data-dependent init for a stack's K steps (`shared_stack`), each starting with its actnorm,
  as one loop: step k's actnorm from the activations it receives, then step k applied with them:

    (log_scale_k, bias_k) = data_init(h_k) unless initialized[k];   h_{k+1} = step_k(h_k)

  The stacks are assigned once, after the loop. Returns the image -> latent output and log-det, as
  `apply_steps_looped`."""
  actnorm, k_steps, template = steps[0][0], len(steps), list(steps[0])
  if not isinstance(actnorm, ActNorm) or shared_stack(steps) is None:
    raise ValueError(
      'initialize_steps_looped: expected the steps of one stack, each starting with an actnorm.'
    )
  columns = stacked_parameters(steps)
  flags = tf.convert_to_tensor(actnorm.layer.initialized)
  new = [tf.TensorArray(actnorm.dtype, size=k_steps) for _ in range(2)]

  def body(k, h, log_det, log_scales, biases):
    parameters = read_step(columns, k)
    done = tf.gather(flags, k)
    log_scale, bias = (tf.where(done, old, init) for old, init in zip(parameters[:2], data_init(h)))
    h, ld = apply_step(template, [log_scale, bias, *parameters[2:]], h, inverse=True)
    return k + 1, h, log_det + ld, log_scales.write(k, log_scale), biases.write(k, bias)

  log_det = tf.zeros(tf.shape(h)[:1], h.dtype)
  _, h, log_det, log_scales, biases = tf.while_loop(
    lambda k, *_: k < k_steps, body, (tf.constant(0), h, log_det, *new), maximum_iterations=k_steps
  )
  actnorm.layer.log_scale.assign(log_scales.stack())
  actnorm.layer.bias.assign(biases.stack())
  actnorm.layer.initialized.assign(tf.ones_like(flags))
  return h, log_det


def gradient_inputs(variables, owner: dict, dlog_det, y: tf.Tensor):
  """For a custom gradient over steps (`tfp_glow.reversible`, `tfp_glow.stored_loop`): its `variables` as a
  list, each checked to be one of the steps' parameters (`owner`: keyed by `tf_variable(v).ref()`), and
  `dlog_det`, zeros where TensorFlow passes None."""
  variables = list(variables or [])
  for v in variables:
    if v.ref() not in owner:
      raise ValueError(
        f"The variable {v.name} is read inside the flow steps but belongs to no step's parameters, so "
        'its gradient cannot be computed step by step.'
      )
  return variables, tf.zeros(tf.shape(y)[:1], y.dtype) if dlog_det is None else dlog_det


def tf_variable(v):
  """The tf.Variable behind a Keras variable (what a custom gradient's `variables` holds)."""
  return v.value if isinstance(v, keras.Variable) else v
