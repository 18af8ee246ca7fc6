"""The Glow distribution over images: a TFP TransformedDistribution of a standard normal."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import tensorflow as tf
import tensorflow_probability as tfp

# TFP's non-CompositeTensor TransformedDistribution: what `tfd.TransformedDistribution(...)` itself
# returns for a bijector that is not a CompositeTensor, as ours (Keras-owned variables) is not.
# Subclasses of the public class are forced to be CompositeTensors, and a CompositeTensor hides our
# variables from `tf.Module.trainable_variables` of any TFP object that holds it (e.g. tfd.Mixture).
# It is a private TFP name: tests/test_tfp_private_api.py fails with the cause if an upgrade moves it.
try:
  from tensorflow_probability.python.distributions.transformed_distribution import (
    _TransformedDistribution,
  )
except ImportError as e:  # pragma: no cover (only after a TFP upgrade)
  raise ImportError(
    'tfp_glow: this TensorFlow Probability no longer has the private class '
    'tensorflow_probability.python.distributions.transformed_distribution._TransformedDistribution, '
    "which GlowDistribution subclasses (see tfp_glow/distribution.py); install the TFP version in tfp_glow's "
    'setup.cfg, or port GlowDistribution.'
  ) from e

from tfp_glow import checks
from tfp_glow.flow.glow import Encoding, Glow

tfd = tfp.distributions


def bits_per_dim(log_prob: tf.Tensor, num_dims: int, n_bins: int) -> tf.Tensor:
  """Bits per dimension of dequantized data x in [-0.5, 0.5) with n_bins levels per dimension:

    bits/dim = (-log p(x) + D * log(n_bins)) / (D * ln 2),   D = num_dims = H * W * C

  The D log(n_bins) term converts the density on [-0.5, 0.5)^D to one on bins of width 1/n_bins;
  a uniform model scores log2(n_bins).
  """
  d = float(num_dims)
  return (-log_prob + d * math.log(n_bins)) / (d * math.log(2.0))


def check_temperature(temperature: float | tf.Tensor, dtype: tf.DType, validate_args: bool) -> tf.Tensor:
  """The sampling temperature T as a scalar tensor; T must be finite and > 0 (checked now for a
  Python number, by assertions for a tensor when `validate_args`)."""
  if isinstance(temperature, (int, float)):
    if not (math.isfinite(temperature) and temperature > 0):
      raise ValueError(f'GlowDistribution.sample: temperature must be > 0 and finite, got {temperature!r}.')
    return tf.constant(temperature, dtype)
  temperature = tf.cast(temperature, dtype)
  if temperature.shape.rank not in (None, 0):
    raise ValueError(f'GlowDistribution.sample: temperature must be a scalar, got shape {temperature.shape}.')
  if validate_args:
    ok = tf.logical_and(tf.math.is_finite(temperature), temperature > 0)
    temperature = checks.check(
      temperature, ok, 'GlowDistribution.sample: temperature must be > 0 and finite, got', temperature
    )
  return temperature


def _at_least_one(x: tf.Tensor):
  """x [..., H, W, C] -> (x as [max(N, 1), H, W, C], N, batch shape), N = the number of images.

  Convolutions reject an empty batch, so an empty one runs as one zero image, which the caller
  slices away ([:N]): TFP's convention, empty in, empty out. Branch-free, so it works eagerly, in
  graphs with an unknown batch size (the SavedModel) and under XLA.
  """
  batch_shape = tf.shape(x)[:-3]
  flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[-3:]], 0))
  n = tf.shape(flat)[0]
  pad = tf.zeros(tf.concat([[tf.cast(tf.equal(n, 0), tf.int32)], tf.shape(x)[-3:]], 0), x.dtype)
  return tf.concat([flat, pad], 0), n, batch_shape


def _batch_labels(bijector_kwargs: dict, batch_shape, n) -> dict:
  """`labels` broadcast to the batch shape, as TFP broadcasts its arguments (a scalar: one class for
  every image), flattened and padded like `_at_least_one`'s images; any other shape is an error."""
  labels = bijector_kwargs.get('labels')
  if labels is None:
    return bijector_kwargs
  labels = tf.convert_to_tensor(labels)
  static_batch = tf.get_static_value(batch_shape)
  if labels.shape.rank is not None and labels.shape.rank > 0 and static_batch is not None:
    if not labels.shape.is_compatible_with(static_batch.tolist()):
      raise ValueError(
        f'GlowDistribution: labels must be a scalar (one class for all images) or of the batch shape '
        f'{static_batch.tolist()} (one per image), got shape {labels.shape.as_list()}.'
      )
  labels = tf.reshape(tf.broadcast_to(labels, batch_shape), [-1])
  labels = tf.concat([labels, tf.zeros([tf.cast(tf.equal(n, 0), tf.int32)], labels.dtype)], 0)
  return dict(bijector_kwargs, labels=labels)


def _batch_context(bijector_kwargs: dict, batch_shape, n) -> dict:
  """`context` [..., E] broadcast to the batch shape (one [E] vector: the same for every image), flattened to
  [N, E] and padded like `_at_least_one`'s images; a batch part of any other shape is an error."""
  context = bijector_kwargs.get('context')
  if context is None:
    return bijector_kwargs
  context = tf.convert_to_tensor(context)
  static_batch = tf.get_static_value(batch_shape)
  if context.shape.rank is None or context.shape.rank < 1 or context.shape[-1] is None:
    raise ValueError(f'GlowDistribution: context must be [..., E] with a known E, got shape {context.shape}.')
  e = context.shape[-1]
  if context.shape.rank > 1 and static_batch is not None:
    if not context.shape[:-1].is_compatible_with(static_batch.tolist()):
      raise ValueError(
        f'GlowDistribution: context must be [E] (one for all images) or of the batch shape and E, '
        f'{static_batch.tolist() + [e]} (one per image), got shape {context.shape.as_list()}.'
      )
  context = tf.reshape(tf.broadcast_to(context, tf.concat([batch_shape, [e]], 0)), [-1, e])
  context = tf.concat([context, tf.zeros([tf.cast(tf.equal(n, 0), tf.int32), e], context.dtype)], 0)
  return dict(bijector_kwargs, context=context)


def _batch_kwargs(bijector_kwargs: dict, batch_shape, n) -> dict:
  """The per-image bijector arguments, `labels` and `context`, batched as the images are."""
  return _batch_context(_batch_labels(bijector_kwargs, batch_shape, n), batch_shape, n)


def _split_kwargs(kwargs):
  """`labels=` and `context=` go to the bijector; TFP's explicit bijector_/distribution_kwargs still work."""
  kwargs = dict(kwargs)
  bijector_kwargs = dict(kwargs.pop('bijector_kwargs', {}))
  distribution_kwargs = dict(kwargs.pop('distribution_kwargs', {}))
  for key in ('labels', 'context'):
    value = kwargs.pop(key, None)
    if value is not None:
      bijector_kwargs[key] = value
  if kwargs:
    raise TypeError(f'GlowDistribution: unexpected keyword arguments {sorted(kwargs)}.')
  return distribution_kwargs, bijector_kwargs


@dataclasses.dataclass(frozen=True)
class LogProbParts:
  """log p(x) [N] of images, and the encoding it was computed from (`GlowDistribution.log_prob_parts`)."""

  log_prob: tf.Tensor
  encoding: Encoding


class GlowDistribution(_TransformedDistribution):
  """p(x) of images x [..., H, W, C] under Glow: x = glow.forward(eps), eps ~ base (N(0, I)).

    log p(x) = log p_base(glow.inverse(x)) + glow.inverse_log_det_jacobian(x)

  A TFP TransformedDistribution (the class `tfd.TransformedDistribution(base, glow)` returns), so
  every TFP method and composition works; additions:
    sample(n, temperature=T, labels=None): eps ~ base, scaled by T (T < 1: typical images; the paper
      likes T = 0.7). With the N(0, I) base this scales the std of every level's prior by T.
    log_prob(x, labels=None), encode(x) -> per-level latents, decode(latents) -> images.
  Class-conditional flows (num_classes set) need integer `labels` of the batch shape. A Glow whose conditioners
  take a context (`tfp_glow.flow.context`) takes `context=` [..., E] (the batch shape, or one [E] for every
  image) in each of these, as TFP's `bijector_kwargs={'context': c}` too.

  `base_distribution` (default N(0, I) of event shape [H, W, C]) may be any distribution with that
  event shape and the flow's dtype, e.g. a Student-t, a learned mixture.

  Input checks: shapes and dtypes always; with `validate_args=True` also NaN / Inf in the images of
  log_prob and encode, the latents of decode, and a temperature tensor (InvalidArgumentError). Never a
  range: the density and the samples live on all of R^D (images are range-checked where data enters:
  GlowModel, the SavedModel, the CLI). docs/troubleshooting.md lists what each entry point checks.
  """

  def __init__(
    self,
    glow: Glow,
    base_distribution: tfp.distributions.Distribution | None = None,
    validate_args: bool = False,
    name: str = 'GlowDistribution',
  ):
    parameters = dict(locals())
    if not isinstance(glow, Glow):
      raise TypeError(f'GlowDistribution: expected a tfp_glow.Glow bijector, got {type(glow).__name__}.')
    if base_distribution is None:
      base_distribution = tfd.Sample(
        tfd.Normal(tf.zeros([], glow.dtype), tf.ones([], glow.dtype)), sample_shape=glow.image_shape
      )
    elif tuple(base_distribution.event_shape) != glow.image_shape:
      raise ValueError(
        f"GlowDistribution: the base distribution's event shape must be "
        f'{glow.image_shape}, got {base_distribution.event_shape}.'
      )
    super().__init__(
      distribution=base_distribution,
      bijector=glow,
      kwargs_split_fn=_split_kwargs,
      validate_args=validate_args,
      parameters=parameters,
      name=name,
    )
    self._parameters = dict(parameters, base_distribution=base_distribution)

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    # Same as TransformedDistribution's, under this class's argument names.
    return dict(
      base_distribution=tfp.util.BatchedComponentProperties(),
      glow=tfp.util.BatchedComponentProperties(event_ndims=lambda d: 3),
    )

  @property
  def base_distribution(self) -> tfp.distributions.Distribution:
    return self.distribution

  @property
  def glow(self) -> Glow:
    return self.bijector

  def _call_sample_n(self, sample_shape, seed, temperature: float | tf.Tensor = 1.0, **kwargs):
    temperature = check_temperature(temperature, self.dtype, self.validate_args)
    distribution_kwargs, bijector_kwargs = self._kwargs_split_fn(kwargs)
    eps = self.distribution.sample(sample_shape, seed=seed, **distribution_kwargs)
    eps = eps * temperature
    flat, n, batch_shape = _at_least_one(eps)
    bijector_kwargs = _batch_kwargs(bijector_kwargs, batch_shape, n)
    images = self.bijector.forward(flat, **bijector_kwargs)[:n]
    return tf.reshape(images, tf.concat([batch_shape, self.glow.image_shape], 0))

  def _check_finite(self, x: tf.Tensor, what: str) -> tf.Tensor:
    """With validate_args, `x` refused if it holds NaN or Inf. No range check: the density lives on all
    of R^D (images are range-checked where data enters: GlowModel, the SavedModel, the CLI)."""
    if not self.validate_args:
      return x
    return checks.all_finite(x, f'{self.name}: the {what} contain NaN or Inf.')

  def _log_prob(self, y, **kwargs):
    y = self._check_finite(tf.convert_to_tensor(y, self.dtype), 'images')
    flat, n, batch_shape = _at_least_one(y)
    distribution_kwargs, bijector_kwargs = self._kwargs_split_fn(kwargs)
    kwargs = {
      'distribution_kwargs': distribution_kwargs,
      'bijector_kwargs': _batch_kwargs(bijector_kwargs, batch_shape, n),
    }
    return tf.reshape(super()._log_prob(flat, **kwargs)[:n], batch_shape)

  def log_prob_parts(
    self,
    images: tf.Tensor,
    labels: tf.Tensor | None = None,
    training_gradient: str | None = None,
    context: tf.Tensor | None = None,
  ) -> LogProbParts:
    """log p(x) of images [N, H, W, C] with the encoding behind it (latents, log-det, top activations):

      log p(x) = log p_base(eps(x)) + log|det d eps / d x|,   eps(x) = join_latents(glow.encode(x))

    (`log_prob`'s value for a batch of N > 0 images). `training_gradient`: None, each level is differentiated
    as the bijector's `gradient` says; or one of `tfp_glow.flow.gradients.GRADIENTS`, for a training step
    whose only gradient is first order (of the loss w.r.t. the parameters and x): each level is
    differentiated with it, without asking TensorFlow whether a higher order may be taken."""
    encoding = self.glow.encode_with_log_det(images, labels, training_gradient, context)
    log_prob = self.distribution.log_prob(self.glow.join_latents(encoding.latents)) + encoding.log_det
    return LogProbParts(log_prob, encoding)

  def encode(
    self, images: tf.Tensor, labels: tf.Tensor | None = None, context: tf.Tensor | None = None
  ) -> list[tf.Tensor]:
    """Images [..., H, W, C] -> per-level latents [eps_1, ..., eps_L], eps_i [..., h_i, w_i, c_i] (see
    `Glow.encode`): any batch shape, as `log_prob` and `sample` take (N may be 0); `labels` a scalar or
    of the batch shape."""
    images = tf.convert_to_tensor(images, self.dtype)
    if images.shape.rank is None or images.shape.rank < 3:
      raise ValueError(f'{self.name}: encode expects images [..., H, W, C], got {images.shape}.')
    images = self._check_finite(images, 'images')
    flat, n, batch_shape = _at_least_one(images)
    kwargs = _batch_kwargs({'labels': labels, 'context': context}, batch_shape, n)
    latents = self.glow.encode(
      flat, kwargs['labels'], kwargs['context']
    )  # its error names a wrong image shape
    return [tf.reshape(z[:n], tf.concat([batch_shape, tf.shape(z)[1:]], 0)) for z in latents]

  def decode(
    self, latents: Sequence[tf.Tensor], labels: tf.Tensor | None = None, context: tf.Tensor | None = None
  ) -> tf.Tensor:
    """Per-level latents eps_i [..., h_i, w_i, c_i] -> images [..., H, W, C] (see `Glow.decode`): any
    batch shape, the same for every level (N may be 0); `labels` a scalar or of the batch shape."""
    latents = [self._check_finite(tf.convert_to_tensor(z, self.dtype), 'latents') for z in latents]
    ranks = {z.shape.rank for z in latents}
    if len(latents) != len(self.glow.latent_shapes) or len(ranks) != 1 or None in ranks or min(ranks) < 3:
      return self.glow.decode(latents, labels, context)  # its error names the expected shapes
    batch_shape = tf.shape(latents[0])[:-3]
    flat = [tf.reshape(z, tf.concat([[-1], tf.shape(z)[-3:]], 0)) for z in latents]
    if ranks != {4}:  # the 4-D case: Glow.decode checks the shapes; here the leading dims must agree
      static = [tuple(z.shape[:-3]) for z in latents]
      if len(set(static)) != 1:
        raise ValueError(
          f'{self.name}: decode expects latents of one batch shape (..., then {self.glow.latent_shapes}), '
          f'got {[tuple(z.shape) for z in latents]}.'
        )
    n = tf.shape(flat[0])[0]
    pad = tf.cast(tf.equal(n, 0), tf.int32)
    padded = [tf.concat([z, tf.zeros(tf.concat([[pad], tf.shape(z)[1:]], 0), z.dtype)], 0) for z in flat]
    kwargs = _batch_kwargs({'labels': labels, 'context': context}, batch_shape, n)
    images = self.glow.decode(padded, kwargs['labels'], kwargs['context'])[:n]
    return tf.reshape(images, tf.concat([batch_shape, self.glow.image_shape], 0))
