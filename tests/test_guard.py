"""Guarded training steps: bad batches and non-finite steps are skipped, never applied."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import data
from tfp_glow.training import optim
from tfp_glow.training.guard import TrainingDivergedError
from tfp_glow.training.model import GlowModel


def trained_model(jit_compile=False, **kwargs):
  args = dict(image_shape=(8, 8, 1), levels=2, steps=1, width=8, n_bins=17, seed=0)
  model = GlowModel(**{**args, **kwargs})
  # Adam with EMA: moments, EMA copies and the step counter all move on an applied step.
  model.compile(
    optimizer=optim.default_optimizer(1e-2, 1, use_ema=True, name='adam'), jit_compile=jit_compile
  )
  labels = np.arange(64) % 10 if model.num_classes else None
  x = digit_images()
  model.fit(x, labels, batch_size=32, epochs=1, verbose=0)
  return model


def digit_images(n=64):
  ds, _ = data.load_dataset('digits', 'train', batch_size=n, shuffle=False, seed=0)
  return next(iter(ds)).numpy()


def state(model):
  return [v.numpy().copy() for v in [*model.weights, *model.optimizer.variables]]


def bad_batches(x):
  nan = x.copy()
  nan[3, 2, 1, 0] = np.nan
  inf = x.copy()
  inf[0, 0, 0, 0] = -np.inf
  return {
    'one NaN pixel': nan,
    'an Inf pixel': inf,
    'raw 0..255 pixels': np.round((x + 0.5) * 255),
    'images in [0, 1]': x + 0.5,
  }


@pytest.mark.slow
@pytest.mark.parametrize('jit_compile', [False, True])
def test_a_bad_batch_leaves_every_weight_and_optimizer_variable_bit_identical(jit_compile):
  model = trained_model(jit_compile)
  steps = int(model.optimizer.iterations)
  for name, bad in bad_batches(digit_images(32)).items():
    before = state(model)
    history = model.fit(bad, batch_size=32, epochs=1, verbose=0)
    assert history.history['skipped_steps'] == [1.0], name
    assert np.isnan(history.history['loss'][0]), name  # no step applied: no loss to report, not 0
    for old, new in zip(before, state(model)):
      np.testing.assert_array_equal(new, old, err_msg=name)
  assert int(model.optimizer.iterations) == steps


def test_labels_out_of_range_are_one_error_naming_the_range_and_value():
  """A data bug, not a numerical accident: a ValueError at once (not skips until the limit), weights unchanged."""
  model = trained_model(num_classes=10)
  before = state(model)
  x = digit_images(8)
  for bad in (10, -1):
    labels = np.arange(8) % 10
    labels[5] = bad
    with pytest.raises(ValueError) as raised:
      model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    message = str(raised.value)
    assert '[0, 10)' in message and f'got {bad}' in message and len(message.splitlines()) == 1, message
  for old, new in zip(before, state(model)):
    np.testing.assert_array_equal(new, old)


def test_a_stop_after_skips_names_their_causes_with_counts():
  model = trained_model(max_consecutive_skips=4)
  x = digit_images(8)
  nan, out_of_range = x.copy(), x.copy()
  nan[0, 0, 0, 0] = np.nan
  out_of_range[1, 1, 1, 0] = 0.75
  stream = np.concatenate([nan, nan, nan, out_of_range])  # 3 non-finite, then 1 out of range: 4 in a row
  with pytest.raises(TrainingDivergedError) as raised:
    model.fit(stream, batch_size=8, epochs=1, verbose=0, shuffle=False)
  assert raised.value.causes == '3 with non-finite pixels, 1 with pixels outside [-0.5, 0.5)'
  assert raised.value.causes in str(raised.value)


def test_training_with_bad_batches_interleaved_still_trains():
  model = trained_model()
  x = digit_images(32)
  bad = list(bad_batches(x).values())
  stream = np.concatenate([b for pair in zip([x] * len(bad), bad) for b in pair])  # good, bad, good, ...
  before = [v.numpy().copy() for v in model.trainable_variables]
  steps = int(model.optimizer.iterations)
  history = model.fit(stream, batch_size=32, epochs=3, shuffle=False, verbose=0)
  assert history.history['skipped_steps'] == [len(bad)] * 3
  assert int(model.optimizer.iterations) == steps + 3 * len(bad)  # only the good ones counted
  losses = history.history['loss']
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  for v, old in zip(model.trainable_variables, before):
    assert np.all(np.isfinite(v.numpy())) and not np.array_equal(v.numpy(), old), v.path


def test_too_many_skips_in_a_row_stop_training_with_a_clear_error():
  model = GlowModel((8, 8, 1), levels=2, steps=1, width=8, n_bins=17, seed=0, max_consecutive_skips=3)
  model.compile(optimizer=optim.default_optimizer(1e-2, 1))
  x = digit_images(32)
  model.fit(x, batch_size=8, epochs=1, verbose=0)
  before = state(model)
  stream = np.concatenate([x[:16], np.full_like(x, np.nan)])  # 2 good steps, then 4 bad ones
  with pytest.raises(TrainingDivergedError, match='3 skipped steps in a row'):
    model.fit(stream, batch_size=8, epochs=1, shuffle=False, verbose=0)
  # Skips that are not in a row never stop a run (2 bad, 1 good, 2 bad).
  model.fit(np.concatenate([x[:16] * 9, x[:8], x[:16] * 9]), batch_size=8, shuffle=False, verbose=0)
  assert all(np.all(np.isfinite(v)) for v in state(model))
  assert len(before) == len(state(model))
  with pytest.raises(ValueError, match='max_consecutive_skips'):
    GlowModel((8, 8, 1), levels=1, steps=1, width=8, max_consecutive_skips=0)


def test_eager_calls_still_raise_clear_errors_for_bad_images():
  model = trained_model()
  x = digit_images(4)
  with pytest.raises(tf.errors.InvalidArgumentError, match='NaN or Inf'):
    model.log_prob(bad_batches(x)['one NaN pixel'])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'\[-0.5, 0.5\)'):
    model.evaluate(x + 0.5, verbose=0)


def test_a_loss_scale_optimizer_still_sees_its_overflows():
  """Mixed precision: overflowing scaled gradients are the LossScaleOptimizer's to skip (it lowers
  its scale), not a bad step of ours that would count towards max_consecutive_skips."""
  model = GlowModel((8, 8, 1), levels=2, steps=1, width=8, n_bins=17, seed=0, max_consecutive_skips=3)
  model.compile(optimizer=keras.optimizers.LossScaleOptimizer(optim.default_optimizer(1e-2, 1)))
  model.optimizer.dynamic_scale.assign(np.inf)  # every scaled gradient overflows
  history = model.fit(digit_images(), batch_size=8, epochs=1, shuffle=False, verbose=0)  # 8 steps
  assert history.history['skipped_steps'] == [0.0]  # not ours: no TrainingDivergedError either
  assert int(model.optimizer.iterations) == 0  # the LossScaleOptimizer skipped them
