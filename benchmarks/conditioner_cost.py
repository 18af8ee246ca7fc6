"""The conditioner's cost per image: the conv network against the transformer, at one coupling of Glow's first level
on 32x32x3 images (after the squeeze: 16x16x12, x_a and x_b 6 channels each, affine transform: 12 outputs).

Per conditioner: parameters (counted from the built layer), forward FLOPs per image (2 x multiply-adds of the
matmuls and convolutions; elementwise ops left out), and the measured time of one coupling image -> latent
(traced, batch 64), the candidates timed in turn, round after round, so machine load hits all alike; the median
of the rounds. CPU by default:

  python benchmarks/conditioner_cost.py --rounds 7 --out benchmarks/results/conditioner_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfp_glow.bijectors import conditioners  # noqa: E402
from tfp_glow.bijectors.coupling import Coupling  # noqa: E402

H = W = 16
C = 12  # level 1 of a 32x32x3 Glow
C_A, OUT = C // 2, (C - C // 2) * 2  # affine: shift and scale per transformed channel


def conv_flops(width: int) -> int:
  return 2 * H * W * (9 * C_A * width + width * width + 9 * width * OUT)


def vit_flops(spec: conditioners.Transformer) -> int:
  p, d, m = spec.patch_size, spec.width, spec.mlp_ratio * spec.width
  t = (H // p) * (W // p)
  per_token = p * p * C_A * d + spec.depth * (4 * d * d + 2 * d * m) + d * p * p * OUT
  return 2 * (t * per_token + spec.depth * 2 * t * t * d)  # + attention: QK^T and AV


def candidates():
  yield 'conv width 128', 'conv', 128, conv_flops(128)
  yield 'conv width 512 (the paper)', 'conv', 512, conv_flops(512)
  small = conditioners.Transformer(depth=1, width=48, heads=4, patch_size=2)
  yield 'transformer d=1 D=48 p=2 (~conv 128 params)', small, 128, vit_flops(small)
  default = conditioners.Transformer()
  yield 'transformer default d=2 D=128 p=2', default, 128, vit_flops(default)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--out')
  args = parser.parse_args()
  x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (args.batch, H, W, C)), tf.float32)
  runs = []
  for label, conditioner, width, flops in candidates():
    coupling = Coupling(C, width, 'affine', conditioner=conditioner, spatial=(H, W), name='c')
    params = sum(int(np.prod(v.shape)) for v in coupling.network.weights)
    fn = tf.function(lambda t, c=coupling: c.inverse_and_log_det(t))
    fn(x)  # trace
    runs.append(
      {'conditioner': label, 'parameters': params, 'gflops_per_image': flops / 1e9, 'fn': fn, 'times': []}
    )
  for _ in range(args.rounds):
    for run in runs:
      start = time.perf_counter()
      for _ in range(3):
        out = run['fn'](x)
      _ = out[0].numpy()
      run['times'].append((time.perf_counter() - start) / 3 / args.batch)
  results = []
  for run in runs:
    fn = run.pop('fn')
    del fn
    times = run.pop('times')
    run['ms_per_image_median'] = 1e3 * float(np.median(times))
    run['ms_per_image_min'] = 1e3 * float(np.min(times))
    results.append(run)
    print(json.dumps(run))
  meta = {'batch': args.batch, 'rounds': args.rounds, 'machine': platform.processor() or platform.machine()}
  meta['cpu_count'] = os.cpu_count()
  if args.out:
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump({'meta': meta, 'results': results}, f, indent=1)


if __name__ == '__main__':
  main()
