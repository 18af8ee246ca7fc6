"""Glow implementations side by side: first step, training and sampling speed, peak memory.

Every implementation gets the same architecture, data shape, batch and coupling width; each measurement
runs in its own fresh process (so peak memory is per configuration), and the implementations alternate
round by round, so machine noise spreads evenly. Prints one JSON line per process, then a table of
medians (min-max) and ratios.

  python benchmarks/compare.py                       # config 'default', tfp_glow vs tfp vs convs, 3 rounds
  python benchmarks/compare.py --quick               # a tiny config, one round, under 2 minutes
  python benchmarks/compare.py --config k32 --impl tfp_glow tfp_glow:inverse tfp_glow:checkpoint
  python benchmarks/compare.py --config cifar --rounds 1     # the paper's CIFAR-10 model (slow on a CPU)

Implementations (--impl):
  tfp_glow              GlowModel through `fit` (what a user runs); steady state between batch ends
  tfp_glow:inverse      the same with memory_saving='inverse' (recompute through the exact inverse)
  tfp_glow:checkpoint   the same with memory_saving='checkpoint' (tf.recompute_grad per step)
  tfp_glow:xla          the same compiled with jit_compile=True
  tfp_glow:bf16         the same under the Keras policy 'mixed_bfloat16'
  tfp                   tfp.bijectors.Glow, GlowDefaultNetwork(num_hidden=width) (equal width), with
                        GlowDefaultExitNetwork, trained by a custom tf.function step (Keras 3 `fit` cannot
                        train it; see README)
  convs                 only the coupling networks' convolutions of the same model (the same K x L
                        conv stacks at the same shapes), forward + backward: the floor of any TensorFlow
                        implementation of this architecture
Metrics: first_step_s (building + tracing + the first training step), train_images_per_s,
sample_images_per_s (temperature 0.7), peak_rss_gb (ru_maxrss after training: TF runtime, graph
building and the training step's buffers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# name -> (image shape, levels L, steps K, width, batch, coupling)
CONFIGS = {
  'quick': ((16, 16, 3), 2, 4, 32, 16, 'affine'),
  'default': ((32, 32, 3), 3, 8, 128, 32, 'affine'),  # REFERENCE.md's comparison
  'k8': ((32, 32, 3), 3, 8, 128, 64, 'affine'),  # the memory-growth pair of the issue
  'k32': ((32, 32, 3), 3, 32, 128, 64, 'affine'),
  'cifar': ((32, 32, 3), 3, 32, 512, 64, 'affine'),  # the paper's CIFAR-10 model (batch 512 / 8 GPUs)
  'celeba256': ((256, 256, 3), 6, 32, 512, 2, 'additive'),  # the paper's CelebA-HQ model, small batch
}
IMPLS = (
  'tfp_glow',
  'tfp_glow:inverse',
  'tfp_glow:checkpoint',
  'tfp_glow:xla',
  'tfp_glow:bf16',
  'tfp',
  'convs',
)


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed_steps(fn, steps: int, batch: int) -> float:
  """images/s of `fn` over `steps` calls, after one warm-up call."""
  fn()
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn()
  _ = [t.numpy() for t in __import__('tensorflow').nest.flatten(out)]
  return steps * batch / (time.perf_counter() - t0)


def bench_tfp_glow(cfg, variant: str, train_steps: int, sample_batches: int) -> dict:
  import keras
  import tensorflow as tf

  if variant == 'bf16':
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
  from tfp_glow.training.model import GlowModel
  from tfp_glow.training.optim import default_optimizer

  shape, levels, steps, width, batch, coupling = cfg
  memory_saving = variant if variant in ('inverse', 'checkpoint') else False
  t0 = time.perf_counter()
  model = GlowModel(
    shape, levels, steps, width, coupling=coupling, seed=0, memory_saving=memory_saving, validate_inputs=True
  )
  model.compile(optimizer=default_optimizer(1e-3, warmup_steps=10), jit_compile=(variant == 'xla'))
  x = tf.random.stateless_uniform([batch * (train_steps + 2), *shape], (0, 1)) - 0.5
  model.initialize(x[:batch])
  first = tf.data.Dataset.from_tensor_slices(x[:batch]).batch(batch)
  model.fit(first, epochs=1, verbose=0)
  first_step = time.perf_counter() - t0
  ends = []
  clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
  rest = tf.data.Dataset.from_tensor_slices(x[batch:]).batch(batch)
  model.fit(rest, epochs=1, verbose=0, callbacks=[clock])
  train = (len(ends) - 1) * batch / (ends[-1] - ends[0])  # between the ends of the first and last batch
  rss = peak_rss_gb()
  sample = tf.function(lambda: model.distribution.sample(batch, temperature=0.7))
  sampling = timed_steps(sample, sample_batches, batch)
  return dict(
    first_step_s=first_step, train_images_per_s=train, sample_images_per_s=sampling, peak_rss_gb=rss
  )


def bench_tfp(cfg, train_steps: int, sample_batches: int) -> dict:
  import functools

  import tensorflow as tf
  import tensorflow_probability as tfp

  tfb, tfd = tfp.bijectors, tfp.distributions
  shape, levels, steps, width, batch, coupling = cfg
  t0 = time.perf_counter()
  glow = tfb.Glow(
    output_shape=shape,
    num_glow_blocks=levels,
    num_steps_per_block=steps,
    coupling_bijector_fn=functools.partial(tfb.GlowDefaultNetwork, num_hidden=width),
    exit_bijector_fn=tfb.GlowDefaultExitNetwork,
  )
  dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), glow.inverse_event_shape(shape)), glow)
  x = tf.random.stateless_uniform([batch * (train_steps + 2), *shape], (0, 1)) - 0.5
  dist.log_prob(x[:batch])  # creates the variables (and initializes its actnorm from this batch)
  opt = tf.keras.optimizers.Adam(1e-3)

  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(dist.log_prob(images))
    grads = tape.gradient(loss, dist.trainable_variables)
    opt.apply_gradients(zip(grads, dist.trainable_variables))
    return loss

  step(x[:batch]).numpy()
  first_step = time.perf_counter() - t0
  step(x[batch : 2 * batch]).numpy()
  t0 = time.perf_counter()
  for i in range(2, train_steps + 2):
    loss = step(x[i * batch : (i + 1) * batch])
  loss.numpy()
  train = train_steps * batch / (time.perf_counter() - t0)
  rss = peak_rss_gb()
  sample = tf.function(lambda: dist.sample(batch))
  sampling = timed_steps(sample, sample_batches, batch)
  return dict(
    first_step_s=first_step, train_images_per_s=train, sample_images_per_s=sampling, peak_rss_gb=rss
  )


def bench_convs(cfg, train_steps: int, sample_batches: int) -> dict:
  import tensorflow as tf

  from tfp_glow.bijectors.nets import coupling_network

  (h, w, c), levels, steps, width, batch, coupling = cfg
  t0 = time.perf_counter()
  stacks = []
  for level in range(levels):
    h, w, c = h // 2, w // 2, c * 4
    out = (c - c // 2) * (1 if coupling == 'additive' else 2)
    for _ in range(steps):
      stacks.append((coupling_network(c // 2, out, width), tf.random.normal([batch, h, w, c // 2])))
    if level < levels - 1:
      c //= 2
  weights = [v for net, _ in stacks for v in net.trainable_variables]

  @tf.function
  def convs_only():
    with tf.GradientTape() as tape:
      inputs = [z for _, z in stacks]
      tape.watch(inputs)
      loss = tf.add_n([tf.reduce_sum(net(z)) for net, z in stacks])
    return tape.gradient(loss, weights + inputs)

  @tf.function
  def forward_only():  # what sampling and encoding must run at least: every network once, no gradient
    return tf.add_n([tf.reduce_sum(net(z)) for net, z in stacks])

  convs_only()
  first_step = time.perf_counter() - t0
  train = timed_steps(convs_only, train_steps, batch)
  forward = timed_steps(forward_only, max(train_steps, 3), batch)
  return dict(
    first_step_s=first_step, train_images_per_s=train, forward_images_per_s=forward, peak_rss_gb=peak_rss_gb()
  )


def run_one(args) -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  cfg = config_of(args)
  impl = args.child
  if impl.startswith('tfp_glow'):
    result = bench_tfp_glow(cfg, impl.partition(':')[2], args.train_steps, args.sample_batches)
  elif impl == 'tfp':
    result = bench_tfp(cfg, args.train_steps, args.sample_batches)
  else:
    result = bench_convs(cfg, args.train_steps, args.sample_batches)
  print('RESULT ' + json.dumps(dict(impl=impl, **{k: round(v, 3) for k, v in result.items()})), flush=True)


def config_of(args):
  shape, levels, steps, width, batch, coupling = CONFIGS[args.config]
  return (
    shape,
    levels,
    args.steps or steps,
    args.width or width,
    args.batch or batch,
    coupling,
  )


def summarize(results: dict[str, list[dict]]) -> None:
  metrics = ('first_step_s', 'train_images_per_s', 'sample_images_per_s', 'peak_rss_gb')
  print('\n| impl | ' + ' | '.join(metrics) + ' |')
  print('|---' * (len(metrics) + 1) + '|')
  medians = {}
  for impl, runs in results.items():
    cells = []
    for m in metrics:
      values = [r[m] for r in runs if m in r]
      if not values:
        cells.append('-')
        continue
      medians[impl, m] = statistics.median(values)
      cells.append(f'{medians[impl, m]:.3g} ({min(values):.3g}-{max(values):.3g})')
    print(f'| {impl} | ' + ' | '.join(cells) + ' |')
  base = 'tfp_glow'
  for impl in results:
    for m in ('train_images_per_s', 'sample_images_per_s'):
      if (base, m) in medians and (impl, m) in medians and impl != base:
        print(f'{base} / {impl} {m}: {medians[base, m] / medians[impl, m]:.2f}')
    if (base, 'peak_rss_gb') in medians and (impl, 'peak_rss_gb') in medians and impl != base:
      print(f'{impl} / {base} peak_rss_gb: {medians[impl, "peak_rss_gb"] / medians[base, "peak_rss_gb"]:.2f}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', choices=sorted(CONFIGS), default='default')
  parser.add_argument('--impl', nargs='+', choices=IMPLS, default=['tfp_glow', 'tfp', 'convs'])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--train-steps', type=int, default=10)
  parser.add_argument('--sample-batches', type=int, default=3)
  parser.add_argument('--steps', type=int, help='override K')
  parser.add_argument('--width', type=int, help='override the coupling width')
  parser.add_argument('--batch', type=int, help='override the batch size')
  parser.add_argument('--quick', action='store_true', help="config 'quick', 1 round, 4 training steps")
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.quick:
    args.config, args.rounds, args.train_steps, args.sample_batches = 'quick', 1, 4, 2
  if args.child:
    run_one(args)
    return
  shape, levels, steps, width, batch, coupling = config_of(args)
  print(
    f'# config {args.config}: {shape}, L={levels}, K={steps}, width {width}, batch {batch}, {coupling}; '
    f'{args.rounds} rounds x {args.impl}; load {os.getloadavg()[0]:.2f}',
    flush=True,
  )
  forward = ['--config', args.config, '--train-steps', str(args.train_steps)]
  forward += ['--sample-batches', str(args.sample_batches)]
  for flag in ('steps', 'width', 'batch'):
    if getattr(args, flag):
      forward += [f'--{flag}', str(getattr(args, flag))]
  results = {impl: [] for impl in args.impl}
  for r in range(args.rounds):  # rounds outermost: the implementations alternate
    for impl in args.impl:
      out = subprocess.run(
        [sys.executable, __file__, '--child', impl, *forward], capture_output=True, text=True, check=False
      )
      lines = [line for line in out.stdout.splitlines() if line.startswith('RESULT ')]
      if out.returncode or not lines:
        print(f'# {impl} round {r} failed:\n{out.stderr[-2000:]}', flush=True)
        continue
      result = json.loads(lines[-1][len('RESULT ') :])
      results[impl].append(result)
      print(json.dumps(dict(round=r, **result)), flush=True)
  summarize(results)


if __name__ == '__main__':
  main()
