"""tfp_glow: Glow (Kingma & Dhariwal 2018) as a TensorFlow Probability extension.

Direction, as in TFP: forward = latent -> image (sampling), inverse = image -> latent (density).
"""

from tfp_glow import atomic, bijectors, data, dequantization
from tfp_glow.bijectors import (
  ActNorm,
  AffineCoupling,
  ChannelPermutation,
  Coupling,
  Invertible1x1Conv,
  SplitPrior,
  Squeeze,
  TopPrior,
)
from tfp_glow.distribution import GlowDistribution
from tfp_glow.flow.glow import Glow
from tfp_glow.runs import train
from tfp_glow.training import callbacks, guard, optim
from tfp_glow.training.model import GlowModel

__version__ = '0.1.0'
__all__ = [
  'ActNorm',
  'AffineCoupling',
  'ChannelPermutation',
  'Coupling',
  'Glow',
  'GlowDistribution',
  'GlowModel',
  'Invertible1x1Conv',
  'SplitPrior',
  'Squeeze',
  'TopPrior',
  'atomic',
  'bijectors',
  'callbacks',
  'data',
  'dequantization',
  'guard',
  'optim',
  'train',
]
