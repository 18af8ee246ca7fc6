"""The `tfp-glow` command line: its flags and the per-data-set defaults of `train`.

`tfp_glow.cli` holds what each command does; this module only declares what a user can type. It imports no
TensorFlow (its choice lists come from tfp_glow.names), so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable

from tfp_glow import configs
from tfp_glow import names as glow_names
from tfp_glow.names import COUPLINGS, DEQUANTIZATIONS, PERMUTATIONS, PRECISIONS

LARGE_DEFAULTS = dict(
  levels=3,
  steps=16,
  width=256,
  batch_size=64,
  epochs=10,
  lr=1e-3,
  warmup_epochs=1.0,
  ema=False,
  n_bits=8,
  image_size=None,
  pad_to_32=False,
)
# Per-data-set defaults of `train`; "folder:PATH" uses LARGE_DEFAULTS. Only digits runs in minutes on a CPU.
DEFAULTS = {
  'digits': dict(
    LARGE_DEFAULTS, levels=2, steps=8, width=64, epochs=80, lr=2e-3, warmup_epochs=2.0, ema=True
  ),
  'mnist': dict(LARGE_DEFAULTS, levels=2),
  'fashion_mnist': dict(LARGE_DEFAULTS, levels=2),  # 28 = 4 * 7: levels <= 2
  'cifar10': LARGE_DEFAULTS,
  'downsampled_imagenet/32x32': LARGE_DEFAULTS,
  'downsampled_imagenet/64x64': dict(LARGE_DEFAULTS, levels=4),
  'celeb_a': dict(LARGE_DEFAULTS, levels=4, n_bits=5),
}
SAMPLE_TEMPERATURE = 0.7
# `sample` writes one grid PNG up to this many samples (a 32 x 32 grid); more go to an .npy or a folder.
MAX_GRID_SAMPLES = 1024


class Number:
  """An argparse `type=` for a number flag in a range, checked at parse time.

  Parses `kind` (int or float) and accepts low <= x <= high (low < x with `low_open`; None: no bound;
  floats must be finite). Anything else is refused as `PROG: error: --flag must be RANGE, got VALUE`
  (one line, exit 2: `Parser.error`) before any work is done, so nothing is written. `text` replaces the
  generated RANGE (e.g. 'a fraction in [0, 1]').
  """

  def __init__(
    self,
    kind: type = int,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    text: str | None = None,
  ) -> None:
    self.kind, self.low, self.high, self.low_open = kind, low, high, low_open
    if text is None:
      if low is not None and high is not None:
        text = f'in {low}..{high}' if kind is int else f'in [{low:g}, {high:g}]'
      else:
        text = f'{">" if low_open else ">="} {low:g}' + (' and finite' if kind is float else '')
    self.text = text

  def __call__(self, value: str) -> int | float:
    try:
      x = self.kind(value)
    except ValueError:  # not a number at all: say which kind
      noun = 'an integer' if self.kind is int else 'a number'
      text = self.text if self.text.startswith(('a ', 'an ')) else f'{noun} {self.text}'
      raise argparse.ArgumentTypeError(f'must be {text}, got {value!r}') from None
    ok = math.isfinite(x)
    ok = ok and (self.low is None or (x > self.low if self.low_open else x >= self.low))
    ok = ok and (self.high is None or x <= self.high)
    if not ok:
      raise argparse.ArgumentTypeError(f'must be {self.text}, got {value}')
    return x


def class_flag(value: str) -> str:
  """An argparse `type=` for a class flag (`--label`, `--to-class`, `--from-class`): a class name or an id,
  kept as typed (`tfp_glow.cli.class_labels` resolves it against the model's classes); a negative whole
  number is refused at parse time like any number flag out of range."""
  if re.fullmatch(r'\s*-\d+\s*', value):
    raise argparse.ArgumentTypeError(f'must be a class name or an id >= 0, got {value}')
  return value


POSITIVE_INT = Number(int, 1)  # counts and sizes: >= 1
NON_NEGATIVE_INT = Number(int, 0)  # class ids
SEED = Number(int, 0, 2**31 - 1)  # tf.int32 seeds (and NumPy's: 0 .. 2**32 - 1)
POSITIVE_FLOAT = Number(float, 0, low_open=True)  # > 0 and finite
NON_NEGATIVE_FLOAT = Number(float, 0)  # >= 0 and finite
FINITE_FLOAT = Number(float, text='a finite number')
FRACTION = Number(float, 0, 1, text='a fraction in [0, 1]')


class Parser(argparse.ArgumentParser):
  """argparse, with a `Number` flag out of range reported as the commands' own checks are: one line
  `PROG: error: --flag must be ..., got VALUE` (no usage block); other errors as argparse does."""

  def error(self, message: str):
    m = re.fullmatch(r'argument (-[^\s:]+): (must be .*)', message)
    if m:
      self.exit(2, f'{self.prog}: error: {m[1].split("/")[-1]} {m[2]}\n')
    super().error(message)


def _add_data_flags(p: argparse.ArgumentParser, default_dataset: str | None) -> None:
  fallback = default_dataset or "that of the model's training run, else digits"
  p.add_argument(
    '--dataset',
    default=default_dataset,
    help=f'{", ".join(glow_names.DATASETS)}, or {glow_names.SOURCES_HELP} (default: {fallback})',
  )
  p.add_argument('--data-dir', help='tensorflow_datasets data directory (data prepared with `tfds build`)')
  p.add_argument('--image-size', type=POSITIVE_INT, help='resize images to SIZE x SIZE')
  p.add_argument('--pad-to-32', action=argparse.BooleanOptionalAction, help='zero-pad images to 32x32')


def build_parser(
  handlers: dict[str, Callable[[argparse.Namespace], int]], description: str
) -> argparse.ArgumentParser:
  """The `tfp-glow` parser; each subcommand's parsed args carry `handler`, taken from `handlers`."""
  parser = Parser(
    prog='tfp-glow', description=description, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  commands = parser.add_subparsers(dest='command', required=True)

  p = commands.add_parser('train', help='train a Glow model (defaults: offline digits, a few CPU minutes)')
  _add_data_flags(p, 'digits')
  p.set_defaults(dataset=None)  # digits, unless --config names another
  for flag, kind in (
    ('levels', POSITIVE_INT),
    ('steps', POSITIVE_INT),
    ('width', POSITIVE_INT),
    ('n-bits', Number(int, 1, 8)),
    ('batch-size', POSITIVE_INT),
    ('epochs', POSITIVE_INT),
    ('lr', POSITIVE_FLOAT),
    ('warmup-epochs', NON_NEGATIVE_FLOAT),
  ):
    p.add_argument(
      f'--{flag}',
      type=kind,
      help=f'default: {DEFAULTS["digits"][flag.replace("-", "_")]} for '
      'digits, per data set otherwise (tfp_glow.cli.DEFAULTS)',
    )
  p.add_argument(
    '--coupling',
    choices=COUPLINGS,
    help="the coupling's transform: affine (the paper's), additive, or spline (rational-quadratic, Durkan et "
    'al. 2019; 4 bins, bound 3). Default: affine',
  )
  p.add_argument('--permutation', choices=PERMUTATIONS, help='default: conv_lu')
  p.add_argument(
    '--conditioner',
    choices=glow_names.CONDITIONERS,
    help="the coupling's network: conv (the paper's) or transformer (a ViT on 2x2 patches, depth 2, width 128, "
    '4 heads). Default: conv',
  )
  p.add_argument(
    '--ema',
    action=argparse.BooleanOptionalAction,
    help='Polyak-average the weights (EMA, momentum 0.99), used after training; it lags a short '
    'run (a few hundred steps): use --no-ema there (default: per data set)',
  )
  p.add_argument('--clipnorm', type=POSITIVE_FLOAT, help='clip each gradient to this norm')
  p.add_argument(
    '--conditional', action=argparse.BooleanOptionalAction, help='class-conditional model (labeled data sets)'
  )
  p.add_argument('--seed', type=SEED, default=0)
  p.add_argument(
    '--cache',
    help="keep the decoded images after the first epoch: 'memory', or a file path prefix, one cache per "
    'split and data set/settings: PATH-SPLIT-DIGEST.* (default: stream from disk every epoch; tfds sets '
    'under 2 GiB are kept in memory)',
  )
  p.add_argument(
    '--bad-files',
    choices=glow_names.BAD_FILES,
    default='skip',
    help='folder:PATH images that cannot be decoded: skip them (named, counted in metrics.json), or error '
    'before training (decodes every file once)',
  )
  p.add_argument(
    '--max-consecutive-skips',
    type=POSITIVE_INT,
    default=10,
    help='stop (diverged) after this many skipped steps in a row (bad batches, NaN/Inf gradients)',
  )
  p.add_argument(
    '--memory-saving',
    choices=('off', 'inverse', 'checkpoint'),
    default='off',
    help="memory-saving gradients: recompute each step's activations in the backward pass through the exact "
    "inverse, or per-step checkpoints (tfp_glow.flow.gradients); for the paper's sizes on GPUs",
  )
  p.add_argument(
    '--precision',
    choices=PRECISIONS,
    default='float32',
    help='mixed_bfloat16 / mixed_float16 (loss scaling): the coupling networks compute in 16 bits; weights, '
    'actnorm, 1x1 convs, log-dets and priors stay float32 (tfp_glow.bijectors.nets); for GPUs and TPUs',
  )
  p.add_argument(
    '--dequantization',
    choices=DEQUANTIZATIONS,
    default='uniform',
    help="uniform noise (the paper), or a learned q(u|x) (Flow++'s variational dequantization, a tighter "
    'bits/dim bound; tfp_glow.dequantization)',
  )
  p.add_argument(
    '--background-noise',
    type=FRACTION,
    default=0.0,
    metavar='FRACTION',
    help='train a background model for `ood --score likelihood_ratio`: replace this fraction of the training '
    'pixels by random values (Ren et al. 2019; e.g. 0.2; tfp_glow.ood.perturb)',
  )
  p.add_argument(
    '--sample-every', type=POSITIVE_INT, help='write samples/ every N epochs (default: epochs // 10)'
  )
  p.add_argument(
    '--config',
    choices=list(configs.CONFIGS),
    metavar='NAME',
    help="a paper experiment's settings (other flags override them): " + ', '.join(configs.CONFIGS),
  )
  p.add_argument(
    '--strategy',
    choices=glow_names.STRATEGIES,
    default='default',
    help='tf.distribute strategy: one device, every GPU of this host, every host in TF_CONFIG, or a TPU; '
    '--batch-size is the global batch',
  )
  p.add_argument('--tpu', help='--strategy tpu: the TPU name or grpc:// address (default: the local TPU)')
  p.add_argument(
    '--backup-every',
    type=POSITIVE_INT,
    metavar='STEPS',
    help='back up every STEPS training steps as well as every epoch (a preempted run resumes mid-epoch)',
  )
  p.add_argument('--tensorboard', action='store_true', help='log metrics and sample grids to DIR/logs')
  p.add_argument('--out', help='output directory (default: runs/DATASET); rerun to resume a killed run')
  again = p.add_mutually_exclusive_group()
  again.add_argument(
    '--continue',
    dest='continue_run',
    action='store_true',
    help='--out holds a finished run: train it on up to --epochs (counted from its start)',
  )
  again.add_argument(
    '--fresh',
    action='store_true',
    help='--out holds a finished or interrupted run: train a new model from scratch, replacing it at the end',
  )
  p.set_defaults(handler=handlers['train'])

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
    _add_data_flags(p, None)
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
