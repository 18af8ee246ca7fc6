"""Files saved by main before the engine-room rebuild (tests/data/golden_*, written at e53acda) still load and
give the same log_prob: a `.keras` file through keras.models.load_model, and a weights file into a new model."""

import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_glow

DATA = pathlib.Path(__file__).resolve().parent / 'data'
NAMES = ['stacked', 'conditional_additive']


def inputs(name):
  saved = np.load(DATA / f'golden_{name}_inputs.npz')
  config = json.loads((DATA / f'golden_{name}_config.json').read_text())
  labels = tf.constant(saved['labels'].astype(np.int32)) if config.get('num_classes') else None
  return tf.constant(saved['images']), labels, saved['log_prob'], config


@pytest.mark.parametrize('name', NAMES)
def test_a_keras_file_from_before_loads_and_gives_the_same_log_prob(name):
  images, labels, expected, _ = inputs(name)
  model = keras.models.load_model(DATA / f'golden_{name}.keras')
  assert isinstance(model, tfp_glow.GlowModel) and model.is_initialized
  np.testing.assert_allclose(model.log_prob(images, labels), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('name', NAMES)
def test_a_weights_file_from_before_loads_into_a_new_model(name):
  images, labels, expected, config = inputs(name)
  model = tfp_glow.GlowModel(**config)
  before = model.log_prob(images, labels).numpy()
  model.load_weights(DATA / f'golden_{name}.weights.h5')
  got = model.log_prob(images, labels).numpy()
  assert np.max(np.abs(before - expected)) > 1e-2  # the file, not the constructor, gives these values
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
