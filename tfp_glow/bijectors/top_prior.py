"""The learned prior at the top of the flow, optionally conditioned on a class label."""

from __future__ import annotations

import tensorflow as tf

from tfp_glow.bijectors.base import GlowBijector, ParameterLayer, check_channels, num_pixels


class TopPriorParameters(ParameterLayer):
  """mean, log_std [C] (zero-initialized) and, if conditional, class_weights [K, 2C] (zeros)."""

  def __init__(
    self,
    channels: int,
    num_classes: int | None,
    learn_top: bool = True,
    dtype: tf.DType = tf.float32,
    name: str = 'top_prior',
  ):
    super().__init__(dtype, name)
    self.mean = self.add_weight(shape=(channels,), initializer='zeros', trainable=learn_top, name='mean')
    self.log_std = self.add_weight(
      shape=(channels,), initializer='zeros', trainable=learn_top, name='log_std'
    )
    self.class_weights = None
    if num_classes:
      self.class_weights = self.add_weight(
        shape=(num_classes, 2 * channels), initializer='zeros', name='class_weights'
      )


class TopPrior(GlowBijector):
  """The top latent's prior N(mean, exp(log_std)) as an affine bijector on `[..., H, W, C]`.

  Per channel (the reference's "learntop"; fixed at N(0, 1) when `learn_top=False`), plus, when `num_classes` is set, a zero-initialized
  linear function of the one-hot label (the reference's "ycond"):
    (mean, log_std)[n] = (mean, log_std) + one_hot(labels[n]) @ class_weights
  Image -> latent (`inverse`): eps = (h - mean) * exp(-log_std); log|det| = -H * W * sum(log_std).
  Latent -> image (`forward`): h = mean + exp(log_std) * eps.
  Everything starts at zero: the prior starts as N(0, 1).

  Conditional bijectors take the labels as a keyword, as TFP's conditional bijectors do:
  `prior.forward(eps, labels=y)` with integer labels y of the batch shape.
  """

  def __init__(
    self,
    channels: int,
    num_classes: int | None = None,
    learn_top: bool = True,
    dtype: tf.DType = tf.float32,
    validate_args: bool = False,
    name: str = 'top_prior',
  ):
    parameters = dict(locals())
    check_channels(channels, 1, name)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
      raise ValueError(f'{name}: num_classes must be None or an integer >= 2, got {num_classes!r}.')
    self._num_classes = num_classes
    layer = TopPriorParameters(channels, num_classes, learn_top, dtype, name)
    super().__init__(
      layer=layer,
      channels=channels,
      is_constant_jacobian=not num_classes,
      dtype=dtype,
      validate_args=validate_args,
      parameters=parameters,
      name=name,
    )

  @property
  def num_classes(self) -> int | None:
    return self._num_classes

  def mean_and_log_std(self, labels: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns (mean, log_std), each [C] or, for a conditional prior, [N, 1, 1, C]."""
    p = self.layer
    if not self._num_classes:
      if labels is not None:
        raise ValueError(
          f'{self.name}: labels were given, but the prior is not class-conditional (num_classes=None).'
        )
      return tf.convert_to_tensor(p.mean), tf.convert_to_tensor(p.log_std)
    if labels is None:
      raise ValueError(
        f'{self.name}: this prior is class-conditional (num_classes='
        f'{self._num_classes}); pass labels=... (integer class ids).'
      )
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
      raise TypeError(f'{self.name}: labels must be integer class ids, got dtype {labels.dtype.name}.')
    if self.validate_args:
      tf.debugging.assert_less(
        labels, tf.cast(self._num_classes, labels.dtype), message='labels must be < num_classes'
      )
      tf.debugging.assert_non_negative(labels, message='labels must be >= 0')
    shift = tf.gather(tf.convert_to_tensor(p.class_weights), labels)  # [N, 2C]
    mean, log_std = tf.split(shift[:, tf.newaxis, tf.newaxis, :], 2, axis=-1)
    return p.mean + mean, p.log_std + log_std

  def inverse_and_log_det(self, h: tf.Tensor, labels: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    with tf.name_scope('top_prior'):  # names its ops (benchmarks/profile_step.py)
      mean, log_std = self.mean_and_log_std(labels)
      eps = (h - mean) * tf.exp(-log_std)
      return eps, -_sum_log_std(log_std, h, self.dtype)

  def forward_and_log_det(
    self, eps: tf.Tensor, labels: tf.Tensor | None = None
  ) -> tuple[tf.Tensor, tf.Tensor]:
    mean, log_std = self.mean_and_log_std(labels)
    return mean + tf.exp(log_std) * eps, _sum_log_std(log_std, eps, self.dtype)


def _sum_log_std(log_std: tf.Tensor, x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """H * W * sum_C(log_std): [] for a [C] log_std, [N] for a [N, 1, 1, C] one."""
  if log_std.shape.rank == 1:
    return num_pixels(x, dtype) * tf.reduce_sum(log_std)
  return num_pixels(x, dtype) * tf.reduce_sum(log_std, axis=[1, 2, 3])
