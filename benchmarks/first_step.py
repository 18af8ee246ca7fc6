"""Where the first `GlowModel.fit` step's time goes: building, compiling, actnorm init, Keras' set-up, tracing
`train_step` (Python), and graph optimization + the first run (grappler, kernels' first calls). Each variant
in a fresh process, the variants alternating round by round.

  python benchmarks/first_step.py [--rounds 2] [--steps 8] [--variant default no_grappler]

Variants: default; no_grappler (TensorFlow's graph optimizer off: what grappler costs, and what the step runs
at without it). `second_step_s` is a step's graph run alone. Settings: 32x32x3, L=3, width 128, batch 32 (public_api.py's). Results: JSON lines and
benchmarks/results/first_step.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
VARIANTS = ('default', 'no_grappler')


def child(variant: str, steps: int, batch: int) -> dict:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import keras
  import tensorflow as tf

  from tfp_glow.training.model import GlowModel

  if variant == 'no_grappler':
    tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})
  x = tf.random.stateless_uniform([2 * batch, 32, 32, 3], (0, 1)) - 0.5
  marks = {'start': time.perf_counter()}
  model = GlowModel((32, 32, 3), 3, steps, 128, seed=0)
  marks['built'] = time.perf_counter()
  model.compile()
  marks['compiled'] = time.perf_counter()
  model.initialize(x[:batch])
  marks['initialized'] = time.perf_counter()
  trace = []
  step = model.train_step

  def timed_train_step(data):  # called only while Keras traces its train function
    t0 = time.perf_counter()
    out = step(data)
    trace.append(time.perf_counter() - t0)
    return out

  model.train_step = timed_train_step
  ends = []
  clock = keras.callbacks.LambdaCallback(
    on_train_begin=lambda *_, **__: ends.append(time.perf_counter()),
    on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()),
  )
  model.fit(tf.data.Dataset.from_tensor_slices(x).batch(batch), epochs=1, verbose=0, callbacks=[clock])
  begin, first, second = ends
  return dict(
    build_s=marks['built'] - marks['start'],
    compile_s=marks['compiled'] - marks['built'],
    actnorm_init_s=marks['initialized'] - marks['compiled'],
    keras_fit_setup_s=begin - marks['initialized'],
    trace_train_step_s=sum(trace),
    graph_optimize_and_first_run_s=first - begin - sum(trace),
    second_step_s=second - first,
    first_step_s=first - marks['start'],
    traces=len(trace),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--steps', type=int, default=8)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--variant', nargs='+', choices=VARIANTS, default=list(VARIANTS))
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    result = child(args.child, args.steps, args.batch)
    print('RESULT ' + json.dumps({k: round(v, 3) for k, v in result.items()}), flush=True)
    return
  load = os.getloadavg()
  rows = []
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  for r in range(args.rounds):
    for variant in args.variant:
      command = [sys.executable, __file__, '--child', variant, '--steps', str(args.steps)]
      out = subprocess.run(command + ['--batch', str(args.batch)], capture_output=True, text=True, env=env)
      lines = [line for line in out.stdout.splitlines() if line.startswith('RESULT ')]
      if not lines:
        print(f'# {variant} round {r} failed: {out.stderr[-1500:]}')
        continue
      rows.append(dict(round=r, variant=variant, **json.loads(lines[-1][len('RESULT ') :])))
      print(json.dumps(rows[-1]), flush=True)
  medians = {}
  for variant in args.variant:
    runs = [row for row in rows if row['variant'] == variant]
    keys = [k for k in runs[0] if k not in ('round', 'variant')] if runs else []
    medians[variant] = {k: round(statistics.median(row[k] for row in runs), 3) for k in keys}
    print(variant, medians[variant])
  path = ROOT / 'benchmarks' / 'results' / 'first_step.json'
  path.write_text(
    json.dumps(
      dict(
        command='python benchmarks/first_step.py ' + ' '.join(sys.argv[1:]),
        date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        load_average_before=list(load),
        load_average_after=list(os.getloadavg()),
        settings=f'32x32x3, L=3, K={args.steps}, width 128, batch {args.batch}',
        medians=medians,
        rows=rows,
      ),
      indent=1,
    )
    + '\n'
  )
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
