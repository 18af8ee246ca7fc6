"""`tfp-glow train`: flags -> config (flags, --config, per-data-set defaults) -> a library run
(`tfp_glow.runs.train`, which holds the kill-safe run and its guarantees: README, "Surviving training").
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from tfp_glow import runs, specs
from tfp_glow.cli.common import Diverged, UsageError


def _train_config(args) -> dict:
  """The flags (None: not given) -> the run's settings (`tfp_glow.runs.run_config`: --config, then the data set's
  defaults, then the specs'); the deprecated --memory-saving is noted on stderr and read as --gradient."""
  if args.memory_saving not in (None, 'off'):
    print(
      f'note: --memory-saving {args.memory_saving} is deprecated; use --gradient {args.memory_saving}',
      file=sys.stderr,
    )
  settings = dict(args.settings or [])
  unknown = sorted(set(settings) - set(specs.run_keys()))
  if unknown:
    raise UsageError(
      f'--set: unknown setting(s) {", ".join(unknown)}; accepted: {", ".join(specs.run_keys())}'
    )
  flags = {k: getattr(args, k) for k in _FLAGS}
  flags.update({k: v for k, v in settings.items() if k not in flags or flags[k] is None})
  flags['transform_settings'] = dict(args.coupling_option or []) or None
  flags['conditioner_settings'] = dict(args.conditioner_option or []) or None
  try:
    return runs.run_config(**flags)
  except runs.RunError as e:
    raise UsageError(str(e)) from e


# The flags that are run settings (`tfp_glow.runs.run_config`), by their names there.
_FLAGS = (
  'dataset',
  'levels',
  'steps',
  'width',
  'n_bits',
  'batch_size',
  'epochs',
  'lr',
  'warmup_epochs',
  'coupling',
  'permutation',
  'conditioner',
  'split',
  'ema',
  'clipnorm',
  'conditional',
  'seed',
  'cache',
  'bad_files',
  'max_consecutive_skips',
  'gradient',
  'memory_saving',
  'precision',
  'dequantization',
  'background_noise',
  'sample_every',
  'config',
  'image_size',
  'pad_to_32',
)


def train(args: argparse.Namespace) -> int:
  """Trains, then writes model.keras, samples.png and metrics.json into --out (`tfp_glow.runs.train`)."""
  config = _train_config(args)
  out = args.out or os.path.join('runs', re.sub(r'[^A-Za-z0-9_.-]+', '_', config['dataset']).strip('_'))
  try:
    runs.train(
      config,
      out,
      continue_run=args.continue_run,
      fresh=args.fresh,
      backup_every=args.backup_every,
      strategy=args.strategy,
      tpu=args.tpu,
      data_dir=args.data_dir,
      tensorboard=args.tensorboard,
    )
  except runs.RunError as e:
    raise UsageError(str(e)) from e
  except runs.Diverged as e:
    raise Diverged(str(e)) from e
  return 0
