"""`tfp-glow evaluate`: a trained model's test bits/dim (and importance-weighted bits/dim) and its largest
reconstruction error, as strict JSON."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import tensorflow as tf

from tfp_glow.cli.common import Diverged, UsageError, bits_per_dim
from tfp_glow.cli.loading import load_matching_split, load_model
from tfp_glow.training import guard


def evaluate(args: argparse.Namespace) -> int:
  """Prints strict JSON (a non-finite figure is null); exits 1 if the model is not finite."""
  model = load_model(args.model, require_finite=False)
  ds, info, dataset = load_matching_split(model, args)
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
