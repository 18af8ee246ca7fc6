"""GlowDistribution rests on one private TFP name; these tests say so plainly if a TFP upgrade breaks it."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.distributions import transformed_distribution

import tfp_glow

tfd = tfp.distributions
CAUSE = (
  "tfp_glow.GlowDistribution subclasses TFP's private transformed_distribution._TransformedDistribution, "
  'the class tfd.TransformedDistribution(...) returns for a bijector that is not a CompositeTensor'
)


def test_tfp_still_has_the_private_class():
  assert hasattr(transformed_distribution, '_TransformedDistribution'), (
    f'{CAUSE}; this TFP ({tfp.__version__}) no longer defines it.'
  )


def test_tfp_still_returns_it_for_our_bijectors():
  glow = tfp_glow.Glow((4, 4, 1), levels=1, steps=1, width=4)
  base = tfd.Sample(tfd.Normal(0.0, 1.0), sample_shape=glow.image_shape)
  made = tfd.TransformedDistribution(base, glow)
  assert type(made) is transformed_distribution._TransformedDistribution, (
    f'{CAUSE}; this TFP ({tfp.__version__}) returns {type(made).__name__} instead, so GlowDistribution '
    'no longer behaves as tfd.TransformedDistribution(base, glow) does.'
  )
  dist = tfp_glow.GlowDistribution(glow)
  assert not isinstance(dist, tf.__internal__.CompositeTensor), (
    f'{CAUSE}; GlowDistribution became a CompositeTensor, which hides its variables from TFP containers.'
  )
  assert {id(v) for v in glow.trainable_variables} == {id(v) for v in dist.trainable_variables}
