"""Coupling splits (`tfp_glow.bijectors.splits`): channel halves, checkerboard and stripe masks.

Each spatial split x transform (affine, additive, spline) with the conv conditioner, pairwise, passes the
bijector contract in float64 with perturbed parameters; the masks leave the conditioning pixels unchanged and
alternate over a stack's steps; a level built with a spatial split runs as one StepStack loop; a combination
that cannot work is refused in one line.
"""

import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow import names
from tfp_glow.bijectors import Coupling, splits
from tfp_glow.flow import level as level_module
from tfp_glow.flow.stack import StepStack
from tfp_glow.specs import CouplingSpec
from tfp_glow.testing import check_bijector, perturb

X = tf.constant(np.random.default_rng(0).uniform(-0.5, 0.5, (3, 4, 4, 3)))


def coupling(split, transform, **kwargs):
  layer = Coupling(3, 8, transform, dtype=tf.float64, split=split, **kwargs)
  perturb(layer, 0.3)
  return layer


# Pairwise over split x transform (the conv conditioner; the channel split is the rest of the suite's).
SLOW = pytest.mark.slow
PAIRS = [
  ('checkerboard', 'affine'),
  ('stripes', 'additive'),
  pytest.param('checkerboard', 'spline', marks=SLOW),
  pytest.param('stripes', 'spline', marks=SLOW),
]


@pytest.mark.parametrize('split, transform', PAIRS)
def test_a_spatial_split_coupling_passes_the_contract(split, transform):
  layer = coupling(split, transform)
  log_dets = check_bijector(layer, X)
  if transform != 'additive':
    assert np.all(np.abs(log_dets) > 1e-3)  # not the identity: the checks saw real math


@pytest.mark.parametrize('split', ['checkerboard', 'stripes'])
def test_the_conditioning_pixels_pass_unchanged_and_the_others_move(split):
  layer = coupling(split, 'affine')
  mask = splits.SPLITS[split]().conditioning(4, 4)
  z = layer.inverse(X).numpy()
  np.testing.assert_array_equal(z[:, mask], X.numpy()[:, mask])
  assert np.all(np.abs(z[:, ~mask] - X.numpy()[:, ~mask]) > 1e-6)


def test_the_channel_split_is_the_default_and_splits_channels():
  layer = Coupling(4, 8, dtype=tf.float64)
  assert layer.split_spec == splits.Channel()
  x_a, x_b = layer.split(tf.zeros([1, 2, 2, 4]))
  assert (x_a.shape[-1], x_b.shape[-1]) == (2, 2)


def test_the_registry_and_the_names_without_tensorflow_agree():
  assert tuple(splits.SPLITS) == names.SPLITS


def test_a_stack_alternates_the_mask_over_its_steps():
  steps = Coupling.stacked(3, 3, width=8, dtype=tf.float64, split='checkerboard')
  assert steps[0].layer.split_parity.numpy().tolist() == [0, 1, 0]
  for step in steps:
    perturb(step, 0.3, seed=1)
  for k, step in enumerate(steps):
    first = splits.Checkerboard.conditioning(4, 4)
    mask = first if k % 2 == 0 else ~first
    z = step.inverse(X).numpy()
    np.testing.assert_array_equal(z[:, mask], X.numpy()[:, mask])
    assert np.all(np.abs(z[:, ~mask] - X.numpy()[:, ~mask]) > 1e-6)


@SLOW
@pytest.mark.parametrize('split, transform', [('checkerboard', 'spline'), ('stripes', 'affine')])
def test_a_glow_with_a_spatial_split_runs_its_steps_as_one_loop(split, transform):
  spec = CouplingSpec(transform=transform, split=split)
  glow = tg.Glow((8, 8, 1), levels=2, steps=2, width=8, coupling=spec, seed=0, dtype=tf.float64)
  assert all(isinstance(level.steps, StepStack) for level in glow.levels)
  assert all(step.coupling.split_spec.name == split for level in glow.levels for step in level.steps)
  perturb(glow, 0.1)
  x = tf.constant(np.random.default_rng(1).uniform(-0.5, 0.5, (2, 8, 8, 1)))
  assert np.all(np.abs(check_bijector(glow, x)) > 1e-3)


def test_sizes_and_combinations_that_cannot_work_are_refused_in_one_line():
  with pytest.raises(ValueError, match=r"coupling: the 'checkerboard' split needs the pixels split evenly"):
    Coupling(2, 8, split='checkerboard', spatial=(3, 3))
  with pytest.raises(ValueError, match=r"the 'stripes' split needs .*H even.*3x4"):
    coupling('stripes', 'affine').inverse(tf.zeros([1, 3, 4, 3], tf.float64))
  with pytest.raises(
    ValueError, match=r"coupling split must be one of \('channel', 'checkerboard', 'stripes'\)"
  ):
    Coupling(2, 8, split='diagonal')
  with pytest.raises(ValueError, match=r'Glow level 1 \(1x1x16\).*split evenly'):
    tg.Glow((4, 4, 2), levels=2, steps=1, width=8, seed=0, coupling=CouplingSpec(split='checkerboard'))
  with pytest.raises(ValueError, match=r"split='stripes' belongs to the built-in coupling"):
    rng = np.random.default_rng(0)
    level_module.build_steps(
      0, 8, 1, 8, tg.bijectors.AffineCoupling, 'reverse', None, rng, tf.float32, split='stripes'
    )


@SLOW
def test_the_transformer_conditioner_takes_a_spatial_split():
  layer = coupling('checkerboard', 'affine', conditioner='transformer', spatial=(4, 4))
  assert np.all(np.abs(check_bijector(layer, X)) > 1e-3)
