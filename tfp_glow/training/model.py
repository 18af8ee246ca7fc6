"""GlowModel: Glow as a Keras 3 model, trained with `fit` on the negative log-likelihood in bits/dim."""

from __future__ import annotations

import contextlib
import math
import os
import re
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_glow import atomic, checks
from tfp_glow import data as glow_data
from tfp_glow import dequantization as dequant
from tfp_glow.distribution import GlowDistribution, bits_per_dim
from tfp_glow.flow.glow import Glow
from tfp_glow.flow.gradients import check_gradient, first_order_training
from tfp_glow.training import guard
from tfp_glow.training import inputs as model_inputs
from tfp_glow.training.compiled import CompiledCalls, use_compiled
from tfp_glow.training.optim import default_optimizer


@keras.saving.register_keras_serializable(package='tfp_glow')
class GlowModel(keras.Model):
  """A Keras model around the Glow distribution over images x in [-0.5, 0.5) (dequantized).

  Loss (in bits per dimension, D = H * W * C), the mean over images:
    bits_per_dim = mean_n (-log p(x_n) + D * log(n_bins)) / (D * ln 2)
  which is the discrete data's negative log-likelihood bound; a uniform model scores log2(n_bins).
  Every figure (`fit`'s and `evaluate`'s metrics, `val_*`, what callbacks monitor) is this mean over all the
  images seen (per-image values, so a short last batch weighs by its size, not as one whole batch); under a
  distribution strategy a batch that does not split evenly is padded and the padding weighted 0
  (`tfp_glow.training.inputs.pad_batches`).
  Class-conditional (`num_classes`): data is (images, labels); the top prior depends on the label,
  and a zero-initialized linear classifier on the mean of the top activations adds
  `class_loss_weight` * cross-entropy in bits (the reference's ycond and weight_y = 0.01).

  Dequantization (tfp_glow.dequantization): 'uniform' (the paper: the data pipeline's u ~ U[0, 1)), or
  'variational': the loss recovers each image's bins and draws u ~ q(u|x), a small conditional flow
  (`self.dequantizer`, trained jointly), for the bound mean_n (-(log p(x_n + u) - log q(u|x_n)) + D log(n_bins))
  / (D ln 2), the same bits/dim formula. `evaluate_bits_per_dim(data, samples=S)`: the importance-weighted
  estimate, for either.

  Couplings (`coupling`): 'affine' (the paper's), 'additive', or 'spline' (rational-quadratic, Durkan et al.
  2019, `tfp_glow.bijectors.transforms.Spline`); see `tfp_glow.Glow` and docs/design.md, "Couplings".

  Every parameter of every bijector lives in `self.flow` (one Keras layer), so `fit`,
  `trainable_variables`, `save_weights`, `model.save` and `keras.models.load_model` see them all.
  Actnorm's data-dependent init runs once, before the first training step: call
  `initialize(images)`, or let `fit` do it from the first `init_batch_size` training images.

  Gradients (`tfp_glow.flow.gradients`): the training step differentiates each level with `gradient`
  (default 'stored', the fast hand-built first-order gradient; 'inverse' stores nothing, so training
  memory does not grow with the depth K; 'checkpoint'; 'autodiff'), and says that it takes first-order
  parameter gradients only. Everything else (`log_prob`, `distribution`, your own tapes) uses
  TensorFlow's own gradient, so Jacobians, second order and forward mode work as for any TF function.
  `memory_saving=True` / 'inverse' / 'checkpoint' is the older spelling. Mixed precision: set a Keras policy
  (`keras.mixed_precision.set_global_policy('mixed_bfloat16')`) before building the model; the
  coupling and prior networks then compute in that precision, everything else in float32.

  `predict(data)` (and `model(images)`) returns log p(x) per image: float [N], in nats, the continuous
  density of the dequantized images (no n_bins term). `data`: images, or (images, labels) for a
  class-conditional model (then log p(x|y)), e.g. the same Dataset as `fit`. Bits/dim per image from it:
    bits/dim = (-log p(x) + D log(n_bins)) / (D ln 2),  i.e. model.bits_per_dim(model.predict(data))

  Use: model = GlowModel((8, 8, 1), levels=2, steps=8, width=64, n_bins=17)
       model.compile(); model.fit(train_ds, validation_data=test_ds, epochs=...)
       model.sample(16, temperature=0.7)    # uint8 images
       model.predict(test_ds)               # log p(x) [N] in nats
  """

  def __init__(
    self,
    image_shape: Sequence[int],
    levels: int = 3,
    steps: int = 32,
    width: int = 512,
    coupling: str = 'affine',
    permutation: str = 'conv_lu',
    learn_top: bool = True,
    num_classes: int | None = None,
    n_bins: int = 256,
    class_loss_weight: float = 0.01,
    init_batch_size: int = 256,
    validate_inputs: bool = True,
    max_consecutive_skips: int = 10,
    seed: int | None = None,
    flow_dtype: str = 'float32',
    memory_saving: bool | str = False,
    gradient: str | None = None,
    dequantization: str = 'uniform',
    **kwargs,
  ):
    config = {k: v for k, v in locals().items() if k not in ('self', 'kwargs', '__class__')}
    super().__init__(**kwargs)
    if not isinstance(n_bins, int) or n_bins < 2:
      raise ValueError(f'GlowModel: n_bins must be an integer >= 2, got {n_bins!r}.')
    if not isinstance(max_consecutive_skips, int) or max_consecutive_skips < 1:
      raise ValueError(
        f'GlowModel: max_consecutive_skips must be an integer >= 1, got {max_consecutive_skips!r}.'
      )
    if dequantization not in dequant.DEQUANTIZATIONS:
      raise ValueError(
        f'GlowModel: dequantization must be one of {dequant.DEQUANTIZATIONS}, got {dequantization!r}.'
      )
    self._glow_config = dict(config, image_shape=tuple(int(d) for d in image_shape))  # for get_config
    # The training step's gradient; the bijector itself keeps TensorFlow's own ('autodiff').
    self._training_gradient = check_gradient(gradient or (None if memory_saving else 'stored'), memory_saving)
    glow = Glow(**{k: config[k] for k in _GLOW_ARGS}, dtype=tf.as_dtype(flow_dtype))
    self.flow = glow.layer  # every flow parameter, in one Keras layer
    # The TFP objects hold no variables of their own; keep them out of Keras/TF tracking.
    self._tfp = _Untracked(glow=glow, distribution=GlowDistribution(glow))
    self._tfp.calls = CompiledCalls(self)  # the public calls' tf.functions, traced on first use
    # q(u|x) of variational dequantization (tfp_glow.dequantization); None: the data's uniform noise.
    self.dequantizer = None
    if dequantization == 'variational':
      self.dequantizer = dequant.VariationalDequantizer(image_shape, n_bins)
    self.classifier = None
    if num_classes:
      self.classifier = keras.layers.Dense(
        num_classes, kernel_initializer='zeros', dtype=flow_dtype, name='class_predictor'
      )
      self.classifier.build((None, glow.levels[-1].shape[-1]))
    self.num_dims = int(np.prod(image_shape))
    self.n_bins = n_bins
    self.loss_tracker = guard.Mean(name='loss')
    self.bpd_tracker = guard.Mean(name='bits_per_dim')
    self.class_tracker = keras.metrics.SparseCategoricalAccuracy(name='class_accuracy')
    self.skip_tracker = guard.Count(name='skipped_steps')  # per epoch, see train_step
    # Why steps were skipped (for the message when too many are); not a weight, not saved.
    self._guard_state = _Untracked(skip_causes=guard.SkipCauses(), packed_inputs={})
    self.built = True

  def get_config(self):
    return {**super().get_config(), **self._glow_config}

  # ---- the TFP side --------------------------------------------------------------------------

  @property
  def glow(self) -> Glow:
    return self._tfp.glow

  @property
  def distribution(self) -> GlowDistribution:
    """The TFP distribution over images (log_prob, sample(n, temperature=...), ...)."""
    return self._tfp.distribution

  @property
  def training_gradient(self) -> str:
    """How the training step differentiates each level (`tfp_glow.flow.gradients.GRADIENTS`)."""
    return self._training_gradient

  @property
  def dequantization(self) -> str:
    """'uniform' (u ~ U[0, 1), the paper) or 'variational' (u ~ q(u|x), `self.dequantizer`)."""
    return self._glow_config['dequantization']

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.glow.image_shape

  @property
  def num_classes(self) -> int | None:
    return self.glow.num_classes

  @property
  def skip_causes(self) -> guard.SkipCauses:
    """Skipped steps of the current (or last) `fit`, counted per cause (`guard.SKIP_CAUSES`)."""
    return self._guard_state.skip_causes

  @property
  def is_initialized(self) -> bool:
    return bool(self.glow.is_initialized.numpy())

  # ---- actnorm init --------------------------------------------------------------------------

  def initialize(self, images, labels=None) -> None:
    """Actnorm data-dependent init from images [N, H, W, C] in [-0.5, 0.5); a no-op once done."""
    images = self._check_images(images)
    self.glow.initialize(images, self._check_labels(labels, required=False))

  def fit(self, x=None, y=None, **kwargs):
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

  def evaluate(self, x=None, y=None, *args, **kwargs):
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

  def compile(self, optimizer=None, **kwargs):
    """`keras.Model.compile`; the default optimizer is Adamax, lr 1e-3, with linear warmup."""
    kwargs.setdefault('loss', None)
    super().compile(optimizer=optimizer or default_optimizer(), **kwargs)
    # Our variables exist from construction: build the optimizer's now, so that load_weights and
    # load_model restore its state (moments, step) too, for resuming.
    self.optimizer.build(self.trainable_variables)

  # Declared so that `load_model` restores the compiled optimizer (and its state) of a saved model.
  def get_compile_config(self):
    return super().get_compile_config()

  def compile_from_config(self, config):
    # keras.Model's version refuses to run when `compile` is overridden; ours only adds a default.
    self.compile(**keras.saving.deserialize_keras_object(config))

  # ---- loss and Keras steps ------------------------------------------------------------------

  def bits_per_dim(self, log_prob: tf.Tensor) -> tf.Tensor:
    """(-log p(x) + D log(n_bins)) / (D ln 2), per image (see `tfp_glow.distribution.bits_per_dim`)."""
    return bits_per_dim(log_prob, self.num_dims, self.n_bins)

  def _loss_terms_of(self, images, labels):
    """Per-image terms of the loss: (loss [N], bits/dim [N], labels, logits or None); loss_n = bpd_n, plus
    class_loss_weight * cross-entropy_n / ln 2 for a conditional model. Callers take the (weighted) mean."""
    log_q = 0.0  # uniform: the images come dequantized, u ~ U[0, 1), log q = 0
    if self.dequantizer is not None:  # variational: the same bins, u ~ q(u|x) instead
      images, log_q = dequant.dequantize_with(self.dequantizer, images, self.n_bins, dtype=self.glow.dtype)
    enc = self.glow.encode_with_log_det(images, labels)
    base = self.distribution.distribution
    # The bound's continuous term log p(x + u) - log q(u|x) (tfp_glow.dequantization).
    log_prob = base.log_prob(self.glow.join_latents(enc.latents)) + enc.log_det - log_q
    bpd = self.bits_per_dim(log_prob)
    loss, logits = bpd, None
    if self.classifier is not None:
      logits = self.classifier(tf.reduce_mean(enc.top, axis=[1, 2]))
      xent = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
      loss = loss + self._glow_config['class_loss_weight'] * tf.cast(xent, loss.dtype) / math.log(2.0)
    return loss, bpd, labels, logits

  def evaluate_bits_per_dim(
    self, data, samples: int = 1, seed: int | None = None, per_image: bool = False, max_images: int = 4096
  ) -> float | np.ndarray:
    """Bits/dim of `data` with the importance-weighted estimate over `samples` draws u_s ~ q(u|x):

      bits/dim = (-(logsumexp_s [log p(x + u_s) - log q(u_s|x)] - log S) + D log n_bins) / (D ln 2)

    S = 1 is the training loss' bound; larger S tightens it (never above the S = 1 bound in expectation).
    q is the model's dequantization (uniform: log q = 0). `data`: images [N, H, W, C] in [-0.5, 0.5)
    (their bins are used, so dequantized images work), or a `tf.data.Dataset` of such batches (or of
    (images, labels)). Memory is bounded: each flow pass sees at most `max_images` images.
    `seed` makes it reproducible. Returns the mean over images (whatever the batching), or per-image values
    [N] if `per_image`.
    """
    if not isinstance(samples, (int, np.integer)) or samples < 1:
      raise ValueError(f'evaluate_bits_per_dim: samples must be an integer >= 1, got {samples!r}.')
    batches = data if isinstance(data, tf.data.Dataset) else [data]
    if getattr(self._tfp, 'iw_log_prob', None) is None:  # one traced log p for every call
      self._tfp.iw_log_prob = tf.function(
        lambda x, labels=None: self.distribution.log_prob(x, labels=labels), reduce_retracing=True
      )
    values = []
    for i, batch in enumerate(batches):
      images, labels, _ = keras.utils.unpack_x_y_sample_weight(batch)
      images = self._check_images(images)
      labels = self._check_labels(labels, required=True)
      log_p = dequant.importance_weighted_log_prob(
        self._tfp.iw_log_prob,
        images,
        self.n_bins,
        int(samples),
        self.dequantizer,
        seed=None if seed is None else tf.constant([seed, i], tf.int32),
        labels=labels,
        max_images=max_images,
        dtype=self.glow.dtype,
      )
      values.append(self.bits_per_dim(log_p).numpy())
    bpd = np.concatenate(values) if values else np.zeros([0], np.float32)
    return bpd if per_image else float(np.mean(bpd))

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
  def metrics(self):
    return [*self._step_metrics(), self.skip_tracker]

  @tf.autograph.experimental.do_not_convert  # faster tracing (see Glow._encode_4d)
  def train_step(self, data):
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
    # Only first-order parameter gradients are taken here: the fast level gradient needs no questions.
    with tf.GradientTape() as tape, first_order_training(self._training_gradient):
      losses, bpd, labels, logits = self._loss_terms_of(images, labels)
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
    ok = guard.all_replicas_agree(valid & guard.all_finite([loss] if mixed else [loss, *grads]))
    guard.apply_if(self.optimizer, ok, grads, self.trainable_variables)
    self.skip_causes.update(finite, in_range, labels_ok, ok)
    self.skip_tracker.update_state(tf.cast(~ok, tf.float32) / replicas)  # the Sum adds up over replicas
    logs = self._record_metrics(losses, bpd, labels, logits, weights * tf.cast(ok, weights.dtype))
    return {**logs, 'skipped_steps': self.skip_tracker.result()}

  @tf.autograph.experimental.do_not_convert
  def test_step(self, data):
    images, labels, weights = model_inputs.unpack(data, self.image_shape)
    weights = self._image_weights(weights, images)
    images = self._check_images(images)
    labels = self._check_labels(labels, required=True)
    return self._record_metrics(*self._loss_terms_of(images, labels), weights)

  @tf.autograph.experimental.do_not_convert
  def predict_step(self, data):
    """log p(x) [N] (nats) of a batch for `predict`: images, or (images, labels) for a conditional model
    (Keras' own predict_step would drop the labels). Keras hands numpy (images, labels) to us as one
    input tuple, a Dataset's (images, labels) as x and y: both mean the same."""
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    if labels is None and isinstance(images, (tuple, list)) and len(images) == 2:
      images, labels = images
    return self.log_prob(images, labels)

  def call(self, inputs):
    """log p(x) [N] per image (nats); `inputs` is images, or (images, labels) for a conditional model."""
    images, labels = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
    return self.log_prob(images, labels)

  # ---- user-facing density and sampling ------------------------------------------------------

  # Each call checks its arguments here, in Python (errors raised before any tracing), then runs one
  # cached tf.function (`tfp_glow.training.compiled`: traced once, reused for any n, batch, temperature
  # or labels). Inside a graph (a Keras `predict`, the user's own tf.function) it runs inline instead.

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def log_prob(self, images, labels=None) -> tf.Tensor:
    """log p(x) [N] of images [N, H, W, C] in [-0.5, 0.5) (continuous density)."""
    images = self._check_images(images)
    labels = self._check_labels(labels, required=True)
    per_image = _per_image_labels(labels, int(images.shape[0])) if use_compiled() else False
    if per_image is False:  # inside a graph, or labels to broadcast as TFP does (or to refuse)
      return self.distribution.log_prob(images, labels=labels)
    return self._tfp.calls.log_prob(images, per_image)

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def sample(
    self,
    n: int | tf.Tensor,
    temperature: float | tf.Tensor = 1.0,
    labels=None,
    as_uint8: bool = True,
    seed=None,
    batch_size: int | None = None,
  ) -> tf.Tensor:
    """n images at a temperature (T = 0.7 looks best in the paper): uint8 [n, H, W, C] in
    0..255 (quantized to n_bins levels), or floats in the model's [-0.5, 0.5) scale.

    n: a Python integer or a scalar integer tensor (as TFP's `sample`). The images are drawn
    `batch_size` at a time (default: about 4M pixels a batch, see `sample_batch_size`), so memory
    stays bounded whatever n; with a `seed` (TFP's stateless seed, e.g. (1, 2)) the result is
    reproducible, and for n <= batch_size equals `distribution.sample(n, temperature=T, seed=seed)`
    (larger n: batch i uses the seed folded with i)."""
    n = _sample_count(n)
    temperature = _sample_temperature(temperature)
    labels = self._check_labels(labels, required=True, batch=n)
    if not use_compiled():  # inside a graph (n may be symbolic) or under a tape: one uncompiled batch
      x = self.distribution.sample(n, temperature=temperature, labels=labels, seed=seed)
      return glow_data.to_uint8(x, self.n_bins) if as_uint8 else x
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
      raise ValueError(f'sample: batch_size must be an integer >= 1, got {batch_size!r}.')
    batch = int(batch_size or self.sample_batch_size)
    seed = None if seed is None else tfp.random.sanitize_seed(seed)
    temperature = tf.constant(temperature, self.glow.dtype)
    parts = []
    for i, start in enumerate(range(0, max(n, 1), batch)):  # n = 0: one empty batch
      m = min(batch, n - start)
      batch_seed = seed if seed is None or n <= batch else tf.random.experimental.stateless_fold_in(seed, i)
      batch_labels = None if labels is None else labels[start : start + m]
      parts.append(self._tfp.calls.sample(tf.constant(m), temperature, batch_labels, batch_seed, as_uint8))
    return parts[0] if len(parts) == 1 else tf.concat(parts, 0)

  @property
  def sample_batch_size(self) -> int:
    """How many images `sample` draws per batch by default: about 2**22 pixels (H * W * C each),
    at most 1024 (a 32x32x3 model: 1024; 256x256x3: 21)."""
    return max(1, min(1024, 2**22 // self.num_dims))

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def encode(self, images, labels=None) -> list[tf.Tensor]:
    """Images [N, H, W, C] -> per-level latents [eps_1, ..., eps_L]."""
    images = self._check_images(images)
    labels = self._check_labels(labels, required=True)
    per_image = _per_image_labels(labels, int(images.shape[0])) if use_compiled() else False
    if per_image is False:
      return self.distribution.encode(images, labels)
    return self._tfp.calls.encode(images, per_image)

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def decode(self, latents, labels=None) -> tf.Tensor:
    """Per-level latents -> images [N, H, W, C] (floats, model scale). Latents are not data: any real
    values, not checked (NaN in, NaN out; a diverged model's round trip must still run)."""
    labels = self._check_labels(labels, required=True)
    if use_compiled():
      latents = [tf.convert_to_tensor(z, self.glow.dtype) for z in latents]
      shapes = [tuple(z.shape) for z in latents]
      n = shapes[0][0] if shapes and len(shapes[0]) == 4 else None
      expected = [(n, *s) for s in self.glow.latent_shapes]
      per_image = _per_image_labels(labels, n)
      if n is not None and shapes == expected and per_image is not False:
        return self._tfp.calls.decode(latents, per_image)
    return self.distribution.decode(latents, labels)  # any error names the expected shapes

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def interpolate(self, image_a, image_b, steps: int = 8, labels=None) -> tf.Tensor:
    """Decodes `steps` points on the straight line between the latents of two images [H, W, C]."""
    if not isinstance(steps, int) or steps < 2:
      raise ValueError(f'interpolate: steps must be an integer >= 2, got {steps!r}.')
    pair = self._check_images(tf.stack([image_a, image_b]))
    pair_labels = self._check_labels(None if labels is None else tf.reshape(labels, [2]), required=True)
    if use_compiled():
      return self._tfp.calls.interpolate(pair, tf.constant(steps), pair_labels)
    latents = self.encode(pair, pair_labels)
    t = tf.linspace(0.0, 1.0, steps)
    t = tf.cast(tf.reshape(t, [steps, 1, 1, 1]), latents[0].dtype)
    mixed = [z[:1] * (1 - t) + z[1:] * t for z in latents]
    mixed_labels = None
    if pair_labels is not None:  # labels follow the nearer end
      mixed_labels = tf.where(tf.reshape(t, [-1]) < 0.5, pair_labels[0], pair_labels[1])
    return self.decode(mixed, mixed_labels)

  # ---- files ----------------------------------------------------------------------------------

  def save(self, filepath, overwrite=True, **kwargs):
    """`keras.Model.save`, written atomically (a temporary file renamed into place, so a kill
    leaves the previous file intact); refuses NaN / Inf weights (a diverged model), and any name
    but NAME.keras (the legacy .h5 format cannot hold a GlowModel's state)."""
    self._check_finite_weights(filepath)
    if not isinstance(filepath, (str, os.PathLike)) or kwargs.get('zipped') is False:
      return super().save(filepath, overwrite=overwrite, **kwargs)
    path = os.fspath(filepath)
    if not path.endswith('.keras'):
      legacy = path.endswith(('.h5', '.hdf5'))
      raise ValueError(
        f'GlowModel.save: {path!r}: '
        + (
          'the legacy HDF5 format cannot be loaded back; ' if legacy else 'a model file must end in .keras; '
        )
        + f'use {os.path.splitext(path)[0] if legacy else path}.keras (or save_weights(NAME.weights.h5)).'
      )
    if not overwrite and tf.io.gfile.exists(path):
      return super().save(filepath, overwrite=False, **kwargs)  # Keras asks the user
    with atomic.replacing(path) as tmp, _naming(tmp, path):
      super().save(tmp, overwrite=True, **kwargs)

  def save_weights(self, filepath, overwrite=True, max_shard_size=None):
    """`keras.Model.save_weights`, written atomically; refuses NaN / Inf weights."""
    self._check_finite_weights(filepath)
    if max_shard_size is not None or not isinstance(filepath, (str, os.PathLike)):
      return super().save_weights(filepath, overwrite=overwrite, max_shard_size=max_shard_size)
    if not overwrite and tf.io.gfile.exists(os.fspath(filepath)):
      return super().save_weights(filepath, overwrite=False)
    if not os.fspath(filepath).endswith('.weights.h5'):
      raise ValueError(f'GlowModel.save_weights: {os.fspath(filepath)!r} must end in .weights.h5.')
    with atomic.replacing(filepath) as tmp, _naming(tmp, os.fspath(filepath)):
      super().save_weights(tmp, overwrite=True)

  def load_weights(self, filepath, skip_mismatch=False, **kwargs):
    """`keras.Model.load_weights`; a file of another layout leaves the weights as they were (Keras would
    have loaded the parts that match) and gets an error that says what may be wrong."""
    before = [v.numpy() for v in self.weights]
    try:
      return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
    except ValueError as e:
      for v, value in zip(self.weights, before):
        v.assign(value)
      raise ValueError(
        f'GlowModel: {os.fspath(filepath)!r} does not match this model: build the model with the settings it '
        'was saved with (image shape, levels, steps, width, coupling, permutation, classes). Files written '
        "before tfp_glow stacked each level's step parameters into [K, ...] variables (one variable per step "
        f'and parameter) cannot be loaded. Keras says: {e}'
      ) from e

  def _check_finite_weights(self, filepath) -> None:
    if not guard.finite_weights(self):
      raise guard.NonFiniteWeightsError(
        f'GlowModel: not saving {os.fspath(filepath)!r}: the weights contain NaN or Inf (a diverged model).'
      )

  # ---- export ---------------------------------------------------------------------------------

  def export(self, filepath, format='tf_saved_model', verbose=True, **kwargs):  # pylint: disable=redefined-builtin
    """Writes a SavedModel whose endpoints return what this model's methods return, and check their
    arguments as they do (loadable with `tf.saved_model.load`, without tfp_glow installed):
      log_prob(images [None, H, W, C] float32[, labels [None] int32]) -> [None]         = log_prob
      sample(n [] int32, temperature [] float32[, labels [None] int32]) -> uint8 images   = sample
      sample_floats(n, temperature[, labels]) -> float32 images        = sample(..., as_uint8=False)
    See `tfp_glow.training.export.export_saved_model`.
    """
    from tfp_glow.training.export import export_saved_model  # pylint: disable=import-outside-toplevel

    if format != 'tf_saved_model':
      raise ValueError(f'GlowModel.export supports format="tf_saved_model" only, got {format!r}.')
    export_saved_model(self, filepath, verbose=verbose)

  # ---- input checks (tfp_glow.training.inputs) ----------------------------------------------------

  def _check_images(self, images, check_values: bool = True) -> tf.Tensor:
    validate = check_values and self._glow_config['validate_inputs']
    return model_inputs.check_images(images, self.image_shape, self.glow.dtype, validate)

  def _check_labels(self, labels, required: bool, batch=None, check_values: bool = True):
    validate = check_values and self._glow_config['validate_inputs']
    return model_inputs.check_labels(labels, self.num_classes, required, batch, validate)


# The constructor arguments that GlowModel hands to the Glow bijector unchanged.
_GLOW_ARGS = (
  'image_shape',
  'levels',
  'steps',
  'width',
  'coupling',
  'permutation',
  'learn_top',
  'num_classes',
  'seed',
)


# fit arguments a density model cannot honour (GlowModel.fit refuses them).
_FIT_ARGS_REFUSED = ('class_weight', 'sample_weight')
# The train step's assertion on labels; fit turns it into one ValueError.
_LABEL_ERROR = 'GlowModel: label outside [0, num_classes):'


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


@contextlib.contextmanager
def _naming(tmp: str, path: str):
  """Errors raised while writing `tmp` name the user's `path` instead of the temporary file."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if tmp not in str(e):
      raise
    text = str(e).replace(tmp, path)
    try:
      if isinstance(e, OSError) and e.errno:  # keep errno (ENOSPC, EACCES, ...) for the callers
        filename = path if e.filename == tmp else e.filename
        renamed = type(e)(e.errno, str(e.strerror).replace(tmp, path), filename)
      else:
        renamed = type(e)(text)
    except Exception:  # pylint: disable=broad-except  (an exception class with other arguments)
      renamed = ValueError(text)
    raise renamed from e


def _sample_count(n) -> int | tf.Tensor:
  """`sample`'s n as a Python int >= 0 (a Python integer, or an integer scalar tensor eagerly); a
  symbolic tensor inside a graph passes unchanged."""
  if isinstance(n, tf.Tensor) and n.dtype.is_integer and n.shape.rank == 0:
    if not tf.executing_eagerly():
      return n
    n = int(n.numpy())
  elif isinstance(n, np.ndarray) and n.dtype.kind in 'iu' and n.ndim == 0:
    n = int(n)
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
    raise ValueError(f'sample: n must be an integer >= 0 (or a scalar integer tensor), got {n!r}.')
  return int(n)


def _sample_temperature(temperature) -> float | tf.Tensor:
  """`sample`'s temperature as a Python float, checked: finite and > 0 (eagerly also for a scalar tensor)."""
  if isinstance(temperature, (tf.Tensor, tf.Variable, np.ndarray)):
    if len(temperature.shape) != 0:
      raise ValueError(f'sample: temperature must be a scalar, got shape {tuple(temperature.shape)}.')
    if not tf.executing_eagerly() and isinstance(temperature, tf.Tensor):  # symbolic: a graph assertion
      ok = tf.logical_and(tf.math.is_finite(temperature), temperature > 0)
      return checks.check(temperature, ok, 'sample: temperature must be > 0 and finite, got', temperature)
    temperature = float(np.asarray(temperature))
  if (
    not isinstance(temperature, (int, float, np.number))
    or not temperature > 0
    or not math.isfinite(temperature)
  ):
    raise ValueError(f'sample: temperature must be > 0 and finite, got {temperature!r}.')
  return float(temperature)


def _per_image_labels(labels, n: int | None):
  """(Eagerly) labels as int32 [n] for a compiled call (a scalar label broadcast), None without labels, or
  False when they have another shape (then the uncompiled call raises or broadcasts as TFP does)."""
  if labels is None:
    return None
  if n is None:
    return False
  if labels.shape.rank == 0:
    return tf.fill([n], labels)
  if labels.shape.rank == 1 and labels.shape[0] == n:
    return labels
  return False


class _Untracked:
  """Holds objects as plain Python attributes that Keras and TF checkpointing do not walk."""

  def __init__(self, **objects):
    self.__dict__.update(objects)
