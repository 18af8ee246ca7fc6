"""Semantic manipulation: attribute directions from labelled images, and moving an image along one."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import cli, data, manipulation
from tfp_glow.training.model import GlowModel


@pytest.fixture(scope='module')
def model_and_digits():
  """A tiny digits model with every parameter perturbed (a fresh Glow is nearly the identity)."""
  bins, labels = data.load_digits('test')
  x = data.dequantize(bins, data.DIGITS_BINS, seed=[0, 1])
  model = GlowModel((8, 8, 1), levels=2, steps=2, width=8, n_bins=data.DIGITS_BINS, seed=0)
  model.initialize(x)
  rng = np.random.default_rng(0)
  for v in model.trainable_variables:
    v.assign(v.numpy() + 0.05 * rng.standard_normal(v.shape).astype(v.dtype))
  return model, x, labels


def test_direction_is_the_difference_of_the_class_means(model_and_digits):
  model, x, labels = model_and_digits
  keep = np.isin(labels, [1, 7])
  direction = manipulation.attribute_direction(model, x[keep], labels[keep] == 7, batch_size=16)
  # independently: each image encoded on its own, means in float64 numpy
  per_image = [
    [z.numpy()[0].astype(np.float64) for z in model.encode(x[i : i + 1])] for i in np.flatnonzero(keep)
  ]
  with_7 = labels[keep] == 7
  assert len(direction) == 2
  for level, d in enumerate(direction):
    stacked = np.stack([p[level] for p in per_image])
    expected = stacked[with_7].mean(0) - stacked[~with_7].mean(0)
    assert d.shape == expected.shape
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-4)
    assert np.abs(expected).max() > 0.1  # the classes differ: not a comparison of zeros


def test_manipulate_moves_along_the_direction_and_alpha_zero_reconstructs(model_and_digits):
  model, x, labels = model_and_digits
  direction = manipulation.attribute_direction(model, x, labels == 7)
  image = x[int(np.flatnonzero(labels == 1)[0])]
  row = manipulation.manipulate(model, image, direction, alphas=[0.0, 1.0, -0.5])
  assert row.shape == (3, 8, 8, 1)
  np.testing.assert_allclose(row[0], image, atol=1e-4)  # alpha = 0: the reconstruction
  z = model.encode(image[None])
  for i, alpha in ((1, 1.0), (2, -0.5)):
    expected = model.decode([zl + alpha * d[None] for zl, d in zip(z, direction)])[0]
    np.testing.assert_allclose(row[i], expected, atol=1e-5)
  assert float(tf.reduce_max(tf.abs(row[1] - image))) > 0.05  # it moved


def test_bad_inputs_are_named(model_and_digits):
  model, x, labels = model_and_digits
  with pytest.raises(ValueError, match='with and without'):
    manipulation.attribute_direction(model, x[:5], np.ones(5, bool))
  with pytest.raises(ValueError, match='flags'):
    manipulation.attribute_direction(model, x[:5], np.ones(4, bool))
  with pytest.raises(ValueError, match='levels'):
    manipulation.manipulate(model, x[0], [tf.zeros([4, 4, 2])], [1.0])


def test_cli_manipulate_writes_a_png(model_and_digits, tmp_path, capsys):
  model, _, labels = model_and_digits
  path = tmp_path / 'model.keras'
  model.save(path)
  one = int(np.flatnonzero(labels == 1)[0])
  png = tmp_path / 'row.png'
  argv = ['manipulate', str(path), f'test:{one}', '--from-class', '1', '--to-class', '7', '--out', str(png)]
  assert cli.main([*argv, '--alphas', '0', '0.5', '1', '1.5']) == 0
  assert 'moved toward class 7' in capsys.readouterr().out
  grid = tf.io.decode_png(tf.io.read_file(str(png))).numpy()
  assert grid.shape == (32, 4 * 32 + 3, 1)  # 4 alphas, 8x8 digits shown at 32x32, 1-pixel separators
  assert cli.main([*argv[:3], '--to-class', '12']) == 2
  assert 'classes 0..9' in capsys.readouterr().err
