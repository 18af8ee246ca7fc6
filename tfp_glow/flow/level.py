"""The parts of a Glow level: its steps (actnorm -> permutation -> coupling), and how `Glow` builds them.

`build_steps` decides once whether a level's K steps are a `StepStack` (stacked variables [K, ...] per
parameter, one loop; the default layers, and any layer that follows the protocol in docs/design.md) or a
`StepList` (each step owns its layers, unrolled: a custom coupling network, or a layer that cannot take
its parameters as arguments, with a warning that names what is missing).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from tfp_glow.bijectors import conditioners, splits, transforms
from tfp_glow.bijectors.actnorm import ActNorm
from tfp_glow.bijectors.base import GlowBijector
from tfp_glow.bijectors.coupling import AffineCoupling, Coupling
from tfp_glow.bijectors.invertible_conv import Invertible1x1Conv
from tfp_glow.bijectors.permutation import ChannelPermutation
from tfp_glow.bijectors.split import SplitPrior
from tfp_glow.bijectors.top_prior import TopPrior
from tfp_glow.flow.stack import Step, StepList, Steps, StepStack, why_not_stacked


@dataclasses.dataclass(frozen=True)
class Level:
  """squeeze -> K steps -> exit: a SplitPrior (all levels but the last) or the TopPrior (or None)."""

  steps: (
    Steps  # a StepStack or a StepList (`tfp_glow.flow.stack`): `for step in level.steps`, `level.steps[k]`
  )
  exit: SplitPrior | TopPrior | None
  shape: tuple[int, int, int]  # [h, w, c] after the squeeze
  latent_shape: tuple[int, int, int]  # the part of the latent this level emits


NetworkFn = Callable[[int, int], keras.layers.Layer]  # (in_channels, out_channels) -> Keras layer


def build_levels(
  image_shape: tuple[int, int, int],
  levels: int,
  shared: tuple[Any, ...],
  split: str | splits.Split,
  num_classes: int | None,
  learn_top: bool,
) -> list[Level]:
  """A Glow's L levels on an [H, W, C] image: level l works on [H / 2^(l+1), W / 2^(l+1), C_l * 4] after its
  squeeze, and all but the last hand half their channels to a SplitPrior (C_(l+1) = 2 C_l). `shared`:
  `build_steps`' (steps, width, coupling, permutation, coupling_network, rng, dtype, conditioner)."""
  dtype = shared[6]
  h, w, c = image_shape
  built = []
  for l in range(levels):
    h, w, c = h // 2, w // 2, c * 4
    steps = build_steps(l, c, *shared, spatial=(h, w), split=split)
    exit_: SplitPrior | TopPrior | None
    if l < levels - 1:
      exit_ = SplitPrior(c, dtype=dtype, name=f'level{l}_split_prior')
      latent_shape = (h, w, c - c // 2)
    elif learn_top or num_classes:
      exit_, latent_shape = TopPrior(c, num_classes, learn_top, dtype=dtype, name='top_prior'), (h, w, c)
    else:
      exit_, latent_shape = None, (h, w, c)
    built.append(Level(steps, exit_, (h, w, c), latent_shape))
    c = c // 2 if l < levels - 1 else c
  return built


def build_steps(
  level: int,
  c: int,
  steps: int,
  width: int,
  coupling: Any,
  permutation: Any,
  coupling_network: Any,
  rng: np.random.Generator,
  dtype: tf.DType,
  conditioner: Any = None,
  spatial: tuple[int, int] | None = None,
  split: str | splits.Split = 'channel',
) -> Steps:
  """Level `level`'s K = `steps` steps on c channels: a StepStack where every layer can be stacked, else a
  StepList. `coupling`, `permutation`: a name (see Glow) or a GlowBijector subclass (docs/design.md).
  `rng`: the flow's numpy Generator (random rotations and shuffles). `conditioner`: the built-in coupling's
  conditioner spec (`tfp_glow.bijectors.conditioners`; None: 'conv'); `spatial`: the level's (h, w). `split`:
  the built-in coupling's split (`tfp_glow.bijectors.splits`: 'channel', 'checkerboard', 'stripes')."""
  split = splits.split_from(split)
  who = f'Glow level {level} ({spatial[0]}x{spatial[1]}x{c})' if spatial else f'Glow level {level}'
  _check_conditioner(conditioner, coupling, coupling_network)
  _check_split(split, coupling, spatial, c, who)
  if coupling_network is not None:
    _check_custom_network(coupling, permutation)
    return StepList(
      [
        step_with_own_layers(level, k, c, width, coupling, permutation, coupling_network, rng, dtype, split)
        for k in range(steps)
      ]
    )
  prefix = f'level{level}_'
  missing = [
    f'the {role} cannot be stacked ({why})'
    for role, kind in (('coupling', coupling), ('permutation', permutation))
    if isinstance(kind, type) and (why := why_not_stacked(kind))
  ]
  layers = [ActNorm.stacked(c, steps, dtype=dtype, name=prefix + 'actnorm')]
  layers.append(_permutations(permutation, c, steps, int(rng.integers(2**31)), dtype, prefix))
  if (conditioner is not None and conditioner != conditioners.Conv()) or split.spatial:  # not the paper's
    if conditioner is not None:
      conditioner.check_spatial(spatial, who)
    options = dict(conditioner=conditioner or 'conv', spatial=spatial, split=split)
    layers.append(
      Coupling.stacked(
        c, steps, width=width, transform=coupling, dtype=dtype, name=prefix + 'coupling', **options
      )
    )
  else:
    layers.append(_couplings(coupling, c, steps, width, dtype, prefix))
  built = [Step(*step) for step in zip(*layers)]
  if not missing:  # built stacked: each layer must also take its parameters as arguments
    missing = [f'the {why}' for b in built[0].bijectors() if (why := why_not_stacked(b))]
  if not missing:
    return StepStack(built)
  warnings.warn(
    f'Glow level {level}: its {steps} steps run unrolled (a graph that grows with K), not as one loop: '
    f'{"; ".join(missing)}. See docs/design.md, "Adding a layer".',
    stacklevel=3,
  )
  return StepList(built)


def _check_custom_network(coupling, permutation) -> None:
  """A custom `coupling_network` feeds the built-in coupling (any transform) and permutations: a coupling or
  permutation class cannot take it, so that combination is refused instead of silently replaced."""
  if not _is_transform(coupling):
    raise ValueError(
      f'Glow: coupling_network= replaces the network of the built-in coupling; coupling={coupling!r} is a class '
      f'of its own. Pass a transform name ({", ".join(transforms.TRANSFORMS)}) or a transform instance, or '
      'give your class its own network.'
    )
  if not isinstance(permutation, str):
    raise ValueError(
      f'Glow: with coupling_network=, permutation must be a name (conv_lu, conv, shuffle, reverse), got '
      f'{permutation!r}: a permutation class is stacked, and a level with a custom network runs unstacked.'
    )


def _check_conditioner(conditioner, coupling, coupling_network) -> None:
  """A conditioner other than the conv feeds the built-in coupling: a custom network or coupling class cannot
  take it (refused, never silently dropped)."""
  if conditioner is None or conditioner == conditioners.Conv():  # a conv with a context is refused below
    return
  if coupling_network is not None:
    raise ValueError(
      f'Glow: coupling_network= replaces the conditioner; it cannot be combined with '
      f'conditioner={conditioner.name!r}. Give one of them.'
    )
  if not _is_transform(coupling):
    raise ValueError(
      f'Glow: conditioner={conditioner.name!r} feeds the built-in coupling; coupling={coupling!r} is a class of '
      f'its own. Pass a transform name ({", ".join(transforms.TRANSFORMS)}) or a transform instance.'
    )


def _check_split(split, coupling, spatial, c, who) -> None:
  """A spatial split is the built-in coupling's: a coupling class of its own cannot take it (refused, never
  silently dropped); the level's size must split evenly under both parities."""
  if not split.spatial:
    return
  if not _is_transform(coupling):
    raise ValueError(
      f'Glow: split={split.name!r} belongs to the built-in coupling; coupling={coupling!r} is a class of its '
      f'own. Pass a transform name ({", ".join(transforms.TRANSFORMS)}) or a transform instance.'
    )
  split.check((*(spatial or (None, None)), c), who)


def _is_transform(kind) -> bool:
  return isinstance(kind, str) or isinstance(kind, tuple(transforms.TRANSFORMS.values()))


def _couplings(kind, c, steps, width, dtype, prefix) -> list[GlowBijector]:
  if kind in ('affine', 'additive'):  # the paper's couplings (their class and names as ever)
    return AffineCoupling.stacked(
      c, steps, width=width, additive=(kind == 'additive'), dtype=dtype, name=prefix + 'coupling'
    )
  if _is_transform(kind):
    return Coupling.stacked(c, steps, width=width, transform=kind, dtype=dtype, name=prefix + 'coupling')
  if not why_not_stacked(kind):
    return kind.stacked(c, steps, width=width, dtype=dtype, name=prefix + 'coupling')
  return [kind(c, width=width, dtype=dtype, name=f'{prefix}step{k}_coupling') for k in range(steps)]


def _permutations(kind, c, steps, seed, dtype, prefix) -> list[GlowBijector]:
  if kind in ('conv_lu', 'conv'):
    name = prefix + 'invertible_1x1_conv'
    return Invertible1x1Conv.stacked(
      c, steps, lu_decomposed=kind == 'conv_lu', seed=seed, dtype=dtype, name=name
    )
  if isinstance(kind, str):
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(c) if kind == 'shuffle' else np.arange(c)[::-1] for _ in range(steps)]
    return ChannelPermutation.stacked(rows, dtype, name=prefix + kind)
  if not why_not_stacked(kind):
    return kind.stacked(c, steps, seed=seed, dtype=dtype, name=prefix + 'permutation')
  return [kind(c, seed=seed + k, dtype=dtype, name=f'{prefix}step{k}_permutation') for k in range(steps)]


def step_with_own_layers(
  level: int,
  k: int,
  c: int,
  width: int,
  coupling: Any,
  permutation: Any,
  coupling_network: Any,
  rng: np.random.Generator,
  dtype: tf.DType,
  split: str | splits.Split = 'channel',
) -> Step:
  """Step k of a level whose layers each own their parameters (a custom coupling network; a spatial split's
  parity alternates over the steps, as a stack's does)."""
  prefix, split = f'level{level}_step{k}_', splits.split_from(split)
  perm = _make_permutation(permutation, c, int(rng.integers(2**31)), dtype, prefix)
  transform = transforms.transform_from(coupling)
  out = split.transformed_channels(c) * transform.params_per_channel
  net = coupling_network(split.conditioner_channels(c), out)
  if split.spatial:
    split = dataclasses.replace(split, parity=(split.parity + k) % 2)
    layer = Coupling(c, width, transform, net, dtype=dtype, name=prefix + 'coupling', split=split)
  elif coupling in ('affine', 'additive'):
    layer = AffineCoupling(c, width, coupling == 'additive', net, dtype=dtype, name=prefix + 'coupling')
  else:
    layer = Coupling(c, width, transform, net, dtype=dtype, name=prefix + 'coupling')
  return Step(ActNorm(c, dtype=dtype, name=prefix + 'actnorm'), perm, layer)


def _make_permutation(kind: str, channels: int, seed: int, dtype, prefix: str) -> GlowBijector:
  if kind in ('conv_lu', 'conv'):
    return Invertible1x1Conv(
      channels, lu_decomposed=(kind == 'conv_lu'), seed=seed, dtype=dtype, name=prefix + 'invertible_1x1_conv'
    )
  if kind == 'shuffle':
    return ChannelPermutation.shuffle(channels, seed=seed, dtype=dtype, name=prefix + 'shuffle')
  return ChannelPermutation.reverse(channels, dtype=dtype, name=prefix + 'reverse')
