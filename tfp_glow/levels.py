"""The parts of a Glow level: its steps (actnorm -> permutation -> coupling), and how `Glow` builds them.

With the default coupling network a level's steps share stacked variables ([K, ...] per parameter, see
`GlowBijector.index` and `tfp_glow.step_loop`); with a custom network each step owns its layers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfp_glow.bijectors.actnorm import ActNorm
from tfp_glow.bijectors.base import GlowBijector
from tfp_glow.bijectors.coupling import AffineCoupling
from tfp_glow.bijectors.invertible_conv import Invertible1x1Conv
from tfp_glow.bijectors.permutation import ChannelPermutation
from tfp_glow.bijectors.split import SplitPrior
from tfp_glow.bijectors.top_prior import TopPrior


@dataclasses.dataclass(frozen=True)
class Step:
  """One step of flow, image -> latent order: actnorm -> permutation -> coupling."""

  actnorm: ActNorm
  permutation: GlowBijector
  coupling: AffineCoupling

  def bijectors(self) -> tuple[GlowBijector, GlowBijector, GlowBijector]:
    return (self.actnorm, self.permutation, self.coupling)


@dataclasses.dataclass(frozen=True)
class Level:
  """squeeze -> K steps -> exit: a SplitPrior (all levels but the last) or the TopPrior (or None)."""

  steps: tuple[Step, ...]
  exit: SplitPrior | TopPrior | None
  shape: tuple[int, int, int]  # [h, w, c] after the squeeze
  latent_shape: tuple[int, int, int]  # the part of the latent this level emits


def step_with_own_layers(level, k, c, width, coupling, permutation, coupling_network, rng, dtype) -> Step:
  """Step k of a level whose layers each own their parameters (a custom coupling network)."""
  prefix = f'level{level}_step{k}_'
  perm = _make_permutation(permutation, c, int(rng.integers(2**31)), dtype, prefix)
  net = coupling_network(c // 2, (c - c // 2) * (1 if coupling == 'additive' else 2))
  additive = coupling == 'additive'
  return Step(
    ActNorm(c, dtype=dtype, name=prefix + 'actnorm'),
    perm,
    AffineCoupling(c, width, additive=additive, network=net, dtype=dtype, name=prefix + 'coupling'),
  )


def stacked_steps(level, c, steps, width, coupling, permutation, seed, dtype) -> list[Step]:
  """A level's K steps whose parameters are stacked, one variable [K, ...] per parameter of a step
  (see `GlowBijector.index`): the loop over the steps reads each once, and the optimizer updates a
  handful of variables per level instead of 13 per step."""
  prefix = f'level{level}_'
  actnorms = ActNorm.stacked(c, steps, dtype=dtype, name=prefix + 'actnorm')
  if permutation in ('conv_lu', 'conv'):
    lu = permutation == 'conv_lu'
    perms = Invertible1x1Conv.stacked(c, steps, lu, seed, dtype, name=prefix + 'invertible_1x1_conv')
  else:
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(c) if permutation == 'shuffle' else np.arange(c)[::-1] for _ in range(steps)]
    perms = ChannelPermutation.stacked(rows, dtype, name=prefix + permutation)
  couplings = AffineCoupling.stacked(
    c, steps, width, additive=(coupling == 'additive'), dtype=dtype, name=prefix + 'coupling'
  )
  return [Step(*layers) for layers in zip(actnorms, perms, couplings)]


def _make_permutation(kind: str, channels: int, seed: int, dtype, prefix: str) -> GlowBijector:
  if kind in ('conv_lu', 'conv'):
    return Invertible1x1Conv(
      channels, lu_decomposed=(kind == 'conv_lu'), seed=seed, dtype=dtype, name=prefix + 'invertible_1x1_conv'
    )
  if kind == 'shuffle':
    return ChannelPermutation.shuffle(channels, seed=seed, dtype=dtype, name=prefix + 'shuffle')
  return ChannelPermutation.reverse(channels, dtype=dtype, name=prefix + 'reverse')
