"""Which tfp_glow modules a training step passes through: a profiler hook while `model.train_step` is traced.

  python benchmarks/trace_modules.py                    # this checkout
  PYTHONPATH=/path/to/other/tree python benchmarks/trace_modules.py

Tiny model (8x8x1, L=2, K=2, width 8); prints the count, the package's module count and the modules.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import tensorflow as tf  # noqa: E402

import tfp_glow  # noqa: E402


def main() -> None:
  root = os.path.dirname(tfp_glow.__file__)
  model = tfp_glow.GlowModel((8, 8, 1), levels=2, steps=2, width=8, n_bins=17, seed=0)
  model.compile()
  model.initialize(tf.random.uniform([8, 8, 8, 1], -0.5, 0.5))
  seen = set()

  def profile(frame, event, arg):
    if event == 'call' and frame.f_code.co_filename.startswith(root):
      seen.add(os.path.relpath(frame.f_code.co_filename, root))

  sys.setprofile(profile)
  tf.function(model.train_step).get_concrete_function(tf.TensorSpec([None, 8, 8, 1]))
  sys.setprofile(None)
  total = sum(1 for _, _, files in os.walk(root) for f in files if f.endswith('.py') and f != '__init__.py')
  print(f'{len(seen)} of {total} modules: {", ".join(sorted(seen))}')


if __name__ == '__main__':
  main()
