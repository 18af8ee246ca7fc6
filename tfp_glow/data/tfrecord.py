"""`tfrecord:PATH`: TFRecord shards of encoded images (and labels) with a manifest, for many hosts.

Written by `tfp-glow prepare SRC OUT --shards N` (`write_shards`), read by `--dataset tfrecord:OUT` (or
`folder:OUT`, which notices the manifest). OUT may be any path `tf.io.gfile` reads (gs://...).

  OUT/manifest.json                 {"format": "tfp_glow.tfrecord/1", "image_shape": [H, W, C], "n_bins": 256,
                                     "class_names": [...] or null, "source": SRC,
                                     "splits": {"train": {"num_examples": n, "shards": [{"file", "num_examples"}]},
                                                "test": {...}}}
  OUT/train-00000-of-00004.tfrecord tf.train.Example: 'image' (PNG / JPEG bytes), 'label' (int64, labeled only)

Example i of a split goes to shard i % N, so shards differ by at most one example. A folder's original
file bytes are stored when no resizing is asked for (JPEG stays JPEG, bit for bit), anything else as PNG.
Reading: the shard list (shuffled per epoch) is interleaved, the records shuffled in a buffer of encoded
bytes, then decoded in parallel. Under multi-worker training, worker i of W reads shards i, i + W, ...
when there are at least W shards: the auto-shard policy FILE, applied by us because tf.data's own FILE
rewrite refuses pipelines with a second, file-less source (the per-batch noise seeds of
`pipeline.batch_and_dequantize`); `tfp_glow.training.distribute.shard` then turns tf.data's sharding off.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from tfp_glow.data.quantize import reduce_bits
from tfp_glow.data.transforms import decode_image, fit_to_size

TFRECORD_PREFIX = 'tfrecord:'
MANIFEST = 'manifest.json'
FORMAT = 'tfp_glow.tfrecord/1'
_RECORD_SHUFFLE_BUFFER = 10_000  # encoded images: a few KB each


def has_manifest(path: str) -> bool:
  return tf.io.gfile.exists(os.path.join(path, MANIFEST))


def read_manifest(path: str) -> dict:
  manifest_path = os.path.join(path, MANIFEST)
  if not tf.io.gfile.exists(manifest_path):
    raise ValueError(
      f'tfrecord data set: {path!r} has no {MANIFEST}; write one with `tfp-glow prepare SRC {path} --shards N`'
    )
  with tf.io.gfile.GFile(manifest_path) as f:
    manifest = json.load(f)
  if manifest.get('format') != FORMAT:
    raise ValueError(f'tfrecord data set: {manifest_path!r} is not a {FORMAT} manifest')
  return manifest


def _example(encoded: bytes, label: int | None) -> bytes:
  features = {'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
  if label is not None:
    features['label'] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_shards(
  out: str,
  splits: dict[str, tf.data.Dataset],
  *,
  shards: int,
  image_shape: tuple[int, int, int],
  n_bins: int,
  class_names: tuple[str, ...] | None,
  num_classes: int | None,
  source: str,
) -> dict:
  """Writes each split's (encoded image bytes, int32 label) elements into `shards` TFRecord files (fewer
  for a split with fewer examples) and the manifest, last: a folder without a manifest is incomplete.
  Returns the manifest."""
  if shards < 1:
    raise ValueError(f'shards must be >= 1, got {shards}')
  tf.io.gfile.makedirs(out)
  manifest: dict[str, Any] = dict(
    format=FORMAT,
    image_shape=list(image_shape),
    n_bins=n_bins,
    num_classes=num_classes,
    class_names=list(class_names) if class_names else None,
    source=source,
    splits={},
  )
  for split, ds in splits.items():
    names = [f'{split}-{i:05d}-of-{shards:05d}.tfrecord' for i in range(shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(out, n)) for n in names]
    counts = [0] * shards
    try:
      for i, (encoded, label) in enumerate(ds.as_numpy_iterator()):
        writers[i % shards].write(_example(encoded, None if num_classes is None else label))
        counts[i % shards] += 1
    finally:
      for w in writers:
        w.close()
    for n, c in zip(names, counts):
      if c == 0:
        tf.io.gfile.remove(os.path.join(out, n))
    manifest['splits'][split] = dict(
      num_examples=sum(counts),
      shards=[dict(file=n, num_examples=c) for n, c in zip(names, counts) if c],
    )
  with tf.io.gfile.GFile(os.path.join(out, MANIFEST), 'w') as f:
    json.dump(manifest, f, indent=2)
  return manifest


def tfrecord_bins(
  path: str,
  split: str,
  *,
  n_bits: int,
  image_size: int | None,
  with_labels: bool,
  shuffle: bool,
  seed: int | None,
  worker_shard: tuple[int, int] | None = None,
) -> tuple[tf.data.Dataset, tuple[int, int, int], int, int | None, tuple[str, ...] | None, int, int, bool]:
  """-> (dataset of uint8 bins [, int32 labels], shape, n_bins, num_classes, class_names, n, num_shards,
  by_file). worker_shard (W, i): with at least W shards, read only shards i, i + W, ... (by_file True)."""
  manifest = read_manifest(path)
  if split not in manifest['splits']:
    raise ValueError(f'tfrecord data set {path!r} has no {split!r} split')
  entry = manifest['splits'][split]
  labeled = manifest.get('num_classes') is not None
  if with_labels and not labeled:
    raise ValueError(
      f'tfrecord data set {path!r} has no labels for a class-conditional model (--conditional, '
      'with_labels=True): prepare it from a folder with class subfolders'
    )
  stored_shape: tuple[int, int, int] = tuple(manifest['image_shape'])
  stored_bins = int(manifest['n_bins'])
  shape = (image_size, image_size, stored_shape[2]) if image_size else stored_shape
  files = [os.path.join(path, s['file']) for s in entry['shards']]
  n = int(entry['num_examples'])  # the whole split's, over all workers: what epochs and schedules count
  num_shards = len(files)
  by_file = worker_shard is not None and worker_shard[0] > 1 and num_shards >= worker_shard[0]
  if by_file and worker_shard is not None:  # (by_file implies a worker_shard)
    workers, index = worker_shard
    files = files[index::workers]

  ds = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  ds = ds.interleave(
    tf.data.TFRecordDataset,
    cycle_length=min(len(files), 16),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=not shuffle or seed is not None,
  )
  if shuffle:
    ds = ds.shuffle(min(n, _RECORD_SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
  spec = {'image': tf.io.FixedLenFeature([], tf.string)}
  if labeled:
    spec['label'] = tf.io.FixedLenFeature([], tf.int64)

  def decode(record):
    example = tf.io.parse_single_example(record, spec)
    # A folder's JPEGs are stored as they were: EXIF orientation and channels are applied here.
    image = tf.ensure_shape(decode_image(example['image'], stored_shape[2])[0], stored_shape)
    if image_size and shape != stored_shape:
      image = fit_to_size(image, image_size, image_size)[0]  # the rule of every source: crop, never squash
    bins = image if stored_bins != 256 else reduce_bits(image, n_bits)  # e.g. digits: stored as bins
    bins = tf.cast(bins, tf.uint8)
    return (bins, tf.cast(example['label'], tf.int32)) if with_labels else bins

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle or seed is not None)
  n_bins = stored_bins if stored_bins != 256 else 2**n_bits
  class_names = tuple(manifest['class_names']) if manifest.get('class_names') else None
  return ds, shape, n_bins, manifest.get('num_classes'), class_names, n, num_shards, by_file


def encoded_examples(images: np.ndarray, labels: np.ndarray | None) -> tf.data.Dataset:
  """In-memory uint8 `[N, H, W, C]` (+ labels) -> (PNG bytes, int32 label) for `write_shards`."""
  labels = np.zeros(len(images), np.int32) if labels is None else labels.astype(np.int32)
  ds = tf.data.Dataset.from_tensor_slices((images, labels))
  return ds.map(lambda x, y: (tf.io.encode_png(x), y), num_parallel_calls=tf.data.AUTOTUNE)
