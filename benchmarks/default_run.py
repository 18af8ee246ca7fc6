"""The main job as a user runs it: `tfp-glow train` on the offline digits, its bits/dim, wall time and peak RSS.

  python benchmarks/default_run.py [--out /tmp/digits_default]

Results: benchmarks/results/default_run.json (the run's metrics.json figures, wall time, peak RSS).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default='/tmp/digits_default')
  args = p.parse_args()
  shutil.rmtree(args.out, ignore_errors=True)
  t0 = time.perf_counter()
  subprocess.run([shutil.which('tfp-glow') or 'tfp-glow', 'train', '--out', args.out], check=True)
  wall = time.perf_counter() - t0
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
  metrics = json.loads((pathlib.Path(args.out) / 'metrics.json').read_text())
  commit = subprocess.run(
    ['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True
  ).stdout.strip()
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  command = 'python benchmarks/default_run.py'
  test, train = metrics.get('test_bits_per_dim'), metrics.get('train_bits_per_dim')
  rows = [
    dict(
      metric='`tfp-glow train` (offline digits, defaults): test / train bits/dim',
      value=f'{test:.4f} / {train:.4f} (uniform: 4.087)',
    ),
    dict(
      metric='`tfp-glow train` (offline digits, defaults): wall time, peak RSS',
      value=f'{wall:.0f} s, {peak:.2f} GB',
    ),
  ]
  out = dict(
    command=command,
    date=date,
    commit=commit,
    metrics_json=metrics,
    metrics=[{**r, 'command': command, 'commit': commit, 'date': date} for r in rows],
  )
  (ROOT / 'benchmarks' / 'results' / 'default_run.json').write_text(json.dumps(out, indent=1) + '\n')
  print(json.dumps(rows, indent=1))
  sys.exit(0)


if __name__ == '__main__':
  main()
