"""GlowModel's training side, as Keras' own Trainer is keras.Model's: `fit`, `evaluate`, `compile`, the three
Keras steps (`train_step`, `test_step`, `predict_step`), the loss, the metrics and the per-image weights.

The loss per image n (D = H * W * C; q the dequantization, log q = 0 for the uniform one):
  bits_per_dim_n = (-(log p(x_n + u_n) - log q(u_n|x_n)) + D log(n_bins)) / (D ln 2)
  loss_n = bits_per_dim_n [+ class_loss_weight * cross-entropy_n / ln 2, class-conditional]
and a step's loss is the weighted mean sum_n w_n loss_n / sum_n w_n over the global batch (w_n = 0 for
`inputs.pad_batches`' padding). log p comes from the distribution (`GlowDistribution.log_prob_parts`), which
the training step asks with its gradient mode (`training_gradient`, first-order only).

A mixin: `GlowModel` (tfp_glow/training/model.py) composes it with keras.Model, and gives it what it reads:
`distribution`, `glow`, `dequantizer`, `classifier`, `n_bins`, `num_dims`, `num_classes`, `image_shape`,
`training_gradient`, the trackers, `skip_causes`, `_glow_config`, `_guard_state`, `_check_images` /
`_check_labels` and `log_prob` (tfp_glow/training/public_calls.py, for `predict_step`).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from tfp_glow import dequantization as dequant
from tfp_glow.distribution import bits_per_dim
from tfp_glow.training import guard
from tfp_glow.training import inputs as model_inputs
from tfp_glow.training.optim import default_optimizer

if TYPE_CHECKING:  # for type checkers: the mixin's self is a GlowModel, whose keras.Model gives it the rest
  from keras import Model as _KerasModel
else:
  _KerasModel = object

# fit arguments a density model cannot honour (GlowModel.fit refuses them).
_FIT_ARGS_REFUSED = ('class_weight', 'sample_weight')
# The train step's assertion on labels; fit turns it into one ValueError.
_LABEL_ERROR = 'GlowModel: label outside [0, num_classes):'


class Trainer(_KerasModel):
  """`fit`, `evaluate`, `compile` and the Keras steps of a GlowModel (see the module docstring)."""

  def fit(self, x: Any = None, y: Any = None, **kwargs: Any) -> keras.callbacks.History:
    """`keras.Model.fit`, which first initializes actnorm from the first training images if needed.

    Refuses (ValueError) what a density model cannot honour: `class_weight` and `sample_weight` (every
    image counts once in log p(x)). Labels outside [0, num_classes) are a bug in the data: a ValueError
    naming the range and the value, not skipped steps; labels that are not integers (class names) a
    TypeError, before Keras converts anything."""
    ignored = [k for k in _FIT_ARGS_REFUSED if kwargs.get(k) is not None]
    if ignored:
      raise ValueError(
        f'GlowModel.fit: {", ".join(ignored)} cannot be honoured by a density model (the loss is the mean '
        '-log p(x) of the images, every image weighted once); leave it out, or repeat / filter examples in '
        'the data instead.'
      )
    model_inputs.check_label_dtype(model_inputs.label_dtype(x, y), self.num_classes, 'GlowModel.fit')
    if not self.is_initialized:
      images, labels = model_inputs.first_images(x, y, self._glow_config['init_batch_size'])
      self.initialize(images, labels if self.num_classes else None)
    replicas = self.distribute_strategy.num_replicas_in_sync
    x, y, kwargs = model_inputs.arrays_as_datasets(x, y, kwargs, replicas, 'fit')  # padded below
    if isinstance(x, tf.data.Dataset):
      kwargs.setdefault('shuffle', False)  # a Dataset shuffles itself; Keras warns otherwise
    x = self._pad_batches(x, 'train_function')
    if 'validation_data' in kwargs:
      kwargs['validation_data'] = self._pad_batches(kwargs['validation_data'], 'test_function')
    callbacks = list(kwargs.get('callbacks') or [])
    for callback in callbacks:
      model_inputs.set_monitor_direction(callback, self._step_metrics() + [self.skip_tracker])
    limit = self._glow_config['max_consecutive_skips']
    kwargs['callbacks'] = [*callbacks, guard.StopAfterConsecutiveSkips(limit)]
    self.skip_causes.reset()
    steps_given = any(kwargs.get(k) is not None for k in ('steps_per_epoch', 'validation_steps'))
    try:
      with model_inputs.epoch_length_unknown_is_fine(steps_given):
        return super().fit(x, y, **kwargs)
    except tf.errors.InvalidArgumentError as e:
      found = re.search(re.escape(_LABEL_ERROR) + r'\]?\s*\[(-?\d+)', e.message)
      if not found:
        raise
      raise ValueError(
        f'GlowModel.fit: a label is outside [0, {self.num_classes}) (num_classes={self.num_classes}): got '
        f'{found.group(1)}. Labels must be class ids 0..{self.num_classes - 1}; fix the data.'
      ) from None

  def evaluate(
    self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any
  ) -> Any:  # a number, a list or a dict, as Keras
    """`keras.Model.evaluate`: bits/dim and loss are means over images (under a distribution strategy,
    a batch that does not split evenly is padded, the padding weighted 0). Refuses `sample_weight`, as `fit`
    does (Keras would drop it silently without y)."""
    if kwargs.get('sample_weight') is not None:
      raise ValueError(
        'GlowModel.evaluate: sample_weight cannot be honoured by a density model (bits/dim is the mean '
        '-log p(x) over images, every image counted once); leave it out.'
      )
    model_inputs.check_label_dtype(model_inputs.label_dtype(x, y), self.num_classes, 'GlowModel.evaluate')
    replicas = self.distribute_strategy.num_replicas_in_sync
    x, y, kwargs = model_inputs.arrays_as_datasets(x, y, kwargs, replicas, 'evaluate', args)  # padded below
    with model_inputs.epoch_length_unknown_is_fine(kwargs.get('steps') is not None):
      return super().evaluate(self._pad_batches(x, 'test_function'), y, **kwargs)

  def _pad_batches(self, data, function: str):
    """`inputs.pad_batches` for the step that `function` ('train_function' / 'test_function') runs. When the
    data's form changes between packed (padded) and plain images, the step is traced afresh: its cached
    tf.function (reduce_retracing) would otherwise generalize to an input of unknown rank."""
    replicas = self.distribute_strategy.num_replicas_in_sync
    padded = model_inputs.pad_batches(data, replicas)
    if replicas > 1:
      packed, forms = padded is not data, self._guard_state.packed_inputs
      if forms.get(function, packed) != packed:
        setattr(self, function, None)  # Keras makes a new one
      forms[function] = packed
    return padded

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    # Keras' TF trainer (3.15), under a distribution strategy, takes the first batch of every fit/evaluate
    # and averages it elementwise over the replicas (`strategy.reduce(MEAN, axis=None)`) only to build what
    # is unbuilt: workers reading their own TFRecord shards then fail on first batches of different sizes.
    # A GlowModel is built at construction and its optimizer in `compile`; with no compiled loss or metrics
    # there is nothing to build, so nothing is read (docs/design.md, private APIs).
    unbuilt = [m for m in (self._compile_metrics, self._compile_loss) if m is not None and not m.built]
    if unbuilt or self.optimizer is None or not self.optimizer.built:
      return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
    return None

  def compile(self, optimizer: keras.optimizers.Optimizer | str | None = None, **kwargs: Any) -> None:
    """`keras.Model.compile`; the default optimizer is `default_optimizer()` (Adamax with linear warmup)."""
    kwargs.setdefault('loss', None)
    super().compile(optimizer=optimizer or default_optimizer(), **kwargs)
    # Our variables exist from construction: build the optimizer's now, so that load_weights and
    # load_model restore its state (moments, step) too, for resuming.
    self.optimizer.build(self.trainable_variables)

  # Declared so that `load_model` restores the compiled optimizer (and its state) of a saved model.
  def get_compile_config(self) -> dict[str, Any] | None:
    return super().get_compile_config()

  def compile_from_config(self, config: dict[str, Any]) -> None:
    # keras.Model's version refuses to run when `compile` is overridden; ours only adds a default.
    self.compile(**keras.saving.deserialize_keras_object(config))

  # ---- the loss and the metrics ----------------------------------------------------------------

  def bits_per_dim(self, log_prob: tf.Tensor) -> tf.Tensor:
    """(-log p(x) + D log(n_bins)) / (D ln 2), per image (see `tfp_glow.distribution.bits_per_dim`)."""
    return bits_per_dim(log_prob, self.num_dims, self.n_bins)

  def _loss_terms_of(
    self, images: tf.Tensor, labels: tf.Tensor | None, training_gradient: str | None = None
  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
    """Per-image terms of the loss: (loss [N], bits/dim [N], labels, logits or None); loss_n = bpd_n, plus
    class_loss_weight * cross-entropy_n / ln 2 for a conditional model. Callers take the (weighted) mean.
    `training_gradient`: the training step's first-order gradient mode, handed to the distribution (None:
    TensorFlow's own gradient, e.g. in `test_step`)."""
    log_q = 0.0  # uniform: the images come dequantized, u ~ U[0, 1), log q = 0
    if self.dequantizer is not None:  # variational: the same bins, u ~ q(u|x) instead
      images, log_q = dequant.dequantize_with(self.dequantizer, images, self.n_bins, dtype=self.glow.dtype)
    parts = self.distribution.log_prob_parts(images, labels, training_gradient=training_gradient)
    # The bound's continuous term log p(x + u) - log q(u|x) (tfp_glow.dequantization).
    bpd = self.bits_per_dim(parts.log_prob - log_q)
    loss, logits = bpd, None
    if self.classifier is not None:
      logits = self.classifier(tf.reduce_mean(parts.encoding.top, axis=[1, 2]))
      xent = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
      loss = loss + self._glow_config['class_loss_weight'] * tf.cast(xent, loss.dtype) / math.log(2.0)
    return loss, bpd, labels, logits

  def _record_metrics(self, loss, bpd, labels, logits, weights):
    """Adds one batch's per-image values (loss, bpd [N], logits [N, classes]) with their weights [N] to the
    trackers, which hold sum_n w_n v_n and sum_n w_n over the epoch (summed over replicas): their result
    is the mean over images, whatever the batch sizes. Weight 0 (padding, a skipped step) leaves the
    means as they were; those values are zeroed first, since 0 * NaN would still be NaN."""

    def keep(v):
      kept = tf.reshape(weights > 0, [-1] + [1] * (v.shape.rank - 1))
      return tf.where(kept, v, tf.zeros_like(v))

    self.loss_tracker.update_state(keep(loss), sample_weight=weights)
    self.bpd_tracker.update_state(keep(bpd), sample_weight=weights)
    if logits is not None:
      self.class_tracker.update_state(labels, keep(logits), sample_weight=weights)
    return {m.name: _result_over_replicas(m) for m in self._step_metrics()}

  def _image_weights(self, weights, images) -> tf.Tensor:
    """Per-image weights [N]: 1 for each image, 0 for `pad_batches`' padding (None: no padding, all 1)."""
    if weights is None:
      return tf.ones(tf.shape(images)[:1], self.glow.dtype)
    return tf.cast(weights, self.glow.dtype)

  def _step_metrics(self):
    trackers = [self.loss_tracker, self.bpd_tracker]
    return trackers + ([self.class_tracker] if self.classifier is not None else [])

  @property
  def metrics(self) -> list[keras.metrics.Metric]:
    return [*self._step_metrics(), self.skip_tracker]

  # ---- the Keras steps ---------------------------------------------------------------------------

  @tf.autograph.experimental.do_not_convert  # faster tracing (see Glow._encode_4d)
  def train_step(self, data: Any) -> dict[str, tf.Tensor]:
    """One guarded optimizer step: a batch whose images or labels are invalid (NaN/Inf, outside
    [-0.5, 0.5], labels outside [0, num_classes)), or whose loss or gradients are not finite, is
    skipped: no weight, moment or `optimizer.iterations` changes (a conditional apply, as Keras'
    LossScaleOptimizer does, not zeroed gradients, which would still move Adam's moments).
    Skips are counted in the `skipped_steps` metric (per epoch); `fit` stops with
    `TrainingDivergedError` after `max_consecutive_skips` skips in a row."""
    images, labels, weights = model_inputs.unpack(data, self.image_shape)
    weights = self._image_weights(weights, images)
    images = self._check_images(images, check_values=False)  # static checks raise at trace time
    labels = self._check_labels(labels, required=True, check_values=False)
    with tf.name_scope('guard'):  # the op names say what they are for (benchmarks/profile_step.py)
      finite, in_range, labels_ok = guard.batch_checks(
        images, labels, self.num_classes, self._glow_config['validate_inputs']
      )
    valid = finite & in_range & labels_ok
    if labels is not None:  # a data bug, not an accident: fit raises it as a ValueError (XLA: skipped)
      bad = tf.boolean_mask(labels, (labels < 0) | (labels >= self.num_classes))
      tf.debugging.Assert(labels_ok, [_LABEL_ERROR, bad[:1]])
    # Invalid values never reach the flow (out-of-range labels would make some ops raise).
    images = tf.where(valid, images, tf.zeros_like(images))
    labels = None if labels is None else tf.where(valid, labels, tf.zeros_like(labels))
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    # The global batch's number of (weighted) images, over all replicas (padding weighs 0).
    images_in_batch = _sum_over_replicas(tf.reduce_sum(weights))
    # Only first-order gradients are taken here: the fast level gradient needs no questions.
    with tf.GradientTape() as tape:
      losses, bpd, labels, logits = self._loss_terms_of(images, labels, self.training_gradient)
      # The optimizer sums the replicas' gradients: each replica's weighted sum is divided by the global
      # batch's weight, so the sum is the gradient of the global batch's mean over images,
      # sum_n w_n loss_n / sum_n w_n (padded images: w = 0, zeroed, so they never move a weight).
      # Then mixed precision loss scaling (the identity otherwise).
      masked = tf.where(weights > 0, losses, tf.zeros_like(losses))
      loss = tf.reduce_sum(tf.cast(weights, losses.dtype) * masked) / tf.cast(images_in_batch, losses.dtype)
      scaled = self.optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, self.trainable_variables)
    # A LossScaleOptimizer must see its overflowing (non-finite) gradients: it skips that step
    # itself and lowers its loss scale. Other optimizers get only finite gradients.
    mixed = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
    with tf.name_scope('guard'):
      ok = guard.all_replicas_agree(valid & guard.all_finite([loss] if mixed else [loss, *grads]))
    with tf.name_scope('optimizer'):
      guard.apply_if(self.optimizer, ok, grads, self.trainable_variables)
    with tf.name_scope('metrics'):
      self.skip_causes.update(finite, in_range, labels_ok, ok)
      self.skip_tracker.update_state(tf.cast(~ok, tf.float32) / replicas)  # the Sum adds up over replicas
      logs = self._record_metrics(losses, bpd, labels, logits, weights * tf.cast(ok, weights.dtype))
    return {**logs, 'skipped_steps': self.skip_tracker.result()}

  @tf.autograph.experimental.do_not_convert
  def test_step(self, data: Any) -> dict[str, tf.Tensor]:
    images, labels, weights = model_inputs.unpack(data, self.image_shape)
    weights = self._image_weights(weights, images)
    images = self._check_images(images)
    labels = self._check_labels(labels, required=True)
    return self._record_metrics(*self._loss_terms_of(images, labels), weights)

  @tf.autograph.experimental.do_not_convert
  def predict_step(self, data: Any) -> tf.Tensor:
    """log p(x) [N] (nats) of a batch for `predict`: images, or (images, labels) for a conditional model
    (Keras' own predict_step would drop the labels). Keras hands numpy (images, labels) to us as one
    input tuple, a Dataset's (images, labels) as x and y: both mean the same."""
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    if labels is None and isinstance(images, (tuple, list)) and len(images) == 2:
      images, labels = images
    return self.log_prob(images, labels)


def _sum_over_replicas(value: tf.Tensor) -> tf.Tensor:
  """`value` summed over the replicas of a distribution strategy (itself on one device)."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return value
  return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _result_over_replicas(metric: keras.metrics.Mean) -> tf.Tensor:
  """A Mean metric's result sum(total) / sum(count) over all replicas (NaN over no values). In a replica
  context a metric reads only its own replica's share, and Keras re-reads the metrics across replicas only
  when a step's logs name every metric, which `test_step`'s do not (no skipped_steps)."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return metric.result()
  total, count = tf.unstack(
    _sum_over_replicas(
      tf.stack([tf.convert_to_tensor(metric.total.value), tf.convert_to_tensor(metric.count.value)])
    )
  )
  return tf.where(count > 0, tf.math.divide_no_nan(total, count), tf.constant(float('nan'), total.dtype))
