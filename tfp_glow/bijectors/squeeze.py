"""Squeeze: 2x2 space-to-depth, the reshaping between the levels of the multi-scale flow."""

from __future__ import annotations

import tensorflow as tf

from tfp_glow.bijectors.base import GlowBijector


class Squeeze(GlowBijector):
  """The paper's squeeze (Dinh et al. 2017), on `[..., H, W, C]`; volume preserving, log-det 0.

  Image -> latent (`inverse`, the paper's squeeze): [H, W, C] -> [H/f, W/f, f*f*C]
    z[i, j, (a*f + b)*C + c] = x[i*f + a, j*f + b, c]     (tf.nn.space_to_depth)
  Latent -> image (`forward`, "unsqueeze"): [h, w, c] -> [h*f, w*f, c/(f*f)] (tf.nn.depth_to_space).
  As for every tfp_glow bijector, forward goes towards the image, so `forward` unsqueezes.
  H and W must be divisible by f; the latent's channels by f*f.
  """

  def __init__(
    self, factor: int = 2, validate_args: bool = False, name: str = 'squeeze', dtype: tf.DType = tf.float32
  ):
    parameters = dict(locals())
    if not isinstance(factor, int) or factor < 1:
      raise ValueError(f'{name}: factor must be a positive integer, got {factor!r}.')
    self._factor = factor
    super().__init__(
      layer=None,
      is_constant_jacobian=True,
      dtype=dtype,
      validate_args=validate_args,
      parameters=parameters,
      name=name,
    )

  @property
  def factor(self) -> int:
    return self._factor

  def _latent_shape(self, image_shape):
    h, w, c = image_shape
    f = self._factor
    if h % f or w % f:
      raise ValueError(f'{self.name}: image height and width must be divisible by {f}, got {h}x{w}.')
    return (h // f, w // f, c * f * f)

  def _image_shape(self, latent_shape):
    h, w, c = latent_shape
    f = self._factor
    if c % (f * f):
      raise ValueError(f'{self.name}: latent channels must be divisible by {f * f}, got {c}.')
    return (h * f, w * f, c // (f * f))

  def inverse_and_log_det(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    self._latent_shape(x.shape[-3:])  # validates with a clear message before TF's own error
    return tf.nn.space_to_depth(x, self._factor), tf.zeros([], self.dtype)

  def forward_and_log_det(self, z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    self._image_shape(z.shape[-3:])
    return tf.nn.depth_to_space(z, self._factor), tf.zeros([], self.dtype)

  # Event-shape hooks: static ([H, W, C] TensorShape) and dynamic (int tensor) versions.
  def _forward_event_shape(self, input_shape):
    return _map_event(input_shape, self._image_shape)

  def _inverse_event_shape(self, output_shape):
    return _map_event(output_shape, self._latent_shape)

  def _forward_event_shape_tensor(self, input_shape):
    f = self._factor
    return tf.concat([input_shape[:-3], input_shape[-3:-1] * f, input_shape[-1:] // (f * f)], 0)

  def _inverse_event_shape_tensor(self, output_shape):
    f = self._factor
    return tf.concat([output_shape[:-3], output_shape[-3:-1] // f, output_shape[-1:] * f * f], 0)


def _map_event(shape: tf.TensorShape, fn) -> tf.TensorShape:
  shape = tf.TensorShape(shape)
  if shape.rank is None or not shape[-3:].is_fully_defined():
    return shape[:-3].concatenate([None] * 3) if shape.rank is not None else shape
  return shape[:-3].concatenate(fn(tuple(shape[-3:].as_list())))
