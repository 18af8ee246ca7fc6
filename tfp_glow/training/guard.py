"""Guarded training steps: a bad batch or a non-finite step is skipped, never applied.

A step is applied only if its batch is valid (finite images in [-0.5, 0.5], labels in
[0, num_classes)) and its loss and every gradient are finite, on every replica. Otherwise the
optimizer is not called at all: weights, moments, EMA and `optimizer.iterations` stay bit-identical
(zeroed gradients would not do: Adam(ax)'s moments decay and the step counter advances).
This is how Keras' own LossScaleOptimizer skips overflowing steps: a `tf.cond` around `apply`,
taken in the cross-replica context when the strategy needs `merge_call`.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf


class TrainingDivergedError(RuntimeError):
  """Raised by `fit` when too many steps in a row were skipped (see `StopAfterConsecutiveSkips`)."""

  def __init__(self, message: str, skipped_in_a_row: int, causes: str = 'causes not recorded'):
    super().__init__(message)
    self.skipped_in_a_row = skipped_in_a_row
    self.causes = causes  # e.g. '7 with non-finite pixels, 3 with a non-finite loss or gradients'


class NonFiniteWeightsError(ValueError):
  """Raised instead of writing a model or checkpoint whose weights contain NaN or Inf."""


def finite_weights(model: keras.Model) -> bool:
  """True if every weight of `model` (trainable or not) is finite."""
  return all(
    bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.weights if tf.as_dtype(v.dtype).is_floating
  )


# Why a step was skipped, in the order of `SkipCauses.counts` (one cause per skipped step, the first that holds).
SKIP_CAUSES = (
  'non-finite pixels',
  'pixels outside [-0.5, 0.5)',
  'labels outside [0, num_classes)',
  'a non-finite loss or gradients',
)


class SkipCauses:
  """Counts of skipped steps per cause (`SKIP_CAUSES`) since `reset`: one float32 variable [4], summed
  over replicas when read (as Keras metrics are), updated in the graph by one `assign_add` per step.
  Not a Keras metric (not logged, not saved): it only explains a stop after too many skips."""

  def __init__(self) -> None:
    self.variable = tf.Variable(
      tf.zeros([len(SKIP_CAUSES)]),
      trainable=False,
      synchronization=tf.VariableSynchronization.ON_READ,
      aggregation=tf.VariableAggregation.SUM,
      name='skip_causes',
    )

  def update(
    self, finite_pixels: tf.Tensor, pixels_in_range: tf.Tensor, labels_in_range: tf.Tensor, applied: tf.Tensor
  ) -> None:
    """Scalar bools of one step: which checks held, and whether the step was applied."""
    first = [~finite_pixels, finite_pixels & ~pixels_in_range]
    valid = finite_pixels & pixels_in_range
    first += [valid & ~labels_in_range, valid & labels_in_range & ~applied]
    self.variable.assign_add(tf.cast(tf.stack(first), tf.float32))

  def reset(self) -> None:
    self.variable.assign(tf.zeros_like(self.variable))

  def describe(self) -> str:
    """'7 with non-finite pixels, 3 with a non-finite loss or gradients' (the causes seen)."""
    counts = tf.convert_to_tensor(self.variable).numpy()
    parts = [f'{round(c)} with {name}' for c, name in zip(counts, SKIP_CAUSES) if round(c) > 0]
    return ', '.join(parts) or 'no cause recorded'


def batch_checks(
  images: tf.Tensor, labels: tf.Tensor | None, num_classes: int | None, check_range: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(finite pixels, pixels in [-0.5, 0.5], labels in [0, num_classes)): three scalar bools, computed in the
  graph so that a bad batch can be skipped rather than raised; their conjunction decides the step, and
  `SkipCauses` counts which failed."""
  finite = tf.reduce_all(tf.math.is_finite(images))
  in_range = tf.constant(True)
  if check_range:
    low, high = tf.constant(-0.5, images.dtype), tf.constant(0.5, images.dtype)
    in_range = tf.reduce_all(images >= low) & tf.reduce_all(images <= high)
  labels_ok = tf.constant(True) if labels is None else tf.reduce_all((labels >= 0) & (labels < num_classes))
  return finite, in_range, labels_ok


def all_finite(tensors: Sequence[tf.Tensor | None]) -> tf.Tensor:
  """A scalar bool: every element of every (non-None) tensor is finite."""
  return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None]))


def all_replicas_agree(ok: tf.Tensor) -> tf.Tensor:
  """`ok` on every replica (an all-reduce), so that all replicas apply or all skip a step."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return ok
  bad = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(~ok, tf.float32))
  return tf.equal(bad, 0.0)


def apply_if(
  optimizer: keras.optimizers.Optimizer,
  ok: tf.Tensor,
  grads: Sequence[tf.Tensor | None],
  variables: Sequence[tf.Variable],
) -> None:
  """`optimizer.apply(grads, variables)` if `ok` (a scalar bool, equal on all replicas), else nothing."""
  variables = list(variables)
  grads = list(grads)
  if hasattr(optimizer, 'apply_masked') and optimizer.can_apply_masked(variables):
    optimizer.apply_masked(ok, grads, variables)  # the same, without a branch (tfp_glow.training.optim)
    return
  context = tf.distribute.get_replica_context()
  if context is None or tf.__internal__.distribute.strategy_supports_no_merge_call():
    tf.cond(ok, lambda: optimizer.apply(grads, variables), lambda: None)
    return

  # The optimizer all-reduces gradients with a merge_call, which a cond in a replica context
  # cannot hold: branch in the cross-replica context, as LossScaleOptimizer does.
  def cross_replica(distribution, ok, grads, variables):
    ok = distribution.experimental_local_results(ok)[0]

    def apply():
      distribution.extended.call_for_each_replica(optimizer.apply, args=(grads, variables))

    tf.cond(ok, apply, lambda: None)

  context.merge_call(cross_replica, args=(ok, grads, variables))


class Mean(keras.metrics.Mean):
  """keras.metrics.Mean, but NaN (not 0) over no values: an epoch whose every step was skipped
  must not report a perfect loss."""

  def __init__(self, name: str, direction: str = 'down'):
    super().__init__(name=name)
    self._direction = direction  # lower is better: Keras callbacks in mode 'auto' read it

  def result(self) -> tf.Tensor:
    return tf.where(self.count > 0, super().result(), tf.constant(float('nan'), self.dtype))


class Count(keras.metrics.Sum):
  """keras.metrics.Sum of events where fewer is better (skipped steps)."""

  def __init__(self, name: str):
    super().__init__(name=name)
    self._direction = 'down'


class StopAfterConsecutiveSkips(keras.callbacks.Callback):
  """Stops `fit` with `TrainingDivergedError` after `limit` skipped steps in a row.

  Reads the model's per-epoch `skipped_steps` metric after each batch; `GlowModel.fit` adds it.
  """

  def __init__(self, limit: int):
    super().__init__()
    self.limit = limit
    self._in_a_row = 0
    self._seen = 0.0

  def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
    self._seen = 0.0  # the metric restarts each epoch; the run of skips carries over

  def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
    skipped = float((logs or {}).get('skipped_steps', self._seen))
    new = round(skipped - self._seen)
    self._seen = skipped
    self._in_a_row = self._in_a_row + new if new > 0 else 0
    if self._in_a_row >= self.limit:
      counter = getattr(self.model, 'skip_causes', None)
      causes = counter.describe() if isinstance(counter, SkipCauses) else 'causes not recorded'
      raise TrainingDivergedError(
        f'GlowModel: training stopped after {self._in_a_row} skipped steps in a row (skipped in this fit: '
        f'{causes}); the weights are those before the skips. Non-finite or out-of-range pixels: check the '
        'data (images in [-0.5, 0.5), see tfp_glow.data); a non-finite loss or gradients: lower the '
        'learning rate / clip gradients (clipnorm). max_consecutive_skips sets the limit.',
        self._in_a_row,
        causes,
      )
