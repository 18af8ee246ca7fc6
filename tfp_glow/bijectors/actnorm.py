"""Activation normalization (actnorm): a per-channel affine map with data-dependent init."""

from __future__ import annotations

import warnings

import tensorflow as tf

from tfp_glow.bijectors.base import GlowBijector, ParameterLayer, check_channels, check_images, num_pixels


class ActNormParameters(ParameterLayer):
  """log_scale [C], bias [C] (trainable) and `initialized` (a saved, non-trainable flag); with `steps=K`,
  the same for K actnorms stacked: [K, C], [K, C], [K]."""

  def __init__(
    self, channels: int, dtype: tf.DType = tf.float32, name: str = 'actnorm', steps: int | None = None
  ):
    super().__init__(dtype, name)
    lead = () if steps is None else (steps,)
    self.log_scale = self.add_weight(shape=(*lead, channels), initializer='zeros', name='log_scale')
    self.bias = self.add_weight(shape=(*lead, channels), initializer='zeros', name='bias')
    # Saved with the weights, so a restored model is not re-initialized from new data.
    self.initialized = self.add_weight(
      shape=lead, initializer='zeros', dtype='bool', trainable=False, name='initialized'
    )


class ActNorm(GlowBijector):
  """Actnorm (Kingma & Dhariwal 2018, section 3.1) on images `[..., H, W, C]`.

  Image -> latent (`inverse`, the paper's direction), per channel c:
    z = x * s + b,   s = exp(log_scale)
    log|det dz/dx| = H * W * sum_c(log_scale[c])
  Latent -> image (`forward`): x = (z - b) / s.

  The scale is stored as its log, so it can never cross zero.

  Initialization is an explicit step, `initialize(x)`, from a batch of images as they arrive at this
  layer: it sets s = 1 / (std(x) + 1e-6) and b = -mean(x) * s per channel, so that z has zero mean and
  unit variance per channel. A channel constant in that batch (std < MIN_INIT_STD) gets s = 1, with a
  `DegenerateInitWarning` (see `data_init`). It is idempotent (a second call changes nothing) and nothing else
  triggers it: sampling never initializes actnorm. The `initialized` flag is saved with the weights.

  Cost: O(N H W C) elementwise.
  """

  def __init__(
    self,
    channels: int,
    dtype: tf.DType = tf.float32,
    validate_args: bool = False,
    name: str = 'actnorm',
    stack: tuple[ActNormParameters, int] | None = None,
  ):
    parameters = dict(locals())
    self._settings = (check_channels(channels, 1, name), dtype)
    super().__init__(
      stack=stack,
      channels=channels,
      is_constant_jacobian=True,
      dtype=dtype,
      validate_args=validate_args,
      parameters=parameters,
      name=name,
    )

  def _parameter_layer(self, steps, name) -> ActNormParameters:
    # `ActNorm.stacked(channels, steps)` (the base class's): [K, C], [K, C], [K]
    return ActNormParameters(*self._settings, name, steps=steps)

  @property
  def is_initialized(self) -> tf.Tensor:
    return self._read(self.layer.initialized)

  def initialize(self, x: tf.Tensor, epsilon: float = 1e-6) -> None:
    """Data-dependent init from images `x` `[..., H, W, C]`; a no-op once initialized.

    Works eagerly and inside `tf.function` (it is plain variable assignment), so a distribution
    strategy can run it once in cross-replica context for all replicas.
    """
    x = tf.convert_to_tensor(x, dtype=self.dtype)
    check_images(x, self.dtype, self.name)
    p = self.layer
    done = self._read(p.initialized)
    log_scale, bias = data_init(x, epsilon)
    self._assign(p.log_scale, tf.where(done, self._read(p.log_scale), log_scale))
    self._assign(p.bias, tf.where(done, self._read(p.bias), bias))
    self._assign(p.initialized, tf.constant(True))

  def parameter_variables(self) -> list:
    return [self.layer.log_scale, self.layer.bias]

  def inverse_and_log_det_with(
    self, parameters: list[tf.Tensor], x: tf.Tensor
  ) -> tuple[tf.Tensor, tf.Tensor]:
    log_scale, bias = parameters
    return x * tf.exp(log_scale) + bias, num_pixels(x, self.dtype) * tf.reduce_sum(log_scale)

  def forward_and_log_det_with(
    self, parameters: list[tf.Tensor], z: tf.Tensor
  ) -> tuple[tf.Tensor, tf.Tensor]:
    log_scale, bias = parameters
    return (z - bias) * tf.exp(-log_scale), -num_pixels(z, self.dtype) * tf.reduce_sum(log_scale)


# Channels whose standard deviation in the init batch is below this are degenerate (constant): they get
# scale 1 instead of 1 / (std + epsilon), which would be up to 1 / epsilon = 1e6 and make the log-density
# of any other image astronomically large. Dequantized 8-bit pixels alone vary by 1 / (256 sqrt 12) ~ 1e-3.
MIN_INIT_STD = 1e-4


class DegenerateInitWarning(UserWarning):
  """Actnorm's init batch had channels of (near) zero variance; their scale was set to 1."""


def data_init(x: tf.Tensor, epsilon: float = 1e-6) -> tuple[tf.Tensor, tf.Tensor]:
  """(log_scale [C], bias [C]) that standardize `x` [..., H, W, C] per channel:
    log_scale = -log(std + epsilon)  where std >= MIN_INIT_STD,
              = 0 (scale 1)          where std <  MIN_INIT_STD (a constant channel: bounded, with a warning)
    bias = -mean * exp(log_scale)
  Works eagerly and in graphs (the warning goes through a py_function, only when it fires)."""
  mean, variance = tf.nn.moments(x, axes=list(range(x.shape.rank - 1)))
  std = tf.sqrt(variance)
  degenerate = std < MIN_INIT_STD
  log_scale = tf.where(degenerate, tf.zeros_like(std), -tf.math.log(std + epsilon))
  count = tf.reduce_sum(tf.cast(degenerate, tf.int32))

  def warn():
    tf.py_function(_warn_degenerate, [count, tf.size(std)], [])
    return tf.constant(0)

  tf.cond(count > 0, warn, lambda: tf.constant(0))
  return log_scale, -mean * tf.exp(log_scale)


def _warn_degenerate(count, channels) -> None:
  warnings.warn(
    f'actnorm init: {int(count)} of {int(channels)} channels have (near) zero variance in the init batch '
    f'(std < {MIN_INIT_STD:g}: constant images?); their scale is set to 1 instead of 1 / std. Initialize '
    'from a batch of varied images (GlowModel.initialize, or the first init_batch_size images of fit).',
    DegenerateInitWarning,
    stacklevel=2,
  )
