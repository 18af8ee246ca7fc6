"""This checkout against another commit, through `GlowModel.fit`: the traced training step's op count, its
trace time, the first `fit` step and training speed. Each measurement runs in a fresh process with that tree
on its PYTHONPATH; the trees alternate round by round.

  python benchmarks/engine_ab.py --ref COMMIT [--rounds 3] [--steps 8] [--train-steps 40] [--batch 32]

The other commit is checked out with `git worktree` into a temporary folder (removed afterwards).
Architecture: 32x32x3, L=3, width 128, affine coupling, LU 1x1 conv (compare.py's 'default' config).
Results: one JSON line per measurement on stdout, and benchmarks/results/engine_ab.json.
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
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def child(steps: int, train_steps: int, batch: int) -> dict:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import keras
  import tensorflow as tf

  import tfp_glow  # whichever tree is on the path: only the public API is used

  model = tfp_glow.GlowModel((32, 32, 3), 3, steps, 128, seed=0)
  model.compile(optimizer=tfp_glow.optim.default_optimizer(1e-3, warmup_steps=10))
  x = tf.random.stateless_uniform([batch * (train_steps + 2), 32, 32, 3], (0, 1)) - 0.5
  model.initialize(x[:batch])
  t0 = time.perf_counter()
  graph = tf.function(model.train_step).get_concrete_function(tf.TensorSpec([None, 32, 32, 3])).graph
  trace = time.perf_counter() - t0
  t0 = time.perf_counter()
  model.fit(tf.data.Dataset.from_tensor_slices(x[:batch]).batch(batch), epochs=1, verbose=0)
  first = time.perf_counter() - t0
  ends = []
  clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
  model.fit(
    tf.data.Dataset.from_tensor_slices(x[batch:]).batch(batch), epochs=1, verbose=0, callbacks=[clock]
  )
  train = (len(ends) - 1) * batch / (ends[-1] - ends[0])
  return dict(
    ops=len(graph.get_operations()),
    trace_s=round(trace, 2),
    first_fit_step_s=round(first, 2),
    train_images_per_s=round(train, 1),
  )


def git(*args: str) -> str:
  return subprocess.run(
    ['git', '-C', str(ROOT), *args], capture_output=True, text=True, check=True
  ).stdout.strip()


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--ref', help='the commit to compare with (required)')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=8, help='K, steps per level')
  p.add_argument('--train-steps', type=int, default=40)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print(json.dumps(child(args.steps, args.train_steps, args.batch)))
    return
  if not args.ref:
    p.error('--ref COMMIT is required')
  flags = ['--steps', str(args.steps), '--train-steps', str(args.train_steps), '--batch', str(args.batch)]
  head, ref = git('rev-parse', '--short', 'HEAD'), git('rev-parse', '--short', args.ref)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    worktree = pathlib.Path(tmp) / 'ref'
    git('worktree', 'add', '--detach', str(worktree), args.ref)
    try:
      trees = {f'this ({head})': ROOT, f'ref ({ref})': worktree}
      for r in range(args.rounds):
        for name, tree in trees.items():
          env = {**os.environ, 'PYTHONPATH': str(tree)}
          out = subprocess.run(
            [sys.executable, __file__, '--child', *flags], capture_output=True, text=True, check=True, env=env
          )
          row = {'round': r, 'tree': name, **json.loads(out.stdout.strip().splitlines()[-1])}
          rows.append(row)
          print(json.dumps(row), flush=True)
    finally:
      git('worktree', 'remove', '--force', str(worktree))
  summary = {}
  for name in trees:
    mine = [row for row in rows if row['tree'] == name]
    summary[name] = {
      k: statistics.median(row[k] for row in mine) for k in mine[0] if k not in ('round', 'tree')
    }
  command = 'python benchmarks/engine_ab.py ' + ' '.join(sys.argv[1:])
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  this, other = (summary[name] for name in trees)
  what = f'GlowModel.fit, 32x32x3, L=3, K={args.steps}, width 128, batch {args.batch}'
  metrics = [
    dict(
      metric=f'{label} ({what})',
      value=f'{this[key]} {unit} (at {ref}: {other[key]} {unit})',
      command=command,
      commit=head,
      date=date,
    )
    for label, key, unit in (
      ('ops of the traced training step', 'ops', 'ops'),
      ('trace of the training step', 'trace_s', 's'),
      ('first fit step', 'first_fit_step_s', 's'),
      ('training speed, medians of alternating rounds', 'train_images_per_s', 'images/s'),
    )
  ]
  result = dict(
    command=command,
    date=date,
    commit=head,
    load_average=os.getloadavg()[0],
    medians=summary,
    rows=rows,
    metrics=metrics,
  )
  out = ROOT / 'benchmarks' / 'results' / 'engine_ab.json'
  out.write_text(json.dumps(result, indent=1) + '\n')
  print(json.dumps(summary, indent=1))


if __name__ == '__main__':
  main()
