"""`tfp-glow train`: flags -> config (flags, --config, per-data-set defaults) -> a library run
(`tfp_glow.runs.train`, which holds the kill-safe run and its guarantees: README, "Surviving training").
"""

from __future__ import annotations

import os
import re

from tfp_glow import configs, runs
from tfp_glow import data as glow_data
from tfp_glow.cli.common import Diverged, UsageError
from tfp_glow.cli.flags import DEFAULTS, LARGE_DEFAULTS


def _train_config(args) -> dict:
  """The flags; unset ones from --config (tfp_glow.configs), then from the data set's DEFAULTS."""
  preset = configs.get_config(args.config).train_flags() if args.config else {}
  dataset = args.dataset or preset.pop('dataset', None) or ('digits' if not args.config else None)
  preset.pop('dataset', None)
  if dataset is None:
    hint = (
      configs.get_config(args.config).data_hint or f'{glow_data.FOLDER_PREFIX}PATH (a folder of its images)'
    )
    raise UsageError(f'--config {args.config} names no data set we can download: give --dataset {hint}')
  if dataset not in DEFAULTS and not glow_data.is_path_source(dataset):
    raise UsageError(
      f'unknown data set {dataset!r}; accepted: {", ".join(glow_data.DATASETS)}, or {glow_data.SOURCES_HELP}'
    )
  config = {
    'dataset': dataset,
    **{
      k: getattr(args, k)
      for k in (
        'clipnorm',
        'seed',
        'max_consecutive_skips',
        'memory_saving',
        'precision',
        'dequantization',
        'background_noise',
        'cache',
        'bad_files',
      )
    },
  }
  fallback = dict(coupling='affine', permutation='conv_lu', conditional=False, conditioner='conv')
  for key, default in {**DEFAULTS.get(dataset, LARGE_DEFAULTS), **fallback, **preset}.items():
    config[key] = default if getattr(args, key) is None else getattr(args, key)
  if not 0.0 <= config['background_noise'] <= 1.0:
    raise UsageError(f'--background-noise must be a fraction in [0, 1], got {config["background_noise"]}')
  config['sample_every'] = args.sample_every or max(1, config['epochs'] // 10)
  if args.config:
    config['config'] = args.config
  return config


def train(args) -> int:
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
