"""tensorflow-datasets sources (mnist, fashion_mnist, cifar10, celeb_a, the deprecated downsampled_imagenet):
prepared data in `data_dir`, or a download."""

from __future__ import annotations

import logging

import tensorflow as tf
import tensorflow_datasets as tfds

from tfp_glow.data.info import DatasetUnavailableError
from tfp_glow.data.quantize import reduce_bits
from tfp_glow.data.transforms import center_crop, fit_to_size, pad_to_32_image, padded_shape
from tfp_glow.names import TFDS_DATASETS as TFDS_DATASETS  # re-exported: its home before

LABELED = ('mnist', 'fashion_mnist', 'cifar10')
MAX_CACHE_BYTES = 2 * 2**30  # ImageNet 64x64 bins are ~15 GB: read those from disk every epoch instead

_LOG = logging.getLogger(__name__)
_NO_TEST_SPLIT = ('downsampled_imagenet/32x32', 'downsampled_imagenet/64x64')  # train/validation only
_NATIVE_SIZE = {'downsampled_imagenet/32x32': 32, 'downsampled_imagenet/64x64': 64}  # tfds leaves it None
_CELEBA_CROP, _CELEBA_SIZE = 148, 64  # the common CelebA preprocessing: central 148x148 face, then resize


def tfds_bins(
  name: str,
  split: str,
  *,
  n_bits: int,
  image_size: int | None,
  pad_to_32: bool,
  with_labels: bool,
  shuffle: bool,
  data_dir: str | None,
  seed: int | None,
) -> tuple[tf.data.Dataset, tuple[int, int, int], int | None, int | None]:
  """tfds data set -> (dataset of uint8 bins [, int32 labels], image_shape, num_classes, num_examples)."""
  tfds_split = 'validation' if split == 'test' and name in _NO_TEST_SPLIT else split
  read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
  _warn_if_download_needed(name, data_dir)
  try:
    ds, info = tfds.load(
      name,
      split=tfds_split,
      data_dir=data_dir,
      as_supervised=False,
      with_info=True,
      shuffle_files=shuffle,
      read_config=read_config,
    )
  except Exception as e:  # tfds raises many kinds (ConnectionError, DownloadError, ImportError, ...)
    raise DatasetUnavailableError(
      f'Could not load tfds data set {name!r} ({type(e).__name__}: {e}). It is not prepared in '
      f'data_dir={data_dir!r} and this machine could not download it. Use the offline default '
      f'(`--dataset digits`, `load_dataset("digits")`), or pass data_dir: a directory where the data '
      f'was prepared with `tfds build {name}` or downloaded on another machine.'
    ) from e
  try:
    num_examples = int(info.splits[tfds_split].num_examples) or None
  except Exception:  # mocked / partial metadata has no split sizes
    num_examples = None
  num_classes = int(info.features['label'].num_classes) if name in LABELED else None

  h, w, c = info.features['image'].shape
  crop = _CELEBA_CROP if name == 'celeb_a' else None
  if name == 'celeb_a':
    image_size = image_size or _CELEBA_SIZE
  size = image_size or _NATIVE_SIZE.get(name)  # downsampled_imagenet has no static size in tfds
  if size is not None:
    h, w = size, size
  shape = padded_shape((h, w, c)) if pad_to_32 else (h, w, c)

  def prepare(example):
    image = example['image']
    if crop is not None:
      image = center_crop(image, crop)
    if size is not None:
      image = fit_to_size(image, size, size)[0]
    if pad_to_32:
      image = pad_to_32_image(image, (h, w, c))
    bins = tf.cast(reduce_bits(tf.ensure_shape(image, shape), n_bits), tf.uint8)
    return (bins, tf.cast(example['label'], tf.int32)) if with_labels else bins

  return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE), shape, num_classes, num_examples


def _warn_if_download_needed(name: str, data_dir: str | None) -> None:
  """Says up front that tfds will download: offline, its retries take minutes before failing."""
  try:
    prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
  except Exception:  # an unknown name or a broken install: tfds.load below reports it
    return
  if not prepared:
    _LOG.warning(
      'tfp_glow: tfds data set %r is not prepared in data_dir=%r; tensorflow-datasets will '
      'try to download it. Offline this fails after a few minutes of retries: use the '
      'offline default (--dataset digits) or a data_dir with prepared data.',
      name,
      data_dir,
    )
