"""Optimizer defaults after the reference code: Adamax, linear warmup, no decay; lr 4e-3 (the reference: 1e-3).

The warmup is a multiplier on the optimizer's own (settable) learning rate, not a schedule object,
so Keras callbacks that set the rate (`ReduceLROnPlateau`, `LearningRateScheduler`) work with it:

  step size(step) = learning_rate * min(1, (step + 1) / warmup_steps)

`optimizer.learning_rate` is the rate after warmup; the factor follows `optimizer.iterations`,
so a resumed run (BackupAndRestore, load_model) continues its warmup where it stopped.

Fused updates: Keras' Adam(ax) builds about a dozen small ops per variable per step; with a Glow's
hundreds of variables that is most of a training step's graph, which makes tracing and graph
optimization slow (the first step) and adds per-op overhead to every step. `WarmupAdamax` and
`WarmupAdam` instead update each (non-distributed) variable with TensorFlow's one fused kernel,
`ResourceApplyAdaMax` / `ResourceApplyAdam` (CPU, GPU and XLA kernels), same formulas:

  Adamax: m = b1 m + (1 - b1) g;  u = max(b2 u, |g|);  theta -= lr / (1 - b1^t) * m / (u + eps)
  Adam:   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
          theta -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

The weight EMA (use_ema=True) is fused the same way (`ResourceApplyGradientDescent`). Under a
distribution strategy (mirrored variables), under XLA (`tfp_glow.flow.xla`), for sparse gradients or amsgrad,
Keras' own update runs instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from tfp_glow.flow.xla import tracing_for_xla

if TYPE_CHECKING:  # for type checkers: the mixin comes before a keras optimizer, which gives it the rest
  from keras.optimizers import Optimizer as _KerasOptimizer
else:
  _KerasOptimizer = object


class _LinearWarmup(_KerasOptimizer):
  """Mixin for a Keras optimizer: scales the learning rate by min(1, (step + 1) / warmup_steps)."""

  def __init__(self, learning_rate: float = 1e-3, warmup_steps: int = 1000, **kwargs: Any):
    if not isinstance(learning_rate, (int, float)) or learning_rate <= 0:
      raise ValueError(f'learning_rate must be a number > 0, got {learning_rate!r}.')
    if warmup_steps < 0:
      raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
    super().__init__(learning_rate=learning_rate, **kwargs)
    self.warmup_steps = int(warmup_steps)

  def warmup_factor(self) -> tf.Tensor:
    """min(1, (iterations + 1) / warmup_steps), a float32 scalar (1 without warmup)."""
    step = keras.ops.cast(self.iterations, 'float32')
    return keras.ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))

  # The hook through which every Keras backend passes the current rate to `update_step`.
  def _backend_update_step(self, grads, trainable_variables, learning_rate):
    scaled = keras.ops.cast(learning_rate, 'float32') * self.warmup_factor()
    self._fused_scalars = {}  # built once per step, shared by every variable's fused update
    try:
      return super()._backend_update_step(grads, trainable_variables, scaled)
    finally:
      self._fused_scalars = None  # graph tensors: never reused by a later trace

  def _scalars(self, dtype: tf.DType, learning_rate) -> dict[str, tf.Tensor]:
    """The fused kernels' scalar arguments in `dtype`: lr, b1, b2, eps, b1^t, b2^t (t = step + 1)."""
    cache = getattr(self, '_fused_scalars', None)
    if cache is None:  # update_step called on its own
      cache = {}
    if dtype not in cache:
      step = tf.cast(self.iterations + 1, dtype)
      beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
      lr = tf.cast(learning_rate, dtype)
      scalars = dict(beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step))
      mask = getattr(self, '_apply_mask', None)
      if mask is not None:  # a skipped step (see `apply_masked`): lr 0, b1 = b2 = 1 change nothing
        one, zero = tf.ones([], dtype), tf.zeros([], dtype)
        lr, beta_1, beta_2 = (
          tf.where(mask, lr, zero),
          tf.where(mask, beta_1, one),
          tf.where(mask, beta_2, one),
        )
      scalars.update(lr=lr, beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype))
      cache[dtype] = scalars
    return cache[dtype]

  def can_apply_masked(self, variables: list[keras.Variable]) -> bool:
    """True if `apply_masked` can run for `variables`: every update is a fused kernel (plain, not
    mirrored, variables) and nothing else changes the weights (weight decay, gradient accumulation,
    periodic EMA overwrite, constraints)."""
    if (
      not self.built or self.weight_decay or self.gradient_accumulation_steps or self.ema_overwrite_frequency
    ):
      return False
    if tracing_for_xla():  # the fused kernels are slow to compile there (see tfp_glow.flow.xla)
      return False
    if getattr(self, 'amsgrad', False):
      return False
    plain = [_resource_variable(v) is not None and v.constraint is None for v in variables]
    slots = [_resource_variable(s) is not None for s in self.variables]
    return all(plain) and all(slots)

  def apply_masked(
    self, ok: tf.Tensor, grads: list[tf.Tensor | None], variables: list[keras.Variable]
  ) -> None:
    """`apply(grads, variables)` if `ok` (a scalar bool), else nothing at all: weights, moments, EMA
    and `iterations` stay bit-identical. No `tf.cond`: the fused kernels run either way, with
    gradients 0, learning rate 0 and b1 = b2 = 1 on a skipped step, where
      Adamax: m = 1 m + 0 0 = m;  u = max(1 u, |0|) = u;  theta -= 0 * m / (...) = theta
      Adam:   m = m + (0 - m) 0 = m;  v = v + (0 - v) 0 = v;  theta -= 0 * ... = theta
      EMA:    avg -= 0 * (avg - theta) = avg
    A conditional branch would have to capture every variable again (thousands at the paper's
    depth): slow to trace and to optimize. Requires `can_apply_masked(variables)`."""
    if not self.can_apply_masked(variables):
      raise ValueError(f'{self.name}: apply_masked cannot skip exactly here (see can_apply_masked).')
    grads = [None if g is None else tf.where(ok, g, tf.zeros([], g.dtype)) for g in grads]
    self._apply_mask = ok
    try:
      self.apply(grads, variables)
    finally:
      self._apply_mask = None
    self.iterations.assign_sub(1 - tf.cast(ok, self.iterations.dtype))  # apply counted the step

  def _update_model_variables_moving_average(self, trainable_variables):
    """The weight EMA (use_ema=True), fused: avg <- avg - (1 - momentum) (avg - theta), one kernel
    per variable and the momentum computed once (Keras' own: about ten ops per variable).
    momentum = 0 at the first step (avg = theta), as in Keras."""
    if not self.use_ema:
      return
    pairs = [
      (v, a) for v, a in zip(trainable_variables, self._model_variables_moving_average) if a is not None
    ]
    plain = [(_resource_variable(v), _resource_variable(a)) for v, a in pairs]
    if tracing_for_xla() or any(v is None or a is None for v, a in plain):
      return super()._update_model_variables_moving_average(trainable_variables)
    first = tf.equal(tf.convert_to_tensor(self.iterations), 0)
    rate = tf.where(first, 1.0, 1.0 - self.ema_momentum)  # 1 - momentum, float32
    mask = getattr(self, '_apply_mask', None)
    if mask is not None:  # a skipped step (see `apply_masked`)
      rate = tf.where(mask, rate, 0.0)
    rates = {}
    for var, average in plain:
      if average.dtype not in rates:
        rates[average.dtype] = tf.cast(rate, average.dtype)
      tf.raw_ops.ResourceApplyGradientDescent(
        var=average.handle, alpha=rates[average.dtype], delta=average - var
      )

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), 'warmup_steps': self.warmup_steps}


def _resource_variable(variable) -> tf.Variable | None:
  """The plain tf.Variable behind a Keras variable (None if it is distributed, e.g. mirrored)."""
  if isinstance(variable, keras.Variable):
    variable = variable.value
  plain = isinstance(variable, tf.Variable) and not isinstance(variable, tf.distribute.DistributedValues)
  return variable if plain else None


def _fused_variables(optimizer, gradient, variable, slots) -> list[tf.Variable] | None:
  """[variable, *its slot variables] as plain tf.Variables; None where the fused kernel can't run."""
  if tracing_for_xla():  # XLA compiles Keras' own update much faster (see tfp_glow.flow.xla)
    return None
  index = optimizer._get_variable_index(variable)
  plain = [_resource_variable(v) for v in (variable, *(slot[index] for slot in slots))]
  if any(v is None for v in plain) or isinstance(gradient, tf.IndexedSlices):
    return None
  return plain


@keras.saving.register_keras_serializable(package='tfp_glow')
class WarmupAdamax(_LinearWarmup, keras.optimizers.Adamax):
  """keras.optimizers.Adamax with linear warmup and a fused update (see the module docstring)."""

  def update_step(
    self, gradient: tf.Tensor, variable: keras.Variable, learning_rate: float | tf.Tensor
  ) -> None:
    plain = _fused_variables(self, gradient, variable, (self._m, self._u))
    if plain is None:
      return super().update_step(gradient, variable, learning_rate)
    var, m, u = plain
    c = self._scalars(var.dtype, learning_rate)
    tf.raw_ops.ResourceApplyAdaMax(
      var=var.handle,
      m=m.handle,
      v=u.handle,
      beta1_power=c['beta1_power'],
      lr=c['lr'],
      beta1=c['beta1'],
      beta2=c['beta2'],
      epsilon=c['epsilon'],
      grad=tf.cast(gradient, var.dtype),
    )


@keras.saving.register_keras_serializable(package='tfp_glow')
class WarmupAdam(_LinearWarmup, keras.optimizers.Adam):
  """keras.optimizers.Adam with linear warmup and a fused update (see the module docstring)."""

  def update_step(
    self, gradient: tf.Tensor, variable: keras.Variable, learning_rate: float | tf.Tensor
  ) -> None:
    slots = (self._momentums, self._velocities)
    plain = None if self.amsgrad else _fused_variables(self, gradient, variable, slots)
    if plain is None:
      return super().update_step(gradient, variable, learning_rate)
    var, m, v = plain
    c = self._scalars(var.dtype, learning_rate)
    tf.raw_ops.ResourceApplyAdam(
      var=var.handle, m=m.handle, v=v.handle, grad=tf.cast(gradient, var.dtype), **c
    )


@keras.saving.register_keras_serializable(package='tfp_glow')
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
  """lr(step) = learning_rate * min(1, (step + 1) / warmup_steps); constant afterwards.

  Kept so that models saved with it still load; `default_optimizer` now uses `WarmupAdamax`,
  whose learning rate callbacks can set.
  """

  def __init__(self, learning_rate: float = 1e-3, warmup_steps: int = 1000):
    if learning_rate <= 0:
      raise ValueError(f'learning_rate must be > 0, got {learning_rate}.')
    if warmup_steps < 0:
      raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
    self.learning_rate = float(learning_rate)
    self.warmup_steps = int(warmup_steps)

  def __call__(self, step: int | tf.Tensor) -> tf.Tensor:
    step = keras.ops.cast(step, 'float32')
    fraction = keras.ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
    return self.learning_rate * fraction

  def get_config(self) -> dict[str, Any]:
    return {'learning_rate': self.learning_rate, 'warmup_steps': self.warmup_steps}


def default_optimizer(
  learning_rate: float = 4e-3,
  warmup_steps: int = 1000,
  use_ema: bool = False,
  clipnorm: float | None = None,
  name: str = 'adamax',
) -> keras.optimizers.Optimizer:
  """Adamax (the reference's) or Adam, with linear warmup; optional weight EMA and clipping.

  The default rate, 4e-3, was better than 2e-3 and the reference's 1e-3 on natural-image patches
  (BENCHMARKS.md, "Defaults on natural images"); `learning_rate=1e-3` gives the paper's schedule.

  The reference warms up over about 10 epochs' worth of images (warmup_steps = 10 * N / batch).
  With `use_ema=True` Keras keeps an exponential moving average of the weights and writes it into
  the model at the end of `fit`, so evaluation and sampling afterwards use the averaged weights
  (the reference's Polyak averaging).
  """
  kinds = {'adamax': WarmupAdamax, 'adam': WarmupAdam}
  if name not in kinds:
    raise ValueError(f'optimizer must be one of {sorted(kinds)}, got {name!r}.')
  return kinds[name](learning_rate, warmup_steps, use_ema=use_ema, clipnorm=clipnorm)
