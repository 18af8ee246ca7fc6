"""What the commands that read a trained model share: the model, the matching data split, an input image
(`test:I` or a file) and the class flags resolved against the model's classes."""

from __future__ import annotations

import argparse
import math
import os
import re

import keras
import tensorflow as tf

from tfp_glow import data as glow_data
from tfp_glow.cli import class_labels
from tfp_glow.cli.common import Diverged, UsageError, read_json_dict
from tfp_glow.images import read_image_noting
from tfp_glow.training import guard
from tfp_glow.training.model import GlowModel


def load_model(path: str, require_finite: bool = True) -> GlowModel:
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


def load_matching_split(
  model: GlowModel,
  args: argparse.Namespace,
  split: str = 'test',
  with_labels: bool | None = None,
  shuffle: bool = False,
) -> tuple[tf.data.Dataset, glow_data.DatasetInfo, str]:
  """The split of --dataset (default: the model's training data set), in the model's shape and bins;
  with labels if the model is class-conditional (or `with_labels`); shuffled (seed 0) if `shuffle`.
  Returns (batches, their DatasetInfo, the data set's name)."""
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


def read_image(spec: str, model: GlowModel, args: argparse.Namespace) -> tuple[tf.Tensor, int | None]:
  """`test:I` (the I-th test image of --dataset, with its label) or an image file -> (bin centres, label)."""
  if re.fullmatch(r'test:\d+', spec):
    ds, info, _ = load_matching_split(model, args)
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


def resolve_classes(args: argparse.Namespace, model: GlowModel, *flags: str) -> None:
  """Turns each class flag's value (a class name saved with the model, or an id) into its label id."""
  names = class_labels.class_names(args.model)
  for flag in flags:
    attr = flag.lstrip('-').replace('-', '_')
    setattr(args, attr, class_labels.class_id(flag, getattr(args, attr), model.num_classes, names))
