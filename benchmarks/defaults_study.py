"""Defaults chosen by evidence: one training factor at a time from today's folder / npz defaults.

On the natural-image patch set (benchmarks/natural_patches.py: 32x32x3 patches of scikit-image's photographs,
held-out regions as the test split), every run trains the same architecture for the same number of epochs
through the Python API (`GlowModel.compile` / `fit`, data from `load_dataset('npz:DIR')` as the CLI reads it)
and scores the test split (bits/dim). Each setting differs from 'defaults' -- the CLI's folder / npz
defaults, read from tfp_glow.specs.run_defaults (Adamax, its lr, its warmup epochs, its EMA, every training
image) -- in one factor only:

  adam          Adam instead of Adamax
  lr_4e-3, lr_8e-3, lr_16e-3, lr_1e-3   learning rate 4e-3, 8e-3, 1.6e-2, 1e-3 (the paper's)
  no_warmup     no warmup
  ema           weight EMA (momentum 0.99), the averaged weights scored
  split_10pct   10% of the training images held out (what a folder without test/ loses to its own split)
  compile_default  `GlowModel.compile()` with no arguments (its own optimizer and warmup steps)
  cli           `tfp-glow train --dataset npz:DIR` with its defaults (architecture and epochs set), in a
                subprocess; its metrics.json's test bits/dim, and the lr / warmup / EMA it trained with (the
                code's defaults when it ran: with --defaults pinning a study whose defaults the code has since
                changed, the CLI at the new defaults beside the study that chose them)
and two that compare with rosinality/glow-pytorch (two factors from 'defaults'):
  adam_1e-3_no_warmup  the Python API with the peer's recipe (Adam, lr 1e-3, no warmup)
  rosinality    the peer's PyTorch model at the same architecture, batch, epochs and patches, Adam 1e-3, no
                warmup, scored as tfp_glow scores (benchmarks/torch_natural.py, run by --torch-python;
                unpaired: its difference to 'defaults' is the difference of the means +- Welch's standard error)

Seeds are paired: a seed fixes the initial flow, the data order and the dequantization noise, the same in
every tfp_glow setting, so a setting's effect is read from its per-seed difference to 'defaults' (mean and sd
over seeds; "not shown" when |mean| <= 2 sd). 'rosinality' shares only the seed number (torch's own
initialization and data order). Runs go seed by seed, and each finished run is appended to RESULTS.runs.jsonl
at once: a killed study resumes where it stopped (rerun the same command); two processes with different
--settings may share the log (one line per run), and `--summarize-only` with every setting writes the result.
The results file keeps the study before it ('previous') when the defaults have changed since.

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

import defaults_table  # benchmarks/, next to this file

ROOT = pathlib.Path(__file__).resolve().parent.parent
EQUAL = 0.005  # bits/dim: a paired difference below this is reported as equal (the same computation)
RESULTS = ROOT / 'benchmarks' / 'results' / 'defaults_study.json'

# The harness' own layout of a study's settings; 'defaults' is filled from the code's defaults (defaults()).
SETTINGS = {
  'defaults': {},
  'adam': dict(optimizer='adam'),
  'no_warmup': dict(warmup_epochs=0.0),
  'lr_4e-3': dict(lr=4e-3),
  'lr_8e-3': dict(lr=8e-3),
  'lr_16e-3': dict(lr=16e-3),
  'lr_1e-3': dict(lr=1e-3),
  'ema': dict(ema=True),
  'split_10pct': dict(train_fraction=0.9),
  'compile_default': dict(compile_default=True),
  'cli': dict(cli=True),
  'adam_1e-3_no_warmup': dict(optimizer='adam', lr=1e-3, warmup_epochs=0.0),
  'rosinality': dict(torch='rosinality', optimizer='adam', lr=1e-3, warmup_epochs=0.0),
}
DEFAULT_SETTINGS = ['defaults', 'cli', 'adam', 'lr_4e-3', 'no_warmup', 'adam_1e-3_no_warmup', 'rosinality']


def defaults() -> dict:
  """'defaults': what `tfp-glow train --dataset npz:DIR` trains with (its optimizer is Adamax, the only one
  the CLI builds), from the code, so that the study follows the defaults it measures."""
  from tfp_glow.specs import run_defaults  # noqa: PLC0415

  d = run_defaults('npz:DIR')
  return dict(
    optimizer='adamax', lr=d['lr'], warmup_epochs=d['warmup_epochs'], ema=d['ema'], train_fraction=1.0
  )


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

  s = dict(args.base, **setting)
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
      '--batch-size', str(args.batch_size), '--seed', str(seed), '--out', os.path.join(out, 'run'),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
    metrics = json.loads(pathlib.Path(out, 'run', 'metrics.json').read_text())
    config = json.loads(pathlib.Path(out, 'run', 'config.json').read_text())
  return dict(
    test_bits_per_dim=metrics['test_bits_per_dim'],
    train_seconds=metrics['train_seconds'],
    weights=metrics.get('weights'),
    cli_defaults={k: config[k] for k in ('lr', 'warmup_epochs', 'ema')},  # what this CLI trained with
  )


def torch_run(data: str, seed: int, args: argparse.Namespace) -> dict:
  """rosinality/glow-pytorch (benchmarks/torch_natural.py) in the torch Python; its RESULT line."""
  if not (args.torch_python and args.rosinality):
    raise SystemExit(
      "'rosinality' needs --torch-python (or env TORCH_PYTHON) and --rosinality (its checkout)"
    )
  command = [
    args.torch_python, str(ROOT / 'benchmarks' / 'torch_natural.py'), '--code', args.rosinality,
    '--data', data, '--levels', str(args.levels), '--steps', str(args.steps), '--width', str(args.width),
    '--batch-size', str(args.batch_size), '--epochs', str(args.epochs), '--seed', str(seed), '--threads', str(args.torch_threads),
  ]  # fmt: skip
  env = dict(os.environ, PYTHONPATH=args.torch_pythonpath or '')  # not tfp_glow's: torch's own Python
  done = subprocess.run(command, env=env, capture_output=True, text=True)
  lines = [line for line in done.stdout.splitlines() if line.startswith('RESULT ')]
  if done.returncode or not lines:
    raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
  return json.loads(lines[-1][len('RESULT ') :])


def one_run(data: str, name: str, seed: int, args: argparse.Namespace) -> dict:
  setting = SETTINGS[name]
  if setting.get('cli'):
    return cli_run(data, seed, args)
  if setting.get('torch'):
    return torch_run(data, seed, args)
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
    if (
      SETTINGS[name].get('torch') and diffs
    ):  # shares only the seed number: unpaired (Welch's standard error)
      d = defaults_table.unpaired(runs, name, 'defaults')
      verdict = 'one seed' if math.isnan(d['sd']) else defaults_table.verdict(d, 'better', 'worse')
      row.update(diff_mean=d['mean'], diff_sd=d['sd'], diff_n=len(diffs), verdict=verdict + ' (unpaired)')
    elif name != 'defaults' and diffs:
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


def metrics_rows(data: dict, args: argparse.Namespace) -> list[dict]:
  """The study's lines in BENCHMARKS.md's metrics table: one per setting, then the headline comparisons."""
  what = (
    f'L={args.levels} K={args.steps} width {args.width}, batch {args.batch_size}, {args.epochs} epochs, '
    f'every {args.train_every}th training patch'
  )
  values = []
  for name, row in data['summary'].items():
    if 'diff_mean' in row:
      value = (
        f'{row["mean"]:.3f} bits/dim; vs defaults {row["diff_mean"]:+.3f} ± {row["diff_sd"]:.3f} '
        f'(paired, n={row["diff_n"]}): {row["verdict"]}'
      )
    else:
      value = f'{row["mean"]:.3f} bits/dim (n={row["n"]})'
    values.append((name, value))
  values += defaults_table.headline(data)
  return [
    dict(
      metric=f'defaults study (natural 32x32 patches, {what}): {name}',
      value=value,
      command=data['command'],
      commit=data['commit'],
      date=data['date'],
    )
    for name, value in values
  ]


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
  parser.add_argument('--settings', nargs='+', default=DEFAULT_SETTINGS, choices=list(SETTINGS))
  parser.add_argument('--cli-seeds', type=int, nargs='*', default=[], help="extra seeds of the 'cli' setting")
  parser.add_argument('--torch-python', default=os.environ.get('TORCH_PYTHON'), help='a Python with torch')
  parser.add_argument('--torch-pythonpath', default=os.environ.get('TORCH_PYTHONPATH'), help='its PYTHONPATH')
  parser.add_argument(
    '--torch-threads', type=int, default=2, help="torch's threads (1 on a crowded machine: 2 spin-wait)"
  )
  parser.add_argument('--rosinality', default=os.environ.get('ROSINALITY'), help='rosinality/glow-pytorch')
  parser.add_argument('--out', default=str(RESULTS))
  parser.add_argument('--summarize-only', action='store_true')
  parser.add_argument('--command', help='the command(s) to record (e.g. the parallel processes of one study)')
  parser.add_argument(
    '--defaults',
    help="the study's 'defaults' as JSON (default: the code's, defaults()); pins a study whose defaults the code "
    "has since changed, e.g. to run 'cli' at the new defaults beside it",
  )
  parser.add_argument('--notes', help='a note for the report (what was cut to fit, ...)')
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  out = pathlib.Path(args.out)
  log = out.with_name(out.name.removesuffix('.json') + '.runs.jsonl')
  base = args.base = json.loads(args.defaults) if args.defaults else defaults()
  key = dict(
    levels=args.levels,
    steps=args.steps,
    width=args.width,
    batch=args.batch_size,
    epochs=args.epochs,
    train_every=args.train_every,
    defaults=base,  # a study of other defaults is another study
  )
  data = subset(args.data, keep_every=args.train_every) if args.train_every > 1 else args.data

  def logged() -> list[dict]:  # this study's runs so far (another process may be adding to the log)
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [r for r in runs if r['key'] == key]

  command = args.command or 'python benchmarks/defaults_study.py ' + ' '.join(sys.argv[1:])
  commit = _git_commit()
  plan = [(seed, name) for seed in args.seeds for name in args.settings]
  plan += [(seed, 'cli') for seed in args.cli_seeds if 'cli' not in args.settings]
  for seed, name in plan if not args.summarize_only else []:
    if (name, seed) in {(r['setting'], r['seed']) for r in logged()}:
      continue
    load = os.getloadavg()[0]
    started = time.time()
    result = one_run(data, name, seed, args)
    row = dict(key=key, setting=name, seed=seed, **result, wall_seconds=round(time.time() - started, 1),
               loadavg_before=round(load, 2), commit=commit)  # fmt: skip
    with log.open('a') as f:
      f.write(json.dumps(row) + '\n')
    print(json.dumps(row), flush=True)
  runs = logged()
  summary = summarize(runs, list(dict.fromkeys(['defaults', *args.settings, 'cli'])))
  date = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
  result = dict(
    command=command,
    commit=commit,
    date=date,
    settings={k: dict(base, **v) for k, v in SETTINGS.items()},
    key=key,
    runs=runs,
    summary=summary,
  )
  result['metrics'] = metrics_rows(result, args)
  if args.notes:
    result['notes'] = args.notes
  previous = json.loads(out.read_text()) if out.exists() else {}
  if previous.get('settings', {}).get('defaults') == base:  # the same study, summarized again
    previous = previous.get('previous', {})
  if previous:  # the study of the defaults before these: kept, without its own previous one
    result['previous'] = {k: v for k, v in previous.items() if k not in ('previous', 'metrics')}
  tmp = out.with_name(out.name + f'.{os.getpid()}.tmp')  # whole or not at all: processes may share `out`
  tmp.write_text(json.dumps(result, indent=1) + '\n')
  os.replace(tmp, out)
  print(json.dumps(summary, indent=1))


if __name__ == '__main__':
  main()
