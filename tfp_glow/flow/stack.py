"""A level's K steps of flow, as one of two types that `Glow.__init__` chooses once:

  StepStack  every parameter of a step is one variable [K, ...] (the default layers): the K steps run as
             ONE `tf.while_loop` whose body applies step k with slice k of every stack, so neither the
             graph nor its tracing grows with K, and a level has a handful of variables whatever K is.
  StepList   each step's layers own their variables (a custom coupling network, or a layer that cannot
             take its parameters as arguments): the steps run one after the other, unrolled.

Both run image -> latent (`encode`) and latent -> image (`decode`) with plain TensorFlow autodiff, and
initialize actnorm from data (`initialize`). How a level is differentiated is chosen elsewhere
(`tfp_glow.flow.gradients`); it uses the per-step pieces here (`parameter_columns`, `step_parameters`,
`apply_step`):

  image -> latent:  h_0 = x;      h_{k+1}, ld_k = step(params[k], h_k; c)         k = 0 .. K-1
  latent -> image:  h_K = z;      h_k, ld_k = step^-1(params[k], h_{k+1}; c)     k = K-1 .. 0
  log-det = sum_k ld_k,  step = actnorm -> permutation -> coupling (image -> latent order)

c: an optional conditioner context [N, E] (`tfp_glow.bijectors.conditioners`), the same for every step: a
loop-invariant input of the loop body (captured, never unrolled), passed to each step's coupling only.

The loop is the same under XLA (`jit_compile=True`): `tf.while_loop` with `maximum_iterations=K` becomes one
XLA `while` with a known trip count, its TensorArrays fixed-size buffers [K, ...] read and written with dynamic
slices, for the forward loop, TensorFlow's own gradient of it ('autodiff') and the hand-built backward loops
('stored', 'inverse', `tfp_glow.flow.gradients`). So compiling a level costs one step's body whatever K is
(unrolling, as before, grew compile time linearly with K). XLA:CPU runs a convolution inside a loop fast only
in its canonical layout: the network's convolutions and their gradients are written that way
(`tfp_glow.bijectors.xla_conv`). Only K = 1 runs unrolled.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import tensorflow as tf

from tfp_glow.bijectors.actnorm import ActNorm, data_init
from tfp_glow.bijectors.base import GlowBijector
from tfp_glow.bijectors.invertible_conv import Invertible1x1Conv


@dataclasses.dataclass(frozen=True)
class Step:
  """One step of flow, image -> latent order: actnorm -> permutation -> coupling."""

  actnorm: ActNorm
  permutation: GlowBijector
  coupling: GlowBijector  # a Coupling (split -> conditioner -> transform), or a user's coupling layer

  def bijectors(self) -> tuple[GlowBijector, GlowBijector, GlowBijector]:
    return (self.actnorm, self.permutation, self.coupling)


class _Steps:
  """What both kinds share: a sequence of `Step`s (`len`, `steps[k]`, iteration)."""

  steps: tuple[Step, ...]

  def __len__(self) -> int:
    return len(self.steps)

  def __getitem__(self, k: int) -> Step:
    return self.steps[k]

  def __iter__(self):
    return iter(self.steps)


class StepStack(_Steps):
  """K >= 1 steps whose layers are views of stacked variables (`GlowBijector.index` k of a layer holding
  [K, ...] per parameter), each layer taking its parameters as arguments (`*_and_log_det_with`).

  steps: the K steps, each a `Step` of TFP bijectors viewing slice k (step k's actnorm is an `ActNorm`).
  variables: the stacks, flat in `apply_step`'s parameter order (actnorm's, the permutation's, the
    coupling's), each [K, ...].
  """

  def __init__(self, steps: Sequence[Step]):
    self.steps = tuple(steps)
    self.template = self.steps[0].bijectors()  # step 0's layers compute every step, with step k's slices
    self.variables = [v for b in self.template for v in b.parameter_variables()]
    self._sizes = [len(b.parameter_variables()) for b in self.template]
    # A step's actnorm and 1x1 convolution run as one affine map per pixel (`FoldedHead`).
    self._folded = type(self.template[0]) is ActNorm and type(self.template[1]) is Invertible1x1Conv

  def unrolled(self) -> bool:
    """True where the steps run as K copies of the body instead of one loop: K = 1 only. Under XLA too the K
    steps are one loop (an XLA `while` with a known trip count), so compile time does not grow with K."""
    return len(self.steps) == 1

  # ---- the pieces of a step ----------------------------------------------------------------------

  def parameter_columns(self, unroll: bool, values: Sequence[tf.Tensor] | None = None) -> list:
    """Per stack, its K slices: a TensorArray (read k for step k), or with `unroll` a list. Each stack is
    read once (or given as `values`), and its gradient is one [K, ...] tensor."""
    values = [tf.convert_to_tensor(v) for v in self.variables] if values is None else list(values)
    if unroll:
      return [tf.unstack(v, num=len(self.steps)) for v in values]  # gradient: one Pack per variable
    return [
      tf.TensorArray(v.dtype, size=len(self.steps), element_shape=v.shape[1:]).unstack(v) for v in values
    ]

  @staticmethod
  def step_parameters(columns: list, k: int | tf.Tensor) -> list[tf.Tensor]:
    """Step k's parameters from `parameter_columns`."""
    return [c[k] if isinstance(c, list) else c.read(k) for c in columns]

  def apply_step(
    self,
    parameters: Sequence[tf.Tensor],
    h: tf.Tensor,
    inverse: bool,
    layers: Sequence[Any] | None = None,
    context: tf.Tensor | None = None,
  ) -> tuple[tf.Tensor, tf.Tensor]:
    """One step with `parameters` (flat, as `step_parameters`): image -> latent if `inverse`, else latent
    -> image. `layers`: a prefix of the template (its parameters first in `parameters`). `context`: the
    coupling's conditioner context [N, E] or None. (h, log-det [N])."""
    layers = self.template if layers is None else layers
    parts: list[tuple[Any, Any]] = []
    start = 0
    for b, n in zip(layers, self._sizes):
      parts.append((b, list(parameters[start : start + n])))
      start += n
    if self._folded and len(parts) >= 2:  # actnorm -> 1x1 convolution as one affine map (`FoldedHead`)
      parts = [(FoldedHead(*parts[:2]), None), *parts[2:]]
    log_det = tf.zeros(tf.shape(h)[:1], h.dtype)
    for b, p in parts if inverse else reversed(parts):
      kwargs = _context_of(b, self.template[-1], context)
      with tf.name_scope(type(b).__name__):  # names the ops per layer (benchmarks/profile_step.py)
        h, ld = (b.inverse_and_log_det_with if inverse else b.forward_and_log_det_with)(p, h, **kwargs)
      log_det += ld
    return h, log_det

  # ---- the two directions, with plain autodiff ---------------------------------------------------

  def encode(
    self, x: tf.Tensor, values: Sequence[tf.Tensor] | None = None, context: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    """Image -> latent through the K steps: (y [N, h, w, c], sum of log-dets [N]). `values`: the stacks'
    values, if already read. `context`: the couplings' conditioner context [N, E] or None."""
    return self._loop(x, inverse=True, values=values, context=context)

  def decode(self, z: tf.Tensor, context: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Latent -> image, last step first: (x [N, h, w, c], sum of log-dets [N])."""
    return self._loop(z, inverse=False, context=context)

  def _loop(self, h, inverse, values=None, context=None):
    k_steps, unroll = len(self.steps), self.unrolled()
    columns = self.parameter_columns(unroll, values)

    def body(k, h, log_det):
      parameters = self.step_parameters(columns, k if inverse else k_steps - 1 - k)
      h, ld = self.apply_step(parameters, h, inverse, context=context)  # context: loop-invariant, captured
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

  def initialize(self, h: tf.Tensor, context: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Actnorm's data-dependent init of the K steps as one loop: step k's actnorm from the activations
    it receives, then step k applied with them (with `context`; each stack assigned once, after the loop):

      (log_scale_k, bias_k) = data_init(h_k) unless initialized[k];   h_{k+1} = step_k(h_k)

    Returns the image -> latent output and log-det, as `encode`."""
    actnorm, k_steps = self.template[0], len(self.steps)
    if not isinstance(actnorm, ActNorm):
      raise ValueError('StepStack.initialize: expected steps that start with an actnorm.')
    columns = self.parameter_columns(unroll=False)
    flags = tf.convert_to_tensor(actnorm.layer.initialized)
    new = [tf.TensorArray(actnorm.dtype, size=k_steps) for _ in range(2)]

    def body(k, h, log_det, log_scales, biases):
      parameters = self.step_parameters(columns, k)
      done = tf.gather(flags, k)
      log_scale, bias = (tf.where(done, old, init) for old, init in zip(parameters[:2], data_init(h)))
      h, ld = self.apply_step([log_scale, bias, *parameters[2:]], h, inverse=True, context=context)
      return k + 1, h, log_det + ld, log_scales.write(k, log_scale), biases.write(k, bias)

    log_det = tf.zeros(tf.shape(h)[:1], h.dtype)
    _, h, log_det, log_scales, biases = tf.while_loop(
      lambda k, *_: k < k_steps, body, (tf.constant(0), h, log_det, *new), maximum_iterations=k_steps
    )
    actnorm.layer.log_scale.assign(log_scales.stack())
    actnorm.layer.bias.assign(biases.stack())
    actnorm.layer.initialized.assign(tf.ones_like(flags))
    return h, log_det


class FoldedHead:
  """A step's actnorm followed by its 1x1 convolution, applied as one: z = (W diag(s)) x + W b per pixel
  (`Invertible1x1Conv.inverse_after_actnorm`), the same map and log-det as the two layers one after the
  other, without an elementwise pass over the activations forward or backward. Its name scope is its own
  (benchmarks/profile_step.py)."""

  def __init__(self, actnorm: tuple[ActNorm, list], conv: tuple[Invertible1x1Conv, list]):
    (_, (self.log_scale, self.bias)), (self.conv, self.conv_parameters) = actnorm, conv

  def inverse_and_log_det_with(self, _: None, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return self.conv.inverse_after_actnorm(self.conv_parameters, self.log_scale, self.bias, x)

  def forward_and_log_det_with(self, _: None, z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return self.conv.forward_before_actnorm(self.conv_parameters, self.log_scale, self.bias, z)


class StepList(_Steps):
  """K steps whose layers own their variables, run one after the other (unrolled: the graph grows with K).

  steps: the K steps, each a `Step` of TFP bijectors. variables: every step's trainable variables.
  """

  def __init__(self, steps: Sequence[Step]):
    self.steps = tuple(steps)
    self.variables = [v for s in self.steps for b in s.bijectors() for v in b.trainable_variables]

  def apply_step(
    self, k: int, h: tf.Tensor, inverse: bool, context: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    """Step k, image -> latent if `inverse`, else latent -> image (`context`: the coupling's, or None):
    (h, log-det [N])."""
    layers = self.steps[k].bijectors()
    log_det = tf.zeros(tf.shape(h)[:1], h.dtype)
    for b in layers if inverse else reversed(layers):
      kwargs = _context_of(b, layers[-1], context)
      h, ld = (b.inverse_and_log_det if inverse else b.forward_and_log_det)(h, **kwargs)
      log_det += ld
    return h, log_det

  def encode(self, x: tf.Tensor, context: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    log_det = tf.zeros(tf.shape(x)[:1], x.dtype)
    for k in range(len(self.steps)):
      x, ld = self.apply_step(k, x, inverse=True, context=context)
      log_det += ld
    return x, log_det

  def decode(self, z: tf.Tensor, context: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    log_det = tf.zeros(tf.shape(z)[:1], z.dtype)
    for k in reversed(range(len(self.steps))):
      z, ld = self.apply_step(k, z, inverse=False, context=context)
      log_det += ld
    return z, log_det

  def initialize(self, h: tf.Tensor, context: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Each actnorm from the activations of the (initialized) steps before it; returns as `encode`."""
    log_det = tf.zeros(tf.shape(h)[:1], h.dtype)
    for k, step in enumerate(self.steps):
      step.actnorm.initialize(h)
      h, ld = self.apply_step(k, h, inverse=True, context=context)
      log_det += ld
    return h, log_det


Steps = StepStack | StepList


def _context_of(layer: Any, coupling: Any, context: tf.Tensor | None) -> dict:
  """The keyword arguments that give `context` to a step's coupling (the last layer) alone; none without one, so
  a layer that takes no context is called as ever."""
  return {'context': context} if context is not None and layer is coupling else {}


def why_not_stacked(layer: GlowBijector | type) -> str | None:
  """Why `layer` (a bijector, or a class before any is built) cannot be one of a StepStack's layers; None if
  it can. The stacking protocol (`GlowBijector`, docs/design.md "Adding a layer"): the parameters declared once
  (`_parameter_layer`, or a `stacked` of its own), listed (`parameter_variables`), taken as arguments (both
  `*_and_log_det_with`). The one place that decides it, for `tfp_glow.flow.level.build_steps`."""
  cls = layer if isinstance(layer, type) else type(layer)
  missing = []
  stacked = getattr(cls, 'stacked', None)
  if not callable(stacked):
    missing.append('stacked')
  elif (
    getattr(stacked, '__func__', None) is getattr(GlowBijector.stacked, '__func__', None)
    and cls._parameter_layer is GlowBijector._parameter_layer
  ):
    missing.append('_parameter_layer')
  if cls.parameter_variables is GlowBijector.parameter_variables:
    missing.append('parameter_variables')
  elif not isinstance(layer, type) and layer.parameter_variables() is None:
    missing.append('parameter_variables (None: e.g. a custom network)')
  for method in ('inverse_and_log_det_with', 'forward_and_log_det_with'):
    if getattr(cls, method) is getattr(GlowBijector, method):
      missing.append(method)
  return f'{cls.__name__} lacks {", ".join(missing)}' if missing else None
