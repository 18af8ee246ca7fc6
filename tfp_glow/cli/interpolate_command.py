"""`tfp-glow interpolate`: the images decoded along the line between two images' latents (one row PNG)."""

from __future__ import annotations

import argparse

import tensorflow as tf

from tfp_glow import data as glow_data
from tfp_glow.cli.common import UsageError, save_grid
from tfp_glow.cli.loading import load_model, read_image, resolve_classes


def interpolate(args: argparse.Namespace) -> int:
  """Writes --steps images from --image1 to --image2 (a conditional model: each image's own class)."""
  model = load_model(args.model)
  resolve_classes(args, model, '--label')
  (a, label_a), (b, label_b) = read_image(args.image1, model, args), read_image(args.image2, model, args)
  labels = None
  if model.num_classes:
    if label_a is None or label_b is None:
      raise UsageError('the model is class-conditional: pass --label K for image files')
    labels = tf.constant([label_a, label_b], tf.int32)
  row = glow_data.to_uint8(model.interpolate(a, b, steps=args.steps, labels=labels), model.n_bins)
  save_grid(args.out, row, args.steps, args.zoom)
  print(f'wrote {args.out}: {args.steps} images from {args.image1} to {args.image2}')
  return 0
