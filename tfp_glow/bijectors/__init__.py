"""tfp_glow bijectors: each a `tfp.bijectors.Bijector` on images [..., H, W, C].

Direction, as in TFP: forward = latent -> image, inverse = image -> latent (the paper's direction).
"""

from tfp_glow.bijectors import conditioners, splits, transforms
from tfp_glow.bijectors.actnorm import ActNorm
from tfp_glow.bijectors.base import GlowBijector
from tfp_glow.bijectors.coupling import AffineCoupling, Coupling
from tfp_glow.bijectors.invertible_conv import Invertible1x1Conv
from tfp_glow.bijectors.permutation import ChannelPermutation
from tfp_glow.bijectors.split import SplitPrior
from tfp_glow.bijectors.squeeze import Squeeze
from tfp_glow.bijectors.top_prior import TopPrior

__all__ = [
  'ActNorm',
  'AffineCoupling',
  'ChannelPermutation',
  'Coupling',
  'GlowBijector',
  'Invertible1x1Conv',
  'SplitPrior',
  'Squeeze',
  'TopPrior',
  'conditioners',
  'splits',
  'transforms',
]
