"""Tests for tfp_glow.data: quantization helpers and the input pipelines (all offline)."""

import contextlib
import logging

import numpy as np
import pytest
import requests
import tensorflow as tf
import tensorflow_datasets as tfds

from tfp_glow import data
from tfp_glow.data import folder


def _bins_of(x, n_bins):
  """Recover integer bins from dequantized images: floor((x + 0.5) * n_bins)."""
  return np.floor((np.asarray(x, np.float64) + 0.5) * n_bins).astype(np.int64)


def _assert_model_range(x):
  x = np.asarray(x)
  assert x.dtype == np.float32
  assert x.min() >= -0.5 and x.max() < 0.5


# --- quantization helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize('n_bits', [1, 5, 8])
def test_reduce_bits_dequantize_round_trip(n_bits):
  pixels = np.random.RandomState(n_bits).randint(0, 256, size=(4, 6, 6, 3)).astype(np.uint8)
  bins = data.reduce_bits(pixels, n_bits).numpy()
  n_bins = 2**n_bits
  assert bins.dtype == np.int32
  np.testing.assert_array_equal(bins, pixels.astype(np.int64) // 2 ** (8 - n_bits))
  assert bins.min() >= 0 and bins.max() < n_bins
  x = data.dequantize(bins, n_bins)
  _assert_model_range(x)
  np.testing.assert_array_equal(_bins_of(x, n_bins), bins)
  # to_uint8 maps bin b to round(b * 255 / (n_bins - 1)), a monotone map, so it keeps the bins.
  expected = np.round(bins * 255.0 / (n_bins - 1)).astype(np.uint8)
  np.testing.assert_array_equal(data.to_uint8(x, n_bins).numpy(), expected)


def test_dequantize_round_trip_is_exact_at_bin_edges():
  # ~1e-5 of float32 values would round onto the next bin without the fix-up: draw enough to hit some.
  for n_bins in (17, 256):
    bins = np.random.RandomState(0).randint(0, n_bins, size=(1_000_000,))
    x = data.dequantize(bins, n_bins)
    _assert_model_range(x)
    np.testing.assert_array_equal(_bins_of(x, n_bins), bins)


def test_dequantize_noise_is_fresh_and_uniform_within_bins():
  bins = np.full((64, 8, 8, 1), 3, np.int32)
  a, b = data.dequantize(bins, 17).numpy(), data.dequantize(bins, 17).numpy()
  assert not np.allclose(a, b)
  u = (a + 0.5) * 17 - 3  # the noise itself, should look U[0, 1)
  assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.05
  s1 = data.dequantize(bins, 17, seed=tf.constant([1, 2])).numpy()
  np.testing.assert_array_equal(s1, data.dequantize(bins, 17, seed=tf.constant([1, 2])).numpy())


def test_to_uint8_clips_out_of_range_samples():
  out = data.to_uint8(tf.constant([-3.0, -0.5, 0.0, 0.4999, 7.0]), 4).numpy()
  np.testing.assert_array_equal(out, [0, 0, 170, 255, 255])
  assert out.dtype == np.uint8


@pytest.mark.parametrize('n_bits', [0, 9, 2.5, True])
def test_bad_n_bits(n_bits):
  with pytest.raises(ValueError, match='n_bits'):
    data.reduce_bits(np.zeros((2, 2, 1), np.uint8), n_bits)
  with pytest.raises(ValueError, match='n_bits'):
    data.load_dataset('digits', n_bits=n_bits)


# --- digits -----------------------------------------------------------------------------------------------


def test_load_digits_split():
  from sklearn.datasets import load_digits as sk_load_digits

  train, train_labels = data.load_digits('train')
  test, test_labels = data.load_digits('test')
  assert train.shape == (1500, 8, 8, 1) and test.shape == (297, 8, 8, 1)
  assert train.dtype == np.int32 and train_labels.dtype == np.int32 and train_labels.shape == (1500,)
  assert train.min() == 0 and train.max() == data.DIGITS_BINS - 1
  # The two splits together are exactly the whole data set (as a multiset of (image, label) rows): disjoint.
  full = sk_load_digits()
  rows = lambda imgs, labels: sorted(
    map(tuple, np.concatenate([imgs.reshape(len(imgs), -1), labels[:, None]], 1).astype(int))
  )
  ours = rows(np.concatenate([train, test]), np.concatenate([train_labels, test_labels]))
  assert ours == rows(full.images, full.target)
  # Deterministic across calls, and not just sklearn's order.
  np.testing.assert_array_equal(data.load_digits('test')[0], test)
  assert not np.array_equal(test[:, :, :, 0], full.images[-297:])
  with pytest.raises(ValueError, match='split'):
    data.load_digits('validation')


def test_digits_dataset_shapes_values_and_partial_batch():
  ds, info = data.load_dataset('digits', batch_size=64, shuffle=False)
  assert info == data.DatasetInfo((8, 8, 1), 17, 10, 1500)
  batches = [b.numpy() for b in ds]
  assert [len(b) for b in batches] == [64] * (1500 // 64) + [1500 % 64]
  images = np.concatenate(batches)
  _assert_model_range(images)
  # shuffle=False keeps load_digits' order, so the bins come back exactly.
  np.testing.assert_array_equal(_bins_of(images, 17), data.load_digits('train')[0])

  ds, _ = data.load_dataset('digits', 'test', batch_size=64, drop_remainder=True)
  assert ds.element_spec.shape.as_list() == [64, 8, 8, 1]
  assert sum(1 for _ in ds) == 297 // 64


def test_digits_fresh_noise_each_epoch_and_seeded():
  ds, _ = data.load_dataset('digits', batch_size=32, shuffle=False)
  first, second = next(iter(ds)).numpy(), next(iter(ds)).numpy()
  np.testing.assert_array_equal(_bins_of(first, 17), _bins_of(second, 17))  # same images...
  assert not np.allclose(first, second)  # ...new noise
  a, _ = data.load_dataset('digits', batch_size=32, seed=7)
  b, _ = data.load_dataset('digits', batch_size=32, seed=7)
  epoch1_a, epoch1_b = next(iter(a)).numpy(), next(iter(b)).numpy()
  np.testing.assert_array_equal(epoch1_a, epoch1_b)  # reproducible with a seed
  assert not np.allclose(epoch1_a, next(iter(a)).numpy())  # yet each epoch differs


def test_digits_with_labels_shuffled_pairs_stay_aligned():
  bins, labels = data.load_digits('test')
  ds, info = data.load_dataset('digits', 'test', batch_size=50, with_labels=True, seed=3)
  assert info.num_classes == 10
  images, got_labels = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
  assert got_labels.dtype == np.int32 and images.shape == (297, 8, 8, 1)
  assert not np.array_equal(got_labels, labels)  # shuffled
  lookup = {tuple(b.ravel()): l for b, l in zip(bins, labels)}
  for image, label in zip(_bins_of(images, 17), got_labels):
    assert lookup[tuple(image.ravel())] == label


def test_digits_resize_and_pad():
  _, info = data.load_dataset('digits', image_size=16)
  assert info.image_shape == (16, 16, 1)
  ds, info = data.load_dataset('digits', pad_to_32=True, batch_size=8, shuffle=False)
  assert info.image_shape == (32, 32, 1) and info.n_bins == 17
  bins = _bins_of(next(iter(ds)), 17)
  np.testing.assert_array_equal(bins[:, 12:20, 12:20], data.load_digits()[0][:8])
  assert bins.sum() == bins[:, 12:20, 12:20].sum()  # zero border


# --- tfds (mocked, offline) -------------------------------------------------------------------------------


@pytest.fixture
def mock_tfds():
  # USE_CODE: fake examples generated from the builder's feature spec; reads no files, no network.
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def test_tfds_mnist_pad_and_bits(mock_tfds):
  ds, info = data.load_dataset('mnist', batch_size=4, n_bits=5, pad_to_32=True, shuffle=False)
  assert info.image_shape == (32, 32, 1) and info.n_bins == 32 and info.num_classes == 10
  images = np.concatenate([b.numpy() for b in ds])
  assert images.shape == (10, 32, 32, 1)
  _assert_model_range(images)
  bins = _bins_of(images, 32)
  assert bins[:, 2:30, 2:30].max() > 16  # 5-bit content, not all zero
  assert bins.sum() == bins[:, 2:30, 2:30].sum()  # 2-pixel zero border


def test_tfds_cifar10_with_labels(mock_tfds):
  ds, info = data.load_dataset('cifar10', 'test', batch_size=4, with_labels=True, seed=0)
  assert info.image_shape == (32, 32, 3) and info.n_bins == 256 and info.num_classes == 10
  x, y = next(iter(ds))
  assert x.shape == (4, 32, 32, 3) and y.shape == (4,) and y.dtype == tf.int32
  _assert_model_range(x)
  assert np.all((y.numpy() >= 0) & (y.numpy() < 10))


@pytest.mark.parametrize('name,size', [('celeb_a', 64), ('downsampled_imagenet/32x32', 32)])
def test_tfds_unlabeled_sizes(mock_tfds, name, size):
  ds, info = data.load_dataset(name, 'test', batch_size=4)
  assert info.image_shape == (size, size, 3) and info.num_classes is None
  assert next(iter(ds)).shape == (4, size, size, 3)


@contextlib.contextmanager
def caplog_warnings():
  """Collects the warnings logged by tfp_glow.data."""
  records = []
  handler = logging.Handler(level=logging.WARNING)
  handler.emit = records.append
  logger = logging.getLogger('tfp_glow.data')
  logger.addHandler(handler)
  try:
    yield records
  finally:
    logger.removeHandler(handler)


def test_tfds_unavailable(monkeypatch, tmp_path):
  # Offline, a real tfds.load retries its download for minutes and then raises requests' ConnectionError;
  # simulate that instead of waiting.
  err = requests.exceptions.ConnectionError('Failed to resolve the download host')

  def offline_load(*args, **kwargs):
    assert kwargs['data_dir'] == str(tmp_path)
    raise err

  monkeypatch.setattr(tfds, 'load', offline_load)
  with pytest.raises(data.DatasetUnavailableError, match='digits') as info:
    with caplog_warnings() as records:
      data.load_dataset('mnist', data_dir=str(tmp_path))
  # Before the (minutes-long, offline) download attempt, the user was told it would happen.
  assert any('not prepared' in r.getMessage() and '--dataset digits' in r.getMessage() for r in records)
  assert 'data_dir' in str(info.value) and 'mnist' in str(info.value)
  assert info.value.__cause__ is err
  # Our own argument errors are not turned into "unavailable".
  with pytest.raises(ValueError, match='celeb_a'):
    data.load_dataset('celeb_a', with_labels=True)


# --- folder -----------------------------------------------------------------------------------------------


def _write(path, image, fmt='png'):
  encode = tf.io.encode_png if fmt == 'png' else tf.io.encode_jpeg
  tf.io.write_file(str(path), encode(tf.constant(image, tf.uint8)))


def test_folder_load_and_split(tmp_path):
  for i in range(10):  # constant images, value 20 * i identifies each one
    _write(tmp_path / f'img{i}.PNG', np.full((6, 5, 3), 20 * i, np.uint8))
  (tmp_path / 'notes.txt').write_text('ignored')
  ds, info = data.load_dataset(f'folder:{tmp_path}', batch_size=4, n_bits=8, shuffle=False)
  assert info == data.DatasetInfo((6, 5, 3), 256, None, 9)
  train = np.concatenate([b.numpy() for b in ds])
  ds, test_info = data.load_dataset(f'folder:{tmp_path}', 'test', batch_size=4, shuffle=False)
  test = np.concatenate([b.numpy() for b in ds])
  assert train.shape == (9, 6, 5, 3) and test.shape == (1, 6, 5, 3) and test_info.num_examples == 1
  _assert_model_range(train)
  ids = sorted(int(b[0, 0, 0]) // 20 for b in _bins_of(np.concatenate([train, test]), 256))
  assert ids == list(range(10))  # disjoint, nothing lost
  with pytest.raises(ValueError, match='labels'):
    data.load_dataset(f'folder:{tmp_path}', with_labels=True)


def test_folder_grayscale_mixed_channels_and_resize(tmp_path):
  _write(tmp_path / 'a.png', np.zeros((8, 8, 1), np.uint8))
  _write(tmp_path / 'b.jpeg', np.full((8, 8, 1), 128, np.uint8), fmt='jpeg')
  _, info = data.load_dataset(f'folder:{tmp_path}')
  assert info.image_shape == (8, 8, 1)
  _write(tmp_path / 'c.jpg', np.zeros((12, 10, 3), np.uint8), fmt='jpeg')
  with pytest.raises(ValueError, match='image_size'):
    data.load_dataset(f'folder:{tmp_path}')
  ds, info = data.load_dataset(f'folder:{tmp_path}', image_size=4, n_bits=3, batch_size=8)
  assert info.image_shape == (4, 4, 3) and info.n_bins == 8
  assert next(iter(ds)).shape == (2, 4, 4, 3)  # 3 files: 1 held out for "test"


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match='no .*png'):
    data.load_dataset(f'folder:{tmp_path}')
  with pytest.raises(ValueError, match='not a directory'):
    data.load_dataset(f'folder:{tmp_path / "missing"}')
  _write(tmp_path / 'only.png', np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match='at least 2'):
    data.load_dataset(f'folder:{tmp_path}', 'test')
  (tmp_path / 'broken.png').write_bytes(b'this is not an image')
  split = 'test' if folder.test_mask(['broken.png', 'only.png'])[0] else 'train'
  with pytest.raises(ValueError, match='broken.png'):  # up front, when asked to (default: skipped)
    data.load_dataset(f'folder:{tmp_path}', split, bad_files='error')


# --- argument checking ------------------------------------------------------------------------------------


def test_bad_arguments():
  with pytest.raises(ValueError, match='cifar10.*folder:PATH'):
    data.load_dataset('svhn')
  with pytest.raises(ValueError, match='split'):
    data.load_dataset('digits', 'validation')
  with pytest.raises(ValueError, match='batch_size'):
    data.load_dataset('digits', batch_size=0)
  for name in ('celeb_a', 'downsampled_imagenet/64x64'):
    with pytest.raises(ValueError, match=name):
      data.load_dataset(name, with_labels=True)
  with pytest.raises(ValueError, match='32x32'):
    data.load_dataset('digits', image_size=40, pad_to_32=True)
