"""Coupling layers: half the channels transformed elementwise (`tfp_glow.bijectors.transforms`), conditioned on
the other half through a network."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_glow.bijectors import conditioners, transforms
from tfp_glow.bijectors.base import GlowBijector, check_channels
from tfp_glow.bijectors.nets import (
  StackedCouplingNetworks,
  coupling_network,
  coupling_network_weights,
  network_policy,
)


class Coupling(GlowBijector):
  """A coupling layer (Dinh et al. 2017) on `[..., H, W, C]`: split -> conditioner -> elementwise transform.

  Image -> latent (`inverse`, the paper's direction):
    x_a, x_b = x[..., :C//2], x[..., C//2:]          x_a conditions, x_b is transformed
    h = NN(x_a)                                     [N, H, W, (C - C//2) * P], P = transform.params_per_channel
    z_b, log|det| = transform.couple(x_b, h);  z = concat(x_a, z_b)          one log-det per image
  Latent -> image (`forward`): x_b, log|det| = transform.uncouple(z_b, NN(z_a)).

  `transform` (`tfp_glow.bijectors.transforms`): 'affine' (the paper's, scale = sigmoid(raw + 2)),
  'additive' (NICE), 'spline' (rational-quadratic, Durkan et al. 2019), or an instance with settings
  (`transforms.Spline(bins=8)`). The conditioner NN (`tfp_glow.bijectors.conditioners`): by default 'conv',
  `tfp_glow.bijectors.nets.coupling_network(width)`; 'transformer' (or `conditioners.Transformer(depth=...)`), a
  ViT on p x p patches that needs the input's `spatial` size (h, w); both end in a zero-initialized layer (h = 0
  at the start). Or your own Keras layer as `network` (built for inputs (None, None, None, C//2) if it is not
  built), which must output (C - C//2) * P channels. A `context` ([N, E], e.g. a class embedding) reaches the
  conditioner through `inverse_and_log_det(x, context=...)` (TFP: `bijector.inverse(x, context=...)`): the
  transformer adds it to its tokens when built with `context_size=E`.

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
    stack: tuple[keras.layers.Layer, int] | None = None,
    *,
    conditioner: str | conditioners.Conditioner = 'conv',
    spatial: tuple[int, int] | None = None,
    parameters: dict | None = None,
  ):
    # `parameters`: a subclass's constructor arguments, for TFP's `copy()` (as TFP's own bijectors pass them).
    parameters = dict(locals()) if parameters is None else parameters
    check_channels(channels, 2, name + ' (the coupling splits channels in two)')
    self._transform = transforms.transform_from(transform)
    self._conditioner = conditioners.conditioner_from(conditioner)
    if network is not None and self._conditioner.name != 'conv':
      raise ValueError(
        f'{name}: network= replaces the conditioner; conditioner={conditioner!r} cannot take it.'
      )
    self._split = channels // 2  # size of x_a
    out = (channels - self._split) * self._transform.params_per_channel
    # The default network also runs with its weights as arguments (`parameter_variables`), which lets
    # a StepStack (`tfp_glow.flow.stack`) run K steps as one loop; a custom network is called as a Keras layer.
    self._default_network = network is None
    index = None
    if stack is not None:
      network, index = stack
    elif network is None and self._conditioner.name != 'conv':  # a stack of one: the same code as a level's
      self._conditioner.check_spatial(spatial, name)
      stack_of_one = (self._transform, dtype, name, self._conditioner, spatial)
      network, index = _stacked_networks(channels, 1, width, *stack_of_one), 0
    elif network is None:
      network = coupling_network(self._split, out, width, network_policy(dtype), name=name + '_nn')
    if index is None:
      _build(network, self._split, out, name)
    super().__init__(
      layer=network,
      channels=channels,
      dtype=dtype,
      validate_args=validate_args,
      parameters=parameters,
      index=index,
      name=name,
    )

  @classmethod
  def stacked(
    cls,
    channels: int,
    steps: int,
    width: int = 512,
    transform: str | transforms.Transform = 'affine',
    dtype: tf.DType = tf.float32,
    name: str = 'coupling',
    *,
    conditioner: str | conditioners.Conditioner = 'conv',
    spatial: tuple[int, int] | None = None,
  ) -> list:
    """K = `steps` couplings with default conditioners whose weights are one stack of variables
    (e.g. `tfp_glow.bijectors.nets.StackedCouplingNetworks`, see `GlowBijector.index`): what a Glow level uses.
    `spatial`: the input's (h, w), which the transformer conditioner needs (and checks against its patch size)."""
    transform = transforms.transform_from(transform)
    conditioner = conditioners.conditioner_from(conditioner)
    conditioner.check_spatial(spatial, name)
    layer = _stacked_networks(channels, steps, width, transform, dtype, name, conditioner, spatial)
    return [
      Coupling(
        channels, width, transform, dtype=dtype, name=f'{name}_{k}', stack=(layer, k), conditioner=conditioner
      )
      for k in range(steps)
    ]

  @property
  def transform(self) -> transforms.Transform:
    """The elementwise transform (`tfp_glow.bijectors.transforms`)."""
    return self._transform

  @property
  def conditioner(self) -> conditioners.Conditioner:
    """The conditioner's spec (`tfp_glow.bijectors.conditioners`); a custom `network` is called as given."""
    return self._conditioner

  @property
  def network(self) -> keras.layers.Layer:
    """The coupling network (for a step of a stack: the stacked networks' weights)."""
    return self.layer

  @property
  def has_network_kernels(self) -> bool:
    """True where the conditioner has hand-built kernels (the conv, `conditioners.Conv.has_kernels`) and is
    stacked over a level's steps: the hand-built gradients then take its VJP from stored activations
    (`tfp_glow.flow.kernels`). Else they take each step's VJP under a tape (the generic path)."""
    return self._conditioner.has_kernels and isinstance(self.network, StackedCouplingNetworks)

  def parameter_variables(self) -> list | None:
    """The default conditioner's weights (in the order its `apply` takes them); None for a custom network."""
    if self.index is not None:  # a stack (of one, for an unstacked transformer)
      return self.network.weights_in_order()
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
    return self._transform.couple(x_b, h)

  def uncouple(self, z_b: tf.Tensor, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The transform latent -> image, given h = NN(z_a): (x_b, log-det [N] or [])."""
    return self._transform.uncouple(z_b, h)

  def split(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """x [..., C] -> (x_a [..., C//2], x_b [..., C - C//2]): the conditioning and the transformed half."""
    # tf.split, not two slices: its gradient is one concat, where each slice's gradient would be a
    # full-size zero-padded tensor, added up afterwards.
    return tuple(tf.split(x, [self._split, self.channels - self._split], axis=-1))

  def inverse_and_log_det_with(self, parameters, x, context=None):
    x_a, x_b = self.split(x)
    z_b, log_det = self.couple(x_b, self._network_output(parameters, x_a, context))
    return tf.concat([x_a, z_b], axis=-1), log_det

  def forward_and_log_det_with(self, parameters, z, context=None):
    z_a, z_b = self.split(z)
    x_b, log_det = self.uncouple(z_b, self._network_output(parameters, z_a, context))
    return tf.concat([z_a, x_b], axis=-1), log_det

  def inverse_and_log_det(self, x, context=None):
    return self.inverse_and_log_det_with(self.current_parameters(), x, context)

  def forward_and_log_det(self, z, context=None):
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
    stack: tuple[StackedCouplingNetworks, int] | None = None,
  ):
    parameters = dict(locals())
    transform = 'additive' if additive else 'affine'
    super().__init__(
      channels, width, transform, network, dtype, validate_args, name, stack, parameters=parameters
    )

  @classmethod
  def stacked(
    cls,
    channels: int,
    steps: int,
    width: int = 512,
    additive: bool = False,
    dtype: tf.DType = tf.float32,
    name: str = 'affine_coupling',
  ) -> list:
    """K = `steps` affine (or additive) couplings sharing one `StackedCouplingNetworks` (see `Coupling.stacked`)."""
    transform = transforms.transform_from('additive' if additive else 'affine')
    layer = _stacked_networks(channels, steps, width, transform, dtype, name)
    return [
      cls(channels, width, additive, dtype=dtype, name=f'{name}_{k}', stack=(layer, k)) for k in range(steps)
    ]


def _stacked_networks(
  channels, steps, width, transform, dtype, name, conditioner=None, spatial=None
) -> keras.layers.Layer:
  """The K default conditioners of a level's couplings as one stack: x_a [.., C//2] -> h [.., (C - C//2) * P]."""
  conditioner = conditioners.Conv() if conditioner is None else conditioner
  split = channels // 2
  out = (channels - split) * transform.params_per_channel
  return conditioner.stacked(split, out, steps, width, spatial, network_policy(dtype), name + '_nn')


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
