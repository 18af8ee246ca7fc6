"""Optimizer defaults after the reference code: Adamax, lr 1e-3, linear warmup, no decay.

The warmup is a multiplier on the optimizer's own (settable) learning rate, not a schedule object,
so Keras callbacks that set the rate (`ReduceLROnPlateau`, `LearningRateScheduler`) work with it:

  step size(step) = learning_rate * min(1, (step + 1) / warmup_steps)

`optimizer.learning_rate` is the rate after warmup; the factor follows `optimizer.iterations`,
so a resumed run (BackupAndRestore, load_model) continues its warmup where it stopped.
"""

from __future__ import annotations

import keras


class _LinearWarmup:
  """Mixin for a Keras optimizer: scales the learning rate by min(1, (step + 1) / warmup_steps)."""

  def __init__(self, learning_rate: float = 1e-3, warmup_steps: int = 1000, **kwargs):
    if not isinstance(learning_rate, (int, float)) or learning_rate <= 0:
      raise ValueError(f'learning_rate must be a number > 0, got {learning_rate!r}.')
    if warmup_steps < 0:
      raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
    super().__init__(learning_rate=learning_rate, **kwargs)
    self.warmup_steps = int(warmup_steps)

  def warmup_factor(self):
    """min(1, (iterations + 1) / warmup_steps), a float32 scalar (1 without warmup)."""
    step = keras.ops.cast(self.iterations, 'float32')
    return keras.ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))

  # The hook through which every Keras backend passes the current rate to `update_step`.
  def _backend_update_step(self, grads, trainable_variables, learning_rate):
    scaled = keras.ops.cast(learning_rate, 'float32') * self.warmup_factor()
    return super()._backend_update_step(grads, trainable_variables, scaled)

  def get_config(self):
    return {**super().get_config(), 'warmup_steps': self.warmup_steps}


@keras.saving.register_keras_serializable(package='tfp_glow')
class WarmupAdamax(_LinearWarmup, keras.optimizers.Adamax):
  """keras.optimizers.Adamax with linear warmup (see the module docstring)."""


@keras.saving.register_keras_serializable(package='tfp_glow')
class WarmupAdam(_LinearWarmup, keras.optimizers.Adam):
  """keras.optimizers.Adam with linear warmup (see the module docstring)."""


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

  def __call__(self, step):
    step = keras.ops.cast(step, 'float32')
    fraction = keras.ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
    return self.learning_rate * fraction

  def get_config(self):
    return {'learning_rate': self.learning_rate, 'warmup_steps': self.warmup_steps}


def default_optimizer(
  learning_rate: float = 1e-3,
  warmup_steps: int = 1000,
  use_ema: bool = False,
  clipnorm: float | None = None,
  name: str = 'adamax',
) -> keras.optimizers.Optimizer:
  """Adamax (the reference's) or Adam, with linear warmup; optional weight EMA and clipping.

  The reference warms up over about 10 epochs' worth of images (warmup_steps = 10 * N / batch).
  With `use_ema=True` Keras keeps an exponential moving average of the weights and writes it into
  the model at the end of `fit`, so evaluation and sampling afterwards use the averaged weights
  (the reference's Polyak averaging).
  """
  kinds = {'adamax': WarmupAdamax, 'adam': WarmupAdam}
  if name not in kinds:
    raise ValueError(f'optimizer must be one of {sorted(kinds)}, got {name!r}.')
  return kinds[name](learning_rate, warmup_steps, use_ema=use_ema, clipnorm=clipnorm)
