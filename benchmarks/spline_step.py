"""The spline coupling's training step against the affine one (issue 24: "a spline step <= 1.4x an affine step"),
and the spline transform alone against the affine transform.

  python benchmarks/spline_step.py [--rounds 5] [--steps 6] [--width 64] [--equal-params]

1. Training step: `GlowModel.fit` on 32x32x3 images, L=3, K=4, batch 32, default gradient ('stored'), for
   coupling='spline' and 'affine' at the same conv width (and with --equal-params also at the couplings
   benchmark's equal-parameter widths, spline 30 vs affine 96), all models in one process, alternating rounds
   in a rotated order; s/step between step ends, the median over rounds and the median of each round's
   spline / affine ratio. On a shared machine only these ratios mean anything.
2. The transform alone, at the 12 couplings' shapes of that model (x_b [32, s, s, C_b] and h [.., C_b * P] of
   each level), what a training step runs of it: its value and log-det (the forward loop), then its VJP for
   random cotangents: `couple` again under a tape and the tape's gradient (the affine's; the spline's with
   TensorFlow's own gradient of its ops, `couple_value`, as on the base tree; and with its custom gradient,
   as the generic per-step VJP of a transformer conditioner runs it), or the spline's hand-written
   `couple_vjp` (what the 'stored' gradient's kernels now run). Alternating rounds, medians; on the base tree
   only the affine and the TF-gradient spline exist.
3. The conditioner's multiply-adds per image at that width (its last layer outputs C_b * P channels: P = 2 for
   the affine, 3K - 1 = 11 for the spline), which bounds what the step ratio can reach however fast the spline
   itself is.

Prints one JSON line at the end (`RESULT {...}`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

SHAPE, LEVELS, STEPS, BATCH = (32, 32, 3), 3, 4, 32


def level_shapes():
  """(spatial size s, conditioning channels C_a, transformed channels C_b) of each level's couplings."""
  shapes, channels, size = [], SHAPE[2], SHAPE[0]
  for _ in range(LEVELS):
    size, channels = size // 2, channels * 4
    shapes.append((size, channels // 2, channels - channels // 2))
    channels //= 2  # the split prior takes half out
  return shapes


def conditioner_macs(width: int, params: int) -> int:
  """Multiply-adds per image of a level's K conditioners: conv3x3(C_a -> width), conv1x1, conv3x3(-> C_b P)."""
  return sum(
    STEPS * s * s * (9 * c_a * width + width * width + 9 * width * c_b * params)
    for s, c_a, c_b in level_shapes()
  )


def time_steps(args) -> dict:
  import keras
  import tensorflow as tf

  import tfp_glow
  from tfp_glow.training.optim import default_optimizer

  variants = {f'affine@{args.width}': ('affine', args.width), f'spline@{args.width}': ('spline', args.width)}
  if args.equal_params:
    variants.update({'affine@96': ('affine', 96), 'spline@30': ('spline', 30)})
  n = 2 + args.rounds * args.steps
  images = tf.random.stateless_uniform([n * BATCH, *SHAPE], (0, 1)) - 0.5
  batches = [images[i * BATCH : (i + 1) * BATCH] for i in range(n)]
  models = {}
  for name, (coupling, width) in variants.items():
    model = tfp_glow.GlowModel(SHAPE, LEVELS, STEPS, width=width, coupling=coupling, seed=0)
    model.compile(optimizer=default_optimizer(1e-3, warmup_steps=10))
    model.initialize(tf.concat(batches[:2], 0))
    model.fit(tf.data.Dataset.from_tensor_slices(batches[:2]), epochs=1, verbose=0)  # traces the step
    models[name] = model
  per_round = {name: [] for name in variants}
  names = list(variants)
  for r in range(args.rounds):
    chunk = tf.data.Dataset.from_tensor_slices(batches[2 + r * args.steps : 2 + (r + 1) * args.steps])
    for name in names[r % len(names) :] + names[: r % len(names)]:
      ends = []
      clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *_, ends=ends, **__: ends.append(time.perf_counter())
      )
      models[name].fit(chunk, epochs=1, verbose=0, callbacks=[clock])
      per_round[name].append((ends[-1] - ends[0]) / (len(ends) - 1))
    print(f'step round {r + 1}: ' + ', '.join(f'{k} {v[-1]:.3f}' for k, v in per_round.items()), flush=True)
  pairs = [(f'spline@{args.width}', f'affine@{args.width}')] + (
    [('spline@30', 'affine@96')] * args.equal_params
  )
  return dict(
    s_per_step={k: statistics.median(v) for k, v in per_round.items()},
    ratios={
      f'{a} / {b}': statistics.median(x / y for x, y in zip(per_round[a], per_round[b])) for a, b in pairs
    },
    per_round=per_round,
  )


def time_transforms(args) -> dict:
  import numpy as np
  import tensorflow as tf

  from tfp_glow.bijectors import transforms

  rng = np.random.default_rng(0)
  spline, affine = transforms.Spline(), transforms.Affine()
  cases = []  # (x_b, h_spline, h_affine, dz) of each of the 12 couplings
  for s, _, c_b in level_shapes():
    for _ in range(STEPS):
      x = tf.constant(rng.standard_normal([BATCH, s, s, c_b]), tf.float32)
      hs = tf.constant(rng.standard_normal([BATCH, s, s, c_b * spline.params_per_channel]), tf.float32)
      ha = tf.constant(0.1 * rng.standard_normal([BATCH, s, s, c_b * 2]), tf.float32)
      cases.append((x, hs, ha, tf.constant(rng.standard_normal(x.shape), tf.float32)))
  dld = tf.constant(rng.standard_normal([BATCH]), tf.float32)

  def taped(couple, which):  # which: 1 for the spline's h, 2 for the affine's
    @tf.function
    def run():
      total = 0.0
      for case in cases:
        x, h, dz = case[0], case[which], case[3]
        z, ld = couple(x, h)  # the forward loop's
        total += 0 * (tf.reduce_sum(z) + tf.reduce_sum(ld))
        with tf.GradientTape() as tape:  # the backward's: again under a tape, and its gradient
          tape.watch([x, h])
          z, ld = couple(x, h)
        dh, dx = tape.gradient([z, ld], [h, x], output_gradients=[dz, dld])
        total += tf.reduce_sum(dh) + tf.reduce_sum(dx)
      return total

    return run

  @tf.function
  def by_hand():
    total = 0.0
    for x, hs, _, dz in cases:
      z, ld = spline.couple(x, hs)  # the forward loop's
      dh, dx = spline.couple_vjp(x, hs, dz, dld)
      total += tf.reduce_sum(dh) + tf.reduce_sum(dx) + 0 * (tf.reduce_sum(z) + tf.reduce_sum(ld))
    return total

  spline_h, affine_h = 1, 2
  fns = {
    'affine (tape)': taped(affine.couple, affine_h),
    'spline, TF gradient (tape)': taped(getattr(spline, 'couple_value', spline.couple), spline_h),
  }
  if hasattr(spline, 'couple_vjp'):  # this tree's spline (not the base's)
    fns['spline, custom gradient (tape)'] = taped(spline.couple, spline_h)  # the generic per-step VJP
    fns['spline, couple + couple_vjp'] = by_hand  # the stored gradient's kernels: forward loop, then the VJP
  for fn in fns.values():
    fn()  # traces
  per_round = {k: [] for k in fns}
  names = list(fns)
  for r in range(args.rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      t0 = time.perf_counter()
      for _ in range(3):
        float(fns[name]())
      per_round[name].append((time.perf_counter() - t0) / 3)
  med = {k: statistics.median(v) for k, v in per_round.items()}
  ratios = {f'{k} / affine (tape)': statistics.median(
    a / b for a, b in zip(per_round[k], per_round['affine (tape)'])) for k in fns if k != 'affine (tape)'}  # fmt: skip
  return dict(s_per_call=med, ratios=ratios)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=6, help='training steps per model per round')
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--equal-params', action='store_true', help='also spline width 30 vs affine width 96')
  parser.add_argument('--skip-steps', action='store_true', help='the transform alone only')
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  result = dict(
    load_before=os.getloadavg(),
    conditioner_macs_ratio=conditioner_macs(args.width, 11) / conditioner_macs(args.width, 2),
    transform=time_transforms(args),
  )
  print('transform alone: ' + json.dumps(result['transform']), flush=True)
  if not args.skip_steps:
    result['step'] = time_steps(args)
  result['load_after'] = os.getloadavg()
  print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
