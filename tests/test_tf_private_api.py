"""The engine room asks TensorFlow two private questions (tfp_glow.flow.tape_state); these tests say plainly
if a TensorFlow upgrade removes the helpers, and that without them everything still works, only slower."""

import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.flow import gradients, tape_state
from tfp_glow.testing import perturb


def test_this_tensorflow_has_the_helpers():
  assert tape_state.available(), (
    f'TensorFlow {tf.__version__} lacks TFE_Py_TapeSetPossibleGradientTypes, TFE_Py_PackJVPs or '
    'eager.record.could_possibly_record: the hand-built level gradients now always step aside (see '
    'tfp_glow/flow/tape_state.py)'
  )


def test_the_helpers_answer_as_documented():
  x = tf.constant([1.0])
  assert not tape_state.recording()
  with tf.GradientTape() as outer:
    outer.watch(x)
    assert tape_state.recording() and not tape_state.higher_order_possible([x])
    with tf.GradientTape() as inner:
      inner.watch(x)
      assert tape_state.higher_order_possible([x])
  with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)):
    assert tape_state.higher_order_possible([x])


def test_without_the_helpers_every_gradient_steps_aside_and_stays_right(monkeypatch):
  glow = tg.Glow((4, 4, 2), levels=2, steps=2, width=8, seed=0, gradient='inverse', dtype=tf.float64)
  perturb(glow)
  x = tf.random.stateless_uniform([2, 4, 4, 2], (1, 2), dtype=tf.float64) - 0.5

  def grad():
    xx = tf.identity(x)
    with tf.GradientTape() as tape:
      tape.watch(xx)
      loss = tf.reduce_sum(glow.inverse(xx) ** 2)
    return tape.gradient(loss, [xx, *glow.trainable_variables])

  expected = grad()
  monkeypatch.setattr(tape_state, '_POSSIBLE_GRADIENT_TYPES', None)
  monkeypatch.setattr(tape_state, '_COULD_POSSIBLY_RECORD', None)
  monkeypatch.setattr(tape_state, '_warned', False)
  calls = []
  original = gradients._stack_gradient
  monkeypatch.setattr(gradients, '_stack_gradient', lambda *a, **k: calls.append(1) or original(*a, **k))
  with pytest.warns(RuntimeWarning, match='lacks the private helpers'):
    got = grad()
  assert calls == []  # stepped aside: TensorFlow's own gradient
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
