"""GlowModel composed as Keras composes keras.Model (one mixin per concept), and the training step's log p asked
of the distribution with the gradient mode as an argument (no thread-local state in the flow)."""

import ast
import pathlib
import threading

import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.flow import gradients
from tfp_glow.testing import perturb
from tfp_glow.training import files, public_calls, trainer

TRAINING = pathlib.Path(tg.__file__).parent / 'training'
# Where each of GlowModel's methods lives: one module per concept.
HOMES = {
  trainer.Trainer: (
    'fit',
    'evaluate',
    'compile',
    'train_step',
    'test_step',
    'predict_step',
    '_loss_terms_of',
  ),
  public_calls.PublicCalls: (
    'log_prob',
    'sample',
    'encode',
    'decode',
    'interpolate',
    'evaluate_bits_per_dim',
  ),
  files.Files: ('save', 'save_weights', 'load_weights', 'export'),
}


@pytest.mark.parametrize('mixin', list(HOMES), ids=[m.__name__ for m in HOMES])
def test_glow_model_takes_each_concept_from_its_own_module(mixin):
  assert issubclass(tg.GlowModel, mixin)
  for name in HOMES[mixin]:
    assert getattr(tg.GlowModel, name) is mixin.__dict__[name], (
      f'GlowModel.{name} is not {mixin.__name__}.{name}'
    )


def test_the_model_modules_are_short_and_only_model_py_imports_the_flow():
  """trainer.py, public_calls.py and files.py reach the flow through the distribution; model.py builds it."""
  for name in ('model', 'trainer', 'public_calls', 'files'):
    source = (TRAINING / f'{name}.py').read_text()
    assert len(source.splitlines()) <= 350, f'training/{name}.py has {len(source.splitlines())} lines'
    imported = [
      node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.module
    ]
    flow = [m for m in imported if m.startswith('tfp_glow.flow')]
    assert (name == 'model') == bool(flow), f'training/{name}.py imports {flow}'


def test_the_gradient_switch_keeps_no_state_outside_its_arguments():
  assert not hasattr(gradients, 'first_order_training')
  assert not [k for k, v in vars(gradients).items() if isinstance(v, threading.local)]


def _perturbed_conditional_model():
  model = tg.GlowModel((8, 8, 1), levels=2, steps=2, width=4, n_bins=17, num_classes=3, seed=0)
  images = tf.random.stateless_uniform([6, 8, 8, 1], (3, 4)) - 0.5
  labels = tf.constant([0, 1, 2, 0, 1, 2])
  model.initialize(images, labels)
  perturb(model.glow, 0.05)
  return model, images, labels


def test_log_prob_parts_is_log_prob_with_its_encoding():
  model, images, labels = _perturbed_conditional_model()
  dist = model.distribution
  parts = dist.log_prob_parts(images, labels)
  np.testing.assert_allclose(parts.log_prob, dist.log_prob(images, labels=labels), rtol=1e-5, atol=1e-4)
  for z, expected in zip(parts.encoding.latents, dist.encode(images, labels)):
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
  assert parts.encoding.top.shape == (6, *model.glow.levels[-1].shape)


@pytest.mark.parametrize('mode', ['stored', 'checkpoint', 'inverse'])
def test_the_training_gradient_argument_runs_the_hand_built_gradient_without_asking(mode, monkeypatch):
  model, images, labels = _perturbed_conditional_model()
  dist, variables = model.distribution, model.glow.trainable_variables
  calls = []
  original = gradients._stack_gradient
  monkeypatch.setattr(
    gradients, '_stack_gradient', lambda *a, **k: calls.append((a[3], k['ask'])) or original(*a, **k)
  )
  found = {}
  for gradient in (None, mode):
    with tf.GradientTape() as tape:
      tape.watch(images)
      total = tf.reduce_sum(dist.log_prob_parts(images, labels, training_gradient=gradient).log_prob)
    found[gradient] = tape.gradient(total, [images, *variables])
    assert calls == ([] if gradient is None else [(mode, False)] * 2)  # one per level, first order: no asking
  for a, b in zip(found[None], found[mode]):
    assert (a is None) == (b is None)
    if a is not None:  # (None: a variable log p does not read, e.g. the unused classes' top prior rows)
      np.testing.assert_allclose(tf.convert_to_tensor(b), tf.convert_to_tensor(a), rtol=1e-3, atol=1e-5)
  assert max(float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g)))) for g in found[None] if g is not None) > 0
