"""The Glow distribution over images: a TFP TransformedDistribution of a standard normal."""

from __future__ import annotations

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

from tfp_glow.glow import Glow

tfd = tfp.distributions


def bits_per_dim(log_prob: tf.Tensor, num_dims: int, n_bins: int) -> tf.Tensor:
  """Bits per dimension of dequantized data x in [-0.5, 0.5) with n_bins levels per dimension:

    bits/dim = (-log p(x) + D * log(n_bins)) / (D * ln 2),   D = num_dims = H * W * C

  The D log(n_bins) term converts the density on [-0.5, 0.5)^D to one on bins of width 1/n_bins;
  a uniform model scores log2(n_bins).
  """
  d = float(num_dims)
  return (-log_prob + d * math.log(n_bins)) / (d * math.log(2.0))


def _split_kwargs(kwargs):
  """`labels=` goes to the bijector; TFP's explicit bijector_/distribution_kwargs still work."""
  kwargs = dict(kwargs)
  bijector_kwargs = dict(kwargs.pop('bijector_kwargs', {}))
  distribution_kwargs = dict(kwargs.pop('distribution_kwargs', {}))
  if 'labels' in kwargs:
    labels = kwargs.pop('labels')
    if labels is not None:
      bijector_kwargs['labels'] = labels
  if kwargs:
    raise TypeError(f'GlowDistribution: unexpected keyword arguments {sorted(kwargs)}.')
  return distribution_kwargs, bijector_kwargs


class GlowDistribution(_TransformedDistribution):
  """p(x) of images x [..., H, W, C] under Glow: x = glow.forward(eps), eps ~ base (N(0, I)).

    log p(x) = log p_base(glow.inverse(x)) + glow.inverse_log_det_jacobian(x)

  A TFP TransformedDistribution (the class `tfd.TransformedDistribution(base, glow)` returns), so
  every TFP method and composition works; additions:
    sample(n, temperature=T, labels=None): eps ~ base, scaled by T (T < 1: typical images; the paper
      likes T = 0.7). With the N(0, I) base this scales the std of every level's prior by T.
    log_prob(x, labels=None), encode(x) -> per-level latents, decode(latents) -> images.
  Class-conditional flows (num_classes set) need integer `labels` of the batch shape.

  `base_distribution` (default N(0, I) of event shape [H, W, C]) may be any distribution with that
  event shape and the flow's dtype, e.g. a Student-t, a learned mixture.
  """

  def __init__(
    self,
    glow: Glow,
    base_distribution: tfd.Distribution | None = None,
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
  def base_distribution(self) -> tfd.Distribution:
    return self.distribution

  @property
  def glow(self) -> Glow:
    return self.bijector

  def _call_sample_n(self, sample_shape, seed, temperature: float | tf.Tensor = 1.0, **kwargs):
    if isinstance(temperature, (int, float)) and not temperature > 0:
      raise ValueError(f'GlowDistribution.sample: temperature must be > 0, got {temperature!r}.')
    distribution_kwargs, bijector_kwargs = self._kwargs_split_fn(kwargs)
    eps = self.distribution.sample(sample_shape, seed=seed, **distribution_kwargs)
    eps = eps * tf.cast(temperature, eps.dtype)
    return self.bijector.forward(eps, **bijector_kwargs)

  def encode(self, images: tf.Tensor, labels: tf.Tensor | None = None) -> list[tf.Tensor]:
    """Images [N, H, W, C] -> per-level latents [eps_1, ..., eps_L] (see `Glow.encode`)."""
    return self.glow.encode(images, labels)

  def decode(self, latents: Sequence[tf.Tensor], labels: tf.Tensor | None = None) -> tf.Tensor:
    """Per-level latents -> images [N, H, W, C] (see `Glow.decode`)."""
    return self.glow.decode(latents, labels)
