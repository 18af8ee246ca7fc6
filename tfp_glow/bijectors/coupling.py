"""Affine (and additive) coupling: half the channels transformed, conditioned on the other half."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_glow.bijectors.base import GlowBijector, check_channels
from tfp_glow.bijectors.nets import (
  StackedCouplingNetworks,
  apply_coupling_network,
  coupling_network,
  coupling_network_weights,
  network_policy,
)


class AffineCoupling(GlowBijector):
  """Affine coupling layer (Dinh et al. 2017; Kingma & Dhariwal 2018, section 3.3) on `[..., H, W, C]`.

  Image -> latent (`inverse`, the paper's direction), after the reference code:
    x_a, x_b = x[..., :C//2], x[..., C//2:]          x_a conditions, x_b is transformed
    h = NN(x_a);  shift, raw = split(h, 2, axis=-1)
    scale = sigmoid(raw + 2)                        (starts near 0.88; bounded in (0, 1))
    z_b = (x_b + shift) * scale;  z = concat(x_a, z_b)
    log|det| = sum_{H, W, C_b} log(scale)           one value per image
  Latent -> image (`forward`): x_b = z_b / scale - shift.
  Additive (`additive=True`, NICE): z_b = x_b + NN(x_a), log-det 0.

  The network NN maps [N, H, W, C//2] -> [N, H, W, 2 * (C - C//2)] (affine) or [.., C - C//2]
  (additive). Default: `tfp_glow.bijectors.nets.coupling_network(width)`, whose last layer is zero-initialized,
  so the coupling starts near the identity. Pass your own Keras layer as `network`; if it is not built,
  it is built for inputs (None, None, None, C//2).

  The network runs once per transform-plus-log-det (see `GlowBijector`). Under a Keras mixed policy the
  default network computes in bfloat16/float16 and its output is cast back to the flow's float32
  (see `tfp_glow.bijectors.nets.network_policy`).
  Cost: one NN evaluation, O(N H W (9 C/2 width + width^2 + 9 width C)) for the default network.
  """

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
    check_channels(channels, 2, name + ' (the coupling splits channels in two)')
    self._additive = additive
    self._split = channels // 2  # size of x_a
    out = (channels - self._split) * (1 if additive else 2)
    # The default network also runs with its weights as arguments (`parameter_variables`), which lets
    # a StepStack (`tfp_glow.flow.stack`) run K steps as one loop; a custom network is called as a Keras layer.
    self._default_network = network is None
    index = None
    if stack is not None:
      network, index = stack
    elif network is None:
      network = coupling_network(self._split, out, width, network_policy(dtype), name=name + '_nn')
    if stack is None:
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
    additive: bool = False,
    dtype: tf.DType = tf.float32,
    name: str = 'affine_coupling',
  ) -> list:
    """K = `steps` couplings with default networks whose weights are one stack of variables
    (`tfp_glow.bijectors.nets.StackedCouplingNetworks`, see `GlowBijector.index`): what a Glow level uses."""
    split = channels // 2
    out = (channels - split) * (1 if additive else 2)
    layer = StackedCouplingNetworks(split, out, width, steps, network_policy(dtype), name=name + '_nn')
    return [
      cls(channels, width, additive, dtype=dtype, name=f'{name}_{k}', stack=(layer, k)) for k in range(steps)
    ]

  @property
  def network(self) -> keras.layers.Layer:
    """The coupling network (for a step of a stack: the stacked networks' weights)."""
    return self.layer

  def parameter_variables(self) -> list | None:
    """The default network's weights (see `tfp_glow.bijectors.nets.apply_coupling_network`); None for a custom one."""
    if isinstance(self.network, StackedCouplingNetworks):
      return self.network.weights_in_order()
    return coupling_network_weights(self.network) if self._default_network else None

  def _network_compute_dtype(self) -> str:
    if isinstance(self.network, StackedCouplingNetworks):
      return self.network.compute_dtype
    return self.network.get_layer('conv_out').compute_dtype

  def _network_output(self, parameters, x_a: tf.Tensor) -> tf.Tensor:
    if parameters is None:
      h = self.network(x_a)
    else:
      h = apply_coupling_network(parameters, x_a, self._network_compute_dtype())
    return tf.cast(h, self.dtype)  # a mixed-precision network computes in bf16/fp16

  def _shift_and_scale(self, parameters, x_a: tf.Tensor):
    """(shift, scale, log scale) of the image -> latent map z_b = (x_b + shift) * scale; scale and
    log scale are None for an additive coupling."""
    return self.shift_and_scale(self._network_output(parameters, x_a))

  def shift_and_scale(self, h: tf.Tensor):
    """(shift, scale, log scale) from the network's output h (in the flow's dtype); scale and log scale
    are None for an additive coupling."""
    if self._additive:
      return h, None, None
    shift, raw = tf.split(h, 2, axis=-1)
    raw = raw + 2.0
    return shift, tf.sigmoid(raw), tf.math.log_sigmoid(raw)  # log(sigmoid(.)), computed stably

  def couple(self, x_b: tf.Tensor, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The coupling's arithmetic, image -> latent, given the network's output h = NN(x_a) (flow dtype):
    (z_b, log-det [N] or [])."""
    shift, scale, log_scale = self.shift_and_scale(h)
    if scale is None:
      return x_b + shift, tf.zeros([], self.dtype)
    return (x_b + shift) * scale, tf.reduce_sum(log_scale, axis=[1, 2, 3])

  def split(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """x [..., C] -> (x_a [..., C//2], x_b [..., C - C//2]): the conditioning and the transformed half."""
    # tf.split, not two slices: its gradient is one concat, where each slice's gradient would be a
    # full-size zero-padded tensor, added up afterwards.
    return tuple(tf.split(x, [self._split, self.channels - self._split], axis=-1))

  def inverse_and_log_det_with(self, parameters, x):
    x_a, x_b = self.split(x)
    z_b, log_det = self.couple(x_b, self._network_output(parameters, x_a))
    return tf.concat([x_a, z_b], axis=-1), log_det

  def forward_and_log_det_with(self, parameters, z):
    z_a, z_b = tf.split(z, [self._split, self.channels - self._split], axis=-1)
    shift, scale, log_scale = self._shift_and_scale(parameters, z_a)
    if scale is None:
      return tf.concat([z_a, z_b - shift], axis=-1), tf.zeros([], self.dtype)
    x_b = z_b / scale - shift
    return tf.concat([z_a, x_b], axis=-1), -tf.reduce_sum(log_scale, axis=[1, 2, 3])

  def inverse_and_log_det(self, x):
    return self.inverse_and_log_det_with(self.current_parameters(), x)

  def forward_and_log_det(self, z):
    return self.forward_and_log_det_with(self.current_parameters(), z)


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
