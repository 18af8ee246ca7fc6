"""The `tfp-glow` command line: its flags and the per-data-set defaults of `train`.

`tfp_glow.cli` holds what each command does; this module only declares what a user can type. It imports no
TensorFlow (its choice lists come from tfp_glow.names), so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
from typing import Callable

from tfp_glow import names as glow_names
from tfp_glow import specs
from tfp_glow.cli.flag_types import (  # noqa: F401 (re-exported: the commands' modules import them from here)
  FINITE_FLOAT,
  FRACTION,
  NON_NEGATIVE_FLOAT,
  NON_NEGATIVE_INT,
  POSITIVE_FLOAT,
  POSITIVE_INT,
  SEED,
  Number,
  Parser,
  add_data_flags,
  class_flag,
)
from tfp_glow.cli.train_flags import add_train_parser

# Per-data-set defaults of `train` (every run setting): the specs' defaults with the data set's overrides
# (tfp_glow.specs.run: DATASET_DEFAULTS); "folder:PATH" and other unnamed data use LARGE_DEFAULTS.
LARGE_DEFAULTS = specs.run_defaults(None)
DEFAULTS = {name: specs.run_defaults(name) for name in specs.DATASET_DEFAULTS}
SAMPLE_TEMPERATURE = 0.7
# `sample` writes one grid PNG up to this many samples (a 32 x 32 grid); more go to an .npy or a folder.
MAX_GRID_SAMPLES = 1024


def build_parser(
  handlers: dict[str, Callable[[argparse.Namespace], int]], description: str
) -> argparse.ArgumentParser:
  """The `tfp-glow` parser; each subcommand's parsed args carry `handler`, taken from `handlers`."""
  parser = Parser(
    prog='tfp-glow', description=description, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  commands = parser.add_subparsers(dest='command', required=True)

  add_train_parser(commands, handlers['train'])

  prepare_p = commands.add_parser(
    'prepare', help='write a data set as TFRecord shards + manifest (for many hosts: --dataset tfrecord:OUT)'
  )
  prepare_p.add_argument(
    'src', help=f'a data set name (digits, cifar10, ...), a folder, or {glow_names.SOURCES_HELP}'
  )
  prepare_p.add_argument('out', help='a new folder (any path TensorFlow writes, e.g. gs://...)')
  prepare_p.add_argument(
    '--shards', type=POSITIVE_INT, default=16, help='files per split (>= the hosts that will read them)'
  )
  prepare_p.add_argument(
    '--image-size', type=POSITIVE_INT, help='center-crop and resize images to SIZE x SIZE'
  )
  prepare_p.add_argument('--data-dir', help='tensorflow_datasets data directory (tfds sources)')
  prepare_p.add_argument('--bad-files', choices=glow_names.BAD_FILES, default='skip', help='as for train')
  prepare_p.set_defaults(handler=handlers['prepare'])

  sample_p = commands.add_parser('sample', help='write a grid of samples as PNG')
  evaluate_p = commands.add_parser('evaluate', help='print JSON: test bits/dim and reconstruction error')
  interpolate_p = commands.add_parser('interpolate', help="decode the line between two images' latents")
  manipulate_p = commands.add_parser(
    'manipulate', help="move an image along a class direction (the paper's attribute manipulation)"
  )
  for p, handler in (
    (sample_p, handlers['sample']),
    (evaluate_p, handlers['evaluate']),
    (interpolate_p, handlers['interpolate']),
    (manipulate_p, handlers['manipulate']),
  ):
    p.add_argument('model', help='a .keras file, or a train --out directory')
    p.set_defaults(handler=handler)
  for p in (evaluate_p, interpolate_p, manipulate_p):  # data for evaluation and for test:I
    add_data_flags(p, None)
    p.add_argument('--batch-size', type=POSITIVE_INT, default=256)
  for p, out in (
    (sample_p, 'samples.png'),
    (interpolate_p, 'interpolation.png'),
    (manipulate_p, 'manipulation.png'),
  ):
    p.add_argument(
      '--zoom', type=POSITIVE_INT, help='enlarge each image ZOOM times (default: small ones to ~32 px)'
    )
    p.add_argument('--out', default=out)
  sample_p.add_argument('--n', type=POSITIVE_INT, default=16)
  sample_p.add_argument('--temperature', type=POSITIVE_FLOAT, default=SAMPLE_TEMPERATURE)
  sample_p.add_argument(
    '--label',
    type=class_flag,
    help='class of every sample: a class name (class_names.txt) or an id (default: cycle over the classes)',
  )
  sample_p.add_argument('--seed', type=SEED, help='fixes the samples (default: random)')
  sample_p.add_argument('--columns', type=POSITIVE_INT)
  sample_p.add_argument(
    '--format',
    choices=('png', 'npy', 'png-dir'),
    help=f'png: one grid (up to {MAX_GRID_SAMPLES} samples); npy: an array [n, H, W, C] of uint8; png-dir: a folder of '
    'PNGs (default: from --out: .npy, a folder name without suffix, else png if --n fits a grid, else npy)',
  )
  sample_p.add_argument(
    '--batch-size',
    type=POSITIVE_INT,
    default=256,
    help='samples generated at a time (bounds the memory used)',
  )
  interpolate_p.add_argument('image1', help='an image file (PNG/JPEG), or test:I, the I-th test image')
  interpolate_p.add_argument('image2')
  interpolate_p.add_argument('--steps', type=Number(int, 2), default=8)
  interpolate_p.add_argument(
    '--label', type=class_flag, help='class of image files (conditional models): a name or an id'
  )
  manipulate_p.add_argument('image', help='an image file (PNG/JPEG), or test:I, the I-th test image')
  manipulate_p.add_argument(
    '--to-class',
    type=class_flag,
    required=True,
    help='direction: mean latent of this class (the "attribute"): a name or an id',
  )
  manipulate_p.add_argument(
    '--from-class',
    type=class_flag,
    help='minus the mean latent of this class (default: all others): a name or an id',
  )
  manipulate_p.add_argument('--alphas', type=FINITE_FLOAT, nargs='+', default=[-0.5, 0.0, 0.5, 1.0, 1.5])
  manipulate_p.add_argument(
    '--split', choices=('train', 'test'), default='train', help='images for the direction'
  )
  manipulate_p.add_argument(
    '--label', type=class_flag, help='class of an image file (conditional models): a name or an id'
  )
  evaluate_p.add_argument(
    '--importance-samples',
    type=POSITIVE_INT,
    metavar='S',
    help='also the importance-weighted bits/dim over S dequantization draws (tighter as S grows; e.g. 1000)',
  )
  _add_ood_parser(commands, handlers['ood'])
  return parser


def _add_ood_parser(commands, handler) -> None:
  p = commands.add_parser(
    'ood', help='out-of-distribution scores: AUROC, AUPR, FPR at 95%% TPR per score and OOD data set'
  )
  p.add_argument('model', help='a .keras file, or a train --out directory')
  p.add_argument(
    '--in',
    dest='in_data',
    help="in-distribution data set, its test split (default: the model's training data)",
  )
  p.add_argument(
    '--out',
    dest='out_data',
    nargs='+',
    required=True,
    metavar='DATA',
    help=f'OOD data: data sets (their test split), or shifts of the --in images: {", ".join(glow_names.OOD_SHIFTS)}',
  )
  p.add_argument(
    '--score',
    nargs='+',
    choices=glow_names.OOD_SCORES,
    help='default: bits_per_dim complexity_corrected typicality, and likelihood_ratio with --background',
  )
  p.add_argument('--background', help='the background model of likelihood_ratio (train --background-noise)')
  p.add_argument('--samples', type=POSITIVE_INT, default=1, help='importance samples per image (default: 1)')
  p.add_argument(
    '--typicality-batch', type=POSITIVE_INT, default=8, help='images per batch of the typicality test'
  )
  p.add_argument(
    '--typicality-images',
    type=POSITIVE_INT,
    default=glow_names.TYPICALITY_IMAGES,
    help="training images (a shuffled, streamed sample) that estimate the typicality test's training "
    f'entropy H (default: {glow_names.TYPICALITY_IMAGES}; see tfp_glow.ood.training_entropy)',
  )
  p.add_argument('--json', default='ood.json', help='write the table as JSON here (default: ood.json)')
  p.add_argument('--data-dir', help='tensorflow_datasets data directory (data prepared with `tfds build`)')
  p.add_argument('--image-size', type=POSITIVE_INT, help='resize images to SIZE x SIZE')
  p.add_argument('--pad-to-32', action=argparse.BooleanOptionalAction, help='zero-pad images to 32x32')
  p.add_argument('--batch-size', type=POSITIVE_INT, default=256)
  p.set_defaults(handler=handler)
