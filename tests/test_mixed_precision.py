"""Mixed precision: under a Keras mixed policy only the networks compute in low precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import data
from tfp_glow.testing import perturb
from tfp_glow.training import optim
from tfp_glow.training.model import GlowModel

TINY = dict(image_shape=(8, 8, 1), levels=2, steps=2, width=16, n_bins=17, seed=0)


@pytest.fixture
def policy():
  """Sets a global Keras policy for the test and restores float32 after it."""
  yield keras.mixed_precision.set_global_policy
  keras.mixed_precision.set_global_policy('float32')


# Measured max |log p difference| per dimension, in bits, with the same perturbed weights: bfloat16 7e-4,
# float16 7e-5 (bfloat16 keeps 8 significant bits, float16 11). The bounds leave a margin of ~5x.
# The default run: float16; bfloat16 (the same code path, a looser bound) with --slow.
@pytest.mark.parametrize(
  'name, bits_per_dim_tolerance',
  [pytest.param('mixed_bfloat16', 4e-3, marks=pytest.mark.slow), ('mixed_float16', 4e-4)],
)
def test_log_prob_under_a_mixed_policy_is_close_to_float32_and_only_networks_are_low_precision(
  policy, name, bits_per_dim_tolerance
):
  x = tf.random.stateless_uniform([8, 8, 8, 1], (1, 2)) - 0.5
  reference = GlowModel(**TINY)
  reference.initialize(x)
  perturb(reference.glow, 0.05)
  expected = reference.log_prob(x).numpy()
  policy(name)
  model = GlowModel(**TINY)
  model.set_weights(reference.get_weights())
  low = keras.mixed_precision.Policy(name).compute_dtype
  coupling = model.glow.levels[0].steps[0].coupling
  assert coupling.network.compute_dtype == low  # the level's stacked coupling networks
  assert model.glow.levels[0].exit.network.compute_dtype == low
  assert {v.dtype for v in model.weights if v.dtype.startswith('float')} == {'float32'}
  enc = model.glow.encode_with_log_det(x)
  assert enc.log_det.dtype == tf.float32 and all(z.dtype == tf.float32 for z in enc.latents)
  got = model.log_prob(x).numpy()
  assert got.dtype == np.float32
  assert np.any(got != expected), 'the networks did not compute in low precision'
  bits = np.abs(got - expected) / (64 * np.log(2.0))
  assert np.max(bits) < bits_per_dim_tolerance
  model.compile(optimizer=optim.default_optimizer(1e-2, warmup_steps=1))
  # Keras wraps the optimizer for float16 (dynamic loss scaling; train_step scales the loss).
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (name == 'mixed_float16')
  before = [v.numpy() for v in model.trainable_variables]
  history = model.fit(x, batch_size=8, epochs=2, verbose=0)
  assert np.isfinite(history.history['bits_per_dim'][-1])
  for v, w0 in zip(model.trainable_variables, before):
    assert not np.allclose(v.numpy(), w0), f'{v.path} was not trained'


@pytest.mark.slow
def test_short_bfloat16_digits_run_matches_float32_within_0_02_bits_per_dim(policy):
  """The same short training run (same seed, data and initial weights) in float32 and in mixed_bfloat16."""
  train, _ = data.load_dataset('digits', 'train', batch_size=128, seed=0)
  test, _ = data.load_dataset('digits', 'test', batch_size=297, shuffle=False, seed=0)
  scores = {}
  for name in ('float32', 'mixed_bfloat16'):
    policy(name)
    keras.utils.set_random_seed(0)
    model = GlowModel(**TINY)
    model.compile(optimizer=optim.default_optimizer(3e-3, warmup_steps=10))
    history = model.fit(train, validation_data=test, epochs=4, verbose=0)
    scores[name] = history.history['val_bits_per_dim'][-1]
  # Measured: float32 3.690, mixed_bfloat16 3.689 bits/dim after 4 epochs.
  assert scores['float32'] < 3.9  # it learned something (uniform: 4.09)
  assert abs(scores['mixed_bfloat16'] - scores['float32']) < 0.02, scores
