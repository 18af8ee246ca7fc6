"""`tfp-glow manipulate`: an image moved along a class direction in latent space (the paper's attribute
manipulation, tfp_glow.manipulation), one row PNG over --alphas."""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

from tfp_glow import data as glow_data
from tfp_glow import manipulation
from tfp_glow.cli import class_labels
from tfp_glow.cli.common import UsageError, save_grid
from tfp_glow.cli.loading import load_matching_split, load_model, read_image, resolve_classes


def manipulate(args: argparse.Namespace) -> int:
  """Moves an image along a class direction: mean latent of --to-class minus that of --from-class."""
  model = load_model(args.model)
  resolve_classes(args, model, '--label')
  image, label = read_image(args.image, model, args)
  if model.num_classes and label is None:
    raise UsageError('the model is class-conditional: pass --label K for image files')
  ds, info, dataset = load_matching_split(model, args, split=args.split, with_labels=True)
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
