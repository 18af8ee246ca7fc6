"""`load_dataset`: one call for every source, returning batched, dequantized `tf.data` and a `DatasetInfo`."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from tfp_glow.data import arrays, folder, tfds_sources, tfrecord
from tfp_glow.data.cache import cache_prefix, prepare_file_cache, source_stamp
from tfp_glow.data.digits import DIGITS_BINS, check_split, load_digits
from tfp_glow.data.info import DatasetInfo, ImageReport
from tfp_glow.data.pipeline import batch_and_dequantize, check_cache
from tfp_glow.data.quantize import check_n_bits
from tfp_glow.data.transforms import fit_conversions, pad_to_32_image, padded_shape
from tfp_glow.names import DATASETS, SOURCES_HELP

PATH_PREFIXES = (folder.FOLDER_PREFIX, tfrecord.TFRECORD_PREFIX) + arrays.ARRAY_PREFIXES


def is_path_source(name: str) -> bool:
  """True for "folder:PATH", "tfrecord:PATH", "npz:PATH" and "npy:PATH"."""
  return isinstance(name, str) and name.startswith(PATH_PREFIXES)


def split_source(name: str) -> tuple[str, str]:
  """ "folder:PATH" -> ("folder", expanded PATH); a folder holding a tfp-glow manifest reads as tfrecord."""
  kind, _, path = name.partition(':')
  path = path if '://' in path else os.path.expanduser(path)
  if not path:
    raise ValueError(f'data set {name!r}: give a path after {kind}:')
  if kind == 'folder' and tf.io.gfile.isdir(path) and tfrecord.has_manifest(path):
    kind = 'tfrecord'
  return ('npz' if kind == 'npy' else kind), path


def load_dataset(
  name: str = 'digits',
  split: str = 'train',
  *,
  batch_size: int = 64,
  n_bits: int = 8,
  image_size: int | None = None,
  pad_to_32: bool = False,
  with_labels: bool = False,
  shuffle: bool = True,
  data_dir: str | None = None,
  seed: int | None = None,
  drop_remainder: bool = False,
  cache: str | None = None,
  bad_files: str = 'skip',
  worker_shard: tuple[int, int] | None = None,
  report: ImageReport | None = None,
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """A batched, dequantized `tf.data.Dataset` of images and its `DatasetInfo`.

  Yields float32 `[B, H, W, C]` in [-0.5, 0.5), or `(images, labels int32 [B])` if `with_labels`.
  Pipeline: integer bins -> cache -> shuffle (if `shuffle`) -> batch -> dequantize -> prefetch, so
  re-iterating gives a new order and new noise. For evaluation pass shuffle=False.

  name: one of `DATASETS` or a path source.
    "digits": 8x8x1, 10 classes, offline; always n_bins = 17 (its values are 0..16), n_bits is ignored.
      image_size resizes with nearest neighbour, pad_to_32 zero-pads.
    tfds names: bits reduced to n_bits, n_bins = 2**n_bits. celeb_a: central 148x148 crop, then resize
      to image_size (default 64). Others: resized when image_size is given. pad_to_32 zero-pads (MNIST
      28x28 -> 32x32 as the reference does; the reference also tiles MNIST to 3 channels, we do not).
      "test" means "validation" for downsampled_imagenet, which has no test split.
    "folder:PATH": PNG / JPEG files streamed from disk, labels from class subfolders (tfp_glow.data.folder).
    "tfrecord:PATH": shards written by `tfp-glow prepare` (tfp_glow.data.tfrecord).
    "npz:PATH" / "npy:PATH": NumPy image arrays, e.g. downsampled ImageNet (tfp_glow.data.arrays).
  data_dir: tfds data directory (e.g. prepared elsewhere with `tfds build`).
  seed: makes shuffling and noise reproducible (each epoch still differs).
  cache: None (stream every epoch), 'memory', or a file path prefix: keep the decoded bins after the
    first epoch (tfds sources under 2 GiB are cached in memory anyway; digits are in memory). A path gets
    one cache per split and source/settings, PATH-SPLIT-DIGEST, and a half-written one (a run stopped in
    its first epoch) is rebuilt with a note (tfp_glow.data.cache).
  bad_files: folders only: 'skip' (skip, count and name undecodable files; see DatasetInfo.skipped) or
    'error' (decode every file up front and raise naming the bad ones).
  worker_shard: (W, i) for worker i of W (`tfp_glow.training.distribute.worker_shard`): a TFRecord set
    of at least W shards is then read by file, this worker's shards only (DatasetInfo.sharded_by_file);
    other sources ignore it (and are sharded by tf.distribute, by data).
  report: collects the files skipped and the conversions made (`DatasetInfo.skipped`, `.conversions`;
    a new `ImageReport` if None). Pass one report to every call of a run (both splits, a split loaded
    again to evaluate): each file is then warned about and counted once, with one total.

  Raises ValueError for bad arguments and DatasetUnavailableError when tfds cannot get the data.
  """
  check_split(split)
  check_n_bits(n_bits)
  check_cache(cache)
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if image_size is not None and image_size <= 0:
    raise ValueError(f'image_size must be positive, got {image_size}')
  if not is_path_source(name) and name not in DATASETS:
    raise ValueError(f'unknown data set {name!r}; accepted: {", ".join(DATASETS)}, or {SOURCES_HELP}')
  if with_labels and name in tfds_sources.TFDS_DATASETS and name not in tfds_sources.LABELED:
    raise ValueError(
      f'data set {name!r} has no class labels; with_labels=True (--conditional) needs one of '
      f'{", ".join(("digits",) + tfds_sources.LABELED)}, a folder with class subfolders, or labeled arrays'
    )
  common: dict[str, Any] = dict(
    shuffle=shuffle, batch_size=batch_size, drop_remainder=drop_remainder, seed=seed
  )
  # What changes the cached bins besides the source (tfp_glow.data.cache): one cache per split and settings.
  settings: dict[str, Any] = dict(
    n_bits=n_bits, image_size=image_size, with_labels=with_labels, worker_shard=worker_shard
  )
  n_bins, class_names, num_shards, skipped, by_file = 2**n_bits, None, None, None, False
  report = report if report is not None else ImageReport()
  conversions = None  # digits and tfds: nothing reported

  if name in tfds_sources.TFDS_DATASETS:
    ds, shape, num_classes, n = tfds_sources.tfds_bins(
      name,
      split,
      n_bits=n_bits,
      image_size=image_size,
      pad_to_32=pad_to_32,
      with_labels=with_labels,
      shuffle=shuffle,
      data_dir=data_dir,
      seed=seed,
    )
    small = n is None or n * int(np.prod(shape)) <= tfds_sources.MAX_CACHE_BYTES
    identity: dict[str, Any] = dict(source=name, data_dir=data_dir, pad_to_32=pad_to_32)
    cache = _split_cache(cache, split, identity, settings, shape, n_bins, n, None)
    ds = batch_and_dequantize(
      ds, n_bins, num_examples=n, cache=cache or ('memory' if small else None), **common
    )
    return ds, DatasetInfo(shape, n_bins, num_classes, n)

  if name == 'digits':
    bins, labels = load_digits(split)
    n_bins, num_classes = DIGITS_BINS, 10
    if image_size is not None:
      bins = tf.image.resize(bins, (image_size, image_size), method='nearest').numpy()
    h, w, c = (int(d) for d in bins.shape[1:])
    shape = (h, w, c)
    bins = tf.cast(bins, tf.uint8)  # bins < 256: a quarter of int32's memory
    ds = tf.data.Dataset.from_tensor_slices((bins, labels) if with_labels else bins)
    n, cache = int(bins.shape[0]), None  # already in memory
  else:
    kind, path = split_source(name)
    # Streamed sources shuffle file names (or encoded records) before decoding, so no buffer of decoded
    # images is needed; with a cache the decoded order is fixed, and the buffer after it shuffles.
    streamed = kind in ('folder', 'tfrecord')
    source_shuffle = shuffle and not (streamed and cache)
    args: dict[str, Any] = dict(
      n_bits=n_bits, image_size=image_size, with_labels=with_labels, shuffle=source_shuffle, seed=seed
    )
    if streamed and source_shuffle:
      common['shuffle'] = False
    if kind == 'folder':
      ds, shape, class_names, n, skipped = folder.folder_bins(
        path, split, bad_files=bad_files, report=report, **args
      )
      num_classes = len(class_names) if class_names else None
    elif kind == 'tfrecord':
      stored = tuple(tfrecord.read_manifest(path)['image_shape'])
      ds, shape, n_bins, num_classes, class_names, n, num_shards, by_file = tfrecord.tfrecord_bins(
        path, split, worker_shard=worker_shard, **args
      )
    else:
      ds, shape, num_classes, n = arrays.array_bins(path, split, **args)
      stored = arrays.stored_shape(path, split)
    if kind != 'folder' and image_size:  # every example alike: counted in bulk
      kinds = fit_conversions(stored[0], stored[1], image_size, image_size)
      report.conversions.record_all(f'{name} {split}', kinds, n)
    conversions = report.conversions
  # Streamed sources (an unbatch, interleave or filter) hide their length from tf.data; where the count is
  # exact, say it, so that Keras knows the batches per epoch. Otherwise Keras reads to the end of the data
  # and warns "Your input ran out of data; interrupting training" on every epoch of fit and every evaluate.
  # Not for a folder that skips bad files (fewer than n) nor a worker's own TFRecord shards (n is the split's).
  exact = n is not None and name != 'digits' and not by_file and (kind != 'folder' or bad_files == 'error')
  if exact:
    ds = ds.apply(tf.data.experimental.assert_cardinality(n))
  if pad_to_32:
    unpadded, shape = shape, padded_shape(shape)  # validate before padding
    pad = lambda x: pad_to_32_image(x, unpadded)  # noqa: E731
    ds = ds.map(
      lambda *e: (pad(e[0]), e[1]) if len(e) == 2 else pad(e[0]), num_parallel_calls=tf.data.AUTOTUNE
    )
  if cache and cache != 'memory':  # digits: cache is None (in memory already)
    where = path if '://' in path else os.path.abspath(path)
    identity = dict(source=dict(kind=kind, path=where, stamp=source_stamp(path)), pad_to_32=pad_to_32)
    cache = _split_cache(cache, split, identity, settings, shape, n_bins, n, class_names)
  ds = batch_and_dequantize(ds, n_bins, num_examples=n, cache=cache, **common)
  return ds, DatasetInfo(
    shape, n_bins, num_classes, n, class_names, num_shards, skipped, by_file, conversions
  )


def _split_cache(cache, split, identity, settings, shape, n_bins, n, class_names) -> str | None:
  """None and 'memory' as given; a file PATH -> this split's own prefix PATH-SPLIT-DIGEST, made ready
  (half-written leftovers of a stopped run removed, with a note): `tfp_glow.data.cache`."""
  if cache is None or cache == 'memory':
    return cache
  what = dict(identity, **settings, shape=list(shape), n_bins=n_bins, num_examples=n, class_names=class_names)
  prefix = cache_prefix(cache, split, what)
  prepare_file_cache(prefix)
  return prefix
