"""GlowModel's public calls run as cached tf.functions: traced once, reused across n, batch sizes,
temperatures and labels, with the results of the uncompiled distribution (tfp_glow/training/compiled.py)."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import manipulation
from tfp_glow.testing import perturb
from tfp_glow.training.model import GlowModel

SHAPE = (8, 8, 1)


def _model(num_classes=None) -> GlowModel:
  model = GlowModel(SHAPE, levels=2, steps=2, width=8, n_bins=17, seed=0, num_classes=num_classes)
  x = tf.random.stateless_uniform([16, *SHAPE], (0, 1)) - 0.5
  model.initialize(x, None if num_classes is None else tf.range(16) % num_classes)
  perturb(model.glow, scale=0.05)  # a fresh Glow is nearly the identity
  return model


def _images(n, seed=0):
  return tf.random.stateless_uniform([n, *SHAPE], (seed, 7)) - 0.5


@pytest.fixture(scope='module')
def model():
  return _model()


@pytest.fixture(scope='module')
def conditional():
  return _model(num_classes=3)


def test_log_prob_encode_decode_trace_once_and_equal_the_distribution(model):
  dist = model.distribution
  for n in (1, 3, 5, 3):  # several batch sizes, then one seen before
    x = _images(n, seed=n)
    np.testing.assert_allclose(model.log_prob(x), dist.log_prob(x), rtol=1e-5, atol=1e-4)
    latents = model.encode(x)
    for z, expected in zip(latents, dist.encode(x)):
      np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.decode(latents), dist.decode(latents), rtol=1e-5, atol=1e-5)
  assert np.abs(np.diff(model.log_prob(_images(4)))).max() > 1e-3  # a perturbed model: distinct densities
  calls = model._tfp.calls
  assert [calls.tracing_count(name) for name in ('log_prob', 'encode', 'decode')] == [1, 1, 1]


def test_sample_traces_once_across_n_and_temperature_and_equals_the_distribution(model):
  calls = model._tfp.calls
  before = calls.tracing_count('sample')
  for n, temperature in ((1, 0.7), (4, 1.0), (6, 0.3), (tf.constant(3), tf.constant(0.5))):
    seed = (n if isinstance(n, int) else 9, 2)
    got = model.sample(n, temperature=temperature, seed=seed, as_uint8=False)
    expected = model.distribution.sample(int(n), temperature=float(temperature), seed=seed)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got.shape == (int(n), *SHAPE)
  assert calls.tracing_count('sample') - before == 1  # the seeded, float variant
  colder = model.sample(64, temperature=0.2, seed=(1, 1), as_uint8=False)
  hotter = model.sample(64, temperature=1.0, seed=(1, 1), as_uint8=False)
  assert np.std(model.glow.inverse(colder)) < 0.5 * np.std(model.glow.inverse(hotter))
  for n in (2, 5):  # unseeded, uint8: one more trace, reused
    images = model.sample(n)
    assert images.dtype == tf.uint8 and images.shape == (n, *SHAPE)
  assert calls.tracing_count('sample') - before == 2
  a, b = model.sample(8, as_uint8=False), model.sample(8, as_uint8=False)
  assert np.abs(a - b).max() > 0  # unseeded calls of one trace still draw fresh noise


def test_sample_in_batches_equals_per_batch_draws_with_folded_seeds(model):
  seed = tf.constant([5, 6], tf.int32)
  got = model.sample(tf.constant(7), temperature=0.7, seed=seed, as_uint8=False, batch_size=3)
  parts = [
    model.distribution.sample(m, temperature=0.7, seed=tf.random.experimental.stateless_fold_in(seed, i))
    for i, m in enumerate((3, 3, 1))
  ]
  np.testing.assert_allclose(got, tf.concat(parts, 0), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(
    got, model.sample(7, temperature=0.7, seed=seed, as_uint8=False, batch_size=3)
  )
  assert model.sample(0, batch_size=3).shape == (0, *SHAPE)


def test_large_n_is_drawn_in_bounded_batches(model, monkeypatch):
  calls, sizes = model._tfp.calls, []
  compiled_sample = calls.sample

  def recording(n, *args):
    sizes.append(int(n))
    return compiled_sample(n, *args)

  monkeypatch.setattr(calls, 'sample', recording)
  images = model.sample(2500)  # the default batch: 2**22 pixels, capped at 1024 images
  assert images.shape == (2500, *SHAPE) and images.dtype == tf.uint8
  assert sizes == [1024, 1024, 452] and model.sample_batch_size == 1024
  sizes.clear()
  assert model.sample(7, batch_size=3).shape == (7, *SHAPE) and sizes == [3, 3, 1]
  with pytest.raises(ValueError, match='batch_size must be an integer >= 1'):
    model.sample(4, batch_size=0)


def test_conditional_calls_trace_once_across_labels(conditional):
  dist, calls = conditional.distribution, conditional._tfp.calls
  for n, labels in ((3, [0, 1, 2]), (5, [2, 2, 1, 0, 0]), (2, 1)):  # a scalar label: one class for all
    x = _images(n, seed=n)
    per_image = tf.broadcast_to(tf.constant(labels, tf.int32), [n])
    np.testing.assert_allclose(
      conditional.log_prob(x, labels), dist.log_prob(x, labels=per_image), rtol=1e-5, atol=1e-4
    )
    got = conditional.sample(n, 0.7, labels=labels, seed=(n, 1), as_uint8=False)
    expected = dist.sample(n, temperature=0.7, labels=per_image, seed=(n, 1))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  x = _images(3)
  assert np.abs(conditional.log_prob(x, [0, 0, 0]) - conditional.log_prob(x, [1, 1, 1])).max() > 1e-4
  assert calls.tracing_count('log_prob') == 1 and calls.tracing_count('sample') == 1
  with pytest.raises(ValueError, match='pass labels'):
    conditional.sample(2)


def test_interpolate_traces_once_across_steps_and_ends_at_the_images(conditional):
  calls = conditional._tfp.calls
  x = _images(2)
  for steps in (2, 5, 3):
    path = conditional.interpolate(x[0], x[1], steps=steps, labels=[0, 2])
    assert path.shape == (steps, *SHAPE)
    np.testing.assert_allclose(path[0], x[0], atol=1e-4)
    np.testing.assert_allclose(path[-1], x[1], atol=1e-4)
  # the midpoint decodes the mean latent under the nearer end's label (t = 0.5: the second label)
  latents = conditional.distribution.encode(x, tf.constant([0, 2]))
  middle = conditional.distribution.decode([(z[:1] + z[1:]) / 2 for z in latents], tf.constant([2]))
  np.testing.assert_allclose(path[1:2], middle, rtol=1e-5, atol=1e-5)
  assert calls.tracing_count('interpolate') == 1
  with pytest.raises(ValueError, match='steps must be an integer >= 2'):
    conditional.interpolate(x[0], x[1], steps=1, labels=[0, 2])


def test_manipulation_reuses_the_compiled_encode_and_decode(model):
  calls = model._tfp.calls
  encodes, decodes = calls.tracing_count('encode'), calls.tracing_count('decode')
  x = _images(11)
  direction = manipulation.attribute_direction(model, x, np.arange(11) % 2 == 0, batch_size=4)  # 4, 4, 3
  for alphas in ([0.0, 1.0], [-1.0, 0.0, 0.5]):
    row = manipulation.manipulate(model, x[0], direction, alphas)
    np.testing.assert_allclose(row[alphas.index(0.0)], x[0], atol=1e-4)
  assert calls.tracing_count('encode') - encodes <= 1 and calls.tracing_count('decode') - decodes <= 1


def test_calls_inside_a_users_tf_function_run_inline(model):
  @tf.function
  def users(n, x):
    return model.sample(n, temperature=0.7, as_uint8=False), model.log_prob(x)

  samples, log_prob = users(tf.constant(3), _images(2))
  assert samples.shape == (3, *SHAPE)
  np.testing.assert_allclose(log_prob, model.distribution.log_prob(_images(2)), rtol=1e-5, atol=1e-4)


def test_conditional_calls_inside_a_users_tf_function(conditional):
  # what `tfp-glow evaluate` does: encode and decode with labels inside one traced function
  roundtrip = tf.function(lambda x, y: conditional.decode(conditional.encode(x, y), y) - x)
  x, y = _images(3), tf.constant([0, 2, 1])
  assert np.abs(roundtrip(x, y)).max() < 1e-4
  np.testing.assert_allclose(
    tf.function(conditional.log_prob)(x, y),
    conditional.distribution.log_prob(x, labels=y),
    rtol=1e-5,
    atol=1e-4,
  )


def test_autodiff_modes_through_the_compiled_log_prob_equal_the_distributions(model):
  """The cached tf.function is plain TensorFlow autodiff: batch_jacobian, a second-order gradient and a
  forward-mode JVP of GlowModel.log_prob equal those of the uncompiled distribution.log_prob."""
  x = _images(2, seed=3)
  v = tf.random.stateless_normal(x.shape, (5, 5))

  def modes(log_prob):
    with tf.GradientTape() as outer:
      outer.watch(x)
      with tf.GradientTape() as inner:
        inner.watch(x)
        total = tf.reduce_sum(log_prob(x))
      g = inner.gradient(total, x)
      gv = tf.reduce_sum(g * v)
    hvp = outer.gradient(gv, x)  # second order: H v
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = log_prob(x)
    jac = tape.batch_jacobian(y[:, None], x)
    with tf.autodiff.ForwardAccumulator(x, v) as acc:
      y = log_prob(x)
    return g, hvp, jac, acc.jvp(y)

  for ours, plain in zip(modes(model.log_prob), modes(model.distribution.log_prob)):
    assert ours is not None and plain is not None
    np.testing.assert_allclose(ours.numpy(), plain.numpy(), rtol=1e-4, atol=1e-4)
