"""Couplings compared on natural 32x32x3 patches: affine vs spline transforms, conv vs transformer conditioners,
and the same-ecosystem peer `tfp.bijectors.Glow` with a rational-quadratic spline coupling.

Every variant is a Glow with L = 3 levels of K = 4 steps on 32x32x3 images, 8-bit (256 bins), trained with
Adamax (lr 1e-3, linear warmup) on the natural-patch set of `benchmarks/natural_patches.py`:

  affine+conv          GlowModel(coupling='affine', conditioner='conv', width=96)
  spline+conv          GlowModel(coupling='spline', conditioner='conv', width=30)   (K=4 bins, B=3: the defaults)
  affine+transformer   GlowModel(coupling='affine', conditioner='transformer', depth 1, D=64, 4 heads, p=2)
  spline+transformer   GlowModel(coupling='spline', conditioner='transformer', depth 1, D=44, 4 heads, p=2)
  tfb.Glow+spline      tfp.bijectors.Glow, coupling_bijector_fn = conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero
                       conv3x3 returning a tfb.RationalQuadraticSpline (the same parameterization, bins and bound
                       as tfp_glow's spline), width 30; a plain tf.GradientTape loop (Keras 3 cannot see its
                       variables)
Widths are chosen so that the parameter counts agree within 5% (printed and saved).

Paired seeds: seed s fixes the data order (a permutation of the training patches), the dequantization noise of
every batch (`tfp_glow.data.dequantize` with the stateless seed [s, step]) and the initialization seed, the
same for every variant. Test bits/dim, exactly `tfp_glow`'s definition (`tfp_glow.distribution.bits_per_dim`):
  mean over test images of (-log p(x + u) + D log 256) / (D ln 2),  u ~ U[0, 1)/256 (one fixed draw), D = 3072.

Two comparisons from one training run per (variant, seed):
  (a) equal parameters and equal steps: test bits/dim after N steps;
  (b) equal training time: a timing phase first measures each variant's training step time t_v in alternating
      rounds in one process; the budget is T = N * min_v t_v, so variant v is scored after n_v = N t_min / t_v
      steps (n_v <= N: an evaluation during the same run; the learning rate is constant after the warmup, so
      that is exactly a run of n_v steps).
The timing phase also gives training and sampling images/s and the spline / affine step-time ratio (at the
study's equal-parameter widths and at equal width 64). Peak memory: ru_maxrss of each training run's own process.

  python benchmarks/natural_patches.py /tmp/natural32        # the data set, once
  python benchmarks/couplings.py --data /tmp/natural32       # the study; rerun to resume
  python benchmarks/couplings.py --data /tmp/natural32 --quick   # a smoke run (minutes), written to /tmp

Results go to benchmarks/results/couplings.json ("metrics" for benchmarks/report.py, "runs", "timing",
"summary"), rewritten after every run, so a killed study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

from couplings_table import save, summarize  # benchmarks/, next to this file

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHAPE, LEVELS, STEPS, N_BINS, BINS, BOUND = (32, 32, 3), 3, 4, 256, 4, 3.0
D = SHAPE[0] * SHAPE[1] * SHAPE[2]
VARIANTS = {  # name -> GlowModel arguments, or the tfb.Glow width
  'affine+conv': dict(coupling='affine', conditioner='conv', width=96),
  'spline+conv': dict(coupling='spline', conditioner='conv', width=30),
  'affine+transformer': dict(
    coupling='affine',
    conditioner='transformer',
    width=96,
    conditioner_settings=dict(depth=1, width=64, heads=4, patch_size=2, mlp_ratio=2),
  ),  # fmt: skip
  'spline+transformer': dict(
    coupling='spline',
    conditioner='transformer',
    width=30,
    conditioner_settings=dict(depth=1, width=44, heads=4, patch_size=2, mlp_ratio=2),
  ),  # fmt: skip
  'tfb.Glow+spline': dict(tfb_width=30),
}
TIMING_ONLY = {  # the spline / affine step ratio at equal conv width
  'affine+conv@64': dict(coupling='affine', conditioner='conv', width=64),
  'spline+conv@64': dict(coupling='spline', conditioner='conv', width=64),
}


# (a - b, condition): the paired differences the table reports
def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def load(data: str, quick: bool):
  import numpy as np

  train = np.load(os.path.join(data, 'train.npz'))['images']
  test = np.load(os.path.join(data, 'test.npz'))['images']
  if train.shape[1:] != SHAPE or test.shape[1:] != SHAPE or train.dtype != np.uint8:
    raise SystemExit(f'{data}: expected uint8 [N, 32, 32, 3] arrays (benchmarks/natural_patches.py)')
  return train, test[:64] if quick else test


def stream(train, seed: int, steps: int, batch: int):
  """The seed's batches, float32 [batch, 32, 32, 3] in [-0.5, 0.5): the same for every variant."""
  import numpy as np
  import tensorflow as tf

  from tfp_glow.data import dequantize

  rng = np.random.default_rng(seed)
  epochs = math.ceil(steps * batch / len(train)) + 1
  order = np.concatenate([rng.permutation(len(train)) for _ in range(epochs)])[: steps * batch]
  index = tf.constant(order.reshape(steps, batch))
  images = tf.constant(train)
  return tf.data.Dataset.range(steps).map(
    lambda i: dequantize(tf.gather(images, index[i]), N_BINS, seed=tf.stack([tf.cast(seed, tf.int64), i]))
  )


def test_images(test):
  from tfp_glow.data import dequantize

  return dequantize(test, N_BINS, seed=[1234, 5678])  # one fixed draw of u for every variant and seed


class Variant:
  """One model behind one interface: init(images), train(dataset) -> step end times, test_bpd(x), sample(n),
  parameters."""

  def __init__(self, name: str, spec: dict, seed: int, warmup: int):
    import tensorflow as tf

    from tfp_glow.training.optim import default_optimizer

    self.name, self.spec = name, spec
    self.optimizer = default_optimizer(1e-3, warmup_steps=warmup)
    tf.random.set_seed(seed)
    if 'tfb_width' in spec:
      self.model = None
      self.dist = tfb_spline_glow(spec['tfb_width'], seed)
      self._step = tf.function(self._tfb_step)
      self._log_prob = tf.function(self.dist.log_prob)
      self._sample = tf.function(lambda n: self.dist.sample(n))
    else:
      import tfp_glow

      self.model = tfp_glow.GlowModel(SHAPE, LEVELS, STEPS, n_bins=N_BINS, seed=seed, **spec)
      self.model.compile(optimizer=self.optimizer)

  @property
  def parameters(self) -> int:
    variables = self.model.trainable_variables if self.model else self.dist.trainable_variables
    return int(sum(math.prod(v.shape) for v in variables))

  def init(self, images) -> None:
    if self.model:
      self.model.initialize(images)
    else:
      self.dist.log_prob(images)  # creates the variables and initializes actnorm (tfb.Glow's first call)

  def _tfb_step(self, images):
    import tensorflow as tf

    variables = self.dist.trainable_variables
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(self.dist.log_prob(images)) / (
        D * math.log(2.0)
      )  # bits/dim, as GlowModel's loss
    self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  def train(self, dataset) -> list[float]:
    """Trains on every batch of `dataset`; returns the wall time at the end of each step."""
    import keras

    ends = []
    if self.model:
      clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter())
      )
      self.model.fit(dataset, epochs=1, verbose=0, callbacks=[clock])
    else:
      for images in dataset:
        self._step(images).numpy()
        ends.append(time.perf_counter())
    return ends

  def test_bpd(self, x, batch: int = 128) -> float:
    import tensorflow as tf

    from tfp_glow.distribution import bits_per_dim

    parts = []
    for i in range(0, len(x), batch):
      chunk = x[i : i + batch]
      log_prob = self.model.log_prob(chunk) if self.model else self._log_prob(chunk)
      parts.append(bits_per_dim(tf.cast(log_prob, tf.float64), D, N_BINS))
    return float(tf.reduce_mean(tf.concat(parts, 0)))

  def sample(self, n: int):
    return self.model.sample(n, temperature=1.0) if self.model else self._sample(n).numpy()


def tfb_spline_glow(width: int, seed: int):
  """tfp.bijectors.Glow whose couplings are rational-quadratic splines (tfb.RationalQuadraticSpline), and the
  distribution N(0, I) pushed through it."""
  import tensorflow as tf
  import tensorflow_probability as tfp
  import tf_keras

  tfb, tfd, tfkl = tfp.bijectors, tfp.distributions, tf_keras.layers
  params = 3 * BINS - 1
  offset = math.log(math.expm1(1 - 1e-3))

  class SplineNetwork(tf.Module):
    """conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero conv3x3 (GlowDefaultNetwork's layers), returning a spline
    with tfp_glow's parameterization, so that a fresh flow is the identity."""

    def __init__(self, input_shape):
      super().__init__()
      self.channels = input_shape[-1]
      self.net = tf_keras.Sequential([
        tfkl.Input(shape=input_shape),
        tfkl.Conv2D(width, 3, padding='same', activation='relu', kernel_initializer='he_normal'),
        tfkl.Conv2D(width, 1, padding='same', activation='relu', kernel_initializer='he_normal'),
        tfkl.Conv2D(self.channels * params, 3, padding='same', kernel_initializer='zeros'),
      ])  # fmt: skip

    def __call__(self, x):
      h = self.net(x)
      h = tf.reshape(h, tf.concat([tf.shape(h)[:-1], [self.channels, params]], 0))
      u, v, s = tf.split(h, [BINS, BINS, BINS - 1], axis=-1)
      sizes = lambda logits: 2 * BOUND * (1e-3 + (1 - 1e-3 * BINS) * tf.nn.softmax(logits, axis=-1))  # noqa: E731
      slopes = 1e-3 + tf.nn.softplus(s + offset)
      return tfb.RationalQuadraticSpline(sizes(u), sizes(v), slopes, range_min=-BOUND)

  glow = tfb.Glow(
    output_shape=SHAPE,
    num_glow_blocks=LEVELS,
    num_steps_per_block=STEPS,
    coupling_bijector_fn=SplineNetwork,
    exit_bijector_fn=tfb.GlowDefaultExitNetwork,
    seed=seed,
  )
  base = tfd.Sample(tfd.Normal(0.0, 1.0), glow.inverse_event_shape(SHAPE))
  return tfd.TransformedDistribution(base, glow)


def timing_worker(args) -> dict:
  """All variants in one process, alternating rounds: s/step (between step ends), sampling images/s."""
  import tensorflow as tf

  train, _ = load(args.data, args.quick)
  variants = {**VARIANTS, **TIMING_ONLY}
  steps = 2 if args.quick else 6
  batches = list(stream(train, 99, 2 + (args.rounds + 1) * (steps + 1), args.batch))
  models = {}
  for name, spec in variants.items():
    models[name] = v = Variant(name, spec, 0, warmup=10)
    v.init(tf.concat(batches[:2], 0))
    v.train(tf.data.Dataset.from_tensor_slices(batches[:2]))  # traces the step
    v.sample(args.sample_batch)  # traces sampling
    print(f'timing: built {name} ({v.parameters} parameters)', flush=True)
  per_round = {name: {'s_per_step': [], 'sample_images_per_s': []} for name in variants}
  names = list(variants)
  for r in range(args.rounds):
    chunk = tf.data.Dataset.from_tensor_slices(batches[2 + r * (steps + 1) : 2 + (r + 1) * (steps + 1)])
    for name in names[r % len(names) :] + names[: r % len(names)]:  # a rotated order each round
      ends = models[name].train(chunk)
      per_round[name]['s_per_step'].append((ends[-1] - ends[0]) / (len(ends) - 1))
      t0 = time.perf_counter()
      models[name].sample(args.sample_batch)
      per_round[name]['sample_images_per_s'].append(args.sample_batch / (time.perf_counter() - t0))
    print(f'timing: round {r + 1}/{args.rounds} done', flush=True)
  return dict(
    per_round=per_round,
    parameters={name: m.parameters for name, m in models.items()},
    batch=args.batch,
    steps_per_round=steps,
    loadavg=os.getloadavg(),
  )


def train_worker(args) -> dict:
  """One (variant, seed): trains N steps, scoring the test set after n_time steps and after N."""
  import tensorflow as tf

  train, test = load(args.data, args.quick)
  x_test = test_images(test)
  data = stream(train, args.seed, args.steps, args.batch)
  v = Variant(args.variant, VARIANTS[args.variant], args.seed, warmup=args.warmup)
  init = tf.concat(list(data.take(256 // args.batch)), 0)  # the first 256 training images, as `fit` would
  v.init(init)
  result = dict(variant=args.variant, seed=args.seed, parameters=v.parameters, steps=args.steps)
  t0 = time.perf_counter()
  ends = []
  n_time = min(args.n_time, args.steps)
  ends += v.train(data.take(n_time))
  result['bpd_time'] = v.test_bpd(x_test)
  result['n_time'] = n_time
  if n_time < args.steps:
    ends += v.train(data.skip(n_time))
  result['bpd_params'] = result['bpd_time'] if n_time == args.steps else v.test_bpd(x_test)
  result['train_seconds'] = time.perf_counter() - t0
  result['median_step_s'] = statistics.median(b - a for a, b in zip(ends, ends[1:]))  # in its own process
  result['peak_rss_gb'] = peak_rss_gb()
  result['loadavg'] = os.getloadavg()
  return result


def run_worker(args, *extra: str) -> dict:
  """Runs this script as a worker in a fresh process (its own peak RSS); returns its result line."""
  command = [sys.executable, __file__, '--data', args.data, '--batch', str(args.batch), *extra]
  command += ['--quick'] if args.quick else []
  out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
  lines = [line for line in out.stdout.splitlines() if line.startswith('RESULT ')]
  if out.returncode or not lines:
    raise SystemExit(f'worker failed (exit {out.returncode}): {" ".join(command)}\n{out.stdout[-2000:]}')
  return json.loads(lines[-1][len('RESULT ') :])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default='/tmp/natural32', help='the natural-patch set (natural_patches.py)')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--steps', type=int, default=120, help='training steps N (equal-parameter comparison)')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--warmup', type=int, default=20, help='learning-rate warmup steps')
  parser.add_argument('--rounds', type=int, default=3, help='alternating timing rounds')
  parser.add_argument('--sample-batch', type=int, default=64)
  parser.add_argument('--quick', action='store_true', help='a smoke run: 4 steps, 1 seed, 64 test images')
  parser.add_argument(
    '--out', default=None, help='results JSON (default results/couplings.json; /tmp if --quick)'
  )
  parser.add_argument('--worker', choices=['timing', 'train'], help=argparse.SUPPRESS)
  parser.add_argument('--variant', choices=list(VARIANTS), help=argparse.SUPPRESS)
  parser.add_argument('--seed', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--n-time', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.quick:
    args.seeds, args.steps, args.warmup, args.rounds = args.seeds[:1], 4, 2, 2
  if args.worker:
    result = timing_worker(args) if args.worker == 'timing' else train_worker(args)
    print('RESULT ' + json.dumps(result), flush=True)
    return
  default = '/tmp/couplings_quick.json' if args.quick else ROOT / 'benchmarks' / 'results' / 'couplings.json'
  path = pathlib.Path(args.out or default)
  settings = dict(steps=args.steps, batch=args.batch, warmup=args.warmup, seeds=args.seeds, quick=args.quick)
  state = json.loads(path.read_text()) if path.exists() else {}
  if any(state.get(k) != v for k, v in settings.items()):
    state = dict(settings, runs=[])  # other settings: a fresh study
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT)
  state.update(
    commit=commit.stdout.strip(),
    date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
    command='python benchmarks/couplings.py' + (' --quick' if args.quick else ''),
    machine=f'{os.cpu_count()} CPU cores, shared with other work (timings noisy: ratios from alternating rounds)',
  )
  if 'timing' not in state:
    print('timing phase: every variant in one process, alternating rounds', flush=True)
    state['timing'] = run_worker(args, '--worker', 'timing', '--rounds', str(args.rounds),
                                 '--sample-batch', str(args.sample_batch))  # fmt: skip
    save(state, path)
  t = {n: statistics.median(r['s_per_step']) for n, r in state['timing']['per_round'].items()}
  fastest = min(t[n] for n in VARIANTS)
  print(
    's/step: ' + ', '.join(f'{n} {t[n]:.3f}' for n in t) + f'; parameters {state["timing"]["parameters"]}'
  )
  for seed in args.seeds:  # seed-major: a partial study still has whole pairs
    for name in VARIANTS:
      if any(r['variant'] == name and r['seed'] == seed for r in state['runs']):
        continue
      n_time = max(1, round(args.steps * fastest / t[name]))
      t0 = time.perf_counter()
      result = run_worker(args, '--worker', 'train', '--variant', name, '--seed', str(seed),
                          '--steps', str(args.steps), '--warmup', str(args.warmup), '--n-time', str(n_time))  # fmt: skip
      state['runs'].append(result)
      save(state, path)
      print(f'seed {seed} {name}: {json.dumps(result)} ({time.perf_counter() - t0:.0f} s)', flush=True)
  save(state, path)
  print(json.dumps(summarize(state), indent=1))


if __name__ == '__main__':
  main()
