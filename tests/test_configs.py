"""The paper's named configurations: each builds at its published size with the parameter count and latent
shapes that the formulas below give, and `tfp-glow train --config NAME` uses them, flags overriding."""

import dataclasses
import gc

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from tfp_glow import cli, configs
from tfp_glow.cli import train_command as cli_train
from tfp_glow.flow.glow import Glow

PAPER = ('cifar10', 'cifar10_conditional', 'imagenet32', 'imagenet64', 'celeba_hq256', 'mnist')


def expected_size(c: configs.GlowConfig) -> tuple[int, list[tuple[int, int, int]]]:
  """(trainable parameters, latent shapes), counted from the architecture, layer by layer.

  Per step on [h, w, ch] with a = ch // 2 conditioning channels, b = ch - a transformed ones:
    actnorm            2 ch                              (log-scale, bias)
    1x1 conv, LU       2 ch^2 + ch                       (stored full lower and upper, log|s|)
    1x1 conv, full     ch^2;  shuffle / reverse: 0
    coupling network   conv3x3 a->W: 9 a W + W;  conv1x1 W->W: W^2 + W;
                       zero conv3x3 W->o: 9 W o + o, plus o log-scales;  o = 2 b (affine) or b (additive)
  Split prior (levels 1..L-1): zero conv3x3 a->2b: 9 a 2b + 2b + 2b.   Top prior: mean and log-std (2 ch),
  plus a [classes, 2 ch] label table when class-conditional.
  """
  h, w, ch = c.image_shape
  width, total, shapes = c.width, 0, []
  for level in range(c.levels):
    h, w, ch = h // 2, w // 2, ch * 4
    a, b = ch // 2, ch - ch // 2
    o = b if c.coupling == 'additive' else 2 * b
    permutation = {'conv_lu': 2 * ch * ch + ch, 'conv': ch * ch, 'shuffle': 0, 'reverse': 0}[c.permutation]
    network = (9 * a * width + width) + (width * width + width) + (9 * width * o + 2 * o)
    total += c.steps * (2 * ch + permutation + network)
    if level < c.levels - 1:
      total += 9 * a * 2 * b + 4 * b
      shapes.append((h, w, b))
      ch = a
    else:
      total += 2 * ch + (10 * 2 * ch if c.conditional else 0)
      shapes.append((h, w, ch))
  return total, shapes


def _build_and_count(c: configs.GlowConfig) -> tuple[int, list]:
  with threadpool_limits(1):  # numpy's QR/LU of the 1x1 convs: threads only contend on a loaded machine
    glow = Glow(**c.model_args(), seed=0)
  count = sum(int(np.prod(v.shape)) for v in glow.trainable_variables)
  shapes = glow.latent_shapes
  del glow
  gc.collect()
  return count, shapes


@pytest.mark.slow
@pytest.mark.parametrize('name', PAPER)
def test_config_builds_at_its_published_size(name):
  c = configs.get_config(name)
  count, shapes = _build_and_count(c)
  expected_count, expected_shapes = expected_size(c)
  assert count == expected_count
  assert [tuple(s) for s in shapes] == expected_shapes
  assert sum(int(np.prod(s)) for s in shapes) == int(np.prod(c.image_shape))  # as many latents as pixels


def test_published_settings():
  """The table of REFERENCE.md and the reference README's commands."""
  table = {  # name: (levels, steps, width, coupling, n_bits, batch)
    'cifar10': (3, 32, 512, 'affine', 8, 512),
    'imagenet32': (3, 48, 512, 'affine', 8, 512),
    'imagenet64': (4, 48, 512, 'affine', 8, 128),
    'celeba_hq256': (6, 32, 512, 'additive', 5, 40),
    'cifar10_conditional': (3, 32, 512, 'additive', 5, 512),
  }
  for name, settings in table.items():
    c = configs.get_config(name)
    assert (c.levels, c.steps, c.width, c.coupling, c.n_bits, c.batch_size) == settings, name
    assert c.permutation == 'conv_lu' and c.lr == 1e-3
  assert configs.get_config('cifar10_conditional').conditional
  # Warmup: 10 * 50000 images at 32x32 = 977 steps of 512 on 8 GPUs: 10 CIFAR-10 epochs.
  assert configs.get_config('cifar10').warmup_epochs == pytest.approx(10.0, abs=0.01)
  mnist = configs.get_config('mnist')
  assert mnist.pad_to_32 and mnist.image_shape == (32, 32, 1)


@pytest.mark.slow
def test_ablation_configs_cover_the_papers_grid():
  """Every permutation with every coupling, otherwise CIFAR-10's settings; their sizes (at K=2, the
  per-step formula is what differs) match the count."""
  cifar = configs.get_config('cifar10')
  ablations = [c for c in configs.CONFIGS.values() if c.name.startswith('ablation_')]
  grid = {(c.permutation, c.coupling) for c in ablations}
  assert grid == {(p, k) for p in ('reverse', 'shuffle', 'conv_lu') for k in ('additive', 'affine')}
  assert len(ablations) == 6
  for c in ablations:
    assert dataclasses.replace(
      c, name='cifar10', description='', permutation='conv_lu', coupling='affine'
    ) == (dataclasses.replace(cifar, description='', published_bits_per_dim=None, gpu_days=None))
    small = dataclasses.replace(c, steps=2)
    count, shapes = _build_and_count(small)
    assert (count, [tuple(s) for s in shapes]) == expected_size(small), c.name


def test_memory_estimate_is_smaller_with_recomputation():
  for name in PAPER:
    c = configs.get_config(name)
    stored = configs.activation_floats_per_image(c, stored_per_step=True)
    recomputed = configs.activation_floats_per_image(c, stored_per_step=False)
    assert 0 < recomputed < stored
    # every step keeps at least its conv activations: 4 * h * w * width at the first level
    assert stored >= c.steps * 4 * (c.image_shape[0] // 2) * (c.image_shape[1] // 2) * c.width


# ---- the CLI -----------------------------------------------------------------------------------------


def _config(*argv):
  return cli_train._train_config(cli._build_parser().parse_args(['train', *argv]))


def test_cli_config_sets_the_flags_and_explicit_flags_override():
  c = _config('--config', 'cifar10_conditional')
  expected = configs.get_config('cifar10_conditional').train_flags()
  assert c['coupling']['transform'] == expected.pop('coupling') == 'additive'  # the coupling: its spec's dict
  assert {k: c[k] for k in expected} == expected
  assert c['config'] == 'cifar10_conditional'
  c = _config('--config', 'cifar10', '--levels', '2', '--coupling', 'additive', '--no-conditional')
  assert (c['levels'], c['coupling']['transform'], c['conditional'], c['steps'], c['width']) == (
    2,
    'additive',
    False,
    32,
    512,
  )
  c = _config('--config', 'mnist', '--dataset', 'fashion_mnist')
  assert c['dataset'] == 'fashion_mnist' and c['pad_to_32'] and c['levels'] == 3
  # without --config: the digits' defaults, as before
  c = _config()
  assert c['dataset'] == 'digits' and c['coupling']['transform'] == 'affine' and c['permutation'] == 'conv_lu'
  assert c['levels'] == cli.DEFAULTS['digits']['levels'] and c['config'] is None


def test_cli_config_errors(capsys):
  with pytest.raises(cli.UsageError, match='folder:PATH'):
    _config('--config', 'celeba_hq256')
  assert _config('--config', 'celeba_hq256', '--dataset', 'folder:/faces')['image_size'] == 256
  assert cli.main(['train', '--config', 'cifar11']) == 2
  assert 'cifar10' in capsys.readouterr().err  # argparse lists the names
