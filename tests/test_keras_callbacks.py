"""Keras conventions: stock callbacks work with GlowModel as they do with any Keras model."""

import os

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_glow.training import optim
from tfp_glow.training.callbacks import SampleGrid


def tiny_model(optimizer=None):
  return helpers.tiny_model(optimizer, warmup_steps=4)


def digits(split='train', n=64):
  return helpers.digits(split, n, shuffle=False, take=2)


def test_callbacks_monitoring_bits_per_dim_need_no_mode_and_reduce_lr_works_with_warmup(tmp_path):
  model = tiny_model()
  early = keras.callbacks.EarlyStopping(monitor='val_bits_per_dim', patience=5)
  checkpoint = keras.callbacks.ModelCheckpoint(
    str(tmp_path / 'best.keras'), monitor='val_bits_per_dim', save_best_only=True
  )
  # min_delta so large that no epoch improves on the first: the rate halves after epochs 2 and 3.
  plateau = keras.callbacks.ReduceLROnPlateau(monitor='bits_per_dim', factor=0.5, patience=0, min_delta=100)
  history = model.fit(
    digits(), validation_data=digits('test'), epochs=3, callbacks=[early, checkpoint, plateau], verbose=0
  )
  assert early.mode == checkpoint.mode == plateau.mode == 'min'
  rates = history.history['learning_rate']  # the rate an epoch ran with, halved on each plateau
  np.testing.assert_allclose(rates[0], 1e-2, rtol=1e-6)
  np.testing.assert_allclose(rates[-1], 5e-3, rtol=1e-6)
  np.testing.assert_allclose(float(model.optimizer.learning_rate), 2.5e-3, rtol=1e-6)
  assert (tmp_path / 'best.keras').is_file()


def test_learning_rate_scheduler_and_warmup_multiply(tmp_path):
  model = tiny_model(optim.default_optimizer(1e-2, warmup_steps=4, name='adam'))
  assert float(model.optimizer.warmup_factor()) == 0.25
  scheduler = keras.callbacks.LearningRateScheduler(lambda epoch: 1e-2 / (epoch + 1))
  model.fit(digits(), epochs=2, callbacks=[scheduler], verbose=0)
  assert int(model.optimizer.iterations) == 4 and float(model.optimizer.warmup_factor()) == 1.0
  np.testing.assert_allclose(float(model.optimizer.learning_rate), 5e-3, rtol=1e-6)
  # Saved and loaded: the rate, the warmup and the step count come back (a resumed run continues).
  model.save(tmp_path / 'm.keras')
  loaded = keras.models.load_model(tmp_path / 'm.keras')
  assert isinstance(loaded.optimizer, optim.WarmupAdam) and loaded.optimizer.warmup_steps == 4
  assert int(loaded.optimizer.iterations) == 4
  np.testing.assert_allclose(float(loaded.optimizer.learning_rate), 5e-3, rtol=1e-6)


@pytest.mark.slow
def test_warmup_scales_the_first_steps():
  """Adamax's first step moves each weight by about lr * factor (|m / u| = 1 - beta1 ... at step 1)."""
  sizes = []
  for warmup in (1, 4):
    model = tiny_model(optim.default_optimizer(1e-2, warmup_steps=warmup))
    model.fit(digits().take(1), epochs=1, verbose=0)  # initializes actnorm, then one step
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.fit(digits().take(1), epochs=1, verbose=0)
    sizes.append(max(np.max(np.abs(v.numpy() - b)) for v, b in zip(model.trainable_variables, before)))
  np.testing.assert_allclose(sizes[1] / sizes[0], 0.5, rtol=0.05)  # step 2 of 4: factor 2 / 4


def test_tensorboard_logs_scalars_and_sample_grids(tmp_path):
  pytest.importorskip('tensorboard')
  from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

  model = tiny_model()
  logs = str(tmp_path / 'logs')
  model.fit(
    digits(),
    epochs=2,
    verbose=0,
    callbacks=[
      keras.callbacks.TensorBoard(logs),
      SampleGrid(str(tmp_path / 'samples'), temperatures=(0.7,), n=4, log_dir=os.path.join(logs, 'samples')),
    ],
  )
  scalars = event_accumulator.EventAccumulator(os.path.join(logs, 'train')).Reload()
  assert {'epoch_bits_per_dim', 'epoch_loss', 'epoch_skipped_steps'} <= set(scalars.Tags()['tensors'])
  images = event_accumulator.EventAccumulator(os.path.join(logs, 'samples')).Reload()
  assert images.Tags()['tensors'] == ['samples/T=0.7']
  grid = images.Tensors('samples/T=0.7')[-1]
  png = tf.make_ndarray(grid.tensor_proto)[2]
  assert tf.io.decode_png(png).shape == (2 * 8 + 1, 2 * 8 + 1, 1) and grid.step == 2


# ---- Keras habits a density model cannot honour refuse in one clear line -------------------------------


@pytest.mark.parametrize('argument', ['class_weight', 'sample_weight'])
def test_fit_refuses_weights_a_density_model_cannot_honour(argument):
  model = tiny_model()
  value = {0: 1.0} if argument == 'class_weight' else np.ones(64)
  x = np.concatenate([b.numpy() for b in digits()])
  with pytest.raises(ValueError, match=f'GlowModel.fit: {argument} cannot be honoured'):
    model.fit(x, batch_size=32, epochs=1, verbose=0, **{argument: value})


def test_legacy_h5_and_unnamed_saves_refuse_naming_the_users_path(tmp_path):
  model = tiny_model()
  for name, hint in (('x.h5', 'x.keras'), ('xnoext', 'xnoext.keras')):
    path = str(tmp_path / name)
    with pytest.raises(ValueError) as raised:
      model.save(path)
    message = str(raised.value)
    assert path in message and hint in message and '.tmp' not in message, message
  assert sorted(os.listdir(tmp_path)) == []  # nothing written, no temporary file left
  with pytest.raises(ValueError, match='weights.h5'):
    model.save_weights(str(tmp_path / 'w.h5'))


def test_errors_while_writing_name_the_users_file_not_the_temporary_one(tmp_path, monkeypatch):
  model = tiny_model()
  path = str(tmp_path / 'model.keras')

  def failing_save(self, filepath, *args, **kwargs):
    raise OSError(f'Unable to create file (name = {filepath!r}, No space left on device)')

  monkeypatch.setattr(keras.Model, 'save', failing_save)
  with pytest.raises(OSError) as raised:
    model.save(path)
  assert path in str(raised.value) and '.tmp' not in str(raised.value)
  assert os.listdir(tmp_path) == []
