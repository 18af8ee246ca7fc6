"""`tfp-glow ood`: out-of-distribution scores of a trained model on in- and out-of-distribution data, as a
table (AUROC, AUPR, FPR at 95% TPR per score and OOD set) and JSON (tfp_glow.ood).

A class-conditional model is scored through its marginal over labels (tfp_glow.ood: uniform class prior);
the data are read without labels. Typicality's H comes from at most --typicality-images training images,
streamed from the shuffled training split (fixed seed), never the whole split in memory."""

from __future__ import annotations

import argparse

import tensorflow as tf

from tfp_glow import atomic
from tfp_glow import ood as glow_ood
from tfp_glow.cli.common import Diverged, UsageError
from tfp_glow.cli.loading import load_matching_split, load_model


def _images(model, args: argparse.Namespace, dataset: str | None, split: str) -> tf.Tensor:
  """All images of a data set's split, in the model's shape and bins (the first element of labeled batches)."""
  ds_args = argparse.Namespace(**{**vars(args), 'dataset': dataset})
  ds, _, _ = load_matching_split(model, ds_args, split=split, with_labels=False)
  batches = [b[0] if isinstance(b, tuple) else b for b in ds]
  if not batches:
    raise UsageError(f'data set {dataset!r} has no {split} images')
  return tf.concat(batches, 0)


def _stream(model, args: argparse.Namespace, dataset: str | None, split: str) -> tf.data.Dataset:
  """A data set's split as a shuffled (seed 0) stream of image batches, for a bounded sample of it."""
  ds_args = argparse.Namespace(**{**vars(args), 'dataset': dataset})
  ds, _, _ = load_matching_split(model, ds_args, split=split, with_labels=False, shuffle=True)
  return ds


def ood(args: argparse.Namespace) -> int:
  """Prints the table, writes --json; exits 1 if a score is not finite (a diverged model)."""
  model = load_model(args.model)
  background = load_model(args.background) if args.background else None
  scores = args.score or [
    'bits_per_dim',
    'complexity_corrected',
    *(['likelihood_ratio'] if background else []),
    'typicality',
  ]
  if 'likelihood_ratio' in scores and background is None:
    raise UsageError(
      '--score likelihood_ratio needs --background MODEL (train one with --background-noise 0.2)'
    )
  if args.samples < 1:
    raise UsageError(f'--samples must be >= 1, got {args.samples}')
  if args.typicality_batch < 1:
    raise UsageError(f'--typicality-batch must be >= 1, got {args.typicality_batch}')
  if args.typicality_images < 1:
    raise UsageError(f'--typicality-images must be >= 1, got {args.typicality_images}')
  if background is not None and (
    background.image_shape != model.image_shape or background.n_bins != model.n_bins
  ):
    raise UsageError(
      f'--background {args.background!r} models images {background.image_shape} with {background.n_bins} '
      f'levels, the model {model.image_shape} with {model.n_bins}'
    )
  in_images = _images(model, args, args.in_data, 'test')
  out_sets = {}
  for name in args.out_data:
    if name in glow_ood.SHIFTS:
      out_sets[name] = glow_ood.shifted(in_images, name, model.n_bins)
    else:
      out_sets[name] = _images(model, args, name, 'test')
  train_images = _stream(model, args, args.in_data, 'train') if 'typicality' in scores else None
  try:
    rows = glow_ood.score_table(
      model,
      in_images,
      out_sets,
      scores=scores,
      background=background,
      train_images=train_images,
      samples=args.samples,
      typicality_batch=args.typicality_batch,
      typicality_images=args.typicality_images,
    )
  except glow_ood.NonFiniteError as e:  # the scores' check: NaN or Inf bits/dim
    raise Diverged(str(e)) from e
  print(f'{"score":<22} {"out":<16} {"AUROC":>7} {"AUPR":>7} {"FPR@95":>7}')
  for r in rows:
    print(f'{r["score"]:<22} {r["out"]:<16} {r["auroc"]:7.3f} {r["aupr"]:7.3f} {r["fpr_at_95_tpr"]:7.3f}')
  result = dict(
    model=args.model,
    background=args.background,
    in_data=args.in_data,
    num_in=int(in_images.shape[0]),
    num_out={k: int(v.shape[0]) for k, v in out_sets.items()},
    samples=args.samples,
    typicality_batch=args.typicality_batch,
    typicality_images=args.typicality_images,
    # a conditional model: scored through p(x) = sum_y p(x|y) / K
    marginal_over_classes=model.num_classes or None,
    rows=rows,
  )
  atomic.write_json(args.json, result)
  print(f'wrote {args.json}')
  return 0
