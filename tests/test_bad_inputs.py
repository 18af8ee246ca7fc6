"""Every bad input a user can give, and the one clear error (or the TFP-style result) it gets.

docs/troubleshooting.md lists these rows; add a row here when you add one there.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import GlowDistribution, GlowModel, cli, data

IMAGES = np.zeros([3, 8, 8, 1], np.float32)


@functools.cache
def model(num_classes=None):
  m = GlowModel((8, 8, 1), levels=2, steps=1, width=8, n_bins=17, seed=0, num_classes=num_classes)
  m.compile()
  m.initialize(IMAGES + 0.1, None if num_classes is None else np.arange(3))
  return m


def strict_distribution():
  return GlowDistribution(model().glow, validate_args=True)


# (where, bad input, call, error type, message regex)
ERRORS = [
  (
    'model',
    'uint8 pixels',
    lambda: model().log_prob(IMAGES.astype(np.uint8)),
    TypeError,
    r'floats in \[-0.5',
  ),
  (
    'model',
    '0..255 floats',
    lambda: model().log_prob(IMAGES + 255),
    tf.errors.InvalidArgumentError,
    r'\[-0.5, 0.5\)',
  ),
  (
    'model',
    'NaN pixels',
    lambda: model().log_prob(IMAGES + np.nan),
    tf.errors.InvalidArgumentError,
    'NaN or Inf',
  ),
  (
    'model',
    'wrong image shape',
    lambda: model().log_prob(np.zeros([3, 8, 8, 3])),
    ValueError,
    r'\[N, 8, 8, 1\]',
  ),
  ('model', 'n_bins < 2', lambda: GlowModel((8, 8, 1), n_bins=1), ValueError, 'n_bins'),
  (
    'model',
    'max_consecutive_skips 0',
    lambda: GlowModel((8, 8, 1), max_consecutive_skips=0),
    ValueError,
    'skips',
  ),
  ('model', 'sample n < 0', lambda: model().sample(-1), ValueError, 'n must be an integer >= 0'),
  (
    'model',
    'temperature 0',
    lambda: model().sample(2, temperature=0.0),
    ValueError,
    'temperature must be > 0',
  ),
  (
    'model',
    'temperature NaN',
    lambda: model().sample(2, temperature=float('nan')),
    ValueError,
    'temperature',
  ),
  (
    'model',
    'labels, unconditional model',
    lambda: model().log_prob(IMAGES, [1, 2, 3]),
    ValueError,
    'not class',
  ),
  ('model', 'no labels, conditional model', lambda: model(10).log_prob(IMAGES), ValueError, 'pass labels'),
  (
    'model',
    'float labels',
    lambda: model(10).log_prob(IMAGES, [1.0, 2.0, 3.0]),
    TypeError,
    'integer class ids',
  ),
  (
    'model',
    'label >= num_classes',
    lambda: model(10).log_prob(IMAGES, [1, 2, 12]),
    tf.errors.InvalidArgumentError,
    'num_classes=10',
  ),
  (
    'model',
    'labels of the wrong length',
    lambda: model(10).log_prob(IMAGES, [1, 2]),
    ValueError,
    r'batch shape \[3\]',
  ),
  (
    'library',
    'labels of the wrong length',
    lambda: model(10).distribution.sample(3, labels=[1, 2]),
    ValueError,
    r'scalar .* or of the batch shape \[3\]',
  ),
  (
    'library',
    'temperature <= 0',
    lambda: model().distribution.sample(2, temperature=-1.0),
    ValueError,
    'temperature',
  ),
  (
    'library',
    'temperature tensor NaN (validate_args)',
    lambda: strict_distribution().sample(2, temperature=tf.constant(np.nan, tf.float32)),
    tf.errors.InvalidArgumentError,
    'temperature must be > 0 and finite',
  ),
  (
    'library',
    'temperature tensor 0 (validate_args)',
    lambda: strict_distribution().sample(2, temperature=tf.constant(0.0)),
    tf.errors.InvalidArgumentError,
    'temperature must be > 0 and finite',
  ),
  (
    'library',
    'temperature not a scalar',
    lambda: model().distribution.sample(2, temperature=tf.ones([2])),
    ValueError,
    'scalar',
  ),
  ('data', 'unknown data set', lambda: data.load_dataset('nope', 'train'), ValueError, 'accepted: digits'),
  ('data', 'n_bits 9', lambda: data.load_dataset('digits', 'train', n_bits=9), ValueError, 'n_bits'),
  (
    'data',
    'missing folder',
    lambda: data.load_dataset('folder:/nonexistent', 'train'),
    ValueError,
    'not a directory',
  ),
]


@pytest.mark.parametrize(
  'call, error, match', [row[2:] for row in ERRORS], ids=[f'{row[0]}: {row[1]}' for row in ERRORS]
)
def test_bad_input_gets_a_clear_error(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_empty_in_empty_out_and_labels_broadcast_as_in_tfp(tmp_path):
  """TFP's convention: zero images in, zero results out; a scalar label is one class for all."""
  empty = np.zeros([0, 8, 8, 1], np.float32)
  dist = model().distribution
  assert dist.log_prob(empty).shape == (0,) and dist.sample(0).shape == (0, 8, 8, 1)
  assert dist.sample([0, 2]).shape == (0, 2, 8, 8, 1)
  assert model().log_prob(empty).shape == (0,) and model().sample(0).shape == (0, 8, 8, 1)
  assert [z.shape[0] for z in model().encode(empty)] == [0, 0]
  assert model().decode(model().encode(empty)).shape == (0, 8, 8, 1)
  conditional = model(10)
  x = np.random.default_rng(0).uniform(-0.5, 0.5, [3, 8, 8, 1]).astype(np.float32)
  np.testing.assert_allclose(conditional.log_prob(x, 4), conditional.log_prob(x, [4, 4, 4]), rtol=1e-6)
  assert conditional.distribution.sample(3, labels=4).shape == (3, 8, 8, 1)
  # The SavedModel's endpoints: the same, with their arguments always checked.
  conditional.export(str(tmp_path / 'sm'), verbose=False)
  loaded = tf.saved_model.load(str(tmp_path / 'sm'))
  no_labels = tf.zeros([0], tf.int32)
  assert loaded.log_prob(tf.constant(empty), no_labels).shape == (0,)
  assert loaded.sample(tf.constant(0), tf.constant(0.7), no_labels).shape == (0, 8, 8, 1)
  for temperature in (0.0, -1.0, np.nan):
    with pytest.raises(tf.errors.InvalidArgumentError, match='temperature must be > 0 and finite'):
      loaded.sample(tf.constant(2), tf.constant(temperature, tf.float32), tf.constant([1, 2]))
  with pytest.raises(tf.errors.InvalidArgumentError, match='n must be >= 0'):
    loaded.sample(tf.constant(-1), tf.constant(0.7), no_labels)


def test_bad_command_lines_and_model_files_get_one_error_line(tmp_path, capsys):
  corrupt = tmp_path / 'corrupt.keras'
  corrupt.write_bytes(b'not a zip archive')
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  rows = [  # (argv, exit code, message)
    (['train', '--dataset', 'nope', '--out', str(tmp_path / 'r')], 2, 'unknown data set'),
    (['train', '--levels', '4', '--out', str(tmp_path / 'r')], 2, 'levels'),
    (['train', '--max-consecutive-skips', '0', '--out', str(tmp_path / 'r')], 2, 'max-consecutive-skips'),
    (['train', '--out', str(a_file)], 2, 'is a file'),
    (['sample', str(tmp_path / 'missing.keras')], 2, 'does not exist'),
    (['sample', str(tmp_path)], 2, 'does not exist'),  # a directory without model.keras
    (['evaluate', str(corrupt)], 2, 'cannot load model file'),
  ]
  for argv, code, message in rows:
    assert cli.main(argv) == code, argv
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, (argv, err)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['corrupt.keras', 'file']  # nothing written
