"""Per-level step loops (tfp_glow.step_loop) against unrolled steps: first `fit` step and training speed.

Each measurement runs in a fresh process; the two variants alternate round by round.

  python benchmarks/step_loop_ab.py [--rounds 3] [--steps 8] [--train-steps 40] [--batch 32]

Architecture: 32x32x3, L=3, width 128, affine coupling, LU 1x1 conv (compare.py's 'default' config), trained
through `GlowModel.fit`. 'unrolled' disables the loops by making `can_loop` answer False.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(variant: str, steps: int, train_steps: int, batch: int) -> dict:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import keras
  import tensorflow as tf

  import tfp_glow.flow.glow
  import tfp_glow.reversible

  if variant == 'unrolled':
    tfp_glow.reversible.can_loop = tfp_glow.flow.glow.can_loop = lambda steps: False
  from tfp_glow.training.model import GlowModel
  from tfp_glow.training.optim import default_optimizer

  model = GlowModel((32, 32, 3), 3, steps, 128, seed=0, validate_inputs=True)
  model.compile(optimizer=default_optimizer(1e-3, warmup_steps=10))
  x = tf.random.stateless_uniform([batch * (train_steps + 2), 32, 32, 3], (0, 1)) - 0.5
  model.initialize(x[:batch])
  t0 = time.perf_counter()
  model.fit(tf.data.Dataset.from_tensor_slices(x[:batch]).batch(batch), epochs=1, verbose=0)
  first = time.perf_counter() - t0
  ends = []
  clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
  model.fit(
    tf.data.Dataset.from_tensor_slices(x[batch:]).batch(batch), epochs=1, verbose=0, callbacks=[clock]
  )
  train = (len(ends) - 1) * batch / (ends[-1] - ends[0])
  return dict(variant=variant, first_fit_step_s=round(first, 2), train_images_per_s=round(train, 1))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=8, help='K, steps per level')
  p.add_argument('--train-steps', type=int, default=40)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--child', choices=('loop', 'unrolled'), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print(json.dumps(child(args.child, args.steps, args.train_steps, args.batch)))
    return
  for r in range(args.rounds):
    for variant in ('loop', 'unrolled'):
      flags = ['--steps', str(args.steps), '--train-steps', str(args.train_steps), '--batch', str(args.batch)]
      out = subprocess.run(
        [sys.executable, __file__, '--child', variant, *flags], capture_output=True, text=True, check=True
      )
      print(json.dumps({'round': r, **json.loads(out.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == '__main__':
  main()
