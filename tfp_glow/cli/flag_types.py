"""The types of `tfp-glow` flags: numbers in a range checked at parse time (`Number`), class flags, and the
parser that reports them in one line. No TensorFlow (tfp_glow.cli.flags)."""

from __future__ import annotations

import argparse
import math
import re
from typing import NoReturn

from tfp_glow import names as glow_names


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

  def error(self, message: str) -> NoReturn:
    m = re.fullmatch(r'argument (-[^\s:]+): (must be .*)', message)
    if m:
      self.exit(2, f'{self.prog}: error: {m[1].split("/")[-1]} {m[2]}\n')
    super().error(message)


def add_data_flags(p: argparse.ArgumentParser, default_dataset: str | None) -> None:
  fallback = default_dataset or "that of the model's training run, else digits"
  p.add_argument(
    '--dataset',
    default=default_dataset,
    help=f'{", ".join(glow_names.DATASETS)}, or {glow_names.SOURCES_HELP} (default: {fallback})',
  )
  p.add_argument('--data-dir', help='tensorflow_datasets data directory (data prepared with `tfds build`)')
  p.add_argument('--image-size', type=POSITIVE_INT, help='resize images to SIZE x SIZE')
  p.add_argument('--pad-to-32', action=argparse.BooleanOptionalAction, help='zero-pad images to 32x32')
