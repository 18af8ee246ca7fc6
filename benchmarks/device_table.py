"""benchmarks/public_api.py's table on whatever device TensorFlow sees (a GPU if there is one, else the CPU):
the same children and the same JSON, written to benchmarks/results/device_<device>.json.

  python benchmarks/device_table.py                      # tfp_glow, tfp_glow:xla, convs, cli; 2 rounds
  python benchmarks/device_table.py --rounds 1 --batch 64

Every flag of public_api.py works. The PyTorch peers run only when asked (--impl ... torch:rosinality with
--torch-python): the CPU torch wheel would measure them on the CPU, not on the device. On a GPU, Keras'
jit_compile='auto' turns XLA on for `fit`; the 'tfp_glow' row then measures plain graphs only where
`compile(jit_compile=False)` is kept (public_api.py compiles it so), and 'tfp_glow:xla' the XLA path.
"""

from __future__ import annotations

import re
import sys

import public_api

if __name__ == '__main__':
  import tensorflow as tf

  gpus = tf.config.list_physical_devices('GPU')
  device = 'gpu' if gpus else 'cpu'
  argv = sys.argv[1:]
  if '--impl' not in argv:
    argv = ['--impl', 'tfp_glow', 'tfp_glow:xla', 'convs', 'cli', *argv]
  if '--rounds' not in argv:
    argv = ['--rounds', '2', *argv]
  name = re.sub(r'[^a-z0-9]+', '_', device)
  public_api.main(argv, default_out=f'device_{name}.json')
