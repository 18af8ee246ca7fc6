"""`tfp-glow`: train, sample, evaluate, interpolate and manipulate Glow models from the command line.

  tfp-glow train                          # offline 8x8 digits into runs/digits, minutes on 2 CPU cores
  tfp-glow sample runs/digits --n 64 --temperature 0.7 --out grid.png
  tfp-glow evaluate runs/digits/model.keras      # JSON: test bits/dim, reconstruction error
  tfp-glow interpolate runs/digits test:0 test:1 --steps 8 --out row.png
  tfp-glow manipulate runs/digits test:19 --from-class 1 --to-class 7 --alphas 0 0.5 1 --out 1to7.png
  tfp-glow ood runs/digits --out noise constant inverted     # OOD scores: AUROC table, ood.json
  tfp-glow train --config cifar10 --strategy multi-worker   # the paper's CIFAR-10 run, TF_CONFIG per host
  tfp-glow prepare folder:images shards/ --shards 16        # TFRecord shards: --dataset tfrecord:shards/
Bad flags, missing data, unreadable models and an --out in use or not writable print one `error:` line and
exit with code 2; a diverged run or model (NaN/Inf) exits with code 1 and writes no model.keras (a finite
model is never deleted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import data as glow_data
from tfp_glow import manipulation
from tfp_glow.cli import class_labels, ood_command, sample_output
from tfp_glow.cli.common import (
  Diverged,
  UsageError,
  bits_per_dim,
  flag_errors,
  grid_layout,
  read_json_dict,
  save_grid,
)
from tfp_glow.cli.flags import DEFAULTS, LARGE_DEFAULTS, SAMPLE_TEMPERATURE, build_parser
from tfp_glow.cli.prepare_command import prepare
from tfp_glow.cli.train_command import train
from tfp_glow.images import read_image_noting
from tfp_glow.training import guard
from tfp_glow.training.model import GlowModel

# Re-exported: `tfp_glow.cli.DEFAULTS` is where README points for the per-data-set defaults.
__all__ = ['DEFAULTS', 'LARGE_DEFAULTS', 'SAMPLE_TEMPERATURE', 'Diverged', 'UsageError', 'main']


def _load_model(path: str, require_finite: bool = True) -> GlowModel:
  """A trained GlowModel from a .keras file (or a `train --out` directory holding model.keras)."""
  if tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, 'model.keras')):
    path = os.path.join(path, 'model.keras')
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise UsageError(f'model file {path!r} does not exist')
  try:
    model = keras.models.load_model(path, compile=False)
  except Exception as e:  # pylint: disable=broad-except  (corrupt zip, wrong format, unknown class, ...)
    detail = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise UsageError(f'cannot load model file {path!r} ({type(e).__name__}: {detail})') from e
  if not isinstance(model, GlowModel):
    raise UsageError(f'model file {path!r} holds a {type(model).__name__}, not a tfp_glow GlowModel')
  if require_finite and not guard.finite_weights(model):
    raise Diverged(f'model file {path!r} holds NaN or Inf weights (a diverged model)')
  model.compile()
  return model


def _load_matching_split(
  model: GlowModel, args, split: str = 'test', with_labels: bool | None = None, shuffle: bool = False
):
  """The split of --dataset (default: the model's training data set), in the model's shape and bins;
  with labels if the model is class-conditional (or `with_labels`); shuffled (seed 0) if `shuffle`."""
  model_dir = args.model if tf.io.gfile.isdir(args.model) else os.path.dirname(args.model)
  trained = read_json_dict(os.path.join(model_dir, 'config.json'))  # the `train` config of its --out
  dataset = args.dataset or trained.get('dataset', 'digits')
  same = trained.get('dataset') == dataset  # then default to the training run's resizing and padding
  image_size = trained.get('image_size') if same and args.image_size is None else args.image_size
  pad_to_32 = args.pad_to_32 if args.pad_to_32 is not None else bool(same and trained.get('pad_to_32'))
  n_bits = max(1, min(8, round(math.log2(model.n_bins))))
  ds, info = glow_data.load_dataset(
    dataset,
    split,
    batch_size=args.batch_size,
    n_bits=n_bits,
    image_size=image_size,
    pad_to_32=pad_to_32,
    with_labels=bool(model.num_classes) if with_labels is None else with_labels,
    shuffle=shuffle,
    data_dir=args.data_dir,
    seed=0,
  )
  if tuple(info.image_shape) != tuple(model.image_shape) or info.n_bins != model.n_bins:
    raise UsageError(
      f'data set {dataset!r} gives images {info.image_shape} with {info.n_bins} levels, but '
      f'the model expects {model.image_shape} with {model.n_bins}; pick the data set it was '
      'trained on (--dataset), or match its shape with --image-size / --pad-to-32'
    )
  return ds, info, dataset


def sample(args) -> int:
  """Generates --n samples, --batch-size at a time (memory bounded whatever --n), into one grid PNG, an
  .npy of uint8 images [n, H, W, C], or a folder of PNGs (tfp_glow.cli.sample_output)."""
  if args.n < 1:
    raise UsageError(f'--n must be >= 1, got {args.n}')
  if args.batch_size < 1:
    raise UsageError(f'--batch-size must be >= 1, got {args.batch_size}')
  fmt, path = sample_output.resolve(args.out, args.format, args.n)
  model = _load_model(args.model)
  _resolve_classes(args, model, '--label')
  n, columns, labels = grid_layout(args.n, None if args.label is not None else model.num_classes)
  if fmt != 'png':  # a grid pads to whole columns of classes; files hold exactly --n
    n = args.n
    labels = None if labels is None else np.arange(n, dtype=np.int32) % model.num_classes
  labels = labels if args.label is None else np.full([n], args.label, np.int32)
  batches = sample_output.batches(model, n, args.batch_size, args.temperature, labels, args.seed)
  sample_output.write(fmt, path, batches, n, model.image_shape, args.columns or columns, args.zoom)
  print(f'wrote {path}: {n} samples at temperature {args.temperature:g} ({fmt})')
  return 0


def evaluate(args) -> int:
  """Prints strict JSON (a non-finite figure is null); exits 1 if the model is not finite."""
  model = _load_model(args.model, require_finite=False)
  ds, info, dataset = _load_matching_split(model, args)
  # One trace for every batch size (the last batch is smaller): reduce_retracing generalizes the shape.
  roundtrip_error = tf.function(
    lambda x, y: tf.reduce_max(tf.abs(model.decode(model.encode(x, y), y) - tf.cast(x, model.glow.dtype))),
    reduce_retracing=True,
  )
  errors = []
  for batch in ds:
    images, labels = batch if model.num_classes else (batch, None)
    errors.append(float(roundtrip_error(images, labels)))  # max |decode(encode(x)) - x|
  error = float(np.max(errors)) if errors else math.nan  # np.max keeps a NaN, max() would hide it
  bpd = bits_per_dim(model, ds)
  finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
  weighted = {}
  if args.importance_samples is not None:
    if args.importance_samples < 1:
      raise UsageError(f'--importance-samples must be >= 1, got {args.importance_samples}')
    iw = model.evaluate_bits_per_dim(ds, samples=args.importance_samples, seed=0)
    weighted = dict(
      importance_samples=args.importance_samples, test_bits_per_dim_importance_weighted=finite(iw)
    )
  result = dict(
    model=args.model,
    dataset=dataset,
    split='test',
    num_examples=info.num_examples,
    dequantization=model.dequantization,
    test_bits_per_dim=finite(bpd),
    **weighted,
    reconstruction_max_abs_error=finite(error),
  )
  print(json.dumps(result, indent=2, allow_nan=False))
  figures = [bpd, error, *([iw] if weighted else [])]
  if not all(math.isfinite(v) for v in figures) or not guard.finite_weights(model):
    raise Diverged(f'{args.model!r} is not a finite model (NaN or Inf weights or results)')
  return 0


def _read_image(spec: str, model: GlowModel, args) -> tuple[tf.Tensor, int | None]:
  """`test:I` (the I-th test image of --dataset, with its label) or an image file -> (bin centres, label)."""
  if re.fullmatch(r'test:\d+', spec):
    ds, info, _ = _load_matching_split(model, args)
    batch = next(iter(ds.unbatch().skip(int(spec[len('test:') :])).take(1)), None)
    if batch is None:
      raise UsageError(f'{spec!r}: the test split has {info.num_examples} images, counted from 0')
    x, label = batch if model.num_classes else (batch, None)
    bins = tf.floor((x + 0.5) * model.n_bins)  # undo the dequantization noise
    return (bins + 0.5) / model.n_bins - 0.5, (None if label is None else int(label))
  if not tf.io.gfile.exists(spec):
    raise UsageError(f'image {spec!r} does not exist (give an image file or test:INDEX)')
  image, conversions = read_image_noting(spec, model.image_shape)
  if conversions:  # the model's shape and channels, as the data sources fit them (crop, then resize)
    h, w, c = model.image_shape
    print(f'note: {spec}: {", ".join(conversions)} to fit the model ({h}x{w}x{c})')
  pixels = tf.cast(image, tf.float32)
  bins = tf.floor(pixels * model.n_bins / 256.0)  # 0..255 -> n_bins levels
  return (bins + 0.5) / model.n_bins - 0.5, args.label


def _resolve_classes(args, model: GlowModel, *flags: str) -> None:
  """Turns each class flag's value (a class name saved with the model, or an id) into its label id."""
  names = class_labels.class_names(args.model)
  for flag in flags:
    attr = flag.lstrip('-').replace('-', '_')
    setattr(args, attr, class_labels.class_id(flag, getattr(args, attr), model.num_classes, names))


def interpolate(args) -> int:
  model = _load_model(args.model)
  _resolve_classes(args, model, '--label')
  (a, label_a), (b, label_b) = _read_image(args.image1, model, args), _read_image(args.image2, model, args)
  labels = None
  if model.num_classes:
    if label_a is None or label_b is None:
      raise UsageError('the model is class-conditional: pass --label K for image files')
    labels = tf.constant([label_a, label_b], tf.int32)
  row = glow_data.to_uint8(model.interpolate(a, b, steps=args.steps, labels=labels), model.n_bins)
  save_grid(args.out, row, args.steps, args.zoom)
  print(f'wrote {args.out}: {args.steps} images from {args.image1} to {args.image2}')
  return 0


def manipulate(args) -> int:
  """Moves an image along a class direction: mean latent of --to-class minus that of --from-class."""
  model = _load_model(args.model)
  _resolve_classes(args, model, '--label')
  image, label = _read_image(args.image, model, args)
  if model.num_classes and label is None:
    raise UsageError('the model is class-conditional: pass --label K for image files')
  ds, info, dataset = _load_matching_split(model, args, split=args.split, with_labels=True)
  batches = list(ds)
  images = tf.concat([b[0] for b in batches], 0)
  labels = np.concatenate([b[1].numpy() for b in batches])
  names = class_labels.class_names(args.model) or (list(info.class_names) if info.class_names else None)
  args.to_class, args.from_class = (  # the data set's classes (also for an unconditional model)
    class_labels.class_id(flag, value, info.num_classes, names, owner=f'data set {dataset!r}')
    for flag, value in (('--to-class', args.to_class), ('--from-class', args.from_class))
  )
  if args.from_class == args.to_class:
    raise UsageError('--from-class and --to-class must differ')
  keep = (
    np.ones_like(labels, bool)
    if args.from_class is None
    else np.isin(labels, [args.from_class, args.to_class])
  )
  images = (
    tf.floor((tf.boolean_mask(images, keep) + 0.5) * model.n_bins) + 0.5
  ) / model.n_bins - 0.5  # bin centres
  direction = manipulation.attribute_direction(
    model, images, labels[keep] == args.to_class, labels=labels[keep] if model.num_classes else None
  )
  row = manipulation.manipulate(
    model, image, direction, args.alphas, label=label if model.num_classes else None
  )
  save_grid(args.out, glow_data.to_uint8(row, model.n_bins), len(args.alphas), args.zoom)
  source = 'all other classes' if args.from_class is None else f'class {args.from_class}'
  print(
    f'wrote {args.out}: {args.image} moved toward class {args.to_class} (direction from {int(keep.sum())} '
    f'{args.split} images: class {args.to_class} minus {source}), alphas {args.alphas}'
  )
  return 0


def ood(args) -> int:
  """`tfp-glow ood` (tfp_glow.cli.ood_command), with this module's model and data loaders."""
  return ood_command.ood(args, _load_model, _load_matching_split)


def _build_parser() -> argparse.ArgumentParser:
  handlers = dict(
    train=train, sample=sample, evaluate=evaluate, interpolate=interpolate, manipulate=manipulate, ood=ood
  )
  handlers['prepare'] = prepare
  return build_parser(handlers, description=__doc__.split('\n')[0])


def main(argv: list[str] | None = None) -> int:
  """Runs `tfp-glow`; returns the exit code (0: done, 2: bad flags, data or files)."""
  parser = _build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help, or argparse's own usage errors
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
  try:
    with contextlib.nullcontext() if args.command == 'train' else flag_errors():  # train: its own
      return args.handler(args)
  except (UsageError, glow_data.DatasetUnavailableError) as e:
    print(f'tfp-glow {args.command}: error: {e}', file=sys.stderr)
    return 2
  except Diverged as e:
    print(f'tfp-glow {args.command}: error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    resume = '; rerun the same command to resume' if args.command == 'train' else ''
    print(f'tfp-glow {args.command}: interrupted{resume}', file=sys.stderr)
    return 130
