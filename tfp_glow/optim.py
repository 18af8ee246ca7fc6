"""Optimizer defaults after the reference code: Adamax, lr 1e-3, linear warmup, no decay."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package='tfp_glow')
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
  """lr(step) = learning_rate * min(1, (step + 1) / warmup_steps); constant afterwards.

  The reference warms up over about 10 epochs' worth of images (warmup_steps = 10 * N / batch).
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

  With `use_ema=True` Keras keeps an exponential moving average of the weights and writes it into
  the model at the end of `fit`, so evaluation and sampling afterwards use the averaged weights
  (the reference's Polyak averaging).
  """
  schedule = LinearWarmup(learning_rate, warmup_steps)
  kinds = {'adamax': keras.optimizers.Adamax, 'adam': keras.optimizers.Adam}
  if name not in kinds:
    raise ValueError(f'optimizer must be one of {sorted(kinds)}, got {name!r}.')
  return kinds[name](learning_rate=schedule, use_ema=use_ema, clipnorm=clipnorm)
