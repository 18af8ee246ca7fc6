"""Variational dequantization: q(u|x) is a density on the unit cube, a fresh one is the uniform one, and
GlowModel(dequantization='variational') trains it with the flow, under the gradient modes and mixed precision."""

import inspect
import json
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import digits, tiny_model
from tfp_glow import cli
from tfp_glow import dequantization as dq
from tfp_glow.distribution import bits_per_dim
from tfp_glow.testing import perturb

SHAPE = (8, 8, 1)


def _bins(n=6, shape=SHAPE, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 17, size=(n, *shape)), tf.float32)


def test_a_fresh_variational_q_is_the_uniform_dequantization_exactly():
  q = dq.VariationalDequantizer(SHAPE, n_bins=17)
  bins, seed = _bins(), tf.constant([3, 4])
  u, log_q = q.sample_and_log_prob(bins, seed=seed)
  u0, log_q0 = dq.UniformDequantizer().sample_and_log_prob(bins, seed=seed)
  np.testing.assert_allclose(u.numpy(), u0.numpy(), atol=1e-5)
  np.testing.assert_allclose(log_q.numpy(), log_q0.numpy(), atol=1e-3)  # D = 64 terms that cancel
  # So the two bounds agree for any flow: the uniform one is the special case log q = 0.
  model = tiny_model()
  perturb(model.glow, 0.05)
  with_q = dq.dequantized_log_prob(model.distribution, bins, 17, q, seed=seed, bins=True)
  uniform = dq.dequantized_log_prob(model.distribution, bins, 17, seed=seed, bins=True)
  np.testing.assert_allclose(bits_per_dim(with_q, 64, 17), bits_per_dim(uniform, 64, 17), atol=1e-4)


def test_log_q_is_the_log_density_of_u_on_the_unit_cube():
  """u = f(v), v ~ U(0, 1)^D: log q(u|b) = -log |det df/dv|, against an autodiff Jacobian (D = 16)."""
  shape = (4, 4, 1)
  q = dq.VariationalDequantizer(shape, n_bins=17, steps=3, width=8)
  perturb(q, 0.1)
  bins = _bins(3, shape)
  v = tf.random.stateless_uniform([3, *shape], (5, 6), minval=0.02, maxval=0.98)
  with tf.GradientTape() as tape:
    tape.watch(v)
    u, log_q = q.from_uniform(v, bins)
  jac = tape.batch_jacobian(u, v)  # [N, 4, 4, 1, 4, 4, 1]
  _, log_abs_det = np.linalg.slogdet(jac.numpy().reshape(3, 16, 16).astype(np.float64))
  assert np.all((u.numpy() >= 0) & (u.numpy() < 1))
  assert np.max(np.abs(log_q.numpy())) > 0.5  # the perturbed q is not the uniform one
  np.testing.assert_allclose(log_q.numpy(), -log_abs_det, atol=2e-3)
  # The noise depends on the bins (q is conditional).
  u_other, _ = q.from_uniform(v, (bins + 5) % 17)
  assert np.max(np.abs(u_other.numpy() - u.numpy())) > 1e-3


def test_variational_glow_model_trains_every_parameter_and_reloads(tmp_path):
  model = tiny_model(dequantization='variational')
  assert model.dequantization == 'variational' and model.get_config()['dequantization'] == 'variational'
  q_vars = {id(v) for v in model.dequantizer.trainable_variables}
  assert q_vars and q_vars <= {id(v) for v in model.trainable_variables}
  before = [v.numpy() for v in model.trainable_variables]
  history = model.fit(digits(take=4), epochs=2, verbose=0)
  assert np.all(np.isfinite(history.history['bits_per_dim']))
  for v, w0 in zip(model.trainable_variables, before):
    assert not np.allclose(v.numpy(), w0), f'{v.path} was not trained'
  x = next(iter(digits('test', batch_size=16, shuffle=False)))
  expected = model.evaluate_bits_per_dim(x, samples=3, seed=1)
  model.save(tmp_path / 'v.keras')
  loaded = keras.models.load_model(tmp_path / 'v.keras')
  assert loaded.dequantization == 'variational'
  assert loaded.evaluate_bits_per_dim(x, samples=3, seed=1) == pytest.approx(expected, abs=1e-6)
  assert tiny_model().dequantizer is None  # uniform models keep their weight layout


def test_dequantization_argument_is_checked():
  with pytest.raises(ValueError, match='dequantization must be one of'):
    tiny_model(dequantization='learned')


@pytest.mark.parametrize('gradient', ['inverse', 'stored'])
def test_hand_built_gradients_reach_q_as_autodiff_does(gradient):
  """The bound's gradient flows into q through x = b + u: the level gradients must give d/dx too."""
  model = tiny_model(dequantization='variational', steps=2)
  x = next(iter(digits(batch_size=8, take=1)))
  model.initialize(x)
  perturb(model.glow, 0.05)
  perturb(model.dequantizer, 0.1)
  grads = {}
  for mode in ('autodiff', gradient):
    tf.random.set_seed(7)  # the same q(u|x) draws in both modes
    with tf.GradientTape() as tape:
      loss = model._loss_terms_of(x, None, training_gradient=mode)[0]
    grads[mode] = tape.gradient(loss, model.dequantizer.trainable_variables)
  for a, b in zip(grads['autodiff'], grads[gradient]):
    assert np.max(np.abs(a.numpy())) > 0
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_variational_model_trains_under_mixed_bfloat16():
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    model = tiny_model(dequantization='variational')
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert model.dequantizer.compute_dtype == 'float32'  # q stays float32: log q needs the precision
  history = model.fit(digits(take=3), epochs=1, verbose=0)
  assert np.isfinite(history.history['bits_per_dim'][-1])


@pytest.mark.slow
def test_cli_trains_a_variational_model_and_evaluates_it_importance_weighted(tmp_path, capsys):
  out = tmp_path / 'run'
  tiny = ['--levels', '2', '--steps', '1', '--width', '8', '--batch-size', '128', '--no-ema', '--lr', '3e-2']
  argv = ['train', *tiny, '--warmup-epochs', '0.2', '--epochs', '2', '--dequantization', 'variational']
  assert cli.main([*argv, '--out', str(out)]) == 0
  assert json.loads((out / 'config.json').read_text())['dequantization'] == 'variational'
  capsys.readouterr()
  assert cli.main(['evaluate', str(out), '--importance-samples', '20']) == 0
  result = json.loads(capsys.readouterr().out)
  assert result['dequantization'] == 'variational' and result['importance_samples'] == 20
  single, weighted = result['test_bits_per_dim'], result['test_bits_per_dim_importance_weighted']
  assert weighted < single < np.log2(17)
  assert cli.main(['evaluate', str(out), '--importance-samples', '0']) == 2
  assert '--importance-samples must be >= 1' in capsys.readouterr().err


def test_variational_dequantizer_defaults_are_the_documented_ones():
  signature = inspect.signature(dq.VariationalDequantizer)
  defaults = {name: signature.parameters[name].default for name in ('steps', 'width')}
  api = (pathlib.Path(__file__).parents[1] / 'docs' / 'api.md').read_text()
  documented = re.search(r'VariationalDequantizer\(image_shape, n_bins, steps=(\d+), width=(\d+)\)', api)
  assert documented, 'docs/api.md no longer shows VariationalDequantizer with its defaults'
  assert defaults == dict(steps=int(documented[1]), width=int(documented[2]))
  # the class docstring and docs/design.md say the same
  docstring = ' '.join(dq.VariationalDequantizer.__doc__.split())
  assert f'K = {defaults["steps"]} couplings' in docstring and f'width {defaults["width"]}' in docstring
  design = ' '.join((pathlib.Path(__file__).parents[1] / 'docs' / 'design.md').read_text().split())
  assert f'default K = {defaults["steps"]}, width {defaults["width"]}' in design
  # and the model uses them
  model = tiny_model(dequantization='variational')
  assert (model.dequantizer.steps, model.dequantizer.width) == (defaults['steps'], defaults['width'])
