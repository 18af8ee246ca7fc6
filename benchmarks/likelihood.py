"""Variational vs uniform dequantization on the default digits run, and the OOD scores' AUROC.

  python benchmarks/likelihood.py                       # the full measurement: 80 epochs (the default run),
                                                        # 3 seeds, all 297 test images (~30 min, 2 quiet cores)
  python benchmarks/likelihood.py --epochs 20 --test-images 100     # a shorter one (~10 min)

Seeds part: for seed in 0, 1, 2, alternating uniform / variational: `tfp-glow train --seed S --dequantization D
[--epochs E]` (everything else the defaults), then, through `GlowModel.evaluate_bits_per_dim`, the test
bits/dim as the single-sample bound (S = 1) and importance-weighted with S = 100 and 1000; time per epoch from
the run's metrics.json (train seconds / epochs). OOD part: a background model (`tfp-glow train
--background-noise 0.2`, seed 0), then `tfp_glow.ood.score_table` of the seed-0 models of both dequantizations
on the test digits against tfp_glow.ood.SHIFTS. Results: benchmarks/results/likelihood.json (rendered by
benchmarks/report.py), with os.getloadavg() before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEQUANTIZATIONS = ('uniform', 'variational')


def _train(out: pathlib.Path, epochs: int | None, *flags: str) -> dict:
  shutil.rmtree(out, ignore_errors=True)
  argv = [shutil.which('tfp-glow') or 'tfp-glow', 'train', '--out', str(out), *flags]
  argv += ['--epochs', str(epochs)] if epochs else []
  subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
  return json.loads((out / 'metrics.json').read_text())


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--epochs', type=int, help='default: the default run (80)')
  p.add_argument('--seeds', type=int, default=3)
  p.add_argument('--test-images', type=int, help='evaluate on the first N test images (default: all 297)')
  p.add_argument('--samples', type=int, nargs='+', default=[100, 1000])
  p.add_argument('--work', default='/tmp/likelihood_benchmark')
  args = p.parse_args()
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from tfp_glow import data, ood  # pylint: disable=import-outside-toplevel

  load_before = os.getloadavg()
  work = pathlib.Path(args.work)
  ds, _ = data.load_dataset('digits', 'test', batch_size=512, shuffle=False, seed=0)
  test = tf.concat(list(ds), 0)[: args.test_images]
  runs = []
  for seed in range(args.seeds):
    for deq in DEQUANTIZATIONS:  # alternating, so load changes hit both alike
      metrics = _train(work / f'{deq}_{seed}', args.epochs, '--seed', str(seed), '--dequantization', deq)
      model = keras.models.load_model(work / f'{deq}_{seed}' / 'model.keras', compile=False)
      row = dict(
        dequantization=deq,
        seed=seed,
        seconds_per_epoch=metrics['train_seconds'] / metrics['epochs_this_run'],
        bound=model.evaluate_bits_per_dim(test, samples=1, seed=1000),
      )
      for s in args.samples:
        row[f'iw_{s}'] = model.evaluate_bits_per_dim(test, samples=s, seed=1000)
      runs.append(row)
      print(json.dumps(row), flush=True)

  _train(work / 'background', args.epochs, '--seed', '0', '--background-noise', '0.2')
  background = keras.models.load_model(work / 'background' / 'model.keras', compile=False)
  ds_train, _ = data.load_dataset('digits', 'train', batch_size=512, shuffle=False, seed=0)
  train = tf.concat(list(ds_train), 0)
  in_images = tf.concat(list(ds), 0)
  out_sets = {name: ood.shifted(in_images, name, 17) for name in ood.SHIFTS}
  ood_rows = []
  for deq in DEQUANTIZATIONS:
    model = keras.models.load_model(work / f'{deq}_0' / 'model.keras', compile=False)
    rows = ood.score_table(
      model, in_images, out_sets, scores=ood.SCORES, background=background, train_images=train
    )
    ood_rows += [dict(r, dequantization=deq) for r in rows]
  load_after = os.getloadavg()

  commit = subprocess.run(
    ['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True
  ).stdout.strip()
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  command = 'python benchmarks/likelihood.py ' + ' '.join(sys.argv[1:])
  summary = {}
  for deq in DEQUANTIZATIONS:
    mine = [r for r in runs if r['dequantization'] == deq]
    summary[deq] = {
      k: (
        float(np.mean([r[k] for r in mine])),
        float(np.std([r[k] for r in mine], ddof=1) if len(mine) > 1 else 0),
      )
      for k in ('bound', *[f'iw_{s}' for s in args.samples], 'seconds_per_epoch')
    }
  u, v = summary['uniform'], summary['variational']
  epochs = args.epochs or 80
  setting = f'digits default run, {epochs} epochs, {args.seeds} seeds, {len(test)} test images'
  metrics = [
    dict(
      metric=f'dequantization ({setting}): test bits/dim bound, uniform / variational',
      value=f'{u["bound"][0]:.4f} ± {u["bound"][1]:.4f} / {v["bound"][0]:.4f} ± {v["bound"][1]:.4f}',
    ),
    *[
      dict(
        metric=f'dequantization ({setting}): importance-weighted S={s}, uniform / variational',
        value=f'{u[f"iw_{s}"][0]:.4f} ± {u[f"iw_{s}"][1]:.4f} / {v[f"iw_{s}"][0]:.4f} ± {v[f"iw_{s}"][1]:.4f}',
      )
      for s in args.samples
    ],
    dict(
      metric=f'dequantization ({setting}): seconds per epoch, uniform / variational',
      value=f'{u["seconds_per_epoch"][0]:.2f} / {v["seconds_per_epoch"][0]:.2f} '
      f'({v["seconds_per_epoch"][0] / u["seconds_per_epoch"][0]:.2f}x)',
    ),
  ]
  result = dict(
    command=command,
    date=date,
    commit=commit,
    loadavg_before=load_before,
    loadavg_after=load_after,
    epochs=epochs,
    test_images=len(test),
    samples=args.samples,
    runs=runs,
    summary=summary,
    ood=ood_rows,
    metrics=[{**r, 'command': command, 'commit': commit, 'date': date} for r in metrics],
  )
  (ROOT / 'benchmarks' / 'results' / 'likelihood.json').write_text(json.dumps(result, indent=1) + '\n')
  print(json.dumps(metrics, indent=1))


if __name__ == '__main__':
  main()
