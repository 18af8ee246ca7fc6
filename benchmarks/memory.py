"""Training memory that grows with the batch: activations stored for the backward pass, per image.

A process's peak RSS mixes three things: the TensorFlow runtime (~0.7 GB), the traced graph (which
grows with the number of ops, so with K), and the buffers of a training step (activations kept for
the gradients: what memory-saving gradients remove). This script separates the last one: it measures
peak RSS after tracing and a few training steps at two batch sizes, each in a fresh process, and
reports the slope, MB per image, per memory-saving mode.

  python benchmarks/memory.py [--steps 8 32] [--batches 16 64] [--modes plain inverse checkpoint]

Architecture: 32x32x3, L=3, width 128 (as compare.py's 'k8'/'k32' configs); a
`tf.function(model.train_step)` step, as `fit` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(mode: str, batch: int, steps: int) -> dict:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf

  from tfp_glow.training.model import GlowModel
  from tfp_glow.training.optim import default_optimizer

  model = GlowModel((32, 32, 3), 3, steps, 128, seed=0, memory_saving=(False if mode == 'plain' else mode))
  model.compile(optimizer=default_optimizer(1e-3, 10))
  x = tf.random.stateless_uniform([batch, 32, 32, 3], (0, 1)) - 0.5
  model.initialize(x[:16])
  step = tf.function(model.train_step)
  t0 = time.perf_counter()
  graph = step.get_concrete_function(tf.TensorSpec([None, 32, 32, 3])).graph
  out = dict(trace_s=time.perf_counter() - t0, ops=len(graph.get_operations()), rss_traced_gb=rss_gb())
  t0 = time.perf_counter()
  step(x)
  out['first_call_s'] = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(2):
    loss = step(x)['loss']
  float(loss)
  out.update(step_s=(time.perf_counter() - t0) / 2, peak_rss_gb=rss_gb())
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, nargs='+', default=[8, 32])
  parser.add_argument('--batches', type=int, nargs=2, default=[16, 64])
  parser.add_argument('--modes', nargs='+', default=['plain', 'inverse', 'checkpoint'])
  parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    mode, batch, steps = args.child
    result = child(mode, int(batch), int(steps))
    print('RESULT ' + json.dumps({k: round(v, 3) for k, v in result.items()}), flush=True)
    return
  print(f'# load {os.getloadavg()[0]:.2f}', flush=True)
  slopes = {}
  for steps in args.steps:
    for mode in args.modes:
      peaks = []
      for batch in args.batches:
        out = subprocess.run(
          [sys.executable, __file__, '--child', mode, str(batch), str(steps)], capture_output=True, text=True
        )
        line = [x for x in out.stdout.splitlines() if x.startswith('RESULT ')]
        if not line:
          print(f'# {mode} K={steps} batch {batch} failed:\n{out.stderr[-1500:]}', flush=True)
          break
        result = json.loads(line[-1][7:])
        peaks.append(result['peak_rss_gb'])
        print(json.dumps(dict(mode=mode, K=steps, batch=batch, **result)), flush=True)
      if len(peaks) == 2:
        slopes[steps, mode] = (peaks[1] - peaks[0]) * 1024 / (args.batches[1] - args.batches[0])
        print(f'K={steps} {mode}: {slopes[steps, mode]:.2f} MB per image', flush=True)
  for mode in args.modes:
    if (args.steps[0], mode) in slopes and (args.steps[-1], mode) in slopes:
      growth = slopes[args.steps[-1], mode] / slopes[args.steps[0], mode]
      print(f'{mode}: per-image memory K={args.steps[0]} -> K={args.steps[-1]}: x{growth:.2f}')


if __name__ == '__main__':
  main()
