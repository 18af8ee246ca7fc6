"""The input pipeline alone against training, and how time to the first batch and memory grow with the data.

  python benchmarks/data_pipeline.py [--rounds 2] [--work /tmp/tfp_glow_data_bench]

Through `tfp_glow.data.load_dataset`, as `tfp-glow train` calls it (batch 64, shuffled, dequantized):
  - pipeline images/s, one epoch after the first batch: folder of PNG / JPEG and TFRecord shards
    (`tfp-glow prepare`), at 32x32 (10,000 images) and 256x256 (1,000 images);
  - training images/s of GlowModel L=3, K=8, width 128 at 32x32x3 (`fit` on the folder pipeline);
  - time to the first batch (from `load_dataset`'s call) and peak RSS over one epoch, 10,000 vs 100,000
    PNGs of 32x32.
Each measurement runs in a fresh process (RSS is per process); the settings alternate round by round and
the median is reported. The generated images (smooth random fields plus noise, so PNG and JPEG compress as
photos do rather than as noise or flat colour) are written once under --work and reused.
Results: benchmarks/results/data_pipeline.json (os.getloadavg() included: the machine may be shared).
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
SETS = {  # name: (size, count, format)
  'png32_10k': (32, 10_000, 'png'),
  'png32_100k': (32, 100_000, 'png'),
  'jpg32_10k': (32, 10_000, 'jpg'),
  'png256_1k': (256, 1_000, 'png'),
  'jpg256_1k': (256, 1_000, 'jpg'),
}


def _generate(work: pathlib.Path) -> None:
  import numpy as np
  import tensorflow as tf

  for name, (size, count, fmt) in SETS.items():
    folder = work / name
    if (folder / '.done').exists():
      continue
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    encode = tf.io.encode_png if fmt == 'png' else tf.io.encode_jpeg
    for start in range(0, count, 500):
      n = min(500, count - start)
      coarse = rng.uniform(0, 255, (n, 4, 4, 3)).astype(np.float32)
      smooth = tf.image.resize(coarse, (size, size), method='bicubic').numpy()
      images = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
      for i, image in enumerate(images):
        tf.io.write_file(str(folder / f'{start + i:06d}.{fmt}'), encode(image))
    (folder / '.done').write_text('')
    print(f'generated {count} {fmt} images of {size}x{size} in {folder}', flush=True)
  for name in ('png32_10k', 'jpg256_1k'):
    out = work / f'{name}_tfrecord'
    if not (out / 'manifest.json').exists():
      from tfp_glow import cli

      assert cli.main(['prepare', f'folder:{work / name}', str(out), '--shards', '16']) == 0


def _peak_rss_mib() -> float:
  """This process' peak resident memory (VmHWM; getrusage's ru_maxrss would keep the parent's peak across
  fork + exec)."""
  with open('/proc/self/status') as f:
    line = next(line for line in f if line.startswith('VmHWM:'))
  return int(line.split()[1]) / 1024  # kB


def child_pipeline(dataset: str) -> dict:
  from tfp_glow import data

  rss_before = _peak_rss_mib()
  t0 = time.perf_counter()
  ds, info = data.load_dataset(dataset, 'train', batch_size=64, seed=0)
  it = iter(ds)
  next(it)
  first = time.perf_counter() - t0
  t1, n = time.perf_counter(), 0
  for batch in it:
    n += int(batch.shape[0])
  seconds = time.perf_counter() - t1
  return dict(
    images_per_second=n / seconds,
    first_batch_seconds=first,
    peak_rss_mib=_peak_rss_mib(),
    rss_after_import_mib=rss_before,
    num_examples=info.num_examples,
  )


def child_training(dataset: str, steps: int) -> dict:
  import tfp_glow
  from tfp_glow import data

  ds, info = data.load_dataset(dataset, 'train', batch_size=64, seed=0)
  model = tfp_glow.GlowModel(info.image_shape, 3, 8, 128, n_bins=info.n_bins, seed=0)
  model.compile(optimizer=tfp_glow.optim.default_optimizer(1e-3, warmup_steps=10))
  model.fit(ds.take(3), epochs=1, verbose=0)  # traces and initializes
  t0 = time.perf_counter()
  model.fit(ds.take(steps), epochs=1, verbose=0)
  return dict(images_per_second=steps * 64 / (time.perf_counter() - t0))


def _run(kind: str, dataset: str, steps: int) -> dict:
  code = (
    'import json, os, sys; os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3"); '
    f'sys.path.insert(0, {str(ROOT / "benchmarks")!r}); import data_pipeline as b; '
    f'print(json.dumps(b.child_{kind}({dataset!r}' + (f', {steps}' if kind == 'training' else '') + ')))'
  )
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=900)
  if out.returncode != 0:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--train-steps', type=int, default=8)
  parser.add_argument('--work', default='/tmp/tfp_glow_data_bench')
  args = parser.parse_args()
  work = pathlib.Path(args.work)
  sys.path.insert(0, str(ROOT))
  _generate(work)
  runs = {  # label: (kind, dataset)
    'folder PNG 32x32': ('pipeline', f'folder:{work / "png32_10k"}'),
    'folder JPEG 32x32': ('pipeline', f'folder:{work / "jpg32_10k"}'),
    'TFRecord PNG 32x32': ('pipeline', f'tfrecord:{work / "png32_10k_tfrecord"}'),
    'folder PNG 256x256': ('pipeline', f'folder:{work / "png256_1k"}'),
    'folder JPEG 256x256': ('pipeline', f'folder:{work / "jpg256_1k"}'),
    'TFRecord JPEG 256x256': ('pipeline', f'tfrecord:{work / "jpg256_1k_tfrecord"}'),
    'folder PNG 32x32, 100k images': ('pipeline', f'folder:{work / "png32_100k"}'),
    'training L=3 K=8 width 128, 32x32': ('training', f'folder:{work / "png32_10k"}'),
  }
  results: dict[str, list[dict]] = {label: [] for label in runs}
  loads = [os.getloadavg()]
  for r in range(args.rounds):
    for label, (kind, dataset) in runs.items():
      results[label].append(_run(kind, dataset, args.train_steps))
      print(json.dumps(dict(round=r, run=label, **results[label][-1])), flush=True)
    loads.append(os.getloadavg())
  med = {
    label: {k: statistics.median(row[k] for row in rows) for k in rows[0] if isinstance(rows[0][k], float)}
    for label, rows in results.items()
  }
  train = med['training L=3 K=8 width 128, 32x32']['images_per_second']
  small, large = med['folder PNG 32x32'], med['folder PNG 32x32, 100k images']
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT)
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  command = f'python benchmarks/data_pipeline.py --rounds {args.rounds}'
  metric = lambda name, value: dict(
    metric=name, value=value, command=command, commit=commit.stdout.strip(), date=date
  )  # noqa: E731
  pipeline_rows = [
    metric(
      f'input pipeline images/s, {label} (batch 64, shuffled, dequantized)', f'{m["images_per_second"]:.0f}'
    )
    for label, m in med.items()
    if label.startswith(('folder', 'TFRecord')) and '100k' not in label
  ]
  metrics = [
    *pipeline_rows,
    metric('training images/s, GlowModel L=3 K=8 width 128 at 32x32x3 (batch 64, CPU)', f'{train:.1f}'),
    metric(
      'input pipeline / training throughput at 32x32 (folder PNG; target >= 10x)',
      f'{small["images_per_second"] / train:.0f}x',
    ),
    metric(
      'time to first batch, folder of 32x32 PNGs: 10k / 100k images (target: ratio <= 1.2)',
      f'{small["first_batch_seconds"]:.2f} s / {large["first_batch_seconds"]:.2f} s '
      f'({large["first_batch_seconds"] / small["first_batch_seconds"]:.2f}x)',
    ),
    metric(
      'peak RSS over an epoch, folder of 32x32 PNGs: 10k / 100k images (target: ratio <= 1.2)',
      f'{small["peak_rss_mib"]:.0f} MiB / {large["peak_rss_mib"]:.0f} MiB '
      f'({large["peak_rss_mib"] / small["peak_rss_mib"]:.2f}x)',
    ),
  ]
  out = dict(command=command, date=date, commit=commit.stdout.strip(), load_average=loads, medians=med,
             rows=results, metrics=metrics)  # fmt: skip
  path = ROOT / 'benchmarks' / 'results' / 'data_pipeline.json'
  path.write_text(json.dumps(out, indent=2) + '\n')
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
