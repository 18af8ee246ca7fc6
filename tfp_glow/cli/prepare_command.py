"""`tfp-glow prepare SRC OUT --shards N`: any data source -> TFRecord shards + manifest (tfp_glow.data.tfrecord),
the format for many hosts: under `--strategy multi-worker` each worker then reads only its own shards.

  tfp-glow prepare folder:faces gs://bucket/faces --shards 64 --image-size 256
  tfp-glow train --dataset tfrecord:gs://bucket/faces --config celeba_hq256 --strategy multi-worker

Both splits are written (train-*.tfrecord, test-*.tfrecord), the same split `SRC` itself gives, so
a model trained on OUT is evaluated on the same test images as one trained on SRC.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import tensorflow as tf

from tfp_glow import data as glow_data
from tfp_glow.cli.common import UsageError
from tfp_glow.data import arrays, folder, tfds_sources, tfrecord
from tfp_glow.data.info import ImageReport


def _split_examples(src: str, split: str, args, report: ImageReport):
  """(dataset of (encoded bytes, int32 label), shape, n_bins, num_classes, class_names, skipped) of one split;
  a folder's skipped and converted files go into `report`."""
  if src == 'digits':
    bins, labels = glow_data.load_digits(split)
    if args.image_size:
      bins = tf.image.resize(bins, (args.image_size,) * 2, method='nearest').numpy()
    ds = tfrecord.encoded_examples(bins.astype(np.uint8), labels)
    return ds, tuple(bins.shape[1:]), glow_data.DIGITS_BINS, 10, None, None
  if src in tfds_sources.TFDS_DATASETS:
    labeled = src in tfds_sources.LABELED
    ds, shape, num_classes, _ = tfds_sources.tfds_bins(
      src, split, n_bits=8, image_size=args.image_size, pad_to_32=False, with_labels=labeled,
      shuffle=False, data_dir=args.data_dir, seed=None,
    )  # fmt: skip
    ds = ds if labeled else ds.map(lambda x: (x, tf.constant(0, tf.int32)))
    return ds.map(lambda x, y: (tf.io.encode_png(x), y)), shape, 256, num_classes, None, None
  kind, path = glow_data.split_source(src)
  if kind == 'folder':
    ds, shape, class_names, _, skipped = folder.folder_bins(
      path, split, n_bits=8, image_size=args.image_size, with_labels=False, shuffle=False, seed=None,
      bad_files=args.bad_files, encoded=True, report=report,
    )  # fmt: skip
    return ds, shape, 256, len(class_names) if class_names else None, class_names, skipped
  if kind == 'npz':
    try:
      ds, shape, num_classes, _ = arrays.array_bins(
        path, split, n_bits=8, image_size=args.image_size, with_labels=True, shuffle=False, seed=None
      )
    except ValueError as e:
      if 'no labels' not in str(e):
        raise
      ds, shape, num_classes, _ = arrays.array_bins(
        path, split, n_bits=8, image_size=args.image_size, with_labels=False, shuffle=False, seed=None
      )
      ds = ds.map(lambda x: (x, tf.constant(0, tf.int32)))
    return ds.map(lambda x, y: (tf.io.encode_png(x), y)), shape, 256, num_classes, None, None
  raise UsageError(f'SRC {src!r}: a tfrecord data set is already sharded; give another source')


def prepare(args: argparse.Namespace) -> int:
  """Writes OUT/{train,test}-*.tfrecord and OUT/manifest.json; OUT must be new (or empty)."""
  src, out = args.src, args.out
  if not glow_data.is_path_source(src) and src not in glow_data.DATASETS:
    if not tf.io.gfile.isdir(src):
      raise UsageError(f'SRC {src!r} is not a data set name or a folder; accepted: {glow_data.SOURCES_HELP}')
    src = glow_data.FOLDER_PREFIX + src
  if args.shards < 1:
    raise UsageError(f'--shards {args.shards}: give at least 1')
  if tf.io.gfile.exists(out) and (not tf.io.gfile.isdir(out) or tf.io.gfile.listdir(out)):
    raise UsageError(f'OUT {out!r} exists and is not an empty folder; give a new one')
  splits, meta, report = {}, None, ImageReport()
  for split in ('train', 'test'):
    ds, shape, n_bins, num_classes, class_names, skipped = _split_examples(src, split, args, report)
    splits[split] = (ds, skipped)
    meta = meta or (shape, n_bins, num_classes, class_names)
  assert meta is not None  # (set by the loop above)
  shape, n_bins, num_classes, class_names = meta
  created = not tf.io.gfile.exists(out)
  try:
    manifest = tfrecord.write_shards(
      out,
      {split: ds for split, (ds, _) in splits.items()},
      shards=args.shards,
      image_shape=shape,
      n_bins=n_bins,
      class_names=class_names,
      num_classes=num_classes,
      source=src,
    )
  except BaseException:  # nothing half-written: a folder without its manifest would look unfinished
    for name in tf.io.gfile.listdir(out) if tf.io.gfile.exists(out) else []:
      tf.io.gfile.remove(os.path.join(out, name))
    if created and tf.io.gfile.exists(out):
      tf.io.gfile.rmtree(out)
    raise
  counts = {s: manifest['splits'][s]['num_examples'] for s in manifest['splits']}
  shards = {s: len(manifest['splits'][s]['shards']) for s in manifest['splits']}
  for _, skipped in splits.values():
    if skipped is not None and skipped.count:
      print(f'warning: {skipped.summary()}')
      break  # one report for both splits
  if report.conversions.counts():
    # Without --image-size the files' bytes are stored as they are and converted alike when read.
    when = 'stored converted' if args.image_size else 'stored as they are, converted alike when read'
    print(f'note: {report.conversions.summary()} ({when})')
  classes = f', classes {", ".join(class_names)}' if class_names else ''
  print(
    f'wrote {out}: {counts["train"]} train images in {shards["train"]} shards, {counts["test"]} test images '
    f'in {shards["test"]}, {shape[0]}x{shape[1]}x{shape[2]}{classes}; train with --dataset tfrecord:{out}'
  )
  return 0
