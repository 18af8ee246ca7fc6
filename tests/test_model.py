"""GlowModel: Keras 3 training, save/load, export, sampling and input checks."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import digits, tiny_model  # noqa: E402

from tfp_glow.training import optim
from tfp_glow.training.model import GlowModel


def test_model_sees_every_bijector_variable():
  model = tiny_model(num_classes=10)
  flow_vars = {id(v) for v in model.glow.trainable_variables}
  model_vars = {id(v.value) for v in model.trainable_variables}
  assert flow_vars and flow_vars <= model_vars
  # Everything else the model trains is the class predictor.
  extra = model_vars - flow_vars
  assert extra == {id(v.value) for v in model.classifier.trainable_weights}
  all_flow = {id(v.value) for v in model.flow.weights}
  assert {id(v.value) for b in model.glow._bijectors for v in b.layer.weights} == all_flow


def test_fit_initializes_actnorm_and_changes_every_trainable_variable():
  model = tiny_model()
  before = [v.numpy().copy() for v in model.trainable_variables]
  assert not model.is_initialized
  history = model.fit(digits().take(3), epochs=1, verbose=0)
  assert model.is_initialized
  assert set(history.history) >= {'loss', 'bits_per_dim'}
  for v, old in zip(model.trainable_variables, before):
    assert not np.allclose(v.numpy(), old), f'{v.path} was not trained'


def test_fit_with_a_partial_last_batch_and_numpy_arrays():
  model = tiny_model()
  x = next(iter(digits(batch_size=70)))
  history = model.fit(x.numpy(), batch_size=32, epochs=1, verbose=0)  # 32 + 32 + 6
  assert np.isfinite(history.history['bits_per_dim'][-1])


@pytest.mark.slow
def test_short_training_on_digits_beats_the_uniform_model_by_far():
  """A uniform model over 17 levels scores log2(17) = 4.09 bits/dim; measured here after 15 epochs:
  ~2.97 (L=2, K=4, width 32). The threshold leaves margin for other seeds and TF versions."""
  model = GlowModel((8, 8, 1), levels=2, steps=4, width=32, n_bins=17, seed=0)
  model.compile(optimizer=optim.default_optimizer(3e-3, warmup_steps=20))
  history = model.fit(
    digits(batch_size=128), validation_data=digits('test', 297, shuffle=False), epochs=15, verbose=0
  )
  assert history.history['val_bits_per_dim'][-1] < 3.5 < math.log2(17)


def test_save_load_keras_file_and_weights_keep_log_prob_and_actnorm_init(tmp_path):
  model = tiny_model()
  model.fit(digits().take(2), epochs=1, verbose=0)
  x = next(iter(digits('test', shuffle=False)))
  expected = model.log_prob(x)
  model.save(tmp_path / 'm.keras')
  loaded = keras.models.load_model(tmp_path / 'm.keras')
  assert loaded.is_initialized
  np.testing.assert_allclose(loaded.log_prob(x), expected, rtol=1e-6, atol=1e-6)
  model.save_weights(tmp_path / 'm.weights.h5')
  fresh = tiny_model()
  assert not fresh.is_initialized
  fresh.load_weights(tmp_path / 'm.weights.h5')
  assert fresh.is_initialized
  np.testing.assert_allclose(fresh.log_prob(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_saved_model_export_loads_without_the_python_classes(tmp_path):
  model = tiny_model()
  model.fit(digits().take(2), epochs=1, verbose=0)
  model.export(str(tmp_path / 'export'), verbose=False)
  loaded = tf.saved_model.load(str(tmp_path / 'export'))
  for n in (1, 5):  # any batch size
    x = next(iter(digits('test', batch_size=n, shuffle=False)))
    np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x), rtol=1e-6, atol=1e-5)
  samples = loaded.sample(tf.constant(3), tf.constant(0.5))
  assert samples.shape == (3, 8, 8, 1) and np.all(np.isfinite(samples))


def test_conditional_training_and_sampling_per_class():
  model = tiny_model(num_classes=10)
  ds = digits(with_labels=True)
  history = model.fit(ds.take(2), epochs=1, verbose=0)
  assert 'class_accuracy' in history.history
  assert np.any(model.classifier.kernel.numpy() != 0)
  assert np.any(model.glow.levels[-1].exit.layer.class_weights.numpy() != 0)
  images = model.sample(4, labels=[3, 3, 7, 7], seed=(1, 2))
  assert images.shape == (4, 8, 8, 1) and images.dtype == tf.uint8
  with pytest.raises(ValueError, match='class-conditional'):
    model.sample(2)
  with pytest.raises(ValueError, match='class-conditional'):
    model.fit(digits().take(1), epochs=1, verbose=0)


def test_sample_temperature_encode_decode_interpolate():
  model = tiny_model()
  model.fit(digits().take(3), epochs=1, verbose=0)
  x = next(iter(digits('test', batch_size=8, shuffle=False)))
  np.testing.assert_allclose(model.decode(model.encode(x)), x, atol=1e-4)
  floats = model.sample(64, temperature=0.3, as_uint8=False, seed=(3, 4))
  hot = model.sample(64, temperature=1.0, as_uint8=False, seed=(3, 4))
  assert np.std(model.glow.inverse(floats)) < np.std(model.glow.inverse(hot))
  uint8 = model.sample(3)
  assert uint8.dtype == tf.uint8 and uint8.shape == (3, 8, 8, 1)
  assert set(np.unique(uint8.numpy())) <= {round(b * 255 / 16) for b in range(17)}
  path = model.interpolate(x[0], x[1], steps=5)
  assert path.shape == (5, 8, 8, 1)
  np.testing.assert_allclose(path[0], x[0], atol=1e-4)
  np.testing.assert_allclose(path[-1], x[1], atol=1e-4)


def test_bad_input_gets_a_clear_error(tmp_path):
  model = tiny_model()
  with pytest.raises(TypeError, match='floats in \\[-0.5, 0.5\\)'):
    model.log_prob(np.zeros([2, 8, 8, 1], np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match='must be in \\[-0.5, 0.5\\)'):
    model.log_prob(np.full([2, 8, 8, 1], 255.0, np.float32))
  with pytest.raises(tf.errors.InvalidArgumentError, match='NaN or Inf'):
    model.log_prob(np.full([2, 8, 8, 1], np.nan, np.float32))
  with pytest.raises(ValueError, match='expected images of shape \\[N, 8, 8, 1\\]'):
    model.log_prob(np.zeros([2, 8, 8, 3], np.float32))
  with pytest.raises(ValueError, match='temperature must be > 0'):
    model.sample(2, temperature=0.0)
  with pytest.raises(ValueError, match='n must be an integer >= 0'):
    model.sample(-1)
  with pytest.raises(ValueError, match='not class-conditional'):
    model.sample(2, labels=[1, 2])
  conditional = tiny_model(num_classes=10)
  with pytest.raises(ValueError, match='pass labels'):
    conditional.log_prob(np.zeros([2, 8, 8, 1], np.float32))
  with pytest.raises(tf.errors.InvalidArgumentError, match='num_classes=10'):
    conditional.log_prob(np.zeros([2, 8, 8, 1], np.float32), labels=[1, 12])
  corrupt = tmp_path / 'corrupt.keras'
  corrupt.write_bytes(b'not a zip file')
  with pytest.raises(ValueError):
    keras.models.load_model(corrupt)


@pytest.mark.slow
def test_fit_under_xla_trains_and_matches_eager_log_prob():
  model = GlowModel((8, 8, 1), levels=2, steps=1, width=8, n_bins=17, seed=0)
  model.compile(optimizer=optim.default_optimizer(1e-2, warmup_steps=1), jit_compile=True)
  before = [v.numpy().copy() for v in model.trainable_variables]
  history = model.fit(digits().take(3), epochs=1, verbose=0)
  assert np.isfinite(history.history['bits_per_dim'][-1])
  for v, old in zip(model.trainable_variables, before):
    assert not np.allclose(v.numpy(), old), f'{v.path} was not trained under XLA'
  x = next(iter(digits('test', shuffle=False)))
  xla_log_prob = tf.function(model.log_prob, jit_compile=True)
  np.testing.assert_allclose(xla_log_prob(x), model.log_prob(x), rtol=1e-5)


def test_bits_per_dim_of_the_uniform_density_is_log2_n_bins():
  model = tiny_model()
  np.testing.assert_allclose(model.bits_per_dim(tf.zeros([3])), math.log2(17), rtol=1e-6)


def test_float64_model_trains():
  model = tiny_model(flow_dtype='float64')
  history = model.fit(digits().map(lambda x: tf.cast(x, tf.float64)).take(2), epochs=1, verbose=0)
  assert np.isfinite(history.history['bits_per_dim'][-1])
  assert all(v.dtype == 'float64' for v in model.trainable_variables)
  x = next(iter(digits('test', batch_size=4, shuffle=False)))
  assert model.log_prob(x).dtype == tf.float64  # float32 images are cast to the flow's dtype


def test_weights_of_another_layout_are_refused_with_a_message_naming_the_settings(tmp_path):
  saved = GlowModel((8, 8, 1), levels=2, steps=2, width=8, seed=0)
  for v in saved.trainable_weights:
    v.assign(v + 0.5)
  saved.save_weights(tmp_path / 'k2.weights.h5')
  deeper = GlowModel((8, 8, 1), levels=2, steps=3, width=8, seed=0)
  before = [v.numpy() for v in deeper.weights]
  with pytest.raises(ValueError, match='does not match this model: build the model with the settings'):
    deeper.load_weights(tmp_path / 'k2.weights.h5')
  for v, value in zip(deeper.weights, before):  # not half-loaded (the exits' priors would match)
    np.testing.assert_array_equal(v.numpy(), value, err_msg=v.path)


def test_a_seeded_model_and_its_dequantizer_start_from_the_same_weights_every_time():
  def weights(seed):
    model = GlowModel((8, 8, 3), levels=2, steps=2, width=8, seed=seed, dequantization='variational')
    return [np.asarray(v) for v in model.weights], [np.asarray(v) for v in model.dequantizer.weights]

  (first, first_q), (second, second_q), (_, other_q) = weights(1), weights(1), weights(2)
  assert len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second))
  assert all(np.array_equal(a, b) for a, b in zip(first_q, second_q))
  assert any(not np.array_equal(a, b) for a, b in zip(first_q, other_q))  # q(u|x)'s own draws follow the seed
