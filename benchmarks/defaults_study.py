"""Defaults chosen by evidence: one training factor at a time from today's folder / npz defaults.

On the natural-image patch set (benchmarks/natural_patches.py: 32x32x3 patches of scikit-image's photographs,
held-out regions as the test split), every run trains the same architecture for the same number of epochs
through the Python API (`GlowModel.compile` / `fit`, data from `load_dataset('npz:DIR')` as the CLI reads it)
and scores the test split (bits/dim). Each setting differs from 'defaults' -- the CLI's folder / npz
defaults (tfp_glow.cli.flags.LARGE_DEFAULTS: Adamax, lr 1e-3, one epoch of linear warmup, no EMA, every
training image) -- in one factor only:

  adam          Adam instead of Adamax
  lr_2e-3       learning rate 2e-3            lr_5e-4   learning rate 5e-4
  no_warmup     no warmup
  ema           weight EMA (momentum 0.99), the averaged weights scored
  split_10pct   10% of the training images held out (what a folder without test/ loses to its own split)
  compile_default  `GlowModel.compile()` with no arguments (Adamax 1e-3, warmup 1000 steps)
  cli           `tfp-glow train --dataset npz:DIR` with its defaults (architecture and epochs set), in a
                subprocess; its metrics.json's test bits/dim

Seeds are paired: a seed fixes the initial flow, the data order and the dequantization noise, the same in
every setting, so a setting's effect is read from its per-seed difference to 'defaults' (mean and sd over
seeds; "not shown" when |mean| <= 2 sd). Runs go seed by seed, and each finished run is appended to
RESULTS.runs.jsonl at once: a killed study resumes where it stopped (rerun the same command).

  python benchmarks/natural_patches.py /tmp/natural32
  python benchmarks/defaults_study.py --data /tmp/natural32 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
EQUAL = 0.005  # bits/dim: a paired difference below this is reported as equal (the same computation)
RESULTS = ROOT / 'benchmarks' / 'results' / 'defaults_study.json'

BASE = dict(optimizer='adamax', lr=1e-3, warmup_epochs=1.0, ema=False, train_fraction=1.0)
SETTINGS = {
  'defaults': {},
  'adam': dict(optimizer='adam'),
  'no_warmup': dict(warmup_epochs=0.0),
  'ema': dict(ema=True),
  'lr_2e-3': dict(lr=2e-3),
  'split_10pct': dict(train_fraction=0.9),
  'compile_default': dict(compile_default=True),
  'cli': dict(cli=True),
  'lr_5e-4': dict(lr=5e-4),
}


def _git_commit() -> str:
  out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True)
  return out.stdout.strip()


def subset(data: str, keep_every: int = 1, drop_every: int = 0) -> str:
  """A copy of DATA whose train.npz keeps every `keep_every`-th image, then drops every `drop_every`-th of
  those (a fixed, evenly spread choice, as a folder's own 10% held-out split takes: drop_every=10); test.npz is
  the same file (a link). Written once, under the temp directory."""
  import numpy as np  # noqa: PLC0415

  out = pathlib.Path(tempfile.gettempdir()) / f'{pathlib.Path(data).name}_every{keep_every}_drop{drop_every}'
  if not (out / 'train.npz').exists():
    out.mkdir(exist_ok=True)
    images = np.load(os.path.join(data, 'train.npz'))['images'][::keep_every]
    if drop_every:
      images = images[np.arange(len(images)) % drop_every != drop_every - 1]
    np.savez(out / 'tmp.npz', images=images)
    os.replace(out / 'tmp.npz', out / 'train.npz')
    if not (out / 'test.npz').exists():
      os.symlink(os.path.abspath(os.path.join(data, 'test.npz')), out / 'test.npz')
  return str(out)


def api_run(data: str, setting: dict, seed: int, args: argparse.Namespace) -> dict:
  """Trains one setting through the Python API; returns {'test_bits_per_dim', 'train_seconds'}."""
  import keras  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415

  from tfp_glow import GlowModel  # noqa: PLC0415
  from tfp_glow.data import load_dataset  # noqa: PLC0415
  from tfp_glow.training.optim import default_optimizer  # noqa: PLC0415

  s = dict(BASE, **setting)
  keras.utils.clear_session()
  keras.utils.set_random_seed(seed)
  source = (
    data if s['train_fraction'] == 1.0 else subset(data, drop_every=round(1 / (1 - s['train_fraction'])))
  )
  train_ds, info = load_dataset(f'npz:{source}', 'train', batch_size=args.batch_size, shuffle=True, seed=seed)
  n_train = info.num_examples
  test_ds, _ = load_dataset(f'npz:{data}', 'test', batch_size=256, shuffle=False, seed=seed)
  model = GlowModel(info.image_shape, levels=args.levels, steps=args.steps, width=args.width, seed=seed)
  steps_per_epoch = math.ceil(n_train / args.batch_size)
  if s.get('compile_default'):
    model.compile()  # the library's own default
  else:
    warmup = round(s['warmup_epochs'] * steps_per_epoch)
    model.compile(optimizer=default_optimizer(s['lr'], warmup, use_ema=s['ema'], name=s['optimizer']))
  started = time.time()
  model.fit(train_ds, epochs=args.epochs, verbose=0)
  seconds = time.time() - started
  bpd = float(model.evaluate(test_ds, verbose=0, return_dict=True)['bits_per_dim'])
  del tf
  return dict(test_bits_per_dim=bpd, train_seconds=round(seconds, 1), train_images=n_train)


def cli_run(data: str, seed: int, args: argparse.Namespace) -> dict:
  """`tfp-glow train` with its defaults (architecture and epochs set) in a subprocess."""
  with tempfile.TemporaryDirectory() as out:
    command = [
      sys.executable, '-m', 'tfp_glow.cli', 'train', '--dataset', f'npz:{data}', '--levels', str(args.levels),
      '--steps', str(args.steps), '--width', str(args.width), '--epochs', str(args.epochs),
      '--seed', str(seed), '--out', os.path.join(out, 'run'),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
    metrics = json.loads(pathlib.Path(out, 'run', 'metrics.json').read_text())
  return dict(
    test_bits_per_dim=metrics['test_bits_per_dim'],
    train_seconds=metrics['train_seconds'],
    weights=metrics.get('weights'),
  )


def one_run(data: str, name: str, seed: int, args: argparse.Namespace) -> dict:
  setting = SETTINGS[name]
  if setting.get('cli'):
    return cli_run(data, seed, args)
  return api_run(data, setting, seed, args)


def summarize(runs: list[dict], settings: list[str]) -> dict:
  """Per setting: mean test bits/dim, and the paired difference to 'defaults' (mean, sd, n, verdict)."""
  by = {(r['setting'], r['seed']): r['test_bits_per_dim'] for r in runs}
  out = {}
  for name in settings:
    seeds = sorted(s for (n, s) in by if n == name)
    if not seeds:
      continue
    values = [by[name, s] for s in seeds]
    row = dict(n=len(values), mean=statistics.fmean(values))
    diffs = [by[name, s] - by['defaults', s] for s in seeds if ('defaults', s) in by]
    if name != 'defaults' and diffs:
      mean = statistics.fmean(diffs)
      sd = statistics.stdev(diffs) if len(diffs) >= 2 else float('nan')
      if max(abs(d) for d in diffs) < EQUAL:  # every seed's pair: the same computation
        verdict = f'equal (each seed within {EQUAL})'
      elif len(diffs) < 2:
        verdict = 'one seed'
      else:
        verdict = 'not shown' if abs(mean) <= 2 * sd else ('better' if mean < 0 else 'worse')
      row.update(diff_mean=mean, diff_sd=sd, diff_n=len(diffs), verdict=verdict)
    out[name] = row
  return out


def section(data: dict) -> str:
  """The study's table for BENCHMARKS.md (benchmarks/report.py)."""
  key, summary = data['key'], data['summary']
  seeds = sorted({r['seed'] for r in data['runs']})
  by = {(r['setting'], r['seed']): r for r in data['runs']}
  loads = [r['loadavg_before'] for r in data['runs']]
  lines = [
    '',
    f'## Defaults on natural images (`{data["command"].strip()}`)',
    '',
    f'benchmarks/natural_patches.py patches (32x32x3, 8 bits; every {key["train_every"]}th training patch, the '
    f'whole held-out test.npz), L={key["levels"]} K={key["steps"]} width {key["width"]}, batch {key["batch"]}, '
    f'{key["epochs"]} epochs, at {data["commit"]}, {data["date"]}; a shared machine (load average '
    f'{min(loads):.0f}-{max(loads):.0f}: times are not comparable, bits/dim are). Test bits/dim; each setting '
    "differs from 'defaults' (the CLI's folder / npz defaults: Adamax, lr 1e-3, 1 epoch of warmup, no EMA, "
    'every training image) in one factor; the difference is paired by seed (same initial flow, data order, '
    'noise); "not shown" when |mean| <= 2 sd.',
    '',
    '| setting | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean | vs defaults (mean ± sd) | verdict |',
    '|---|' + '---|' * len(seeds) + '---|---|---|',
  ]
  for name, row in summary.items():
    cells = [f'{by[name, s]["test_bits_per_dim"]:.3f}' if (name, s) in by else '-' for s in seeds]
    diff = f'{row["diff_mean"]:+.3f} ± {row["diff_sd"]:.3f}' if 'diff_mean' in row else '-'
    lines.append(
      f'| {name} | ' + ' | '.join(cells) + f' | {row["mean"]:.3f} | {diff} | {row.get("verdict", "-")} |'
    )
  api = {k: v['mean'] for k, v in summary.items() if k != 'cli'}
  best = min(api, key=api.get)
  paired = [s for s in seeds if ('cli', s) in by and (best, s) in by]
  if paired:  # on the seeds both ran
    gap = statistics.fmean(
      by['cli', s]['test_bits_per_dim'] - by[best, s]['test_bits_per_dim'] for s in paired
    )
    lines += [
      '',
      f'Best through the Python API: {best} ({api[best]:.3f}); `tfp-glow train` with its defaults is '
      f'{gap:+.3f} bits/dim from it (paired over seeds {", ".join(map(str, paired))}; target: within 0.05).',
    ]
  if data.get('notes'):
    lines += ['', f'Cut to fit: {data["notes"]}.']
  return '\n'.join(lines) + '\n'


def metrics_rows(summary: dict, args: argparse.Namespace, command: str, commit: str, date: str) -> list[dict]:
  rows = []
  what = (
    f'L={args.levels} K={args.steps} width {args.width}, batch {args.batch_size}, {args.epochs} epochs, '
    f'every {args.train_every}th training patch'
  )
  for name, row in summary.items():
    if 'diff_mean' in row:
      value = (
        f'{row["mean"]:.3f} bits/dim; vs defaults {row["diff_mean"]:+.3f} ± {row["diff_sd"]:.3f} '
        f'(paired, n={row["diff_n"]}): {row["verdict"]}'
      )
    else:
      value = f'{row["mean"]:.3f} bits/dim (n={row["n"]})'
    rows.append(
      dict(
        metric=f'defaults study (natural 32x32 patches, {what}): {name}',
        value=value,
        command=command,
        commit=commit,
        date=date,
      )
    )
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default='/tmp/natural32')
  parser.add_argument('--levels', type=int, default=3)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--width', type=int, default=32)
  parser.add_argument('--batch-size', type=int, default=64)
  parser.add_argument('--epochs', type=int, default=8)
  parser.add_argument(
    '--train-every',
    type=int,
    default=12,
    help='train on every N-th training patch (1: all; fewer steps per epoch)',
  )
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--settings', nargs='+', default=list(SETTINGS)[:6], choices=list(SETTINGS))
  parser.add_argument(
    '--cli-seeds',
    type=int,
    nargs='*',
    default=[0],
    help="seeds of the 'cli' setting (its defaults = 'defaults')",
  )
  parser.add_argument('--out', default=str(RESULTS))
  parser.add_argument('--summarize-only', action='store_true')
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  log = pathlib.Path(
    args.out + '.runs.jsonl' if not args.out.endswith('.json') else args.out[:-5] + '.runs.jsonl'
  )
  key = dict(
    levels=args.levels,
    steps=args.steps,
    width=args.width,
    batch=args.batch_size,
    epochs=args.epochs,
    train_every=args.train_every,
  )
  data = subset(args.data, keep_every=args.train_every) if args.train_every > 1 else args.data
  runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
  runs = [r for r in runs if r['key'] == key]
  done = {(r['setting'], r['seed']) for r in runs}
  command = 'python benchmarks/defaults_study.py ' + ' '.join(sys.argv[1:])
  commit = _git_commit()
  plan = [(seed, name) for seed in args.seeds for name in args.settings]
  plan += [(seed, 'cli') for seed in args.cli_seeds if 'cli' not in args.settings]
  for seed, name in plan if not args.summarize_only else []:
    if True:
      if (name, seed) in done:
        continue
      load = os.getloadavg()[0]
      started = time.time()
      result = one_run(data, name, seed, args)
      row = dict(key=key, setting=name, seed=seed, **result, wall_seconds=round(time.time() - started, 1),
                 loadavg_before=round(load, 2), commit=commit)  # fmt: skip
      runs.append(row)
      with log.open('a') as f:
        f.write(json.dumps(row) + '\n')
      print(json.dumps(row), flush=True)
  summary = summarize(runs, list(dict.fromkeys([*args.settings, 'cli'])))
  date = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
  result = dict(
    command=command,
    commit=commit,
    date=date,
    settings={k: dict(BASE, **v) for k, v in SETTINGS.items()},
    key=key,
    runs=runs,
    summary=summary,
    metrics=metrics_rows(summary, args, command, commit, date),
  )
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + '\n')
  print(json.dumps(summary, indent=1))


if __name__ == '__main__':
  main()
