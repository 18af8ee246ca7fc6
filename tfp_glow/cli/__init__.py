"""`tfp-glow`: train, sample, evaluate, interpolate and manipulate Glow models from the command line.

  tfp-glow train                          # offline 8x8 digits into runs/digits, minutes on 2 CPU cores
  tfp-glow sample runs/digits --n 64 --temperature 0.7 --out grid.png
  tfp-glow evaluate runs/digits/model.keras      # JSON: test bits/dim, reconstruction error
  tfp-glow interpolate runs/digits test:0 test:1 --steps 8 --out row.png
  tfp-glow manipulate runs/digits test:19 --from-class 1 --to-class 7 --alphas 0 0.5 1 --out 1to7.png
  tfp-glow ood runs/digits --out noise constant inverted     # OOD scores: AUROC table, ood.json
  tfp-glow train --config cifar10 --strategy multi-worker   # the paper's CIFAR-10 run, TF_CONFIG per host
  tfp-glow prepare folder:images shards/ --shards 16        # TFRecord shards: --dataset tfrecord:shards/
Bad flags, missing data, unreadable models and an --out in use or not writable print one `error:` line and
exit with code 2; a diverged run or model (NaN/Inf) exits with code 1 and writes no model.keras (a finite
model is never deleted).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import Any, Callable

import tfp_glow
from tfp_glow.cli import tf_logs
from tfp_glow.cli.errors import Diverged, UsageError
from tfp_glow.cli.flags import DEFAULTS, LARGE_DEFAULTS, SAMPLE_TEMPERATURE, build_parser

# Re-exported: `tfp_glow.cli.DEFAULTS` is where README points for the per-data-set defaults.
__all__ = ['DEFAULTS', 'LARGE_DEFAULTS', 'SAMPLE_TEMPERATURE', 'Diverged', 'UsageError', 'main']

# Each command -> the module (tfp_glow.cli.<module>) and function that do its work. A command's module,
# and with it TensorFlow, is imported only when the command runs: `--help` and flag errors answer at once.
COMMANDS = {
  'train': ('train_command', 'train'),
  'prepare': ('prepare_command', 'prepare'),
  'sample': ('sample_command', 'sample'),
  'evaluate': ('evaluate_command', 'evaluate'),
  'interpolate': ('interpolate_command', 'interpolate'),
  'manipulate': ('manipulate_command', 'manipulate'),
  'ood': ('ood_command', 'ood'),
}
# Older homes of names that moved out of this module (now in the modules named), kept importable.
_MOVED = {'_load_model': ('loading', 'load_model'), 'bits_per_dim': ('common', 'bits_per_dim')}


class _Command:
  """A command's handler that imports its module on the first call (argparse stores it in `args.handler`)."""

  def __init__(self, module: str, function: str) -> None:
    self.module, self.function = module, function

  def __call__(self, args: argparse.Namespace) -> int:
    return getattr(importlib.import_module(f'{__name__}.{self.module}'), self.function)(args)


def __getattr__(name: str) -> Any:
  if name in _MOVED:
    module, attr = _MOVED[name]
    return getattr(importlib.import_module(f'{__name__}.{module}'), attr)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def _build_parser() -> argparse.ArgumentParser:
  handlers: dict[str, Callable[[argparse.Namespace], int]] = {
    c: _Command(*where) for c, where in COMMANDS.items()
  }
  return build_parser(handlers, description=__doc__.split('\n')[0])


def main(argv: list[str] | None = None) -> int:
  """Runs `tfp-glow`; returns the exit code (0: done, 2: bad flags, data or files)."""
  quiet = tf_logs.quiet_by_default()  # before TensorFlow loads; a TF_CPP_MIN_LOG_LEVEL set by the user wins
  parser = _build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help, or argparse's own usage errors
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
  # The work starts: TensorFlow loads, and with it the package as `import tfp_glow` loads it elsewhere.
  if quiet:
    tf_logs.import_tensorflow_quietly()
  for name in tfp_glow.__all__:  # its Keras classes registered, for the models a command loads
    getattr(tfp_glow, name)
  from tfp_glow.cli.common import flag_errors  # noqa: PLC0415
  from tfp_glow.data import DatasetUnavailableError  # noqa: PLC0415

  try:
    with contextlib.nullcontext() if args.command == 'train' else flag_errors():  # train: its own
      return args.handler(args)
  except (UsageError, DatasetUnavailableError) as e:
    print(f'tfp-glow {args.command}: error: {e}', file=sys.stderr)
    return 2
  except Diverged as e:
    print(f'tfp-glow {args.command}: error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    resume = '; rerun the same command to resume' if args.command == 'train' else ''
    print(f'tfp-glow {args.command}: interrupted{resume}', file=sys.stderr)
    return 130
