"""Fixed channel permutations: the paper's baselines for the 1x1 convolution (reverse, shuffle)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfp_glow.bijectors.base import GlowBijector, ParameterLayer, check_channels


class PermutationParameters(ParameterLayer):
  """The permutation as a saved, non-trainable variable (a random shuffle must survive save/load); [C],
  or [K, C] for K stacked permutations."""

  def __init__(
    self, permutation: np.ndarray, dtype: tf.DType = tf.float32, name: str = 'channel_permutation'
  ):
    super().__init__(dtype, name)
    self.permutation = self.add_weight(
      shape=permutation.shape,
      dtype='int32',
      trainable=False,
      name='permutation',
      initializer=lambda shape, dtype=None: tf.constant(permutation, dtype=dtype),
    )


class ChannelPermutation(GlowBijector):
  """A fixed permutation of the channels of `[..., H, W, C]`; log-det 0.

  Image -> latent (`inverse`): z[..., c] = x[..., permutation[c]].
  Latent -> image (`forward`): x = z[..., argsort(permutation)].
  `ChannelPermutation.reverse(C)` and `ChannelPermutation.shuffle(C, seed)` are the paper's
  "reverse" and "shuffle" baselines (section 3.2, figure 3).
  """

  def __init__(
    self,
    permutation: Sequence[int] | np.ndarray,
    dtype: tf.DType = tf.float32,
    validate_args: bool = False,
    name: str = 'channel_permutation',
    stack: tuple[PermutationParameters, int] | None = None,
  ):
    parameters = dict(locals())
    self._permutation, self._layer_dtype = _checked(permutation, name), dtype
    super().__init__(
      stack=stack,
      channels=len(self._permutation),
      is_constant_jacobian=True,
      dtype=dtype,
      validate_args=validate_args,
      parameters=parameters,
      name=name,
    )

  def _parameter_layer(self, steps, name) -> PermutationParameters:
    if steps is not None:  # each step has its own permutation: `stacked` takes them all
      raise ValueError(f'{name}: stack permutations with ChannelPermutation.stacked(rows).')
    return PermutationParameters(self._permutation, self._layer_dtype, name)

  @classmethod
  def stacked(
    cls,
    permutations: Sequence[Sequence[int] | np.ndarray] | np.ndarray,
    dtype: tf.DType = tf.float32,
    name: str = 'channel_permutation',
  ) -> list:
    """One ChannelPermutation per row of `permutations` [K, C], their permutations one stacked variable
    (see `GlowBijector.index`): what a Glow level uses. (Not the base class's `stacked`: each step has its
    own permutation, not the same settings.)"""
    rows = np.stack([_checked(p, name) for p in permutations])
    layer = PermutationParameters(rows, dtype, name)
    return [cls(row, dtype, name=f'{name}_{k}', stack=(layer, k)) for k, row in enumerate(rows)]

  @classmethod
  def reverse(cls, channels: int, **kwargs: Any) -> ChannelPermutation:
    """Reverses the channel order (RealNVP's fixed permutation)."""
    return cls(np.arange(channels)[::-1], **{'name': 'reverse', **kwargs})

  @classmethod
  def shuffle(cls, channels: int, seed: int | None = None, **kwargs: Any) -> ChannelPermutation:
    """A fixed random permutation drawn once at construction (`seed` for reproducibility)."""
    return cls(np.random.default_rng(seed).permutation(channels), **{'name': 'shuffle', **kwargs})

  def parameter_variables(self) -> list:
    return [self.layer.permutation]

  def inverse_and_log_det_with(
    self, parameters: list[tf.Tensor], x: tf.Tensor
  ) -> tuple[tf.Tensor, tf.Tensor]:
    (permutation,) = parameters
    return tf.gather(x, permutation, axis=-1), tf.zeros([], self.dtype)

  def forward_and_log_det_with(
    self, parameters: list[tf.Tensor], z: tf.Tensor
  ) -> tuple[tf.Tensor, tf.Tensor]:
    (permutation,) = parameters
    return tf.gather(z, tf.math.invert_permutation(permutation), axis=-1), tf.zeros([], self.dtype)


def _checked(permutation: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
  values = np.asarray(permutation, dtype=np.int32)
  check_channels(len(values), 1, name)
  if values.ndim != 1 or sorted(values.tolist()) != list(range(len(values))):
    raise ValueError(f'{name}: not a permutation of 0..C-1: {values.tolist()}.')
  return values
