"""The coupling's conditioner chosen by name (tfp_glow.bijectors.conditioners): the conv network (default) and the
Jet-style transformer on patches.

The transformer coupling against the bijector contract in float64 with perturbed parameters (affine and spline
transforms, with and without a context), a fresh transformer Glow exactly the identity in its couplings, the
generic per-step gradient path chosen for it, level sizes its patch size cannot tile refused by level, mixed
precision, GlowModel training and a .keras round trip, and the CLI flag.
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.bijectors import conditioners, transforms
from tfp_glow.flow import kernels
from tfp_glow.testing import assert_bijective, assert_log_det_matches_jacobian, check_bijector, perturb

RNG = np.random.default_rng(11)
SMALL = {'depth': 2, 'width': 8, 'heads': 2, 'patch_size': 2}


def transformer_coupling(transform, context_size=None, channels=4):
  spec = conditioners.Transformer(**SMALL, context_size=context_size)
  return tg.Coupling(
    channels, transform=transform, conditioner=spec, spatial=(4, 4), dtype=tf.float64, name='tc'
  )


@pytest.mark.parametrize(
  'transform',
  # seconds each (graph and XLA included): in the full run (--slow); the default run has the transformer's
  # gradients against autodiff (test_autodiff_modes.py) and its exact identity here
  [
    pytest.param('affine', marks=pytest.mark.slow),
    pytest.param(transforms.Spline(bins=3, bound=2.0), marks=pytest.mark.slow),
  ],
  ids=['affine', 'spline'],
)
def test_a_transformer_coupling_passes_the_contract(transform):
  coupling = transformer_coupling(transform)
  x = tf.constant(RNG.uniform(-1.5, 1.5, (2, 4, 4, 4)))
  y_fresh = coupling.inverse(x)
  perturb(coupling, 0.3)
  log_dets = check_bijector(coupling, x)
  assert np.all(np.abs(log_dets.numpy()) > 1e-3)
  # the conditioner reads x_a: moving one pixel of x_a moves x_b's output elsewhere (a patch's neighbours too)
  moved = x.numpy()
  moved[:, 0, 0, 0] += 0.5
  diff = np.abs(coupling.inverse(tf.constant(moved)).numpy() - coupling.inverse(x).numpy())[..., 2:]
  assert diff[:, 3, 3].max() > 1e-6, 'attention: a far patch should see the change'
  assert not np.allclose(y_fresh, coupling.inverse(tf.identity(x)))


@pytest.mark.slow
def test_a_context_reaches_the_tokens_and_the_coupling_stays_exact():
  coupling = transformer_coupling(transforms.Spline(), context_size=3)
  perturb(coupling, 0.3)
  x = tf.constant(RNG.uniform(-1.5, 1.5, (2, 4, 4, 4)))
  context = {'context': tf.constant(RNG.standard_normal((2, 3)))}
  z = assert_bijective(coupling, x, context, rtol=1e-10, atol=1e-10)
  assert_log_det_matches_jacobian(coupling, x, context, rtol=1e-9, atol=1e-9)
  assert not np.allclose(z, coupling.inverse(tf.identity(x))), 'the context changed nothing'
  other = transformer_coupling('affine')
  with pytest.raises(ValueError, match='built without context_size'):
    other.inverse(x, context=context['context'])


def test_a_fresh_transformer_glow_is_exactly_the_identity_in_its_couplings():
  """Zero heads: every additive transformer coupling passes x through, so the flow equals an additive conv Glow
  whose other layers have the same values (and whose zero conv networks pass x through too)."""
  x = tf.constant(RNG.uniform(-0.5, 0.5, (2, 8, 8, 2)))
  kwargs = dict(levels=2, steps=2, width=8, dtype=tf.float64, seed=3, coupling='additive')
  vit = tg.Glow((8, 8, 2), conditioner='transformer', conditioner_settings=SMALL, **kwargs)
  conv = tg.Glow((8, 8, 2), **kwargs)
  assert type(vit.levels[0].steps).__name__ == 'StepStack'
  vit.initialize(x)
  values = {v.name: v for v in vit.variables}
  for v in conv.variables:
    if 'coupling' not in v.name:
      v.assign(values[v.name])
  for v in vit.trainable_variables:  # every weight of the transformer but its head may be anything
    if 'coupling' in v.name and 'head' not in v.name:
      v.assign(v + 0.5)
  np.testing.assert_array_equal(vit.inverse(x), conv.inverse(x))
  np.testing.assert_allclose(
    vit.inverse_log_det_jacobian(x, 3), conv.inverse_log_det_jacobian(x, 3), atol=1e-12
  )
  for level in vit.levels:
    y = tf.constant(RNG.standard_normal((2, *level.shape)))
    for step in level.steps:
      np.testing.assert_array_equal(step.coupling.inverse(y), y)


@pytest.mark.slow
def test_a_perturbed_transformer_glow_passes_the_contract():
  glow = tg.Glow(
    (8, 8, 2), levels=2, steps=2, width=8, coupling='spline', dtype=tf.float64, seed=1,
    conditioner='transformer', conditioner_settings=SMALL,
  )  # fmt: skip
  x = tf.constant(RNG.uniform(-0.5, 0.5, (2, 8, 8, 2)))
  glow.initialize(x)
  perturb(glow, 0.1)
  check_bijector(glow, x)


def test_the_transformer_takes_the_generic_gradient_path():
  glow = tg.Glow((4, 4, 2), levels=1, steps=2, width=4, conditioner='transformer')
  coupling = glow.levels[0].steps[0].coupling
  assert isinstance(coupling.conditioner, conditioners.Transformer) and not kernels.has_kernels(coupling)
  assert kernels.has_kernels(tg.Glow((4, 4, 2), levels=1, steps=2, width=4).levels[0].steps[0].coupling)


def test_a_level_the_patches_cannot_tile_is_refused_by_level_size_and_patch_size():
  with pytest.raises(ValueError, match=r"Glow level 1 \(2x2x8\): the transformer conditioner's patch_size 4"):
    tg.Glow((8, 8, 1), levels=2, steps=1, conditioner='transformer', conditioner_settings={'patch_size': 4})
  with pytest.raises(ValueError, match=r'patch_size 2 must divide the spatial size, got 3x3'):
    tg.Coupling(4, conditioner='transformer', spatial=(3, 3))


def custom_network(in_channels, out_channels):
  return keras.Sequential([keras.Input((None, None, in_channels)), keras.layers.Conv2D(out_channels, 1)])


class MyCoupling(tg.AffineCoupling):
  pass


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (
      dict(coupling_network=custom_network),
      'coupling_network= replaces the conditioner; it cannot be combined',
    ),
    (dict(coupling=MyCoupling), "conditioner='transformer' feeds the built-in coupling; coupling=<class"),
    (dict(conditioner_settings={'depht': 2}), r"unknown setting\(s\) \['depht'\]"),
    (dict(conditioner_settings={'width': 10, 'heads': 4}), 'width 10 must be divisible by heads 4'),
    (dict(conditioner='vit'), r"conditioner must be one of \('conv', 'transformer', 'keras'\)"),
    (dict(conditioner=conditioners.Transformer(), conditioner_settings={'depth': 1}), 'give one'),
  ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(kwargs, message):
  kwargs = {'conditioner': 'transformer', **kwargs}
  with pytest.raises(ValueError, match=message) as error:
    tg.Glow((8, 8, 2), levels=1, steps=1, width=4, **kwargs)
  assert '\n' not in str(error.value)


def test_under_a_mixed_policy_the_transformer_computes_in_bfloat16_and_the_log_det_is_float32():
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    glow = tg.Glow(
      (8, 8, 2), levels=2, steps=2, width=8, conditioner='transformer', conditioner_settings=SMALL
    )
  finally:
    keras.mixed_precision.set_global_policy('float32')
  coupling = glow.levels[0].steps[0].coupling
  assert coupling.network.compute_dtype == 'bfloat16' and coupling.network.variable_dtype == 'float32'
  perturb(glow, 0.05)
  x = tf.constant(RNG.uniform(-0.5, 0.5, (2, 8, 8, 2)), tf.float32)
  seen = []
  original = conditioners.Transformer.apply

  def spy(self, weights, x, compute_dtype, context=None):
    h = original(self, weights, x, compute_dtype, context)
    seen.append(h.dtype)
    return h

  conditioners.Transformer.apply = spy
  try:
    z, log_det = glow.inverse(x), glow.inverse_log_det_jacobian(x, 3)
  finally:
    conditioners.Transformer.apply = original
  assert set(seen) == {tf.bfloat16}
  assert z.dtype == log_det.dtype == tf.float32 and np.all(np.isfinite(log_det))
  # Exact to float32 in most draws; where a rebuilt conditioner input rounds to another bfloat16 value, to
  # bfloat16's resolution (docs/design.md, "Precision"): the bound is that, not float32's.
  np.testing.assert_allclose(glow.forward(tf.identity(z)), x, atol=1e-2)


@pytest.mark.slow
def test_glow_model_trains_a_transformer_coupling_and_round_trips_through_keras(tmp_path):
  images = np.random.default_rng(0).uniform(-0.5, 0.5, (32, 4, 4, 3)).astype('float32')
  settings = {'depth': 1, 'width': 8, 'heads': 2, 'patch_size': 2}
  model = tg.GlowModel(
    (4, 4, 3),
    levels=1,
    steps=2,
    width=8,
    n_bins=16,
    seed=0,
    conditioner='transformer',
    conditioner_settings=settings,
  )
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  before = [v.numpy() for v in model.trainable_variables if 'head' in v.name]
  history = model.fit(images, batch_size=16, epochs=1, verbose=0)
  assert np.all(np.isfinite(history.history['bits_per_dim']))
  after = [v.numpy() for v in model.trainable_variables if 'head' in v.name]
  assert before and any(np.abs(a - b).max() > 0 for a, b in zip(after, before)), 'the head did not train'
  config = model.get_config()
  coupling = config['coupling']  # the model's CouplingSpec (tfp_glow.specs)
  assert coupling['conditioner'] == 'transformer' and coupling['conditioner_settings']['width'] == 8
  path = str(tmp_path / 'vit.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert loaded.glow.conditioner == conditioners.Transformer(**settings)
  np.testing.assert_allclose(loaded.log_prob(images[:4]), model.log_prob(images[:4]), rtol=1e-5)


def test_a_config_saved_before_conditioners_existed_loads_as_conv():
  model = tg.GlowModel((4, 4, 3), levels=1, steps=1, width=4, n_bins=16)
  config = model.get_config()
  assert config['coupling']['conditioner'] == 'conv' and config['coupling']['conditioner_settings'] == {}
  old = dict(config, coupling='affine')  # the flat config of before: the transform's name, no conditioner
  assert tg.GlowModel.from_config(old).glow.conditioner == conditioners.Conv()


def test_the_cli_flag_parses_into_the_training_config(capsys):
  from tfp_glow import cli  # pylint: disable=import-outside-toplevel
  from tfp_glow.cli import train_command  # pylint: disable=import-outside-toplevel

  def config(*argv):
    return train_command._train_config(cli._build_parser().parse_args(['train', *argv]))

  assert config('--conditioner', 'transformer')['coupling']['conditioner'] == 'transformer'
  assert config()['coupling']['conditioner'] == 'conv'
  with pytest.raises(SystemExit):
    cli._build_parser().parse_args(['train', '--conditioner', 'vit'])
  assert "invalid choice: 'vit'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_cli_trains_a_tiny_transformer_model(tmp_path):
  out = tmp_path / 'vit'
  command = [sys.executable, '-m', 'tfp_glow.cli', 'train', '--levels', '2', '--steps', '1', '--width', '8']
  command += ['--batch-size', '128', '--no-ema', '--lr', '3e-2', '--warmup-epochs', '0.2', '--epochs', '1']
  command += ['--conditioner', 'transformer', '--out', str(out)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((out / 'metrics.json').read_text())
  assert math.isfinite(metrics['test_bits_per_dim'])
  loaded = keras.models.load_model(str(out / 'model.keras'))
  assert loaded.glow.conditioner.name == 'transformer'
