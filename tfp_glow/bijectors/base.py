"""The base class of every tfp_glow bijector.

Three things every Glow layer needs, and TFP's `Bijector` does not give on its own:

1. Parameters that both TFP and Keras 3 see. Each bijector's parameters live in one Keras layer,
   `bijector.layer` (Keras variables, so a `keras.Model` holding the layer trains and saves them).
   Each Keras 3 variable wraps one `tf.Variable`; we keep those in an attribute so that
   `tf.Module`'s variable walk, which TFP bijectors inherit, finds them: `bijector.trainable_variables`
   lists them, also from inside a `tfb.Chain`, for a `GradientTape` loop or `tfp.math.minimize`.
2. One network evaluation per transform-plus-log-det. Subclasses compute the value and the
   log-det together (`forward_and_log_det`, `inverse_and_log_det`, the flow's public protocol);
   TFP's greedy-attribute cache stores the log-det
   beside the value, so `log_prob` (which calls `inverse` and then `inverse_log_det_jacobian`)
   runs the coupling network once.
3. Any batch shape. Events are images `[H, W, C]` with a static shape; batch dimensions, known or
   not (`None` inside `tf.function`, Keras or XLA), are folded into one for the 4-D kernels and
   unfolded after.

Direction, as everywhere in TFP: forward = latent -> image (sampling), inverse = image -> latent
(density). The paper writes each layer in the image -> latent direction, so the paper's formula of a
layer is our `inverse`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, TypeAlias

import keras
import tensorflow as tf
from tensorflow_probability import bijectors as tfb
from tensorflow_probability.python.internal import cache_util

Tensor: TypeAlias = tf.Tensor
# (value, log-det): the log-det has shape [N] (one per image) or [] (the same for every image).
ValueAndLogDet = tuple[Tensor, Tensor]


class GlowBijector(tfb.Bijector):
  """A bijector on images `[..., H, W, C]` whose parameters are owned by a Keras layer.

  The fused value-and-log-det protocol, on 4-D tensors `[N, H, W, C]`, is what `Glow` calls for each
  layer and what a new Glow layer implements (besides the `_forward_event_shape` family of hooks if it
  changes the event shape):

    forward_and_log_det(x, **kwargs) -> (y, log|det dy/dx|)      latent -> image
    inverse_and_log_det(y, **kwargs) -> (x, log|det dx/dy|)      image -> latent (the paper's direction)

  The log-det has shape [N] (one per image) or [] (the same for every image). These are the raw
  kernels: no shape checks, no batch folding, no caching, so they add nothing to the hot path of a
  flow that already checked its input once. TFP's `forward`/`inverse`/`*_log_det_jacobian` are built
  on them (with checks, any batch shape, and the greedy cache), so a subclass gets every TFP method.
  """

  # Store the log-det computed together with the value, keyed on the input (and output) tensor,
  # so that asking for the log-det after the value costs nothing. This is TFP's own mechanism
  # (FFJORD uses it).
  _cache = cache_util.BijectorCacheWithGreedyAttrs(
    forward_name='_augmented_forward', inverse_name='_augmented_inverse'
  )

  def __init__(
    self,
    *,
    layer: keras.layers.Layer | None = None,
    stack: Stack | None = None,
    channels: int | None = None,
    is_constant_jacobian: bool = False,
    dtype: tf.DType = tf.float32,
    validate_args: bool = False,
    parameters: dict[str, Any] | None = None,
    index: int | None = None,
    name: str,
  ):
    # `stack`: this bijector is step k of a stack ((layer, k)), or the first step of a new one (`NewStack`);
    # None: it owns its parameters. Either way the layer comes from the one place that declares them.
    if isinstance(stack, NewStack):
      layer, index = self._parameter_layer(stack.steps, stack.name), 0
    elif stack is not None:
      layer, index = stack
    elif layer is None:
      layer = self._parameter_layer(None, name)
    if parameters is not None and 'stack' in parameters:  # TFP's copy() shares the stack, never rebuilds it
      parameters = {**parameters, 'stack': None if index is None else (layer, index)}
    self._layer = layer
    self._index = index
    self._channels = channels  # the event's C on both sides, checked on every call; None: any
    # The tf.Variables behind the Keras variables, as a plain attribute: this is what
    # `tf.Module.trainable_variables` walks (it does not look inside Keras layers).
    self._tf_variables = tuple(v.value for v in layer.weights) if layer is not None else ()
    super().__init__(
      forward_min_event_ndims=3,
      is_constant_jacobian=is_constant_jacobian,
      validate_args=validate_args,
      dtype=tf.as_dtype(dtype),
      parameters=parameters,
      name=name,
    )

  @property
  def channels(self) -> int | None:
    return self._channels

  @property
  def layer(self) -> keras.layers.Layer | None:
    """The Keras layer that owns this bijector's parameters (None if it has none)."""
    return self._layer

  @property
  def index(self) -> int | None:
    """None: `layer`'s variables are this bijector's parameters. k: `layer` holds the parameters of a
    stack of K such bijectors (a Glow level's steps, each variable [K, ...], see `tfp_glow.flow.stack`)
    and this bijector is step k of it: its parameters are the variables' slices [k]."""
    return self._index

  def _get_parameterization(self) -> Any:
    # TFP keys its cache, `==` and `hash` on this; by default the constructor's arguments. Ours keep their
    # parameters in a Keras layer, not in the arguments: two flows built alike are different functions, and
    # without the layer in the key `b.inverse(x)` would return `a.inverse(x)` from the cache. (A live cache
    # entry holds the bijector, so the layer's id is not reused while it can match.)
    return {'layer': id(self._layer), 'index': self._index, 'arguments': self.parameters}

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    # No batch of bijectors: parameters are per-channel, not per-batch-member, so the
    # bijector's batch shape is [] (TFP derives batch shapes from these properties).
    return {}

  # ---- the fused value-and-log-det path, with batch folding ----------------------------------

  @tf.autograph.experimental.do_not_convert  # no tensor-dependent control flow: faster tracing
  def _fold(self, fn: Callable[..., ValueAndLogDet], x: Tensor, kwargs: dict) -> ValueAndLogDet:
    """Applies a 4-D kernel to `[..., H, W, C]` and restores the batch shape."""
    check_images(x, self.dtype, self.name)
    if self._channels is not None and x.shape[-1] != self._channels:
      raise ValueError(f'{self.name}: expected {self._channels} channels, got shape {x.shape}.')
    if x.shape.rank == 4:  # the common case: no reshapes, fewer ops
      return fn(x, **kwargs)
    batch_shape = tf.shape(x)[:-3]
    x4 = tf.reshape(x, [-1] + x.shape[-3:].as_list())
    # Per-image arguments fold as the images do: labels [...] -> [N], a context [..., E] -> [N, E].
    inner = lambda v: tf.convert_to_tensor(v).shape.as_list()[x.shape.rank - 3 :]  # noqa: E731
    kwargs = {k: (tf.reshape(v, [-1, *inner(v)]) if v is not None else None) for k, v in kwargs.items()}
    y4, ldj = fn(x4, **kwargs)
    y = tf.reshape(y4, tf.concat([batch_shape, y4.shape[1:].as_list()], axis=0))
    if ldj.shape.rank != 0:
      ldj = tf.reshape(ldj, batch_shape)
    return y, ldj

  # ---- TFP hooks -----------------------------------------------------------------------------

  def _augmented_forward(self, x, **kwargs):
    y, fldj = self._fold(self.forward_and_log_det, x, kwargs)
    return y, {'fldj': fldj, 'ildj': -fldj}

  def _augmented_inverse(self, y, **kwargs):
    x, ildj = self._fold(self.inverse_and_log_det, y, kwargs)
    return x, {'ildj': ildj, 'fldj': -ildj}

  def _forward(self, x, **kwargs):
    return self._augmented_forward(x, **kwargs)[0]

  def _inverse(self, y, **kwargs):
    return self._augmented_inverse(y, **kwargs)[0]

  def _forward_log_det_jacobian(self, x, **kwargs):
    cached = self._cache.forward_attributes(x, **kwargs)
    if 'fldj' not in cached:  # the value was not computed from this x yet: compute both once
      cached.update(self._augmented_forward(x, **kwargs)[1])
    return cached['fldj']

  def _inverse_log_det_jacobian(self, y, **kwargs):
    cached = self._cache.inverse_attributes(y, **kwargs)
    if 'ildj' not in cached:
      cached.update(self._augmented_inverse(y, **kwargs)[1])
    return cached['ildj']

  # ---- parameters as arguments: how `tfp_glow.flow.stack.StepStack` runs K steps as one loop ----
  #
  # The stacking protocol (docs/design.md, "Adding a layer"): a layer declares its parameters ONCE, in
  # `_parameter_layer(steps, name)` (one step's, or K steps' stacked [K, ...]), lists them in
  # `parameter_variables()` and computes with them as arguments in `*_and_log_det_with`; its constructor
  # passes `stack=` through. The generic `stacked` then builds a level's K views of one layer.

  def _parameter_layer(self, steps: int | None, name: str) -> keras.layers.Layer | None:
    """The Keras layer that holds this bijector's parameters: one bijector's (`steps` None) or, for a stack,
    K = `steps` bijectors' with a leading [K] axis on every variable. Called from `__init__` after the
    subclass stored its settings. None: no parameters (the default)."""
    del steps, name
    return None

  @classmethod
  def stacked(cls, channels: int, steps: int, **settings: Any) -> list:
    """K = `steps` bijectors of this class (constructor arguments `channels, **settings`, by name) that view
    one layer of stacked parameters ([K, ...], built once by `_parameter_layer(K, name)`): step k is
    `cls(..., name=f'{name}_{k}', stack=(layer, k))` (see `index`). What a Glow level uses."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
      raise ValueError(f'{cls.__name__}.stacked: steps must be an integer >= 1, got {steps!r}.')
    if 'stack' in settings:
      raise ValueError(f'{cls.__name__}.stacked: stack= is set by stacked itself.')
    name = settings.pop('name', None) or _default_name(cls)
    first = cls(channels, **settings, name=f'{name}_0', stack=NewStack(steps, name))
    if first.layer is None:
      raise ValueError(f'{cls.__name__}.stacked: the class declares no parameters (_parameter_layer).')
    views = (cls(channels, **settings, name=f'{name}_{k}', stack=(first.layer, k)) for k in range(1, steps))
    return [first, *views]

  def parameter_variables(self) -> list[keras.Variable] | None:
    """The variables this layer's math reads, in the order that `*_and_log_det_with` takes their
    values (whole: [K, ...] for a step of a stack); None if it cannot take them as arguments (a level
    holding such a layer runs unrolled)."""
    return None

  def current_parameters(self) -> list[Tensor] | None:
    """The values of `parameter_variables()`, sliced at `index` for a step of a stack (None where
    `parameter_variables()` is None)."""
    variables = self.parameter_variables()
    if variables is None:
      return None
    values = [tf.convert_to_tensor(v) for v in variables]
    return values if self._index is None else [v[self._index] for v in values]

  def _read(self, variable) -> Tensor:
    """This bijector's value of `variable` (its slice [index] for a step of a stack)."""
    value = tf.convert_to_tensor(variable)
    return value if self._index is None else value[self._index]

  def _assign(self, variable, value) -> None:
    """Sets this bijector's value of `variable` (only slice [index] for a step of a stack: a whole-variable
    assignment, which works eagerly, in `tf.function` and in a strategy's cross-replica context)."""
    if self._index is not None:
      full = tf.convert_to_tensor(variable)
      value = tf.tensor_scatter_nd_update(full, [[self._index]], tf.cast(value, full.dtype)[tf.newaxis])
    variable.assign(value)

  def inverse_and_log_det_with(self, parameters: list[Tensor], y: Tensor) -> ValueAndLogDet:
    """`inverse_and_log_det` with `parameters` (as from `current_parameters`) in place of this layer's own."""
    raise NotImplementedError(f'{type(self).__name__} does not take its parameters as arguments.')

  def forward_and_log_det_with(self, parameters: list[Tensor], x: Tensor) -> ValueAndLogDet:
    """`forward_and_log_det` with `parameters` (as from `current_parameters`) in place of this layer's own."""
    raise NotImplementedError(f'{type(self).__name__} does not take its parameters as arguments.')

  def forward_and_log_det(self, x: Tensor, **kwargs: Any) -> ValueAndLogDet:
    """Latent -> image on `[N, H, W, C]`: (y, log|det dy/dx|, shape [N] or []). Subclasses implement it,
    or implement `parameter_variables` and `forward_and_log_det_with` (then this calls the latter)."""
    if kwargs or self.parameter_variables() is None:
      raise NotImplementedError(f'{type(self).__name__} does not implement forward_and_log_det.')
    return self.forward_and_log_det_with(self.current_parameters(), x)

  def inverse_and_log_det(self, y: Tensor, **kwargs: Any) -> ValueAndLogDet:
    """Image -> latent on `[N, H, W, C]`: (x, log|det dx/dy|, shape [N] or []). Subclasses implement it,
    or implement `parameter_variables` and `inverse_and_log_det_with` (then this calls the latter)."""
    if kwargs or self.parameter_variables() is None:
      raise NotImplementedError(f'{type(self).__name__} does not implement inverse_and_log_det.')
    return self.inverse_and_log_det_with(self.current_parameters(), y)


@dataclasses.dataclass(frozen=True)
class NewStack:
  """`stack=` for the first step of a new stack: build `_parameter_layer(steps, name)` and be its step 0."""

  steps: int
  name: str


# (layer, k): step k of the stack whose parameters `layer` holds; or a `NewStack`.
Stack = tuple[keras.layers.Layer, int] | NewStack


def _default_name(cls: type) -> str:
  default = inspect.signature(cls).parameters.get('name')
  return default.default if default is not None and isinstance(default.default, str) else cls.__name__.lower()


def check_images(x: Tensor, dtype: tf.DType | None = None, who: str = 'tfp_glow') -> None:
  """Raises a clear error unless `x` is a batch of images `[..., H, W, C]` with a static event."""
  shape = x.shape
  if shape.rank is None or shape.rank < 3:
    raise ValueError(f'{who}: expected images of shape [..., H, W, C] (rank >= 3), got shape {shape}.')
  if not shape[-3:].is_fully_defined():
    raise ValueError(f'{who}: the event shape [H, W, C] must be known statically, got {shape}.')
  if dtype is not None and x.dtype != dtype:
    raise TypeError(
      f'{who}: expected dtype {dtype.name}, got {x.dtype.name}. '
      f'Images must be floats in [-0.5, 0.5); build the flow with dtype={x.dtype.name} '
      'or cast the input.'
    )


def check_channels(channels: int, minimum: int, who: str) -> int:
  """Validates a channel count at construction time."""
  if not isinstance(channels, int) or isinstance(channels, bool) or channels < minimum:
    raise ValueError(f'{who}: channels must be an integer >= {minimum}, got {channels!r}.')
  return channels


def num_pixels(x: Tensor, dtype: tf.DType) -> Tensor:
  """H * W of a 4-D tensor, as a scalar of `dtype` (the log-det factor of per-pixel maps)."""
  return tf.cast(x.shape[1] * x.shape[2], dtype)


class ParameterLayer(keras.layers.Layer):
  """A Keras layer that only holds variables, created at construction (no lazy build).

  Creating the variables eagerly lets the bijector list them at once, for TFP and Keras alike.
  """

  def __init__(self, dtype: tf.DType, name: str):
    super().__init__(dtype=tf.as_dtype(dtype).name, name=name)
    self.built = True

  def call(self, inputs: Any) -> Any:  # Keras wants a call; these layers are read, never called.
    return inputs


class LayerGroup(keras.layers.Layer):
  """A Keras layer that owns a list of other layers, so one attribute carries a whole flow."""

  def __init__(self, members: list[keras.layers.Layer], dtype: tf.DType, name: str):
    super().__init__(dtype=tf.as_dtype(dtype).name, name=name)
    self.members = list(members)
    self.built = True

  def call(self, inputs: Any) -> Any:
    return inputs
