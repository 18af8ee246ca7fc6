"""Coupling layers: half the channels transformed elementwise (`tfp_glow.bijectors.transforms`), conditioned on
the other half through a network."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_glow.bijectors import conditioners, splits, transforms
from tfp_glow.bijectors.base import GlowBijector, NewStack, Stack, check_channels
from tfp_glow.bijectors.nets import (
  StackedCouplingNetworks,
  coupling_network,
  coupling_network_weights,
  network_policy,
)


class Coupling(GlowBijector):
  """A coupling layer (Dinh et al. 2017) on `[..., H, W, C]`: split -> conditioner -> elementwise transform.

  Image -> latent (`inverse`, the paper's direction), with the default `split='channel'`:
    x_a, x_b = x[..., :C//2], x[..., C//2:]          x_a conditions, x_b is transformed
    h = NN(x_a)                                     [N, H, W, (C - C//2) * P], P = transform.params_per_channel
    z_b, log|det| = transform.couple(x_b, h);  z = concat(x_a, z_b)          one log-det per image
  Latent -> image (`forward`): x_b, log|det| = transform.uncouple(z_b, NN(z_a)).
  `split` (`tfp_glow.bijectors.splits`): 'channel', or the spatial masks 'checkerboard' and 'stripes' (NN then
  sees the masked image x * m, [N, H, W, C], and outputs C * P channels, used at the other pixels; a stack's
  steps alternate the mask's parity). `Coupling.stacked(channels, K, ...)`: K steps, one stack of weights.

  `transform` (`tfp_glow.bijectors.transforms`): 'affine' (the paper's, scale = sigmoid(raw + 2)),
  'additive' (NICE), 'spline' (rational-quadratic, Durkan et al. 2019), or an instance with settings
  (`transforms.Spline(bins=8)`). The conditioner NN (`tfp_glow.bijectors.conditioners`): by default 'conv',
  `tfp_glow.bijectors.nets.coupling_network(width)`; 'transformer' (or `conditioners.Transformer(depth=...)`), a
  ViT on p x p patches that needs the input's `spatial` size (h, w); both end in a zero-initialized layer (h = 0
  at the start). Or your own Keras layer as `network` (built for inputs (None, None, None, C//2) if it is not
  built), which must output (C - C//2) * P channels. A `context` ([N, E], e.g. a class embedding) reaches the
  conditioner through `inverse_and_log_det(x, context=...)` (TFP: `bijector.inverse(x, context=...)`) when it
  is built with `context_size=E`: the transformer adds it to its tokens, the conv to its first hidden layer.

  The network runs once per transform-plus-log-det (see `GlowBijector`). Under a Keras mixed policy the
  default network computes in bfloat16/float16 and its output is cast back to the flow's dtype, so the
  transform's math (and the log-det) is float32 (see `tfp_glow.bijectors.nets.network_policy`).
  Cost: one NN evaluation, O(N H W (9 C/2 width + width^2 + 9 width (C/2) P)) for the default network,
  plus the transform's elementwise math.
  """

  def __init__(
    self,
    channels: int,
    width: int = 512,
    transform: str | transforms.Transform = 'affine',
    network: keras.layers.Layer | None = None,
    dtype: tf.DType = tf.float32,
    validate_args: bool = False,
    name: str = 'coupling',
    stack: Stack | None = None,
    *,
    conditioner: str | conditioners.Conditioner = 'conv',
    spatial: tuple[int, int] | None = None,
    split: str | splits.Split = 'channel',
    parameters: dict | None = None,
  ):
    # `parameters`: a subclass's constructor arguments, for TFP's `copy()` (as TFP's own bijectors pass them).
    parameters = dict(locals()) if parameters is None else parameters
    self._transform = transforms.transform_from(transform)
    self._conditioner = conditioners.conditioner_from(conditioner)
    self._split = splits.split_from(split)
    if self._split.spatial:
      check_channels(channels, 1, name)
      self._split.check((*(spatial or (None, None)), channels), name)
    else:
      check_channels(channels, 2, name + ' (the coupling splits channels in two)')
    if network is not None and self._conditioner != conditioners.Conv():  # a conv with a context included
      raise ValueError(
        f'{name}: network= replaces the conditioner; conditioner={conditioner!r} cannot take it.'
      )
    self._in = self._split.conditioner_channels(channels)  # the conditioner's input and output channels
    self._out = self._split.transformed_channels(channels) * self._transform.params_per_channel
    self._settings = (width, spatial, dtype)
    # The default network also runs with its weights as arguments (`parameter_variables`), which lets
    # a StepStack (`tfp_glow.flow.stack`) run K steps as one loop; a custom network is called as a Keras layer.
    self._default_network = network is None
    if network is not None and stack is None:
      _build(network, self._in, self._out, name)
    elif stack is None and (self._conditioner != conditioners.Conv() or self._split.spatial):
      stack = NewStack(1, name)  # a stack of one: the same code as a level's
    super().__init__(
      layer=network,
      stack=stack,
      channels=channels,
      dtype=dtype,
      validate_args=validate_args,
      parameters=parameters,
      name=name,
    )

  def _parameter_layer(self, steps, name) -> keras.layers.Layer:
    """The conditioner's weights: one default conv network (`steps` None), or K stacked ([K, ...], e.g.
    `tfp_glow.bijectors.nets.StackedCouplingNetworks`; see `GlowBijector.index`) with, for a spatial split,
    each step's mask parity (step k: (parity + k) % 2, saved, not trained)."""
    width, spatial, dtype = self._settings
    policy = network_policy(dtype)
    if steps is None:
      return coupling_network(self._in, self._out, width, policy, name=name + '_nn')
    self._conditioner.check_spatial(spatial, name)
    layer = self._conditioner.stacked(self._in, self._out, steps, width, spatial, policy, name + '_nn')
    if self._split.spatial:
      parities = np.array([(self._split.parity + k) % 2 for k in range(steps)], np.int32)
      layer.split_parity = layer.add_weight(
        shape=(steps,),
        dtype='int32',
        trainable=False,
        initializer=lambda shape, dtype=None: tf.constant(parities, dtype=dtype),
        name='split_parity',
      )
    return layer

  @property
  def transform(self) -> transforms.Transform:
    """The elementwise transform (`tfp_glow.bijectors.transforms`)."""
    return self._transform

  @property
  def conditioner(self) -> conditioners.Conditioner:
    """The conditioner's spec (`tfp_glow.bijectors.conditioners`); a custom `network` is called as given."""
    return self._conditioner

  @property
  def split_spec(self) -> splits.Split:
    """Which elements condition and which are transformed (`tfp_glow.bijectors.splits`)."""
    return self._split

  @property
  def network(self) -> keras.layers.Layer:
    """The coupling network (for a step of a stack: the stacked networks' weights)."""
    return self.layer

  @property
  def has_network_kernels(self) -> bool:
    """True where the conditioner has hand-built kernels (the conv, `conditioners.Conv.has_kernels`) and is
    stacked over a level's steps: the hand-built gradients then take its VJP from stored activations
    (`tfp_glow.flow.kernels`). Else they take each step's VJP under a tape (the generic path)."""
    stacked_conv = self._conditioner.has_kernels and isinstance(self.network, StackedCouplingNetworks)
    return stacked_conv and not self._split.spatial  # the kernels split channels

  def parameter_variables(self) -> list | None:
    """The default conditioner's weights (in the order its `apply` takes them); None for a custom network."""
    if self.index is not None:  # a stack (of one, for an unstacked transformer or spatial split)
      weights = self.network.weights_in_order()
      return [*weights, self.layer.split_parity] if self._split.spatial else weights
    return coupling_network_weights(self.network) if self._default_network else None

  def _network_compute_dtype(self) -> str:
    if self.index is not None:
      return self.network.compute_dtype
    return self.network.get_layer('conv_out').compute_dtype

  def _network_output(self, parameters, x_a: tf.Tensor, context=None) -> tf.Tensor:
    if parameters is None:
      if context is not None:
        raise ValueError(f'{self.name}: a custom coupling network takes no context.')
      h = self.network(x_a)
    else:
      h = self._conditioner.apply(parameters, x_a, self._network_compute_dtype(), context)
    return tf.cast(h, self.dtype)  # a mixed-precision network computes in bf16/fp16

  def couple(self, x_b: tf.Tensor, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The transform image -> latent, given the network's output h = NN(x_a) (flow dtype):
    (z_b, log-det [N] or [])."""
    with tf.name_scope('transform'):  # names its ops apart from the network's (benchmarks/profile_step.py)
      return self._transform.couple(x_b, h)

  def uncouple(self, z_b: tf.Tensor, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The transform latent -> image, given h = NN(z_a): (x_b, log-det [N] or [])."""
    with tf.name_scope('transform'):
      return self._transform.uncouple(z_b, h)

  def split(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The channel split's x [..., C] -> (x_a [..., C//2], x_b [..., C - C//2]) (what `tfp_glow.flow.kernels`
    uses; a spatial split goes through `split_spec.divide`)."""
    return self._split.divide(x)[:2]

  def _parity_and_weights(self, parameters):
    """A spatial split's parity (the stack's slice, the last parameter; or the split's own) and the
    conditioner's weights (None: a custom network)."""
    if not self._split.spatial:
      return None, parameters
    return (self._split.parity, None) if parameters is None else (parameters[-1], parameters[:-1])

  def inverse_and_log_det_with(
    self, parameters: Sequence[tf.Tensor], x: tf.Tensor, context: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    self._split.check(x.shape, self.name)
    parity, weights = self._parity_and_weights(parameters)
    x_a, x_b, kept = self._split.divide(x, parity)
    h = self._split.select(self._network_output(weights, x_a, context), parity)
    z_b, log_det = self.couple(x_b, h)
    return self._split.join(kept, z_b, parity), log_det

  def forward_and_log_det_with(
    self, parameters: Sequence[tf.Tensor], z: tf.Tensor, context: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    self._split.check(z.shape, self.name)
    parity, weights = self._parity_and_weights(parameters)
    z_a, z_b, kept = self._split.divide(z, parity)
    h = self._split.select(self._network_output(weights, z_a, context), parity)
    x_b, log_det = self.uncouple(z_b, h)
    return self._split.join(kept, x_b, parity), log_det

  def inverse_and_log_det(
    self, x: tf.Tensor, context: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    return self.inverse_and_log_det_with(self.current_parameters(), x, context)

  def forward_and_log_det(
    self, z: tf.Tensor, context: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    return self.forward_and_log_det_with(self.current_parameters(), z, context)


class AffineCoupling(Coupling):
  """The paper's affine coupling (Kingma & Dhariwal 2018, section 3.3): a `Coupling` with the 'affine'
  transform, z_b = (x_b + shift) * sigmoid(raw + 2), log|det| = sum log(scale); or with `additive=True`
  NICE's z_b = x_b + NN(x_a), log-det 0."""

  def __init__(
    self,
    channels: int,
    width: int = 512,
    additive: bool = False,
    network: keras.layers.Layer | None = None,
    dtype: tf.DType = tf.float32,
    validate_args: bool = False,
    name: str = 'affine_coupling',
    stack: Stack | None = None,
  ):
    parameters = dict(locals())
    transform = 'additive' if additive else 'affine'
    super().__init__(
      channels, width, transform, network, dtype, validate_args, name, stack, parameters=parameters
    )


def _build(network: keras.layers.Layer, in_channels: int, out_channels: int, who: str) -> None:
  """Builds `network` if needed and checks that it has weights and the right output channels."""
  if not network.built:
    network.build((None, None, None, in_channels))
  if not network.weights:
    raise ValueError(
      f'{who}: the coupling network has no weights after build((None, None, None, '
      f'{in_channels})); build it before passing it.'
    )
  out = network.compute_output_shape((None, 4, 4, in_channels))
  if out[-1] != out_channels:
    raise ValueError(
      f'{who}: the coupling network must output {out_channels} channels for '
      f'{in_channels} input channels, it outputs {out[-1]}.'
    )
