"""GlowModel: Glow as a Keras 3 model, trained with `fit` on the negative log-likelihood in bits/dim.

Composed as Keras composes keras.Model (which inherits its Trainer): this module holds the construction, the
config and the properties; the rest comes from one mixin per concept:
  trainer.py        Trainer       fit, evaluate, compile, train_step / test_step / predict_step, the loss
                                  (bits_per_dim), the metrics, per-image weights
  public_calls.py   PublicCalls   log_prob, sample, encode, decode, interpolate, evaluate_bits_per_dim
                                  (compiled.py holds their cached tf.functions)
  files.py          Files         save, save_weights, load_weights, export
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import dequantization as dequant
from tfp_glow.bijectors.conditioners import conditioner_from, settings_of
from tfp_glow.distribution import GlowDistribution
from tfp_glow.flow.glow import Glow
from tfp_glow.flow.gradients import check_gradient
from tfp_glow.training import guard
from tfp_glow.training import inputs as model_inputs
from tfp_glow.training.compiled import CompiledCalls
from tfp_glow.training.files import Files
from tfp_glow.training.public_calls import PublicCalls
from tfp_glow.training.trainer import Trainer


@keras.saving.register_keras_serializable(package='tfp_glow')
class GlowModel(Trainer, PublicCalls, Files, keras.Model):
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
  Conditioners (`conditioner`, `conditioner_settings`): 'conv' (default) or 'transformer' (`tfp_glow.Glow`).

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
    conditioner: str = 'conv',
    conditioner_settings: dict | None = None,
    **kwargs,
  ):
    config = {k: v for k, v in locals().items() if k not in ('self', 'kwargs', '__class__')}
    # saved by name and settings (tfp_glow.bijectors.conditioners); a config without them loads as 'conv'
    config['conditioner'], config['conditioner_settings'] = settings_of(
      conditioner_from(conditioner, conditioner_settings)
    )
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
  'conditioner',
  'conditioner_settings',
)


class _Untracked:
  """Holds objects as plain Python attributes that Keras and TF checkpointing do not walk."""

  def __init__(self, **objects):
    self.__dict__.update(objects)
