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

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import dequantization as dequant
from tfp_glow.distribution import GlowDistribution
from tfp_glow.flow import choices
from tfp_glow.flow.glow import Glow
from tfp_glow.flow.seeding import initializers_seeded_by
from tfp_glow.specs import CouplingSpec, ModelSpec, SpecError, field_defaults, upgrade
from tfp_glow.training import guard
from tfp_glow.training import inputs as model_inputs
from tfp_glow.training.compiled import CompiledCalls
from tfp_glow.training.files import Files
from tfp_glow.training.public_calls import PublicCalls
from tfp_glow.training.trainer import Trainer

_DEFAULTS = field_defaults(ModelSpec)  # the defaults of GlowModel's settings: ModelSpec's (tfp_glow.specs)


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
  `class_loss_weight` * cross-entropy in bits (the reference's ycond and weight_y = 0.01). With `class_context=E`
  a learned class embedding [num_classes, E] is also every coupling's conditioner context (`tfp_glow.flow.context`).

  Dequantization (tfp_glow.dequantization): 'uniform' (the paper: the data pipeline's u ~ U[0, 1)), or
  'variational': the loss recovers each image's bins and draws u ~ q(u|x), a small conditional flow
  (`self.dequantizer`, trained jointly), for the bound mean_n (-(log p(x_n + u) - log q(u|x_n)) + D log(n_bins))
  / (D ln 2), the same bits/dim formula. `evaluate_bits_per_dim(data, samples=S)`: the importance-weighted
  estimate, for either.

  Couplings (`coupling`): 'affine' (the paper's), 'additive', or 'spline' (rational-quadratic, Durkan et al.
  2019, `tfp_glow.bijectors.transforms.Spline`); see `tfp_glow.Glow` and docs/design.md, "Couplings".
  Conditioners (`conditioner`, `conditioner_settings`): 'conv' (default), 'transformer' (`tfp_glow.Glow`), or your
  own registered Keras layer, `conditioner=tfp_glow.bijectors.conditioners.KerasLayer(MyNet(...))` ('keras').
  Or the whole coupling as one `tfp_glow.specs.CouplingSpec` (or its dict) in `coupling`.

  Settings: every argument's default and check is `tfp_glow.specs.ModelSpec`'s; `GlowModel.from_spec(spec)`
  builds from one, `model.spec` is the model's, and `get_config()` is `spec.to_dict()` (older configs still load).

  Every parameter of every bijector lives in `self.flow` (one Keras layer), so `fit`,
  `trainable_variables`, `save_weights`, `model.save` and `keras.models.load_model` see them all.
  Actnorm's data-dependent init runs once, before the first training step: call
  `initialize(images)`, or let `fit` do it from the first `init_batch_size` training images.

  Gradients (`tfp_glow.flow.gradients`): the training step differentiates each level with `gradient`
  (default 'stored', the fast hand-built first-order gradient; 'inverse' stores nothing, so training
  memory does not grow with the depth K; 'checkpoint'; 'autodiff'), and says that it takes first-order
  parameter gradients only. Everything else (`log_prob`, `distribution`, your own tapes) uses
  TensorFlow's own gradient, so Jacobians, second order and forward mode work as for any TF function.
  `memory_saving=True` / 'inverse' / 'checkpoint' is the older spelling (deprecated: a DeprecationWarning). Mixed precision: set a Keras policy
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
    image_shape: Sequence[int] | None = None,
    levels: int = _DEFAULTS['levels'],
    steps: int = _DEFAULTS['steps'],
    width: int = _DEFAULTS['width'],
    coupling: str | CouplingSpec | dict | Any = _DEFAULTS['coupling'].transform,
    permutation: str = _DEFAULTS['permutation'],
    learn_top: bool = _DEFAULTS['learn_top'],
    num_classes: int | None = _DEFAULTS['num_classes'],
    n_bins: int = _DEFAULTS['n_bins'],
    class_loss_weight: float = _DEFAULTS['class_loss_weight'],
    init_batch_size: int = _DEFAULTS['init_batch_size'],
    validate_inputs: bool = _DEFAULTS['validate_inputs'],
    max_consecutive_skips: int = _DEFAULTS['max_consecutive_skips'],
    seed: int | None = _DEFAULTS['seed'],
    flow_dtype: str = _DEFAULTS['flow_dtype'],
    memory_saving: bool | str = False,
    gradient: str | None = None,
    dequantization: str = _DEFAULTS['dequantization'],
    conditioner: str | None = None,
    conditioner_settings: dict | None = None,
    *,
    spec: ModelSpec | None = None,
    **kwargs: Any,
  ):
    if spec is None:  # a ModelSpec field without an argument of its own here comes in kwargs
      spec = _spec_of({**locals(), **{k: kwargs.pop(k) for k in list(kwargs) if k in ModelSpec.keys()}})
    elif not isinstance(spec, ModelSpec) or spec.image_shape is None:
      raise ValueError(f'GlowModel: spec must be a ModelSpec with an image_shape, got {spec!r}.')
    else:
      spec = spec.replace(coupling=choices.complete(spec.coupling))
    super().__init__(**kwargs)
    self._spec = spec
    # The training step's gradient; the bijector itself keeps TensorFlow's own ('autodiff').
    self._training_gradient = spec.gradient
    glow = Glow.from_spec(spec.replace(gradient='autodiff'))
    if getattr(glow.conditioner, 'context_size', None) is not None and spec.class_context is None:
      raise ValueError(
        f"GlowModel: context_size={glow.conditioner.context_size}: fit and the model's calls pass no context "
        "of a user's; use class_context=E (a learned class embedding), or the Glow bijector and its "
        'distribution, which take context=.'
      )
    self.flow = glow.layer  # every flow parameter, in one Keras layer
    # The TFP objects hold no variables of their own; keep them out of Keras/TF tracking.
    self._tfp = _Untracked(glow=glow, distribution=GlowDistribution(glow))
    self._tfp.calls = CompiledCalls(self)  # the public calls' tf.functions, traced on first use
    # q(u|x) of variational dequantization (tfp_glow.dequantization); None: the data's uniform noise.
    self.dequantizer = None
    if spec.dequantization == 'variational':
      with initializers_seeded_by(spec.seed, 'dequantizer'):
        self.dequantizer = dequant.VariationalDequantizer(spec.image_shape, spec.n_bins)
    self.classifier = None
    if spec.num_classes:
      self.classifier = keras.layers.Dense(
        spec.num_classes, kernel_initializer='zeros', dtype=spec.flow_dtype, name='class_predictor'
      )
      self.classifier.build((None, glow.levels[-1].shape[-1]))
    self.num_dims = int(np.prod(spec.image_shape))
    self.n_bins = spec.n_bins
    self.loss_tracker = guard.Mean(name='loss')
    self.bpd_tracker = guard.Mean(name='bits_per_dim')
    self.class_tracker = keras.metrics.SparseCategoricalAccuracy(name='class_accuracy')
    self.skip_tracker = guard.Count(name='skipped_steps')  # per epoch, see train_step
    # Why steps were skipped (for the message when too many are); not a weight, not saved.
    self._guard_state = _Untracked(skip_causes=guard.SkipCauses(), packed_inputs={})
    self.built = True

  @classmethod
  def from_spec(cls, spec: ModelSpec, **kwargs: Any) -> GlowModel:
    """The model of a `tfp_glow.specs.ModelSpec` (with its image_shape); kwargs: Keras' (name, ...)."""
    return cls(spec=spec, **kwargs)

  @property
  def spec(self) -> ModelSpec:
    """Every setting of this model (`tfp_glow.specs.ModelSpec`): what get_config saves."""
    return self._spec

  def get_config(self) -> dict:
    return {**super().get_config(), **self._spec.to_dict()}

  @classmethod
  def from_config(cls, config: dict) -> GlowModel:
    """Also a config saved before the spec (flat `conditioner`, `memory_saving`: `tfp_glow.specs.upgrade`),
    without a deprecation warning: the file is not the user's typing."""
    config = upgrade(dict(config), 'GlowModel')
    keras_args = {k: config.pop(k) for k in list(config) if k not in ModelSpec.keys()}
    return cls.from_spec(ModelSpec.from_dict(config, 'GlowModel'), **keras_args)

  @property
  def _glow_config(self) -> dict:
    """The settings by name, for the mixins (trainer.py, ...): `spec` as a dict."""
    return vars(self._spec)  # no copy: read per step by the trainer

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
    return self._spec.dequantization

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

  def initialize(self, images: Any, labels: Any = None) -> None:
    """Actnorm data-dependent init from images [N, H, W, C] in [-0.5, 0.5); a no-op once done."""
    images = self._check_images(images)
    self.glow.initialize(images, self._check_labels(labels, required=False))

  # ---- input checks (tfp_glow.training.inputs) ----------------------------------------------------

  def _check_images(self, images, check_values: bool = True) -> tf.Tensor:
    validate = check_values and self._spec.validate_inputs
    return model_inputs.check_images(images, self.image_shape, self.glow.dtype, validate)

  def _check_labels(self, labels, required: bool, batch=None, check_values: bool = True):
    validate = check_values and self._spec.validate_inputs
    return model_inputs.check_labels(labels, self.num_classes, required, batch, validate)


def _spec_of(arguments: dict) -> ModelSpec:
  """GlowModel's arguments -> its ModelSpec (each argument checked there, said as GlowModel's); the older
  spellings (`conditioner` beside a transform name, `memory_saving`) folded in."""
  args = {k: v for k, v in arguments.items() if k in ModelSpec.keys()}
  args['coupling'] = choices.resolve_coupling(
    args['coupling'], arguments['conditioner'], arguments['conditioner_settings'], 'GlowModel'
  )[2]
  if args['coupling'] is None:
    raise ValueError(
      'GlowModel: coupling must be a name, a transform instance or a CouplingSpec (a GlowBijector '
      'class cannot be saved with the model; use tfp_glow.Glow for one).'
    )
  gradient = choices.deprecated_memory_saving(arguments['gradient'], arguments['memory_saving'], 'GlowModel')
  args['gradient'] = gradient or _DEFAULTS['gradient']
  if args['image_shape'] is None:
    raise SpecError('GlowModel', 'image_shape', '(H, W, C) positive integers', None)
  if isinstance(args['image_shape'], (tuple, list)):
    args['image_shape'] = tuple(int(d) if hasattr(d, '__index__') else d for d in args['image_shape'])
  return ModelSpec.create('GlowModel', **args)


class _Untracked:
  """Holds objects as plain Python attributes that Keras and TF checkpointing do not walk."""

  def __init__(self, **objects: Any) -> None:
    self.__dict__.update(objects)

  def __getattr__(self, name: str) -> Any:  # for type checkers: the attributes are set above
    raise AttributeError(name)
