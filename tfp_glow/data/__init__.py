"""Image data for Glow: quantization, dequantization and `tf.data` input pipelines.

Glow models discrete pixels with a continuous density (Kingma & Dhariwal 2018, as in the reference code):

    bins = floor(pixel / 2**(8 - n_bits))          integer in [0, n_bins), n_bins = 2**n_bits
    x    = (bins + u) / n_bins - 0.5,  u ~ U[0, 1)  float in [-0.5, 0.5), fresh u every epoch

so that -log p(x) + D * log(n_bins) upper-bounds the discrete code length, D = H * W * C.

Everything here yields float32 images `[B, H, W, C]` in [-0.5, 0.5) (or `(images, labels)`), plus a
`DatasetInfo` describing them. Sources, one module each:
  digits          scikit-learn's 8x8 digits, offline (tfp_glow.data.digits), the default
  tfds names      tensorflow-datasets: mnist, fashion_mnist, cifar10, celeb_a, ... (tfds_sources)
  folder:PATH     PNG / JPEG files streamed from disk, labels from class subfolders (folder)
  tfrecord:PATH   TFRecord shards + manifest written by `tfp-glow prepare`, for many hosts (tfrecord)
  npz:PATH        NumPy arrays, e.g. downsampled ImageNet 32x32 / 64x64 from image-net.org (arrays)
"""

from tfp_glow.data.arrays import ARRAY_PREFIXES
from tfp_glow.data.digits import DIGITS_BINS, DIGITS_TEST_SIZE, load_digits
from tfp_glow.data.folder import BAD_FILES, FOLDER_PREFIX, IMAGE_SUFFIXES
from tfp_glow.data.info import Conversions, DatasetInfo, DatasetUnavailableError, ImageReport, SkippedFiles
from tfp_glow.data.load import (
  DATASETS,
  PATH_PREFIXES,
  SOURCES_HELP,
  is_path_source,
  load_dataset,
  split_source,
)
from tfp_glow.data.quantize import dequantize, reduce_bits, to_uint8
from tfp_glow.data.tfds_sources import TFDS_DATASETS
from tfp_glow.data.tfrecord import TFRECORD_PREFIX

__all__ = [
  'ARRAY_PREFIXES',
  'BAD_FILES',
  'DATASETS',
  'DIGITS_BINS',
  'DIGITS_TEST_SIZE',
  'FOLDER_PREFIX',
  'IMAGE_SUFFIXES',
  'PATH_PREFIXES',
  'SOURCES_HELP',
  'TFDS_DATASETS',
  'TFRECORD_PREFIX',
  'Conversions',
  'DatasetInfo',
  'DatasetUnavailableError',
  'ImageReport',
  'SkippedFiles',
  'dequantize',
  'is_path_source',
  'load_dataset',
  'load_digits',
  'reduce_bits',
  'split_source',
  'to_uint8',
]
