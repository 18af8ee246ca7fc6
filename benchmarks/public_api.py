"""The public API at speed: what a user calls, next to the same work in a bare tf.function, the PyTorch Glows and
the convolutions alone, at equal settings; alternating rounds in one run, each implementation in its own process.

  python benchmarks/public_api.py                      # 3 rounds: tfp_glow, convs, PyTorch peers, CLI (~10 min)
  python benchmarks/public_api.py --quick              # one round, fewer steps (a smoke test, ~3 min)
  python benchmarks/public_api.py --impl tfp_glow tfp_glow:xla --rounds 2
  python benchmarks/device_table.py                    # the same table on whatever device TensorFlow sees

Settings: 32x32x3, L=3, K=8, width 128, batch 32, affine coupling, LU 1x1 convolution (--steps / --batch /
--width override). Implementations (--impl):
  tfp_glow       GlowModel through the calls a user makes: `fit` (first step: building, compiling, actnorm init
                 and the first batch; then images/s between batch ends), `sample(32, temperature=0.7)`,
                 `encode`, `log_prob`, `decode`, `interpolate(a, b, steps=32)`; each call's first use (its
                 trace) is timed apart (`*_first_call_s`). Next to each, in the same process, the same work as a
                 bare `tf.function` over `model.distribution` (`bare_*`) and, for sample and log_prob, run
                 eagerly (`eager_*`, what `GlowModel` did before its calls were compiled).
  tfp_glow:xla   the same after `compile(jit_compile=True)`: training and the public calls under XLA.
  convs          the coupling networks' convolutions alone (TF): forward + backward (the training floor) and forward
                 only (`forward_images_per_s`: the floor of sampling and encoding, which run each network once).
  torch:rosinality, torch:y0ast   rosinality/glow-pytorch and y0ast/Glow-PyTorch (benchmarks/torch_peers.py),
                 run by a Python that has torch (--torch-python, env TORCH_PYTHON) from their checkouts
                 (--rosinality / env GLOW_PYTORCH_ROSINALITY, --y0ast / env GLOW_PYTORCH_Y0AST); skipped with a
                 note when absent. torch is never a tfp_glow dependency.
  cli            `tfp-glow sample --n 32` and `--n 256` and `tfp-glow interpolate` of two image files, end to end
                 (a fresh process each: Python, TensorFlow, loading the model, the work, the PNG).
Results: one JSON line per process, a table of medians, and benchmarks/results/public_api.json (--out), which
benchmarks/report.py renders into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMPLS = ('tfp_glow', 'tfp_glow:xla', 'convs', 'torch:rosinality', 'torch:y0ast', 'cli')
DEFAULT_IMPLS = ('tfp_glow', 'convs', 'torch:rosinality', 'torch:y0ast', 'cli')
CALLS = ('sample', 'encode', 'log_prob', 'decode', 'interpolate')
TABLE = (  # (metric, heading) of the summary table
  ('first_step_s', 'first step s'),
  ('first_2000_images_s', 'first 2,000 images s'),
  ('train_images_per_s', 'training images/s'),
  ('sample_images_per_s', 'sample images/s (T=0.7)'),
  ('encode_images_per_s', 'encode images/s'),
  ('log_prob_images_per_s', 'log_prob images/s'),
  ('decode_images_per_s', 'decode images/s'),
  ('interpolate_images_per_s', 'interpolate images/s'),
  ('peak_rss_gb', 'peak RSS GB'),
)


def cpu_busy_fraction(seconds: float = 3.0) -> float:
  """The fraction of all CPUs' time spent busy over `seconds` (from /proc/stat; 0.0 where it is absent):
  what other processes use while this one sleeps."""

  def times() -> tuple[int, int]:
    with open('/proc/stat') as f:
      fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle

  try:
    total0, idle0 = times()
    time.sleep(seconds)
    total1, idle1 = times()
  except OSError:
    return 0.0
  return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def device_name() -> str:
  import tensorflow as tf

  gpus = tf.config.list_physical_devices('GPU')
  if not gpus:
    return 'CPU'
  details = tf.config.experimental.get_device_details(gpus[0])
  return details.get('device_name', 'GPU')


# ---- children -------------------------------------------------------------------------------------


def bench_tfp_glow(args, xla: bool) -> dict:
  import keras
  import numpy as np
  import tensorflow as tf

  from tfp_glow.testing import perturb
  from tfp_glow.training.model import GlowModel
  from tfp_glow.training.optim import default_optimizer

  batch, shape = args.batch, (32, 32, 3)
  x = tf.random.stateless_uniform([batch * (args.train_steps + 2), *shape], (0, 1)) - 0.5
  t0 = time.perf_counter()
  model = GlowModel(shape, 3, args.steps, args.width, seed=0)
  model.compile(optimizer=default_optimizer(1e-3, warmup_steps=10), jit_compile=xla)
  model.fit(tf.data.Dataset.from_tensor_slices(x[:batch]).batch(batch), epochs=1, verbose=0)
  result = dict(first_step_s=time.perf_counter() - t0)
  ends = []
  clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
  model.fit(
    tf.data.Dataset.from_tensor_slices(x[batch:]).batch(batch), epochs=1, verbose=0, callbacks=[clock]
  )
  result['train_images_per_s'] = (len(ends) - 1) * batch / (ends[-1] - ends[0])
  result['peak_rss_gb'] = peak_rss_gb()
  perturb(model.glow, scale=0.02)  # a trained-like model: no identity short cuts anywhere
  images = x[:batch]
  latents = [tf.identity(z) for z in model.distribution.encode(images)]
  dist = model.distribution
  public = dict(
    sample=lambda: model.sample(batch, temperature=0.7),
    encode=lambda: model.encode(images),
    log_prob=lambda: model.log_prob(images),
    decode=lambda: model.decode(latents),
    interpolate=lambda: model.interpolate(images[0], images[1], steps=batch),
  )

  def bare_interpolate(pair):
    z = dist.encode(pair)
    t = tf.reshape(tf.linspace(0.0, 1.0, batch), [-1, 1, 1, 1])
    return dist.decode([a[:1] * (1 - t) + a[1:] * t for a in z])

  jit = True if xla else None
  bare = dict(
    sample=tf.function(lambda: dist.sample(batch, temperature=0.7), jit_compile=jit),
    encode=tf.function(lambda: dist.encode(images), jit_compile=jit),
    log_prob=tf.function(lambda: dist.log_prob(images), jit_compile=jit),
    decode=tf.function(lambda: dist.decode(latents), jit_compile=jit),
    interpolate=(lambda f: lambda: f(images[:2]))(tf.function(bare_interpolate, jit_compile=jit)),
  )
  eager = dict(sample=lambda: dist.sample(batch, temperature=0.7), log_prob=lambda: dist.log_prob(images))
  for name in CALLS:  # first calls (the traces), then the timed calls alternate public / bare
    for prefix, fn in (('', public[name]), ('bare_', bare[name])):
      t1 = time.perf_counter()
      np.asarray(tf.nest.flatten(fn())[0])
      result[f'{prefix}{name}_first_call_s'] = time.perf_counter() - t1
  for name in CALLS:
    times = {'': [], 'bare_': []}
    for _ in range(args.calls):
      for prefix, fn in (('', public[name]), ('bare_', bare[name])):
        t1 = time.perf_counter()
        np.asarray(tf.nest.flatten(fn())[0])
        times[prefix].append(time.perf_counter() - t1)
    for prefix, ts in times.items():
      result[f'{prefix}{name}_images_per_s'] = batch / statistics.median(ts)
  if not xla:
    for name, fn in eager.items():
      fn()  # TFP's first eager call builds its caches
      t1 = time.perf_counter()
      np.asarray(fn())
      result[f'eager_{name}_images_per_s'] = batch / (time.perf_counter() - t1)
  result['device'] = device_name()
  return result


def bench_convs(args) -> dict:
  sys.path.insert(0, str(ROOT / 'benchmarks'))
  from compare import bench_convs as convs

  return convs(((32, 32, 3), 3, args.steps, args.width, args.batch, 'affine'), args.train_steps, 0)


def save_cli_model(args, folder: str) -> None:
  """A model at the benchmark's settings, saved as `folder`/model.keras for the CLI to load."""
  import tensorflow as tf

  from tfp_glow.testing import perturb
  from tfp_glow.training.model import GlowModel

  model = GlowModel((32, 32, 3), 3, args.steps, args.width, seed=0)
  model.compile()
  model.initialize(tf.random.stateless_uniform([args.batch, 32, 32, 3], (0, 1)) - 0.5)
  perturb(model.glow, scale=0.02)
  model.save(os.path.join(folder, 'model.keras'))
  for i in range(2):
    pixels = tf.cast(tf.random.stateless_uniform([32, 32, 3], (i, 3), maxval=256, dtype=tf.int32), tf.uint8)
    tf.io.write_file(os.path.join(folder, f'image{i}.png'), tf.io.encode_png(pixels))


def bench_cli(args, folder: str) -> dict:
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL='2')
  cli = [sys.executable, '-m', 'tfp_glow.cli']
  commands = dict(
    cli_sample_32_s=[
      *cli,
      'sample',
      folder,
      '--n',
      '32',
      '--temperature',
      '0.7',
      '--out',
      f'{folder}/s32.png',
    ],
    cli_sample_256_s=[
      *cli,
      'sample',
      folder,
      '--n',
      '256',
      '--temperature',
      '0.7',
      '--out',
      f'{folder}/s.png',
    ],
    cli_interpolate_s=[
      *cli,
      'interpolate',
      folder,
      f'{folder}/image0.png',
      f'{folder}/image1.png',
      '--steps',
      '8',
      '--out',
      f'{folder}/row.png',
    ],  # fmt: skip
    cli_python_tensorflow_import_s=[sys.executable, '-c', 'import tfp_glow.cli, tensorflow'],
    # Answers that need no TensorFlow (issue 25 item 5: under a second): the console script, as a user types it.
    cli_help_s=[_console_script(), '--help'],
    cli_train_help_s=[_console_script(), 'train', '--help'],
    cli_argument_error_s=[_console_script(), 'train', '--levels', 'zero'],
  )
  result = {}
  for name, command in commands.items():
    t0 = time.perf_counter()
    # An argument error exits 2 by design; every other command must succeed.
    subprocess.run(command, env=env, check=name != 'cli_argument_error_s', capture_output=True)
    result[name] = time.perf_counter() - t0
  return result


def _console_script() -> str:
  """The `tfp-glow` entry point installed beside this Python (what a user runs)."""
  script = pathlib.Path(sys.executable).with_name('tfp-glow')
  return str(script) if script.exists() else 'tfp-glow'


def run_child(args) -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  impl = args.child
  if impl.startswith('tfp_glow'):
    result = bench_tfp_glow(args, xla=impl.endswith(':xla'))
  elif impl == 'convs':
    result = bench_convs(args)
  elif impl == 'save_cli_model':
    save_cli_model(args, args.folder)
    result = {}
  else:
    result = bench_cli(args, args.folder)
  result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
  print('RESULT ' + json.dumps(dict(impl=impl, **result)), flush=True)


# ---- the parent -----------------------------------------------------------------------------------


def torch_command(args, impl: str) -> tuple[list[str] | None, str]:
  """The command line of a PyTorch peer, or None and why it is skipped."""
  peer = impl.partition(':')[2]
  code = getattr(args, peer) or os.environ.get(f'GLOW_PYTORCH_{peer.upper()}')
  python = args.torch_python or os.environ.get('TORCH_PYTHON')
  if not python:
    return None, 'no Python with torch (--torch-python or env TORCH_PYTHON)'
  if not code or not os.path.exists(os.path.join(code, 'model.py')):
    return None, f'no checkout of the {peer} Glow (--{peer} or env GLOW_PYTORCH_{peer.upper()})'
  command = [python, str(ROOT / 'benchmarks' / 'torch_peers.py'), '--impl', peer, '--code', code]
  command += ['--steps', str(args.steps), '--width', str(args.width), '--batch', str(args.batch)]
  return command + ['--train-steps', str(args.train_steps), '--calls', str(args.calls)], ''


def child_command(args, impl: str, folder: str) -> list[str]:
  command = [sys.executable, __file__, '--child', impl, '--folder', folder]
  for flag in ('steps', 'width', 'batch', 'train_steps', 'calls'):
    command += [f'--{flag.replace("_", "-")}', str(getattr(args, flag))]
  return command


def run(command: list[str]) -> dict | str:
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
  lines = [line for line in out.stdout.splitlines() if line.startswith('RESULT ')]
  if out.returncode or not lines:
    return f'failed (exit {out.returncode}): {out.stderr[-1500:]}'
  return json.loads(lines[-1][len('RESULT ') :])


def medians(runs: list[dict]) -> dict:
  keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, (int, float))})
  return {k: round(statistics.median([r[k] for r in runs if k in r]), 3) for k in keys}


def summarize(results: dict[str, list[dict]], batch: int) -> dict:
  table = {impl: medians(runs) for impl, runs in results.items() if runs}
  for m in table.values():  # what a user waits for until 2,000 images have trained: the first step counts
    if 'first_step_s' in m and 'train_images_per_s' in m:
      m['first_2000_images_s'] = round(m['first_step_s'] + (2000 - batch) / m['train_images_per_s'], 2)
  print('\n| impl | ' + ' | '.join(h for _, h in TABLE) + ' |')
  print('|---' * (len(TABLE) + 1) + '|')
  for impl, m in table.items():
    print(f'| {impl} | ' + ' | '.join(f'{m[k]:.3g}' if k in m else '-' for k, _ in TABLE) + ' |')
  ratios = {}
  ours = table.get('tfp_glow', {})
  for peer in ('torch:rosinality', 'torch:y0ast'):
    theirs = table.get(peer, {})
    for k in ('sample_images_per_s', 'encode_images_per_s', 'train_images_per_s'):
      if k in ours and k in theirs:
        ratios[f'tfp_glow / {peer} {k}'] = round(ours[k] / theirs[k], 3)
    for k in ('first_step_s', 'first_2000_images_s'):
      if k in ours and k in theirs:
        ratios[f'tfp_glow / {peer} {k}'] = round(ours[k] / theirs[k], 3)
  if 'train_images_per_s' in ours and 'train_images_per_s' in table.get('convs', {}):
    ratios['tfp_glow / convs train_images_per_s'] = round(
      ours['train_images_per_s'] / table['convs']['train_images_per_s'], 3
    )
  for name in (
    'sample',
    'encode',
  ):  # the networks' forward passes alone: the floor of a call without gradient
    if f'{name}_images_per_s' in ours and 'forward_images_per_s' in table.get('convs', {}):
      ratios[f'tfp_glow {name} / convs forward'] = round(
        ours[f'{name}_images_per_s'] / table['convs']['forward_images_per_s'], 3
      )
  for name in CALLS:
    if f'{name}_images_per_s' in ours:
      ratios[f'GlowModel.{name} / bare tf.function'] = round(
        ours[f'{name}_images_per_s'] / ours[f'bare_{name}_images_per_s'], 3
      )
  for k, v in ratios.items():
    print(f'{k}: {v:.2f}')
  return dict(medians=table, ratios=ratios)


def metric_rows(summary, command, commit, date, settings, device, loaded: bool) -> list[dict]:
  """The figures BENCHMARKS.md's main table quotes (report.py), public API only; on a loaded machine
  without the ratios across processes (the peers' figures are distorted most)."""
  ours = summary['medians'].get('tfp_glow', {})
  rows = []

  def add(metric, value, unit=''):
    rows.append(dict(metric=f'{metric} ({settings}, {device})', value=f'{value:.3g}{unit}', command=command,
                     commit=commit, date=date))  # fmt: skip

  for name in CALLS:
    if f'{name}_images_per_s' in ours:
      add(f'GlowModel.{name} images/s', ours[f'{name}_images_per_s'])
  if 'first_step_s' in ours:
    add('GlowModel.fit first step', ours['first_step_s'], ' s')
    add('GlowModel.fit training images/s', ours['train_images_per_s'])
  for k, v in summary['ratios'].items():
    if loaded and 'bare tf.function' not in k:
      continue
    rows.append(
      dict(metric=f'{k} ({settings})', value=f'{v:.2f}x', command=command, commit=commit, date=date)
    )
  return rows


def main(argv=None, default_out='public_api.json') -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--impl', nargs='+', choices=IMPLS, default=list(DEFAULT_IMPLS))
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=8, help='K, the steps per level')
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--train-steps', type=int, default=10)
  parser.add_argument('--calls', type=int, default=3, help='timed calls of each public call (medians)')
  parser.add_argument('--torch-python', help='a Python that has torch (default: env TORCH_PYTHON)')
  parser.add_argument('--rosinality', help='a checkout of rosinality/glow-pytorch')
  parser.add_argument('--y0ast', help='a checkout of y0ast/Glow-PyTorch')
  parser.add_argument('--quick', action='store_true', help='one round, 4 training steps, 2 calls')
  parser.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / default_out))
  parser.add_argument('--child', help=argparse.SUPPRESS)
  parser.add_argument('--folder', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick:
    args.rounds, args.train_steps, args.calls = 1, 4, 2
  if args.child:
    run_child(args)
    return
  load_before = os.getloadavg()
  busy_before = cpu_busy_fraction()
  settings = f'32x32x3, L=3, K={args.steps}, width {args.width}, batch {args.batch}, affine, LU'
  print(f'# {settings}; {args.rounds} rounds x {args.impl}; load {load_before[0]:.2f}', flush=True)
  results: dict[str, list[dict]] = {impl: [] for impl in args.impl}
  notes = []
  with tempfile.TemporaryDirectory() as folder:
    if 'cli' in args.impl:
      saved = run(child_command(args, 'save_cli_model', folder))
      if isinstance(saved, str):
        notes.append(f'cli: could not save its model: {saved}')
    for r in range(args.rounds):  # rounds outermost: the implementations alternate
      for impl in args.impl:
        if impl.startswith('torch:'):
          command, why = torch_command(args, impl)
          if command is None:
            if r == 0:
              notes.append(f'{impl} skipped: {why}')
              print(f'# {impl} skipped: {why}', flush=True)
            continue
        else:
          command = child_command(args, impl, folder)
        result = run(command)
        if isinstance(result, str):
          print(f'# {impl} round {r}: {result}', flush=True)
          notes.append(f'{impl} round {r} {result[:300]}')
          continue
        results[impl].append(result)
        print(json.dumps(dict(round=r, **result)), flush=True)
  summary = summarize(results, args.batch)
  # Other processes, judged before the run: the run's own processes raise the load average after it. The
  # 1-minute load average also remembers what ran in the minute before (e.g. an earlier attempt of this
  # benchmark), so the CPUs' busy fraction sampled just before the run decides.
  busiest = load_before[0]
  loaded = busy_before > 0.25
  if loaded:
    notes.append(
      f'the machine was loaded (CPUs {busy_before:.0%} busy just before the run, load average {busiest:.1f}, on '
      f'{os.cpu_count()} cores): every figure is '
      "distorted, the PyTorch peers' most (their OpenMP threads spin-wait, so under contention they run up to "
      '20x slower, while TensorFlow degrades about 2x); rerun on a quiet machine before reading ratios'
    )
  device = next((run['device'] for runs in results.values() for run in runs if 'device' in run), 'CPU')
  commit = subprocess.run(
    ['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, check=False
  ).stdout.strip()
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  command = (
    'python benchmarks/' + os.path.basename(sys.argv[0]) + ''.join(f' {a}' for a in (argv or sys.argv[1:]))
  )
  out = dict(
    command=command,
    date=date,
    commit=commit,
    device=device,
    settings=settings,
    load_average_before=list(load_before),
    load_average_after=list(os.getloadavg()),
    cpu_count=os.cpu_count(),
    notes=notes,
    cpu_busy_before=round(busy_before, 3),
    **summary,
    runs=results,
    metrics=metric_rows(summary, command, commit, date, settings, device, loaded),
  )
  pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + '\n')
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
