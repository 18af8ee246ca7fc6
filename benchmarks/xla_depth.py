"""XLA compile time and step time against depth K: `GlowModel.compile(jit_compile=True)` then `fit`.

  python benchmarks/xla_depth.py --steps-list 8 16 32 48 --unrolled-max 8   # the issue's sizes: an hour
  python benchmarks/xla_depth.py --steps-list 2 4 8 16 --width 16 --image-size 16 --batch 8 --unrolled-max 8
  python benchmarks/xla_depth.py --alternate --steps-list 8 --rounds 3 \
    --out benchmarks/results/xla_depth_alternate.json      # steady step: loop vs unrolled, one process

Each (K, variant) runs in a fresh process (a compile cache never carries over), the variants alternating:

  xla        compile(jit_compile=True): a level's K steps are one XLA `while` (tfp_glow.flow.stack), its
             convolutions and their gradients canonical (tfp_glow.bijectors.xla_conv)
  unrolled   the XLA path before the loop: K copies of the body, TensorFlow's own convolution gradients (the
             'stored' gradient then falls back to TensorFlow's own, as it did); K <= --unrolled-max
  graph      compile(jit_compile=False): plain TensorFlow graphs, for reference

first_step_s is the first `fit` step (tracing + compiling + running it); step_s the median of the next
--timed-steps steps. Settings default to the issue's: 32x32x3, L=3, width 128, batch 32, gradient 'stored'.
Results: JSON lines on stdout and benchmarks/results/xla_depth.json (--out), with a "metrics" list for
benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
VARIANTS = ('xla', 'unrolled', 'graph')


def as_before_the_loop(step_stack) -> None:
  """The XLA path before the loop: every stack unrolled, TensorFlow's own convolution gradients."""
  from tfp_glow.bijectors import xla_conv

  step_stack.unrolled = lambda self: True
  xla_conv._xla = lambda: False


def child(args) -> dict:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import keras
  import tensorflow as tf

  from tfp_glow.flow.stack import StepStack
  from tfp_glow.training.model import GlowModel

  if args.variant == 'unrolled':
    as_before_the_loop(StepStack)
  size, batch = args.image_size, args.batch
  x = tf.random.stateless_uniform([(args.timed_steps + 1) * batch, size, size, 3], (0, 1)) - 0.5
  model = GlowModel((size, size, 3), args.levels, args.k, args.width, seed=0, gradient=args.gradient)
  model.compile(jit_compile=args.variant != 'graph')
  model.initialize(x[:batch])
  ends = []
  clock = keras.callbacks.LambdaCallback(
    on_train_begin=lambda *_, **__: ends.append(time.perf_counter()),
    on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()),
  )
  data = tf.data.Dataset.from_tensor_slices(x).batch(batch, drop_remainder=True)
  history = model.fit(data, epochs=1, verbose=0, callbacks=[clock])
  steps = [b - a for a, b in zip(ends, ends[1:])]
  return {
    'variant': args.variant,
    'steps': args.k,
    'first_step_s': round(steps[0], 3),
    'step_s': round(statistics.median(steps[1:]), 4),
    'loss': float(history.history['loss'][-1]),
  }


def alternate(args) -> dict:
  """Steady step time of the XLA loop and the unrolled XLA steps at one K, in ONE process, alternating
  rounds of --timed-steps steps (both compiled first): a ratio that a loaded machine disturbs less."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf

  from tfp_glow.flow.stack import StepStack
  from tfp_glow.training.model import GlowModel

  size, batch, k = args.image_size, args.batch, args.steps_list[0]
  x = tf.random.stateless_uniform([batch, size, size, 3], (0, 1)) - 0.5
  from tfp_glow.bijectors import xla_conv

  loop_unrolled, xla, models = StepStack.unrolled, xla_conv._xla, {}
  for variant in ('xla', args.against):
    StepStack.unrolled, xla_conv._xla = loop_unrolled, xla
    if variant == 'unrolled':
      as_before_the_loop(StepStack)
    model = GlowModel((size, size, 3), args.levels, k, args.width, seed=0, gradient=args.gradient)
    model.compile(jit_compile=variant != 'graph')
    model.initialize(x)
    model.train_on_batch(x)  # traces (with this variant's StepStack) and compiles
    models[variant] = model
  StepStack.unrolled, xla_conv._xla = loop_unrolled, xla
  times = {variant: [] for variant in models}
  for _ in range(args.rounds):
    for variant, model in models.items():
      for _ in range(args.timed_steps):
        t0 = time.perf_counter()
        model.train_on_batch(x)
        times[variant].append(time.perf_counter() - t0)
  medians = {variant: statistics.median(t) for variant, t in times.items()}
  return {
    'steps': k,
    'step_s': {v: round(m, 4) for v, m in medians.items()},
    f'loop_over_{args.against}': round(medians['xla'] / medians[args.against], 3),
  }


def stamp(command: str) -> dict:
  """What every metric row carries (benchmarks/report.py): the command, commit and date."""
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True)
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  return {'command': command, 'commit': commit.stdout.strip(), 'date': date}


def settings_text(args) -> str:
  size = args.image_size
  return (
    f'{size}x{size}x3, L={args.levels}, width {args.width}, batch {args.batch}, gradient {args.gradient!r}'
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps-list', type=int, nargs='+', default=[8, 16, 32, 48], help='K per level')
  parser.add_argument('--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS))
  parser.add_argument('--unrolled-max', type=int, default=48, help='run "unrolled" only for K <= this')
  parser.add_argument('--levels', type=int, default=3)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--image-size', type=int, default=32)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--gradient', default='stored', help="the training step's gradient (GlowModel)")
  parser.add_argument('--timed-steps', type=int, default=5, help='steps after the first, timed')
  parser.add_argument('--rounds', type=int, default=1)
  parser.add_argument('--out', type=pathlib.Path, default=ROOT / 'benchmarks' / 'results' / 'xla_depth.json')
  parser.add_argument(
    '--alternate',
    action='store_true',
    help='steady step of the XLA loop against the unrolled XLA steps at the first K, one process, alternating',
  )
  parser.add_argument(
    '--against',
    choices=('unrolled', 'graph'),
    default='unrolled',
    help='what --alternate compares the loop with',
  )
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--variant', help=argparse.SUPPRESS)
  parser.add_argument('--k', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(args)))
    return
  if args.alternate:
    result = alternate(args)
    print(json.dumps(result))
    report = {
      'command': 'python benchmarks/xla_depth.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    }
    report.update(load_average_at_end=os.getloadavg(), settings=vars(args), **result)
    load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
    times = result['step_s']
    report['metrics'] = [
      {
        'metric': f'XLA steady training step, one loop / {args.against} (K={result["steps"]}, {settings_text(args)})',
        'value': f'{times["xla"]:.3g} s / {times[args.against]:.3g} s = {result[f"loop_over_{args.against}"]:.2f}x '
        f'(alternating rounds, one process; load average {load})',
        **stamp(report['command']),
      }
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + '\n')
    return
  shared = [f'--{k}={getattr(args, k.replace("-", "_"))}' for k in ('levels', 'width', 'image-size', 'batch')]
  shared += [f'--gradient={args.gradient}', f'--timed-steps={args.timed_steps}']
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
  runs, load_before = [], os.getloadavg()
  for r in range(args.rounds):
    for k in args.steps_list:
      for variant in args.variants:
        if variant == 'unrolled' and k > args.unrolled_max:
          continue
        cmd = [sys.executable, __file__, '--child', f'--variant={variant}', f'--k={k}', *shared]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        result = {'round': r, **json.loads(out.strip().splitlines()[-1])}
        print(json.dumps(result), flush=True)
        runs.append(result)
  summary = {}
  for variant in args.variants:
    for k in args.steps_list:
      mine = [x for x in runs if x['variant'] == variant and x['steps'] == k]
      if mine:
        summary[f'{variant} K={k}'] = {
          key: statistics.median(x[key] for x in mine) for key in ('first_step_s', 'step_s')
        }
  report = {
    'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    'command': 'python benchmarks/xla_depth.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
    'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
    'load_average_before': load_before,
    'load_average_at_end': os.getloadavg(),
    'settings': {k: v for k, v in vars(args).items() if k not in ('child', 'variant', 'k', 'out')},
    'runs': runs,
    'summary': summary,
  }
  load = ', '.join(f'{x:.1f}' for x in report['load_average_at_end'])
  report['metrics'] = []
  for k in args.steps_list:
    parts = [
      f'{v} {summary[key]["first_step_s"]:.3g} s / {summary[key]["step_s"]:.3g} s'
      for v in args.variants
      if (key := f'{v} K={k}') in summary
    ]
    report['metrics'].append(
      {
        'metric': f'XLA first step (compile) / steady step at K={k} ({settings_text(args)})',
        'value': '; '.join(parts) + f' (medians of {args.rounds}; load average at end {load})',
        **stamp(report['command']),
      }
    )
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=1, default=str) + '\n')
  print(json.dumps(summary, indent=1))


if __name__ == '__main__':
  main()
