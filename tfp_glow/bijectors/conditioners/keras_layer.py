"""A user's own Keras layer as a coupling's conditioner, run in the `StepStack` loop and saved with the model.

  x_a [N, h, w, C_a] -> f = L(x_a; theta_k)        [N, h, w, F]     the user's layer, step k's weights theta_k
                     -> h = f @ P_k + b_k          [N, h, w, out]   a 1x1 projection, P_k = b_k = 0 at the start

The user's layer L may output any number F of features; the appended projection gives the transform's `out`
numbers. It starts at zero, so h = 0 exactly and a fresh coupling is its transform at h = 0 (the identity for
'additive' and 'spline', the constant scale sigmoid(2) for 'affine') whatever L computes, as with the
built-in conditioners.

Use: decorate the class with `@keras.saving.register_keras_serializable()` (a saved model rebuilds it from its
config; an unregistered class is refused at once), then

  GlowModel(..., conditioner=conditioners.KerasLayer(MyNet(width=64)))
  Glow(..., coupling=CouplingSpec(conditioner='keras', conditioner_settings={'layer': MyNet(width=64)}))

Keras' own layers (a `keras.Sequential` of `Conv2D`s) need no registration. The spec keeps the layer as its
serialized config (`keras.saving.serialize_keras_object`, JSON; its build state dropped), never the object:
each level builds its own copies on its conditioning shape [N, h, w, C_a], so the layer must not fix its input
channels (no `keras.Input` with a channel count). The layer computes in the flow's network precision (float64
in a float64 flow, the global mixed policy in a float32 one): every dtype in its config is replaced by it.

Stacking: `stacked` builds K copies of the layer (each its own random initial weights, drawn by its
initializers; a seeded initializer starts every step alike), holds each trainable weight stacked [K, ...]
(plus P [K, F, out] and b [K, out]) in one Keras layer that Keras trains and saves, and keeps one copy as a
template: `apply` runs `template.stateless_call(theta_k, [], x_a)` (Keras 3: the layer applied with weights given
as arguments), so K steps run as one loop. No hand-built VJP (`has_kernels` False): 'stored', 'checkpoint' and
'inverse' take each step's VJP under a tape (`tfp_glow.flow.gradients`).

Refused in one line: a layer with state that is not a trainable weight (BatchNormalization's statistics, a
Dropout's seed: a flow's two directions must compute the same function), a layer that adds losses (activity or
weight regularizers: a conditioner's losses are not collected; use the optimizer's weight_decay), an output that
is not [N, h, w, F], and a context (the layer is called as L(x_a)).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any, ClassVar, Iterator, Sequence

import keras
import tensorflow as tf

WHO = 'KerasLayer conditioner'
_FLOATS = ('float16', 'bfloat16', 'float32', 'float64')


@dataclasses.dataclass(frozen=True, repr=False)
class KerasLayer:
  """A user's Keras layer as the conditioner (see the module docstring). `layer`: a Keras layer instance
  (`MyNet(width=64)`, its class registered with `@keras.saving.register_keras_serializable()`) or its
  `keras.saving.serialize_keras_object` dict; kept as that dict (the spec saved with a model)."""

  layer: Any = None

  name: ClassVar[str] = 'keras'
  has_kernels: ClassVar[bool] = False  # no hand-built VJP: the gradients use the generic per-step path

  def __post_init__(self) -> None:
    object.__setattr__(self, 'layer', serialized(self.layer))
    _rebuild(self.layer)  # refuses now a config that a saved model could not rebuild (an unregistered class)
    # Each (C_a, (h, w) or None, compute dtype)'s template, built by `stacked`; not a field, never saved.
    object.__setattr__(self, '_templates', {})

  def __repr__(self) -> str:
    return f'KerasLayer({self.layer.get("class_name")})'

  def __hash__(self) -> int:
    return hash(json.dumps(self.layer, sort_keys=True))

  def __deepcopy__(self, memo: dict) -> KerasLayer:
    return KerasLayer(json.loads(json.dumps(self.layer)))  # the templates stay with the original

  def check_spatial(self, spatial: tuple[int, int] | None, who: str) -> None:
    del spatial, who  # any size the layer takes: `stacked` builds and runs it on the level's own

  def stacked(
    self,
    in_channels: int,
    out_channels: int,
    steps: int,
    width: int,
    spatial: tuple[int, int] | None,
    dtype: Any,
    name: str,
  ) -> StackedKerasLayers:
    """K = `steps` conditioners x_a [.., C_a] -> h [.., out] as one stack (`width` is the conv's: unused)."""
    del width
    copies = [_built(self.layer, in_channels, spatial, dtype) for _ in range(steps)]
    template, features = copies[0]
    shapes = [[tuple(v.shape) for v in copy.trainable_variables] for copy, _ in copies]
    if any(s != shapes[0] for s in shapes):
      raise ValueError(f'{WHO}: copies of {self!r} built on the same input have different weights.')
    initial = [
      (f'w{i}_{v.name}', tf.stack([tf.convert_to_tensor(copy.trainable_variables[i]) for copy, _ in copies]))
      for i, v in enumerate(template.trainable_variables)
    ]
    key = (in_channels, tuple(spatial) if spatial else None, keras.DTypePolicy(dtype).compute_dtype)
    vars(self)['_templates'][key] = template
    return StackedKerasLayers(initial, features, out_channels, steps, dtype, name)

  def apply(
    self, weights: Sequence[tf.Tensor], x: tf.Tensor, compute_dtype: Any, context: tf.Tensor | None = None
  ) -> tf.Tensor:
    """One step: x [N, h, w, C_a] -> h [N, h, w, out] in `compute_dtype`, `weights` step k's slices of
    `StackedKerasLayers.weights_in_order()` (the layer's trainable weights, then P and b)."""
    if context is not None:
      raise ValueError(f'{WHO}: got a context, but the layer is called as layer(x_a) and takes none.')
    compute_dtype = tf.as_dtype(compute_dtype).name
    template = self._template(x.shape[-1], (x.shape[1], x.shape[2]), compute_dtype)
    n = len(template.trainable_variables)
    features, _ = template.stateless_call(list(weights[:n]), [], tf.cast(x, compute_dtype))
    kernel, bias = (tf.cast(w, compute_dtype) for w in weights[n : n + 2])
    return tf.cast(features, compute_dtype) @ kernel + bias  # the 1x1 projection: [N, h, w, F] @ [F, out]

  def _template(self, in_channels: int, spatial: tuple[int, int], compute_dtype: str) -> keras.layers.Layer:
    """The template `stacked` built for this input (or for any spatial size); else one built now (e.g. for a
    copy of this spec), outside any graph."""
    templates = vars(self)['_templates']
    for key in ((in_channels, spatial, compute_dtype), (in_channels, None, compute_dtype)):
      if key in templates:
        return templates[key]
    policy = f'mixed_{compute_dtype}' if compute_dtype in ('bfloat16', 'float16') else compute_dtype
    templates[(in_channels, spatial, compute_dtype)] = _built(self.layer, in_channels, spatial, policy)[0]
    return templates[(in_channels, spatial, compute_dtype)]


class StackedKerasLayers(keras.layers.Layer):
  """The weights of K copies of a user's layer, stacked over a level's K steps, then the projection:
  `weights_in_order()` = [theta_0 .. theta_{n-1} (each [K, ...], the layer's trainable weights in its own
  order), P [K, F, out] (zeros), b [K, out] (zeros)]. Step k: `KerasLayer.apply([v[k] for v in ...], ...)`."""

  def __init__(
    self,
    initial: Sequence[tuple[str, tf.Tensor]],
    features: int,
    out_channels: int,
    steps: int,
    dtype: Any = 'float32',
    name: str = 'keras_conditioner',
  ) -> None:
    super().__init__(dtype=dtype, name=name)

    def constant(value):
      return lambda shape, dtype=None: tf.cast(value, dtype)

    ordered = [
      self.add_weight(shape=value.shape, initializer=constant(value), name=key) for key, value in initial
    ]
    ordered.append(
      self.add_weight(shape=(steps, features, out_channels), initializer='zeros', name='projection_kernel')
    )
    ordered.append(self.add_weight(shape=(steps, out_channels), initializer='zeros', name='projection_bias'))
    self._ordered = ordered
    self.built = True

  def weights_in_order(self) -> list[keras.Variable]:
    return list(self._ordered)

  def call(self, inputs: Any) -> Any:  # Keras wants a call; this layer is read, never called.
    return inputs


# ---- the layer's config: kept as JSON, rebuilt on each level's shape ---------------------------------------


def serialized(layer: Any) -> dict:
  """The JSON config of `layer` (a Keras layer, or its `keras.saving.serialize_keras_object` dict), without
  build state (each level builds its own copies); refuses what cannot be the conditioner in one line."""
  if layer is None:
    raise ValueError(
      f"{WHO}: the 'keras' conditioner needs a layer: conditioners.KerasLayer(MyLayer(...)) or "
      "conditioner_settings={'layer': MyLayer(...)}, from Python (the command line cannot give one)."
    )
  if isinstance(layer, type):
    raise ValueError(f'{WHO}: layer must be a layer instance, e.g. {layer.__name__}(...), got the class.')
  if isinstance(layer, keras.layers.Layer):
    _check_registered(type(layer))
    try:
      layer = keras.saving.serialize_keras_object(layer)
    except Exception as e:  # noqa: BLE001 (any failure of the user's get_config, said in one line)
      raise ValueError(f'{WHO}: cannot serialize {type(layer).__name__}: {_one_line(e)}') from e
  if not (isinstance(layer, dict) and {'class_name', 'config'} <= set(layer)):
    raise ValueError(
      f'{WHO}: layer must be a Keras layer or its keras.saving.serialize_keras_object dict, got '
      f'{_one_line(repr(layer))}.'
    )
  try:
    return json.loads(json.dumps(_without_build_state(layer)))
  except (TypeError, ValueError) as e:
    raise ValueError(f'{WHO}: the config of {layer["class_name"]} is not JSON: {_one_line(e)}') from e


def _check_registered(cls: type) -> None:
  """A class outside Keras must be found by name when a saved model is loaded."""
  if cls.__module__.split('.')[0] == 'keras':
    return
  if keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is not cls:
    raise ValueError(
      f'{WHO}: the layer class {cls.__qualname__} is not registered with Keras, so a saved model could not '
      f'rebuild it; decorate it with @keras.saving.register_keras_serializable().'
    )


def _without_build_state(node: Any) -> Any:
  """The config without what fixes a built input shape (build_config, a Sequential's build_input_shape)."""
  if isinstance(node, dict):
    dropped = {'build_config', 'compile_config'}
    if node.get('class_name') == 'Sequential':
      node = {**node, 'config': {k: v for k, v in node.get('config', {}).items() if k != 'build_input_shape'}}
    return {k: _without_build_state(v) for k, v in node.items() if k not in dropped}
  if isinstance(node, (list, tuple)):
    return [_without_build_state(v) for v in node]
  return node


def _in_policy(node: Any, policy: str) -> Any:
  """The config with every dtype policy set to `policy` (and every plain float dtype to its compute dtype)."""
  if isinstance(node, dict):
    if node.get('class_name') in ('DTypePolicy', 'FloatDTypePolicy') and isinstance(node.get('config'), dict):
      return {**node, 'config': {**node['config'], 'name': policy}}
    compute = keras.DTypePolicy(policy).compute_dtype
    return {k: compute if k == 'dtype' and v in _FLOATS else _in_policy(v, policy) for k, v in node.items()}
  if isinstance(node, list):
    return [_in_policy(v, policy) for v in node]
  return node


def _rebuild(config: dict) -> keras.layers.Layer:
  """The (unbuilt) layer of a config; a config Keras cannot rebuild is refused in one line."""
  try:
    layer = keras.saving.deserialize_keras_object(config)
  except Exception as e:  # noqa: BLE001 (Keras raises TypeError or ValueError, a user's from_config anything)
    raise ValueError(
      f'{WHO}: cannot rebuild {config.get("class_name")} from its config: {_one_line(e)}'
    ) from e
  if not isinstance(layer, keras.layers.Layer):
    raise ValueError(f'{WHO}: the config rebuilds a {type(layer).__name__}, not a Keras layer.')
  return layer


@contextlib.contextmanager
def _global_policy(policy: str) -> Iterator[None]:
  """Sublayers a layer creates without a dtype take the global policy: the flow's, while a copy is built."""
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(policy)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def _built(
  config: dict, in_channels: int, spatial: tuple[int, int] | None, policy: Any
) -> tuple[keras.layers.Layer, int]:
  """A copy of the layer in `policy`, built by running it (eagerly) on zeros [1, h, w, C_a] (h, w = 8 where the
  size is not given), and its number of output features F. Refuses state, losses and a wrong output shape."""
  policy = policy if isinstance(policy, str) else tf.as_dtype(policy).name
  h, w = spatial or (8, 8)
  with tf.init_scope(), _global_policy(policy):
    layer = _rebuild(_in_policy(config, policy))
    kind = type(layer).__name__
    try:
      out = layer(tf.zeros([1, h, w, in_channels], keras.DTypePolicy(policy).compute_dtype))
    except Exception as e:  # noqa: BLE001 (the user's call, said in one line)
      raise ValueError(
        f'{WHO}: {kind} failed on the conditioning input [N, {h}, {w}, {in_channels}]: {_one_line(e)}'
      ) from e
  shape = tuple(getattr(out, 'shape', ()))
  if len(shape) != 4 or shape[:3] != (1, h, w):
    raise ValueError(
      f'{WHO}: {kind} must map [N, h, w, C_a] to [N, h, w, features]; on [1, {h}, {w}, {in_channels}] it gave '
      f'{shape if shape else type(out).__name__}.'
    )
  state = [v.name for v in layer.non_trainable_variables]
  if state:
    raise ValueError(
      f'{WHO}: {kind} has state that is not a trainable weight ({", ".join(state)}: e.g. BatchNormalization '
      "statistics or a Dropout's seed), which a flow's conditioner cannot keep; use stateless layers "
      '(LayerNormalization, GroupNormalization).'
    )
  if layer.losses:
    raise ValueError(
      f"{WHO}: {kind} adds losses (an activity or weight regularizer), which a flow's conditioner does not "
      "collect; remove them (use the optimizer's weight_decay)."
    )
  return _Template(layer, policy), int(shape[3])


class _Template(keras.layers.Layer):
  """The user's layer called through Keras' `__call__` (which casts its inputs and, under a mixed policy, its
  weights to the compute dtype), so that this wrapper's `stateless_call` applies it with given weights."""

  def __init__(self, inner: keras.layers.Layer, policy: str) -> None:
    super().__init__(dtype=policy, name=f'{inner.name}_template')
    self.inner = inner
    self.built = True

  def call(self, x: Any) -> Any:
    return self.inner(x)


def _one_line(e: Any) -> str:
  """An error's text in one line, without Keras' 'Full object config' dump."""
  text = ' '.join(str(e).split()).rsplit('Exception encountered: ', 1)[-1]  # a nested layer's own error
  return text.split(' Full object config')[0][:400]
