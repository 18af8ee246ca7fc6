"""The multi-scale Glow bijector: standard-normal latent -> image."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfp_glow import checks
from tfp_glow.bijectors import conditioners
from tfp_glow.bijectors.actnorm import ActNorm
from tfp_glow.bijectors.base import GlowBijector, LayerGroup, ValueAndLogDet, check_images
from tfp_glow.bijectors.split import SplitPrior
from tfp_glow.bijectors.squeeze import Squeeze
from tfp_glow.flow import choices
from tfp_glow.flow import context as flow_context
from tfp_glow.flow.encoding import Encoding
from tfp_glow.flow.gradients import check_gradient, encode_level
from tfp_glow.flow.level import Level, NetworkFn, build_levels
from tfp_glow.flow.seeding import initializers_seeded_by
from tfp_glow.specs import CouplingSpec, ModelSpec, field_defaults

_DEFAULTS = field_defaults(ModelSpec)  # the defaults of Glow's settings: ModelSpec's (tfp_glow.specs)
# The ModelSpec fields that are Glow's arguments of the same name.
_SPEC_ARGS = tuple('levels steps width coupling permutation learn_top num_classes seed class_context'.split())


class Glow(GlowBijector):
  """Glow (Kingma & Dhariwal 2018): the multi-scale flow as one TFP bijector.

  Maps a standard-normal latent eps [..., H, W, C] to an image x [..., H, W, C] (forward), and back
  (inverse). Image -> latent, per level l = 1..L:
    h = squeeze(h)                                       [h, w, c] -> [h/2, w/2, 4c]
    K times: h = coupling(permutation(actnorm(h)))        log-dets add up
    l < L:  h, z_l = h[..., :c/2], h[..., c/2:];  eps_l = (z_l - mean(h)) / exp(log_std(h))
    l = L:  eps_L = (h - mean_top[label]) / exp(log_std_top[label])
  The eps_l, flattened and concatenated in level order, reshaped to [H, W, C], are the latent. Every
  prior is inside the bijector, so the base distribution is N(0, I) and scaling eps by T samples
  every level's prior at temperature T.

  Args (names and defaults after the reference code):
    image_shape: (H, W, C); H and W divisible by 2**levels.
    levels: L. steps: K per level. width: the coupling networks' hidden channels.
    coupling: the whole coupling as a `tfp_glow.specs.CouplingSpec` (its transform and conditioner with their
      settings, e.g. CouplingSpec('spline', {'bins': 8}, 'transformer', {'depth': 4})) or its dict; or the
      coupling's elementwise transform (`tfp_glow.bijectors.transforms`): 'affine' (the paper's,
      scale = sigmoid(raw + 2)), 'additive', 'spline' (rational-quadratic, Durkan et al. 2019), or an instance
      with settings (`transforms.Spline(bins=8)`); or a GlowBijector subclass (see docs/design.md, "Adding a
      layer"). Defaults here and below: `tfp_glow.specs.ModelSpec`'s (`Glow.from_spec` builds from one).
    permutation: 'conv_lu' (LU 1x1 conv), 'conv' (full 1x1 conv), 'shuffle' or 'reverse', or a subclass.
    learn_top: learn the top prior's per-channel mean and log-std (else N(0, 1)).
    num_classes: if set, the top prior is class-conditional: pass `labels=` (int [...]) to
      forward/inverse/log_prob/sample.
    coupling_network: optional (in_channels, out_channels) -> Keras layer, replacing the default.
    conditioner: the built-in coupling's network (`tfp_glow.bijectors.conditioners`): 'conv' (the paper's,
      `width` hidden channels; None: the coupling spec's, 'conv') or 'transformer' (a ViT on patches,
      Jet-style), or an instance with settings.
    conditioner_settings: a named conditioner's settings as one dict, e.g. {'depth': 2, 'width': 128,
      'heads': 4, 'patch_size': 2} (`conditioners.Transformer`); each level's size must be divisible by
      patch_size. With {'context_size': E} every coupling also takes `context=` [N, E] (`tfp_glow.flow.context`).
    class_context: E: a learned class embedding [num_classes, E] is every coupling's context (c = emb[labels]).
    seed: seeds every random initial value (rotations, shuffles, the conditioners' weights); None: random.
    dtype: tf.float32 or tf.float64.
    gradient: how each level is differentiated image -> latent (`tfp_glow.flow.gradients`): 'autodiff'
      (default: TensorFlow's own gradient, every autodiff mode), 'stored' (a hand-built first-order
      gradient, faster), 'checkpoint' (stores each step's input only) or 'inverse' (stores nothing:
      memory independent of K). The last three step aside to 'autodiff' wherever a higher order or
      forward mode is asked for.
    memory_saving: deprecated (a DeprecationWarning): True or 'inverse' -> gradient='inverse', 'checkpoint'.
    validate_args: refuse NaN / Inf in images (inverse, encode, initialize) and latents (forward,
      decode) with an InvalidArgumentError. Never a range check: values are any reals.

  Parameters: `glow.layer` is one Keras layer holding every parameter (give it to a Keras model);
  `glow.trainable_variables` lists the same variables for TFP-style training.
  """

  def __init__(
    self,
    image_shape: Sequence[int],
    levels: int = _DEFAULTS['levels'],
    steps: int = _DEFAULTS['steps'],
    width: int = _DEFAULTS['width'],
    coupling: str | CouplingSpec | dict | Any = _DEFAULTS['coupling'].transform,
    permutation: str = _DEFAULTS['permutation'],
    learn_top: bool = _DEFAULTS['learn_top'],
    num_classes: int | None = _DEFAULTS['num_classes'],
    coupling_network: NetworkFn | None = None,
    seed: int | None = _DEFAULTS['seed'],
    dtype: tf.DType = tf.float32,
    gradient: str | None = None,
    memory_saving: bool | str = False,
    validate_args: bool = False,
    name: str = 'glow',
    *,
    conditioner: str | conditioners.Conditioner | None = None,
    conditioner_settings: dict | None = None,
    class_context: int | None = _DEFAULTS['class_context'],
  ):
    parameters = dict(locals())
    dtype = tf.as_dtype(dtype)
    coupling, conditioner, spec = choices.resolve_coupling(coupling, conditioner, conditioner_settings)
    takes_context = coupling_network is None and spec is not None  # the built-in coupling's conditioner
    self._conditioner = flow_context.conditioner_for(conditioner, class_context, num_classes, takes_context)
    self._coupling_spec = spec and choices.complete(spec, coupling, self._conditioner)
    self._gradient = check_gradient(choices.deprecated_memory_saving(gradient, memory_saving, 'Glow'))
    self._image_shape = choices.check_config(
      image_shape, levels, steps, width, permutation, num_classes, dtype
    )
    self._num_classes = num_classes
    # What every level's steps share (a GlowBijector class as coupling has no spec: the channel split).
    # seed None: numpy's global stream, so that `keras.utils.set_random_seed` fixes the rotations too
    rng = np.random.default_rng(np.random.randint(2**31) if seed is None else seed)
    shared = (steps, width, coupling, permutation, coupling_network, rng, dtype)
    split = self._coupling_spec.split if self._coupling_spec else 'channel'
    with initializers_seeded_by(seed):  # a seeded Glow's weights are the same in every process
      self._levels = build_levels(
        self._image_shape, levels, (*shared, self._conditioner), split, num_classes, learn_top
      )
      self._conditioning = flow_context.Conditioning(
        num_classes, class_context, self._conditioner, dtype, name
      )
    self._squeeze = Squeeze(2, dtype=dtype)
    # tf.Module finds sub-bijectors (and their tf.Variables) in this flat list.
    self._bijectors = [b for lv in self._levels for s in lv.steps for b in s.bijectors()]
    self._bijectors += [lv.exit for lv in self._levels if lv.exit is not None]
    layers = list({id(b.layer): b.layer for b in self._bijectors}.values())  # a stack's layer once
    layer = LayerGroup(layers + self._conditioning.layers, dtype, name)  # + the class embedding, if any
    super().__init__(
      layer=layer,
      channels=self._image_shape[-1],
      dtype=dtype,
      validate_args=validate_args,
      parameters=parameters,
      name=name,
    )

  @classmethod
  def from_spec(cls, spec: ModelSpec, **kwargs: Any) -> Glow:
    """The Glow of a `tfp_glow.specs.ModelSpec` (image_shape set); differentiated with `spec.gradient`.
    kwargs: Glow's other arguments (validate_args, name, coupling_network, ...)."""
    args = {k: getattr(spec, k) for k in _SPEC_ARGS}
    return cls(spec.image_shape, **args, dtype=tf.as_dtype(spec.flow_dtype), gradient=spec.gradient, **kwargs)

  # ---- properties ----------------------------------------------------------------------------

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self._image_shape

  @property
  def num_classes(self) -> int | None:
    return self._num_classes

  @property
  def conditioner(self) -> conditioners.Conditioner:
    """The built-in coupling's conditioner spec (`tfp_glow.bijectors.conditioners`)."""
    return self._conditioner

  @property
  def coupling_spec(self) -> CouplingSpec | None:
    """The coupling's spec (transform, conditioner, their settings); None for a GlowBijector class."""
    return self._coupling_spec

  @property
  def gradient(self) -> str:
    """How each level is differentiated: one of `tfp_glow.flow.gradients.GRADIENTS`."""
    return self._gradient

  @property
  def memory_saving(self) -> str | None:
    """The older spelling of `gradient`: 'inverse' or 'checkpoint', else None."""
    return self._gradient if self._gradient in ('inverse', 'checkpoint') else None

  @property
  def levels(self) -> tuple[Level, ...]:
    return tuple(self._levels)

  @property
  def latent_shapes(self) -> list[tuple[int, int, int]]:
    """Per level, the shape [h_i, w_i, c_i] of the latent it emits (the top one last)."""
    return [lv.latent_shape for lv in self._levels]

  @property
  def actnorms(self) -> list[ActNorm]:
    return [s.actnorm for lv in self._levels for s in lv.steps]

  @property
  def is_initialized(self) -> tf.Tensor:
    """True once every actnorm has had its data-dependent initialization."""
    flags = {id(a.layer): a.layer.initialized for a in self.actnorms}.values()  # a stack's flags once
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.convert_to_tensor(f)) for f in flags]))

  # ---- data-dependent init ---------------------------------------------------------------------

  def initialize(self, images: tf.Tensor, labels: tf.Tensor | None = None, context: Any = None) -> None:
    """Actnorm data-dependent init from a batch of images [N, H, W, C] (the reference uses 256).

    Runs the flow image -> latent; each actnorm, in order, is initialized from the activations it
    sees, which already pass through the initialized layers before it. Idempotent; plain variable
    assignments, so it works eagerly, in `tf.function`, and once in cross-replica context.
    """
    images = self._check_image_input(tf.convert_to_tensor(images, dtype=self.dtype))
    images, labels = tf.reshape(images, [-1, *self._image_shape]), _flat(labels)
    initialize = lambda x, y, c: self._encode_4d(x, y, initialize=True, context=c).log_det  # noqa: E731
    # Eagerly, as one graph: TensorFlow's per-op dispatch would otherwise run K steps' ops one by one
    # (1.6 s at K=32, against 0.5 s traced). The assignments are the same either way.
    run = tf.function(initialize, autograph=False) if tf.executing_eagerly() else initialize
    run(images, labels, context)

  # ---- encode / decode -------------------------------------------------------------------------

  def encode_with_log_det(
    self,
    images: tf.Tensor,
    labels: tf.Tensor | None = None,
    training_gradient: str | None = None,
    context: Any = None,
  ) -> Encoding:
    """Image [N, H, W, C] -> per-level latents, the log-det, and the top activations. `training_gradient`:
    a training step's first-order-only gradient, used instead of `gradient` (`gradients.encode_level`)."""
    images = self._check_image_input(tf.convert_to_tensor(images, dtype=self.dtype))
    if images.shape.rank != 4:
      raise ValueError(f'{self.name}: encode expects images [N, H, W, C], got {images.shape}.')
    return self._encode_4d(images, labels, training_gradient=training_gradient, context=context)

  def encode(self, images: tf.Tensor, labels: Any = None, context: Any = None) -> list[tf.Tensor]:
    """Image [N, H, W, C] -> [eps_1, ..., eps_L], eps_i [N, h_i, w_i, c_i] (standardized)."""
    return self.encode_with_log_det(images, labels, context=context).latents

  def decode(self, latents: Sequence[tf.Tensor], labels: Any = None, context: Any = None) -> tf.Tensor:
    """[eps_1, ..., eps_L] (as from `encode`) -> images [N, H, W, C]."""
    if len(latents) != len(self._levels):
      raise ValueError(
        f'{self.name}: decode expects {len(self._levels)} latents (one per level), got {len(latents)}.'
      )
    latents = [tf.convert_to_tensor(z, dtype=self.dtype) for z in latents]
    for z, shape in zip(latents, self.latent_shapes):
      if z.shape.rank != 4 or tuple(z.shape[1:]) != shape:
        raise ValueError(
          f'{self.name}: expected latents of shapes [N, *{self.latent_shapes}], '
          f'got {[tuple(t.shape) for t in latents]}.'
        )
    latents = [self._check_finite(z, 'latents') for z in latents]
    return self._decode_4d(latents, labels, context)[0]

  # ---- the two directions on 4-D tensors ---------------------------------------------------------

  # Plain Python loops over layers, no tensor-dependent control flow: AutoGraph has nothing to convert,
  # and skipping its source transformation makes tracing a training step ~2.5x faster.
  @tf.autograph.experimental.do_not_convert
  def _encode_4d(self, x, labels=None, initialize=False, training_gradient=None, context=None) -> Encoding:
    h, log_det = x, tf.zeros(tf.shape(x)[:1], self.dtype)
    latents = []
    context = self._conditioning.context_of(x, labels, context)  # labels checked too
    for level in self._levels:
      h = self._squeeze.inverse_and_log_det(h)[0]
      # Each actnorm is initialized from the activations of the (initialized) steps before it.
      if initialize:
        h, ld = level.steps.initialize(h, context)
      else:
        h, ld = encode_level(level.steps, h, self._gradient, training_gradient, context)
      log_det += ld
      top = h
      if isinstance(level.exit, SplitPrior):
        h, ld = level.exit.inverse_and_log_det(h)
        log_det += ld
        stay = h.shape[-1] // 2
        h, eps = tf.split(h, [stay, h.shape[-1] - stay], axis=-1)  # one concat as gradient
      elif level.exit is not None:
        eps, ld = level.exit.inverse_and_log_det(h, labels=labels)
        log_det += ld
      else:
        eps = h
      latents.append(eps)
    return Encoding(latents, log_det, top)

  @tf.autograph.experimental.do_not_convert
  def _decode_4d(self, latents, labels=None, context=None) -> ValueAndLogDet:
    context = self._conditioning.context_of(latents[0], labels, context)
    log_det = tf.zeros(tf.shape(latents[0])[:1], self.dtype)
    h = None
    for level, eps in reversed(list(zip(self._levels, latents))):
      if isinstance(level.exit, SplitPrior):
        h, ld = level.exit.forward_and_log_det(tf.concat([h, eps], axis=-1))
        log_det += ld
      elif level.exit is not None:
        h, ld = level.exit.forward_and_log_det(eps, labels=labels)
        log_det += ld
      else:
        h = eps
      h, ld = level.steps.decode(h, context)
      log_det += ld
      h = self._squeeze.forward_and_log_det(h)[0]
    return h, log_det

  def join_latents(self, latents: Sequence[tf.Tensor]) -> tf.Tensor:
    """Per-level latents [N, h_i, w_i, c_i] -> the bijector's latent [N, H, W, C] (flattened, concatenated)."""
    n = tf.shape(latents[0])[:1]
    flat = tf.concat([tf.reshape(z, tf.concat([n, [-1]], 0)) for z in latents], axis=-1)
    return tf.reshape(flat, tf.concat([n, self._image_shape], 0))

  def split_latent(self, eps: tf.Tensor) -> list[tf.Tensor]:
    """The bijector's latent [N, H, W, C] -> per-level latents [N, h_i, w_i, c_i] (`join_latents`' inverse)."""
    n = tf.shape(eps)[:1]
    sizes = [int(np.prod(s)) for s in self.latent_shapes]
    parts = tf.split(tf.reshape(eps, tf.concat([n, [-1]], 0)), sizes, axis=-1)
    return [tf.reshape(p, tf.concat([n, s], 0)) for p, s in zip(parts, self.latent_shapes)]

  def inverse_and_log_det(self, x: tf.Tensor, labels: Any = None, context: Any = None) -> ValueAndLogDet:
    x = self._check_image_input(x)
    enc = self._encode_4d(x, labels, context=context)
    return self.join_latents(enc.latents), enc.log_det

  def forward_and_log_det(self, eps: tf.Tensor, labels: Any = None, context: Any = None) -> ValueAndLogDet:
    eps = self._check_image_input(eps, 'latents')
    return self._decode_4d(self.split_latent(eps), labels, context)

  def _check_image_input(self, images, what='images') -> tf.Tensor:
    """Shape and dtype errors now; with validate_args, `images` checked finite (no range: any real values)."""
    check_images(images, self.dtype, self.name)
    if tuple(images.shape[-3:]) != self._image_shape:
      raise ValueError(
        f'{self.name}: expected {what} of shape [..., '
        f'{", ".join(map(str, self._image_shape))}], got {images.shape}.'
      )
    return self._check_finite(images, what)

  def _check_finite(self, x, what='images') -> tf.Tensor:
    """With validate_args, `x` refused (InvalidArgumentError) if it holds NaN or Inf; use the returned tensor."""
    if not self.validate_args:
      return x
    return checks.all_finite(x, f'{self.name}: the {what} contain NaN or Inf.')


def _flat(labels):
  return None if labels is None else tf.reshape(labels, [-1])
