"""Training and sampling speed and peak memory: tfp_glow vs the installed tfp.bijectors.Glow.

The architecture of REFERENCE.md's measurement: 32x32x3 images, L=3 levels, K=8 steps, coupling
width 128, batch 32, affine coupling, LU 1x1 conv. Each implementation runs in its own process
(peak memory is per process); run them back to back on a quiet machine.

  python benchmarks/train_speed.py --impl tfp_glow      # our GlowModel.fit path
  python benchmarks/train_speed.py --impl tfp            # tfp.bijectors.Glow, custom tf.function step
  python benchmarks/train_speed.py --impl both           # both, alternating, one process each

Prints one JSON line per implementation: first_step_s (tracing + first step), train_images_per_s,
sample_images_per_s, peak_rss_gb.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

H, W, C, LEVELS, STEPS, WIDTH, BATCH = 32, 32, 3, 3, 8, 128, 32


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench_tfp_glow(train_steps: int, sample_batches: int) -> dict:
  import keras
  import tensorflow as tf

  from tfp_glow.model import GlowModel
  from tfp_glow.optim import default_optimizer

  model = GlowModel((H, W, C), levels=LEVELS, steps=STEPS, width=WIDTH, seed=0)
  model.compile(optimizer=default_optimizer(1e-3, warmup_steps=10))
  x = tf.random.uniform([BATCH * (train_steps + 1), H, W, C]) - 0.5
  model.initialize(x[:BATCH])
  first = tf.data.Dataset.from_tensor_slices(x[:BATCH]).batch(BATCH)
  t0 = time.perf_counter()
  model.fit(first, epochs=1, verbose=0)
  first_step = time.perf_counter() - t0
  # Steady state inside fit: the time between the ends of the first and the last batch.
  batch_ends = []
  clock = keras.callbacks.LambdaCallback(
    on_train_batch_end=lambda *_, **__: batch_ends.append(time.perf_counter())
  )
  rest = tf.data.Dataset.from_tensor_slices(x[BATCH:]).batch(BATCH)
  model.fit(rest, epochs=1, verbose=0, callbacks=[clock])
  train = (len(batch_ends) - 1) * BATCH / (batch_ends[-1] - batch_ends[0])
  sample = tf.function(lambda: model.distribution.sample(BATCH, temperature=0.7))
  sample()  # trace
  t0 = time.perf_counter()
  for _ in range(sample_batches):
    sample().numpy()
  sampling = sample_batches * BATCH / (time.perf_counter() - t0)
  return dict(first_step_s=first_step, train_images_per_s=train, sample_images_per_s=sampling)


def bench_tfp(train_steps: int, sample_batches: int) -> dict:
  import tensorflow as tf
  import tensorflow_probability as tfp

  tfb, tfd = tfp.bijectors, tfp.distributions

  glow = tfb.Glow(
    output_shape=(H, W, C),
    num_glow_blocks=LEVELS,
    num_steps_per_block=STEPS,
    coupling_bijector_fn=tfb.GlowDefaultNetwork,
    exit_bijector_fn=tfb.GlowDefaultExitNetwork,
  )
  dist = tfd.TransformedDistribution(
    tfd.Sample(tfd.Normal(0.0, 1.0), glow.inverse_event_shape([H, W, C])), glow
  )
  x = tf.random.uniform([BATCH * (train_steps + 1), H, W, C]) - 0.5
  dist.log_prob(x[:2])  # creates the variables (and initializes its actnorm from this batch)
  opt = tf.keras.optimizers.Adam(1e-3)

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(dist.log_prob(batch))
    grads = tape.gradient(loss, dist.trainable_variables)
    opt.apply_gradients(zip(grads, dist.trainable_variables))
    return loss

  t0 = time.perf_counter()
  step(x[:BATCH]).numpy()
  first_step = time.perf_counter() - t0
  step(x[BATCH : 2 * BATCH]).numpy()  # steady state from here, as for tfp_glow
  t0 = time.perf_counter()
  for i in range(2, train_steps + 1):
    loss = step(x[i * BATCH : (i + 1) * BATCH])
  loss.numpy()
  train = (train_steps - 1) * BATCH / (time.perf_counter() - t0)
  sample = tf.function(lambda: dist.sample(BATCH))
  sample()
  t0 = time.perf_counter()
  for _ in range(sample_batches):
    sample().numpy()
  sampling = sample_batches * BATCH / (time.perf_counter() - t0)
  return dict(first_step_s=first_step, train_images_per_s=train, sample_images_per_s=sampling)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--impl', choices=['tfp_glow', 'tfp', 'both'], default='both')
  parser.add_argument('--train-steps', type=int, default=10)
  parser.add_argument('--sample-batches', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=1, help='alternating rounds for --impl both')
  args = parser.parse_args()
  if args.impl == 'both':
    for _ in range(args.repeats):
      for impl in ('tfp_glow', 'tfp'):
        subprocess.run(
          [
            sys.executable,
            __file__,
            '--impl',
            impl,
            '--train-steps',
            str(args.train_steps),
            '--sample-batches',
            str(args.sample_batches),
          ],
          check=True,
        )
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  fn = bench_tfp_glow if args.impl == 'tfp_glow' else bench_tfp
  result = fn(args.train_steps, args.sample_batches)
  result = {k: round(v, 2) for k, v in result.items()}
  print(
    json.dumps(
      dict(
        impl=args.impl,
        shape=[H, W, C],
        levels=LEVELS,
        steps=STEPS,
        width=WIDTH,
        batch=BATCH,
        **result,
        peak_rss_gb=round(peak_rss_gb(), 2),
      )
    ),
    flush=True,
  )


if __name__ == '__main__':
  main()
