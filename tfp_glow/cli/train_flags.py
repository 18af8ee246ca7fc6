"""`tfp-glow train`'s flags. A flag left out is None: `tfp_glow.runs.run_config` fills it from --config, then
from the data set's defaults (tfp_glow.specs: every setting's default and check, written once). Settings
without a flag of their own: `--set NAME=VALUE`; the coupling's transform and conditioner settings:
`--coupling-option` / `--conditioner-option NAME=VALUE`. No TensorFlow here."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from tfp_glow import names as glow_names
from tfp_glow import specs
from tfp_glow.cli.flag_types import (
  FRACTION,
  NON_NEGATIVE_FLOAT,
  POSITIVE_FLOAT,
  POSITIVE_INT,
  SEED,
  Number,
  add_data_flags,
)
from tfp_glow.configs import CONFIGS as CONFIG_NAMES
from tfp_glow.names import COUPLINGS, DEQUANTIZATIONS, GRADIENTS, PERMUTATIONS, PRECISIONS

_DIGITS = specs.run_defaults('digits')


def setting_flag(text: str) -> tuple[str, Any]:
  """An argparse `type=` for NAME=VALUE: VALUE read as JSON where it is one (8, 2.5, true, null), else as text."""
  name, sep, value = text.partition('=')
  if not sep or not name.strip():
    raise argparse.ArgumentTypeError(f'must be NAME=VALUE, got {text!r}')
  try:
    parsed = json.loads(value)
  except ValueError:
    parsed = value
  if isinstance(parsed, (dict, list)):
    raise argparse.ArgumentTypeError(
      f'must be NAME=VALUE with a number, true/false, null or text, got {text!r}'
    )
  return name.strip(), parsed


def add_train_parser(commands: Any, handler: Callable[[argparse.Namespace], int]) -> None:
  """Adds `train` to the `tfp-glow` subcommands."""
  p = commands.add_parser('train', help='train a Glow model (defaults: offline digits, a few CPU minutes)')
  add_data_flags(p, 'digits')
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
      help=f'default: {_DIGITS[flag.replace("-", "_")]} for digits, per data set otherwise (tfp_glow.cli.DEFAULTS)',
    )
  p.add_argument(
    '--coupling',
    choices=COUPLINGS,
    help="the coupling's transform: affine (the paper's), additive, or spline (rational-quadratic, Durkan et "
    'al. 2019; 4 bins, bound 3). Default: affine',
  )
  p.add_argument(
    '--coupling-option',
    type=setting_flag,
    action='append',
    metavar='NAME=VALUE',
    help="a setting of the coupling's transform, e.g. bins=8 or bound=5 for spline (repeat the flag; "
    'tfp_glow.bijectors.transforms)',
  )
  p.add_argument(
    '--conditioner-option',
    type=setting_flag,
    action='append',
    metavar='NAME=VALUE',
    help="a setting of the coupling's conditioner, e.g. depth=4, width=256, heads=8, patch_size=2 for "
    'transformer (repeat the flag; tfp_glow.bijectors.conditioners)',
  )
  p.add_argument('--permutation', choices=PERMUTATIONS, help='default: conv_lu')
  p.add_argument(
    '--conditioner',
    choices=glow_names.CONDITIONERS,
    help="the coupling's network: conv (the paper's) or transformer (a ViT on 2x2 patches, depth 2, width 128, "
    '4 heads); keras (your own Keras layer) is given from Python only. Default: conv',
  )
  p.add_argument(
    '--split',
    choices=glow_names.SPLITS,
    help="which elements of a coupling condition: channel (halves, the paper's), or the spatial checkerboard "
    'or stripes masks (RealNVP; the mask alternates over the steps). Default: channel',
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
  p.add_argument('--seed', type=SEED, help=f'default: {_DIGITS["seed"]}')
  p.add_argument(
    '--cache',
    help="keep the decoded images after the first epoch: 'memory', or a file path prefix, one cache per "
    'split and data set/settings: PATH-SPLIT-DIGEST.* (default: stream from disk every epoch; tfds sets '
    'under 2 GiB are kept in memory)',
  )
  p.add_argument(
    '--bad-files',
    choices=glow_names.BAD_FILES,
    help='folder:PATH images that cannot be decoded: skip them (named, counted in metrics.json), or error '
    'before training (decodes every file once)',
  )
  p.add_argument(
    '--max-consecutive-skips',
    type=POSITIVE_INT,
    help='stop (diverged) after this many skipped steps in a row (bad batches, NaN/Inf gradients)',
  )
  p.add_argument(
    '--gradient',
    choices=GRADIENTS,
    help='how the training step differentiates each level (tfp_glow.flow.gradients): stored (default: the fast '
    "hand-built gradient), inverse (recompute each step's activations through the exact inverse: memory "
    "independent of --steps), checkpoint (per-step checkpoints) or autodiff (TensorFlow's own)",
  )
  p.add_argument(
    '--memory-saving',
    choices=('off', 'inverse', 'checkpoint'),
    help='deprecated: --gradient inverse / checkpoint',
  )
  p.add_argument(
    '--set',
    dest='settings',
    type=setting_flag,
    action='append',
    metavar='NAME=VALUE',
    help='any other run setting by its name in config.json (tfp_glow.specs: ModelSpec, TrainingSpec), e.g. '
    'learn_top=false or class_loss_weight=0.1 (repeat the flag)',
  )
  p.add_argument(
    '--precision',
    choices=PRECISIONS,
    help='mixed_bfloat16 / mixed_float16 (loss scaling): the coupling networks compute in 16 bits; weights, '
    'actnorm, 1x1 convs, log-dets and priors stay float32 (tfp_glow.bijectors.nets); for GPUs and TPUs',
  )
  p.add_argument(
    '--dequantization',
    choices=DEQUANTIZATIONS,
    help="uniform noise (the paper), or a learned q(u|x) (Flow++'s variational dequantization, a tighter "
    'bits/dim bound; tfp_glow.dequantization)',
  )
  p.add_argument(
    '--background-noise',
    type=FRACTION,
    metavar='FRACTION',
    help='train a background model for `ood --score likelihood_ratio`: replace this fraction of the training '
    'pixels by random values (Ren et al. 2019; e.g. 0.2; tfp_glow.ood.perturb)',
  )
  p.add_argument(
    '--sample-every', type=POSITIVE_INT, help='write samples/ every N epochs (default: epochs // 10)'
  )
  p.add_argument(
    '--config',
    choices=list(CONFIG_NAMES),
    metavar='NAME',
    help="a paper experiment's settings (other flags override them): " + ', '.join(CONFIG_NAMES),
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
  p.set_defaults(handler=handler)
