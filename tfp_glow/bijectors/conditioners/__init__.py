"""The conditioners of a coupling: the network NN that turns the conditioning half x_a into the transform's numbers.

A coupling (`tfp_glow.bijectors.coupling.Coupling`) is split -> conditioner -> transform:

  x_a, x_b = split(x);   h = NN(x_a[, context]);   z_b, log|det| = transform.couple(x_b, h)

Each conditioner is a small frozen dataclass holding its settings (its spec, saved with a model by name and
settings), with:
  name                      its registry name
  has_kernels               True where `tfp_glow.flow.kernels` has a hand-built VJP for it (the conv only);
                            else 'stored' and 'inverse' take each step's VJP under a tape (the generic path)
  stacked(in_channels, out_channels, steps, width, spatial, dtype, name) -> a Keras layer holding K stacked
                            conditioners' weights ([K, ...]) with `weights_in_order()` and `compute_dtype`
  apply(weights, x, compute_dtype, context=None) -> h       one step's network, weights as arguments; context
                                                            [N, E] or None (below)
  check_spatial(spatial, who)                               refuses a level size it cannot work on

Registered: 'conv' (the paper's conv network, `tfp_glow.bijectors.nets`; the default), 'transformer' (a ViT on
patches, Jet-style: `tfp_glow.bijectors.conditioners.transformer`) and 'keras' (a user's own Keras layer,
`KerasLayer(MyNet(...))`, run through Keras 3's `stateless_call` with step k's weights and followed by a
zero-initialized 1x1 projection; saved in the spec as its serialized config:
`tfp_glow.bijectors.conditioners.keras_layer`). Adding one: a class with the members above (one module) and one
line in `CONDITIONERS` (plus its name in `tfp_glow.names.CONDITIONERS`).

The context: a conditioner built with `context_size=E` (a setting of 'conv' and 'transformer'; 'keras' refuses one) also reads a
per-image vector c [N, E]: the conv adds c @ W_c to its first hidden layer's pre-activation, the transformer to
every token (W_c learned, stacked [K, E, width] over a level's steps). It reaches every coupling of every level
and step: `Glow.inverse_and_log_det(x, context=c)` (and forward, encode, decode, initialize), the distribution's
`log_prob(x, context=c)` / `bijector_kwargs={'context': c}`, or a class-conditional Glow's learned class
embedding (`class_context=E`: c = embedding[labels]). It is loop-invariant: the StepStack loop and the
hand-built gradients ('stored', 'inverse'; `tfp_glow.flow.gradients`) take it as one more input and return
its gradient, summed over steps and levels (the conv's hand-built VJP includes W_c's and c's). Without a
context (None) the network is the one built without `context_size`, op for op.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import tensorflow as tf

from tfp_glow.bijectors.conditioners.keras_layer import KerasLayer, StackedKerasLayers
from tfp_glow.bijectors.conditioners.transformer import StackedTransformers, Transformer
from tfp_glow.bijectors.nets import StackedCouplingNetworks, apply_coupling_network


@dataclasses.dataclass(frozen=True)
class Conv:
  """The paper's conv network (`tfp_glow.bijectors.nets.coupling_network`): conv3x3 -> ReLU -> conv1x1 -> ReLU ->
  zero conv3x3, `width` hidden channels (Glow's `width`). Any spatial size. context_size: the size E of an
  optional per-image context [N, E], projected by a learned [E, width] kernel onto the first hidden layer,
  a1 = relu(conv3x3(x_a) + b + context @ W_c); None (the default): no context, the paper's network unchanged."""

  context_size: int | None = None

  name: ClassVar[str] = 'conv'
  has_kernels: ClassVar[bool] = True

  def __post_init__(self) -> None:
    size = self.context_size
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
      raise ValueError(f'Conv conditioner: context_size must be None or an integer >= 1, got {size!r}.')

  def check_spatial(self, spatial: tuple[int, int] | None, who: str) -> None:
    del spatial, who  # 'same' convolutions: any size

  def stacked(
    self,
    in_channels: int,
    out_channels: int,
    steps: int,
    width: int,
    spatial: tuple[int, int] | None,
    dtype: Any,
    name: str,
  ) -> StackedCouplingNetworks:
    del spatial
    return StackedCouplingNetworks(in_channels, out_channels, width, steps, dtype, name, self.context_size)

  def apply(
    self, weights: Sequence[tf.Tensor], x: tf.Tensor, compute_dtype: Any, context: tf.Tensor | None = None
  ) -> tf.Tensor:
    return apply_coupling_network(list(weights), x, compute_dtype, context=context)


Conditioner = Conv | Transformer | KerasLayer
# Registry: the names `Glow(conditioner=...)`, `GlowModel` and the CLI's --conditioner accept (tfp_glow.names).
CONDITIONERS: dict[str, type] = {cls.name: cls for cls in (Conv, Transformer, KerasLayer)}


def conditioner_from(spec: str | Conditioner, settings: dict | None = None) -> Conditioner:
  """A conditioner from its registry name and optional settings (`{'depth': 2, 'heads': 4}`), or an instance
  (returned as is; settings must then be None)."""
  if not isinstance(spec, str):
    if not isinstance(spec, tuple(CONDITIONERS.values())):
      raise ValueError(
        f'conditioner must be one of {tuple(CONDITIONERS)} or an instance of one, got {spec!r}.'
      )
    if settings:
      raise ValueError(
        f'conditioner_settings={settings!r} given with a conditioner instance {spec!r}: give one.'
      )
    return spec
  if not (isinstance(spec, str) and spec in CONDITIONERS):
    raise ValueError(f'conditioner must be one of {tuple(CONDITIONERS)} or an instance of one, got {spec!r}.')
  cls = CONDITIONERS[spec]
  if settings is not None and not isinstance(settings, dict):
    raise ValueError(f'conditioner_settings must be a dict or None, got {settings!r}.')
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(settings or {}) - fields)
  if unknown:
    raise ValueError(
      f'conditioner_settings for {spec!r}: unknown setting(s) {unknown}; it takes {sorted(fields) or "none"}.'
    )
  return cls(**(settings or {}))


def settings_of(conditioner: Conditioner) -> tuple[str, dict]:
  """(name, settings) of a conditioner: what a model's config saves."""
  return conditioner.name, dataclasses.asdict(conditioner)


__all__ = [
  'CONDITIONERS',
  'Conditioner',
  'Conv',
  'KerasLayer',
  'StackedKerasLayers',
  'StackedTransformers',
  'Transformer',
  'conditioner_from',
  'settings_of',
]
