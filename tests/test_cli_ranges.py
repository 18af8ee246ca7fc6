"""Every number flag of every `tfp-glow` command is range-checked at parse time (tfp_glow.cli.flags.Number):
one `error:` line naming the flag and the accepted range, exit 2, nothing written. Fast: argparse only."""

import argparse
import os

import pytest

from tfp_glow import cli
from tfp_glow.cli import flags

# (command and its required arguments, flag, a bad value, the range the message must name)
CASES = [
  ('train', '--epochs', '-3', '>= 1'),
  ('train', '--epochs', '0', '>= 1'),
  ('train', '--levels', '0', '>= 1'),
  ('train', '--steps', '-1', '>= 1'),
  ('train', '--width', '0', '>= 1'),
  ('train', '--n-bits', '0', 'in 1..8'),
  ('train', '--n-bits', '9', 'in 1..8'),
  ('train', '--batch-size', '0', '>= 1'),
  ('train', '--lr', '0', '> 0 and finite'),
  ('train', '--lr', 'nan', '> 0 and finite'),
  ('train', '--lr', 'inf', '> 0 and finite'),
  ('train', '--warmup-epochs', '-1', '>= 0 and finite'),
  ('train', '--clipnorm', '0', '> 0 and finite'),
  ('train', '--seed', '-1', 'in 0..2147483647'),
  ('train', '--max-consecutive-skips', '0', '>= 1'),
  ('train', '--background-noise', '1.5', 'a fraction in [0, 1]'),
  ('train', '--background-noise', 'nan', 'a fraction in [0, 1]'),
  ('train', '--sample-every', '0', '>= 1'),
  ('train', '--image-size', '0', '>= 1'),
  ('train', '--epochs', 'three', 'an integer >= 1'),
  ('prepare digits out', '--shards', '0', '>= 1'),
  ('prepare digits out', '--image-size', '-8', '>= 1'),
  ('sample m', '--n', '0', '>= 1'),
  ('sample m', '--n', '-5', '>= 1'),
  ('sample m', '--temperature', '0', '> 0 and finite'),
  ('sample m', '--temperature', '-0.7', '> 0 and finite'),
  ('sample m', '--label', '-1', 'a class name or an id >= 0'),
  ('sample m', '--seed', '-2', 'in 0..2147483647'),
  ('sample m', '--columns', '0', '>= 1'),
  ('sample m', '--batch-size', '0', '>= 1'),
  ('sample m', '--zoom', '0', '>= 1'),
  ('evaluate m', '--batch-size', '-1', '>= 1'),
  ('evaluate m', '--importance-samples', '0', '>= 1'),
  ('evaluate m', '--image-size', '0', '>= 1'),
  ('interpolate m a b', '--steps', '1', '>= 2'),
  ('interpolate m a b', '--label', '-1', 'a class name or an id >= 0'),
  ('interpolate m a b', '--batch-size', '0', '>= 1'),
  ('interpolate m a b', '--zoom', '-2', '>= 1'),
  ('manipulate m a --to-class 1', '--from-class', '-1', 'a class name or an id >= 0'),
  ('manipulate m a --from-class 1', '--to-class', '-2', 'a class name or an id >= 0'),
  ('manipulate m a --to-class 1', '--alphas', 'inf', 'a finite number'),
  ('manipulate m a --to-class 1', '--label', '-1', 'a class name or an id >= 0'),
  ('ood m --out noise', '--samples', '0', '>= 1'),
  ('ood m --out noise', '--typicality-batch', '0', '>= 1'),
  ('ood m --out noise', '--batch-size', '0', '>= 1'),
  ('ood m --out noise', '--image-size', '0', '>= 1'),
]


@pytest.mark.parametrize('command, flag, value, accepted', CASES)
def test_a_number_flag_out_of_range_is_one_error_line_exit_2_nothing_written(
  command, flag, value, accepted, tmp_path, monkeypatch, capsys
):
  monkeypatch.chdir(tmp_path)  # default outputs (runs/, samples.png, ...) would land here
  words = command.split()
  argv = [*words, flag, value]
  if words[0] == 'train':
    argv += ['--out', str(tmp_path / 'run')]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  shown = repr(value) if accepted.startswith('an integer') else value
  assert err.strip() == f'tfp-glow {words[0]}: error: {flag} must be {accepted}, got {shown}'
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
  'argv, key, expected',
  [
    (['train', '--epochs', '1'], 'epochs', 1),
    (['train', '--n-bits', '8'], 'n_bits', 8),
    (['train', '--lr', '1e-4'], 'lr', 1e-4),
    (['train', '--warmup-epochs', '0'], 'warmup_epochs', 0.0),
    (['train', '--background-noise', '0'], 'background_noise', 0.0),
    (['train', '--seed', '0'], 'seed', 0),
    (['sample', 'm', '--label', '0'], 'label', '0'),  # resolved against the model's classes later
    (['manipulate', 'm', 'a', '--to-class', '0', '--alphas', '-1.5', '2'], 'alphas', [-1.5, 2.0]),
    (['interpolate', 'm', 'a', 'b', '--steps', '2'], 'steps', 2),
  ],
)
def test_values_at_the_bounds_are_accepted(argv, key, expected):
  assert getattr(cli._build_parser().parse_args(argv), key) == expected


def _subparsers(parser):
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      return action.choices
  return {}


def test_every_number_flag_of_every_command_is_range_checked():
  """No flag of any command parses a bare int or float: each goes through `flags.Number`."""
  unchecked = []
  for name, sub in _subparsers(cli._build_parser()).items():
    for action in sub._actions:
      if action.type in (int, float) or (action.type is not None and not callable(action.type)):
        unchecked.append(f'{name} {action.option_strings}')
      if isinstance(action.type, flags.Number):
        assert action.type.low is not None or action.type.kind is float, (name, action.option_strings)
  assert unchecked == []
