"""`tfp-glow sample`: samples of a trained model at a temperature, as one grid PNG, an .npy or a folder."""

from __future__ import annotations

import argparse

import numpy as np

from tfp_glow.cli import sample_output
from tfp_glow.cli.common import UsageError, grid_layout
from tfp_glow.cli.loading import load_model, resolve_classes


def sample(args: argparse.Namespace) -> int:
  """Generates --n samples, --batch-size at a time (memory bounded whatever --n), into one grid PNG, an
  .npy of uint8 images [n, H, W, C], or a folder of PNGs (tfp_glow.cli.sample_output)."""
  if args.n < 1:
    raise UsageError(f'--n must be >= 1, got {args.n}')
  if args.batch_size < 1:
    raise UsageError(f'--batch-size must be >= 1, got {args.batch_size}')
  fmt, path = sample_output.resolve(args.out, args.format, args.n)
  model = load_model(args.model)
  resolve_classes(args, model, '--label')
  n, columns, labels = grid_layout(args.n, None if args.label is not None else model.num_classes)
  if fmt != 'png':  # a grid pads to whole columns of classes; files hold exactly --n
    n = args.n
    labels = None if labels is None else np.arange(n, dtype=np.int32) % model.num_classes
  labels = labels if args.label is None else np.full([n], args.label, np.int32)
  batches = sample_output.batches(model, n, args.batch_size, args.temperature, labels, args.seed)
  sample_output.write(fmt, path, batches, n, model.image_shape, args.columns or columns, args.zoom)
  print(f'wrote {path}: {n} samples at temperature {args.temperature:g} ({fmt})')
  return 0
