"""The split (exit) prior: half the channels leave the flow with a learned conditional Gaussian."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tfp_glow.bijectors import transforms
from tfp_glow.bijectors.base import check_channels
from tfp_glow.bijectors.coupling import Coupling
from tfp_glow.bijectors.nets import ZeroConv2D, network_policy


class SplitPrior(Coupling):
  """The multi-scale split (Dinh et al. 2017; Kingma & Dhariwal 2018) as a bijector on `[..., H, W, C]`.

  After each level but the last, z = concat(z_a, z_b) with z_a = z[..., :C//2] staying in the flow
  and z_b leaving it. z_b gets the learned conditional prior N(mean(z_a), exp(log_std(z_a))):
    (mean, log_std) = split(ZeroConv2D(z_a), 2, axis=-1)
  Image -> latent (`inverse`): eps_b = (z_b - mean) * exp(-log_std), output concat(z_a, eps_b);
    log|det| = -sum_{H, W, C_b} log_std.
  Latent -> image (`forward`): z_b = mean + exp(log_std) * eps_b.
  With eps_b standard normal this is exactly sampling z_b from its prior; log p(z_b | z_a) is the
  standard-normal density of eps_b plus this log-det. The ZeroConv2D starts at zero, so the prior
  starts as N(0, 1) (TFP's Glow starts at std exp(-2)).

  This is a `Coupling` whose network is one ZeroConv2D and whose transform is `transforms.Standardize`.
  """

  def __init__(
    self, channels: int, dtype: tf.DType = tf.float32, validate_args: bool = False, name: str = 'split_prior'
  ):
    check_channels(channels, 2, name + ' (the split halves the channels)')
    network = ZeroConv2D(2 * (channels - channels // 2), dtype=network_policy(dtype), name=name + '_nn')
    parameters = dict(channels=channels, dtype=dtype, validate_args=validate_args, name=name)
    super().__init__(
      channels,
      transform=transforms.Standardize(),
      network=network,
      dtype=dtype,
      validate_args=validate_args,
      name=name,
      parameters=parameters,
    )

  def inverse_and_log_det_with(
    self, parameters: Sequence[tf.Tensor], x: tf.Tensor, context: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    with tf.name_scope('split_prior'):  # names its ops (benchmarks/profile_step.py)
      return super().inverse_and_log_det_with(parameters, x, context)

  def forward_and_log_det_with(
    self, parameters: Sequence[tf.Tensor], z: tf.Tensor, context: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    with tf.name_scope('split_prior'):
      return super().forward_and_log_det_with(parameters, z, context)
