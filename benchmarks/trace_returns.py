"""How a training step and a `tfp-glow train` run move through the package's modules: a profiler hook records
the module of every tfp_glow function called, in order.

  python benchmarks/trace_returns.py                    # this checkout
  PYTHONPATH=/path/to/other/tree python benchmarks/trace_returns.py

For each of (1) tracing `model.train_step` once (as benchmarks/trace_modules.py: 8x8x1, L=2, K=2, width 8) and
(2) one `tfp-glow train` run (digits, L=2, K=1, width 8, batch 128, 1 epoch, tests/test_cli.py's TINY flags, into a temporary folder) it prints:
  modules: how many package modules (files) are entered;
  returns: in the sequence of modules entered (a module entered again right after itself counted once), how
    often a module comes back after the trace has left it (A -> B -> A counts 1). A call into a helper module
    and back counts, as it is a jump a reader follows.
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import tensorflow as tf  # noqa: E402

import tfp_glow  # noqa: E402
from tfp_glow import cli  # noqa: E402

ROOT = os.path.dirname(tfp_glow.__file__)


def traced(fn) -> list[str]:
  """The modules (paths relative to the package) of the package functions `fn()` calls, consecutive repeats
  dropped."""
  sequence: list[str] = []

  def profile(frame, event, arg):
    if event == 'call' and frame.f_code.co_filename.startswith(ROOT):
      module = os.path.relpath(frame.f_code.co_filename, ROOT)
      if not sequence or sequence[-1] != module:
        sequence.append(module)

  sys.setprofile(profile)
  try:
    fn()
  finally:
    sys.setprofile(None)
  return sequence


def report(name: str, sequence: list[str]) -> None:
  returns = sum(1 for i, m in enumerate(sequence) if m in sequence[:i])
  print(f'{name}: {len(set(sequence))} modules, {returns} returns to a module already left')
  print('  ' + ', '.join(sorted(set(sequence))))


def main() -> None:
  model = tfp_glow.GlowModel((8, 8, 1), levels=2, steps=2, width=8, n_bins=17, seed=0)
  model.compile()
  model.initialize(tf.random.uniform([8, 8, 8, 1], -0.5, 0.5))
  step = tf.function(model.train_step)
  report('training step', traced(lambda: step.get_concrete_function(tf.TensorSpec([None, 8, 8, 1]))))
  flags = [
    '--levels',
    '2',
    '--steps',
    '1',
    '--width',
    '8',
    '--batch-size',
    '128',
    '--no-ema',
    '--epochs',
    '1',
  ]
  flags += ['--lr', '3e-2', '--warmup-epochs', '0.2']  # as tests/test_cli.py's TINY: better than uniform
  codes = []
  with tempfile.TemporaryDirectory() as out:
    run = traced(lambda: codes.append(cli.main(['train', *flags, '--out', os.path.join(out, 'run')])))
  report(f'tfp-glow train (exit code {codes[0]})', run)


if __name__ == '__main__':
  main()
