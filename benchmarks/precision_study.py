"""`--precision mixed_bfloat16` against float32: `tfp-glow train` runs, paired by seed, bits/dim and speed.

Each run is `tfp-glow train` (python -m tfp_glow.cli train) in its own process, as a user runs it; the two
precisions of a seed share everything else (the seed fixes the initial flow, the data order and the
dequantization noise). Order alternates so that a drift of the machine's load falls on both sides:
seed 0 float32, seed 0 bf16, seed 1 bf16, seed 1 float32, seed 2 float32, ...

Studies:
  digits    the full default job (`tfp-glow train`: the offline digits, every default), as README's
            Quickstart and benchmarks/default_run.py run it
  natural   natural-image patches (benchmarks/natural_patches.py, `--dataset npz:DIR`), a small model:
            --levels 3 --steps 2 --width 32 --epochs 2, the npz defaults otherwise

Per run (from the run's own metrics.json): test and train bits/dim, train_seconds (the run's `fit`, first
step and sample grids included); training images/s = training images x epochs / train_seconds; the process'
wall time and peak RSS (os.wait4). Per seed, the paired difference bf16 - float32 of bits/dim and the speed
ratio bf16 / float32; mean and sd over seeds; "not shown" when |mean| <= 2 sd (for the ratio: |mean - 1|).
On a shared machine only the paired ratios mean anything, not the absolute times.

Resume-safe: each finished run is written to benchmarks/results/precision_study.json at once; rerun the same
command to go on where it stopped.

  python benchmarks/precision_study.py --study digits
  python benchmarks/precision_study.py --study natural --data /tmp/natural32
  python benchmarks/report.py
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'benchmarks' / 'results' / 'precision_study.json'
PRECISIONS = ('float32', 'mixed_bfloat16')

STUDIES = {
  'digits': dict(what='`tfp-glow train` with every default (offline digits, 80 epochs)', flags=[]),
  'natural': dict(
    what='`tfp-glow train --dataset npz:DIR` (natural 32x32x3 patches), L=3 K=2 width 32, 2 epochs',
    flags=['--levels', '3', '--steps', '2', '--width', '32', '--epochs', '2'],
  ),
}
CPU_FLAGS = ('avx512f', 'avx512_bf16', 'amx_bf16', 'avx2')


def plan(seeds: list[int]) -> list[tuple[int, str]]:
  """(seed, precision) in the order run: float32 first on even positions, bf16 first on odd ones."""
  return [(s, p) for i, s in enumerate(seeds) for p in (PRECISIONS if i % 2 == 0 else PRECISIONS[::-1])]


def machine() -> dict:
  """The CPU's model and its 16-bit features (/proc/cpuinfo), and what oneDNN in TensorFlow says of bf16."""
  info: dict = dict(cores=os.cpu_count())
  try:
    text = pathlib.Path('/proc/cpuinfo').read_text()
    flags = next(line.split(':', 1)[1].split() for line in text.splitlines() if line.startswith('flags'))
    info['cpu'] = next(line.split(':', 1)[1].strip() for line in text.splitlines() if 'model name' in line)
    info['flags'] = {f: f in flags for f in CPU_FLAGS}
  except (OSError, StopIteration):
    pass
  probe = (
    'import tensorflow as tf; from tensorflow.python.util import _pywrap_utils as u; '
    'print(tf.__version__, bool(u.IsDataTypeSupportedByOneDNNOnThisCPU(tf.bfloat16.as_datatype_enum)))'
  )
  done = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, env=_env())
  if done.returncode == 0 and done.stdout.split():
    version, supported = done.stdout.split()[-2:]
    info.update(tensorflow=version, onednn_bf16=supported == 'True')
  return info


def _env() -> dict:
  return dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
    TF_CPP_MIN_LOG_LEVEL=os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'),
  )


def train_images(study: str, data: str) -> int:
  """The number of training images a run reads per epoch."""
  if study == 'digits':
    return 1500  # tfp_glow.data.digits: 1797 images, DIGITS_TEST_SIZE = 297 held out (importing it loads TF)
  import numpy as np  # noqa: PLC0415

  with np.load(os.path.join(data, 'train.npz')) as f:
    return int(f['images'].shape[0])


def study_flags(args: argparse.Namespace) -> list[str]:
  """The `tfp-glow train` flags of a study (less --out, --seed and --precision)."""
  flags = list(STUDIES[args.study]['flags']) + (
    ['--dataset', f'npz:{args.data}'] if args.study == 'natural' else []
  )
  return flags + (['--epochs', str(args.epochs)] if args.epochs else [])


def one_run(flags: list[str], seed: int, precision: str, n_train: int) -> dict:
  """`tfp-glow train` in a subprocess; its metrics.json figures, wall time and peak RSS."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'run')
    command = [sys.executable, '-m', 'tfp_glow.cli', 'train', '--out', out, '--seed', str(seed),
               '--precision', precision, *flags]  # fmt: skip
    log_path = os.path.join(tmp, 'log.txt')
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log_path, 'wb') as log:
      proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env())
      _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
      proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode:
      tail = pathlib.Path(log_path).read_text(errors='replace')[-3000:]
      raise RuntimeError(f'{" ".join(command)} failed ({proc.returncode}):\n{tail}')
    metrics = json.loads(pathlib.Path(out, 'metrics.json').read_text())
  images = n_train * metrics['epochs']
  return dict(
    seed=seed,
    precision=precision,
    test_bits_per_dim=metrics['test_bits_per_dim'],
    train_bits_per_dim=metrics['train_bits_per_dim'],
    weights=metrics.get('weights'),
    train_seconds=metrics['train_seconds'],
    images_per_s=images / metrics['train_seconds'],
    wall_seconds=round(wall, 1),
    peak_rss_gb=usage.ru_maxrss / 2**20,  # Linux: KiB
    loadavg_before=round(load, 2),
    loadavg_after=round(os.getloadavg()[0], 2),
  )


def _verdict(values: list[float], null: float, above: str, below: str) -> str:
  """'not shown' when |mean - null| <= 2 sd over seeds, else `above` / `below` (null: 0 for a difference,
  1 for a ratio)."""
  mean = statistics.fmean(values)
  if len(values) < 2:
    return 'one seed'
  sd = statistics.stdev(values)
  return 'not shown' if abs(mean - null) <= 2 * sd else (above if mean > null else below)


def summarize(runs: list[dict]) -> dict:
  """Per seed with both precisions: bf16 - float32 bits/dim, bf16 / float32 images/s and peak RSS."""
  by = {(r['seed'], r['precision']): r for r in runs}
  seeds = sorted(s for s in {r['seed'] for r in runs} if all((s, p) in by for p in PRECISIONS))
  if not seeds:
    return {}
  f32, bf16 = PRECISIONS
  pairs = {
    'test_bits_per_dim': [by[s, bf16]['test_bits_per_dim'] - by[s, f32]['test_bits_per_dim'] for s in seeds],
    'train_bits_per_dim': [
      by[s, bf16]['train_bits_per_dim'] - by[s, f32]['train_bits_per_dim'] for s in seeds
    ],
    'speed_ratio': [by[s, bf16]['images_per_s'] / by[s, f32]['images_per_s'] for s in seeds],
    'rss_ratio': [by[s, bf16]['peak_rss_gb'] / by[s, f32]['peak_rss_gb'] for s in seeds],
  }
  verdicts = {
    'test_bits_per_dim': (0.0, 'bf16 worse', 'bf16 better'),
    'train_bits_per_dim': (0.0, 'bf16 worse', 'bf16 better'),
    'speed_ratio': (1.0, 'bf16 faster', 'bf16 slower'),
    'rss_ratio': (1.0, 'bf16 more', 'bf16 less'),
  }
  out: dict = dict(seeds=seeds)
  for name, values in pairs.items():
    out[name] = dict(
      per_seed=values,
      mean=statistics.fmean(values),
      sd=statistics.stdev(values) if len(values) >= 2 else float('nan'),
      verdict=_verdict(values, *verdicts[name]),
    )
  # The default may change only if bf16 is not worse in test bits/dim and shown faster.
  not_worse = out['test_bits_per_dim']['verdict'] != 'bf16 worse'
  out['bf16_default'] = bool(len(seeds) >= 2 and not_worse and out['speed_ratio']['verdict'] == 'bf16 faster')
  return out


def section(data: dict) -> str:
  """The study's tables for BENCHMARKS.md (benchmarks/report.py)."""
  m = data.get('machine', {})
  flags = ', '.join(f'{k} {"yes" if v else "no"}' for k, v in m.get('flags', {}).items())
  lines = [
    '',
    '## Precision: mixed_bfloat16 against float32 (`python benchmarks/precision_study.py`)',
    '',
    f'{m.get("cpu", "?")}, {m.get("cores", "?")} cores ({flags}; oneDNN bf16 on this CPU: '
    f'{m.get("onednn_bf16", "?")}), TensorFlow {m.get("tensorflow", "?")}; at {data["commit"]}, '
    f'{data["date"]}. Each run is `tfp-glow train` in its own process, the two precisions of a seed '
    'alternating; a shared machine (load averages below): only the paired ratios compare speeds. '
    'images/s: training images x epochs / the run\'s train_seconds. bf16 - float32 "not shown" when '
    '|mean| <= 2 sd over seeds.',
  ]
  for study, block in data['studies'].items():
    s = block.get('summary') or {}
    lines += [
      '',
      f'**{study}**: {block["what"]} (`{block["command"]}`).',
      '',
      '| seed | precision | test bits/dim | train bits/dim | train s | images/s | peak RSS GB | load before/after |',
      '|---|---|---|---|---|---|---|---|',
    ]
    for r in block['runs']:
      lines.append(
        f'| {r["seed"]} | {r["precision"]} | {r["test_bits_per_dim"]:.4f} | {r["train_bits_per_dim"]:.4f} | '
        f'{r["train_seconds"]:.0f} | {r["images_per_s"]:.0f} | {r["peak_rss_gb"]:.2f} | '
        f'{r["loadavg_before"]:.1f}/{r["loadavg_after"]:.1f} |'
      )
    if s:
      lines += ['', '| bf16 vs float32, paired | per seed | mean ± sd | verdict |', '|---|---|---|---|']
      for name, label, fmt in [
        ('test_bits_per_dim', 'test bits/dim, bf16 - f32', '+.4f'),
        ('train_bits_per_dim', 'train bits/dim, bf16 - f32', '+.4f'),
        ('speed_ratio', 'training images/s, bf16 / f32', '.3f'),
        ('rss_ratio', 'peak RSS, bf16 / f32', '.3f'),
      ]:
        v = s[name]
        cells = ', '.join(format(x, fmt) for x in v['per_seed'])
        lines.append(f'| {label} | {cells} | {v["mean"]:{fmt}} ± {v["sd"]:.4f} | {v["verdict"]} |')
      lines += [
        '',
        'Default: ' + ('mixed_bfloat16 qualifies (not worse in bits/dim and faster).' if s['bf16_default']
                       else 'float32 stays (mixed_bfloat16 is not both not-worse in bits/dim and faster here).'),
      ]  # fmt: skip
  if data.get('notes'):
    lines += ['', f'Notes: {data["notes"]}.']
  return '\n'.join(lines) + '\n'


def metrics_rows(data: dict) -> list[dict]:
  rows = []
  for block in data['studies'].values():
    s = block.get('summary')
    if not s:
      continue
    t, r = s['test_bits_per_dim'], s['speed_ratio']
    rows.append(
      dict(
        metric=f'mixed_bfloat16 vs float32, {block["what"]}, {len(s["seeds"])} paired seeds',
        value=f'test bits/dim bf16 - f32 {t["mean"]:+.4f} ± {t["sd"]:.4f} ({t["verdict"]}); training '
        f'images/s bf16 / f32 {r["mean"]:.2f} ± {r["sd"]:.2f} ({r["verdict"]})',
        command=block['command'],
        commit=data['commit'],
        date=data['date'],
      )
    )
  return rows


def _git_commit() -> str:
  out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True)
  return out.stdout.strip()


def save(data: dict, path: pathlib.Path) -> None:
  data['date'] = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
  for block in data['studies'].values():
    block['summary'] = summarize(block['runs'])
  data['metrics'] = metrics_rows(data)
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(data, indent=1) + '\n')
  os.replace(tmp, path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--study', choices=list(STUDIES), default='digits')
  parser.add_argument('--data', default='/tmp/natural32', help='the natural study: a DIR with train/test.npz')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--epochs', type=int, help="fewer epochs than the study's (a study of its own)")
  parser.add_argument('--out', default=str(RESULTS))
  parser.add_argument('--summarize-only', action='store_true')
  parser.add_argument('--note', help="a note for BENCHMARKS' section (why a study was cut, ...)")
  args = parser.parse_args()
  path = pathlib.Path(args.out)
  data = json.loads(path.read_text()) if path.exists() else dict(studies={})
  if not args.summarize_only or 'machine' not in data:
    data.update(commit=_git_commit(), machine=machine())
  if args.note:
    data['notes'] = args.note
  command = ' '.join(['python benchmarks/precision_study.py', *sys.argv[1:]])
  name = args.study + (f'_epochs{args.epochs}' if args.epochs else '')
  what = STUDIES[args.study]['what'] + (f', cut to --epochs {args.epochs}' if args.epochs else '')
  block = data['studies'].setdefault(name, dict(command=command, runs=[]))
  if not args.summarize_only:  # the block keeps the command that ran it
    block.update(command=command, what=what, flags=study_flags(args))
  n_train = train_images(args.study, args.data)
  done = {(r['seed'], r['precision']) for r in block['runs']}
  for seed, precision in plan(args.seeds) if not args.summarize_only else []:
    if (seed, precision) in done:
      continue
    row = one_run(block['flags'], seed, precision, n_train)
    row['commit'] = data['commit']
    block['runs'].append(row)
    save(data, path)
    print(json.dumps(row), flush=True)
  save(data, path)
  print(json.dumps(block['summary'], indent=1))


if __name__ == '__main__':
  main()
