"""The paper's ablation (its figure 3) at small scale, on the offline digits, over several seeds.

Glow's figure 3 compares, on CIFAR-10 over 3 seeds: the 1x1 convolution against a fixed random shuffle and
against channel reversal, and affine against additive coupling. Here the same comparison on scikit-learn's
8x8 digits (n_bins = 17), with a small model (L=2, K=8, width 64) that trains in one to two minutes per run
on 2 CPU cores. Test bits/dim is measured after every epoch (the test split's 297 images), so the curves show
whether training has flattened:

  python benchmarks/ablation.py --epochs 100 --seeds 0 1 2 --out benchmarks/results/ablation
  python benchmarks/ablation.py --plot-only --out benchmarks/results/ablation   # redraw from the JSON
  python benchmarks/ablation.py --image-size 16 ...   # a harder set: digits upscaled to 16x16 (bilinear)

Prints one JSON line per run and a summary per variant (mean +- std over seeds of the last epoch's test
bits/dim, and of the mean of the last 10 epochs, which averages out the dequantization noise); writes
OUT.json (every curve) and OUT.png (mean +- std bands of test bits/dim against training steps).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfp_glow import GlowModel, data
from tfp_glow.training import optim  # noqa: E402

VARIANTS = {  # name -> (permutation, coupling)
  'reverse + affine': ('reverse', 'affine'),
  'shuffle + affine': ('shuffle', 'affine'),
  '1x1 conv + affine': ('conv_lu', 'affine'),
  '1x1 conv + additive': ('conv_lu', 'additive'),
}
BATCH = 64
TAIL = 10  # epochs averaged for the "last 10 epochs" figure


def _digits(split: str, image_size: int | None, seed: int) -> tf.data.Dataset:
  """The digits, optionally upscaled with bilinear interpolation (a smoother, harder-to-model set)."""
  bins, _ = data.load_digits(split)
  if image_size:
    x = tf.image.resize(tf.cast(bins, tf.float32), (image_size, image_size), method='bilinear')
    bins = tf.cast(tf.clip_by_value(tf.round(x), 0, data.DIGITS_BINS - 1), tf.int32).numpy()
  ds = tf.data.Dataset.from_tensor_slices(bins.astype(np.uint8))
  if split == 'train':
    ds = ds.shuffle(len(bins), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(BATCH)
  else:
    ds = ds.batch(len(bins))
  noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=(split == 'train')).batch(2)
  ds = tf.data.Dataset.zip((ds, noise)).map(lambda b, s: data.dequantize(b, data.DIGITS_BINS, seed=s))
  return ds.prefetch(2)


def run(permutation: str, coupling: str, seed: int, epochs: int, image_size: int | None) -> dict:
  keras.utils.set_random_seed(seed)
  train, test = _digits('train', image_size, seed), _digits('test', image_size, seed)
  shape = (image_size or 8, image_size or 8, 1)
  model = GlowModel(
    shape, levels=2, steps=8, width=64, coupling=coupling, permutation=permutation, n_bins=17, seed=seed
  )
  model.compile(optimizer=optim.default_optimizer(2e-3, warmup_steps=48))
  t0 = time.perf_counter()
  history = model.fit(train, validation_data=test, epochs=epochs, verbose=0)
  test_curve = [round(v, 4) for v in history.history['val_bits_per_dim']]
  return dict(
    test_bits_per_dim=test_curve[-1],
    test_bits_per_dim_last10=round(float(np.mean(test_curve[-TAIL:])), 4),
    train_bits_per_dim=round(history.history['bits_per_dim'][-1], 4),
    seconds=round(time.perf_counter() - t0, 1),
    test_curve=test_curve,
  )


def summarize(runs: list[dict]) -> list[str]:
  lines = []
  for name in VARIANTS:
    mine = [r for r in runs if r['variant'] == name]
    if not mine:
      continue
    last = np.array([r['test_bits_per_dim'] for r in mine])
    tail = np.array([r['test_bits_per_dim_last10'] for r in mine])
    lines.append(
      f'{name:22s} test bits/dim, last epoch {last.mean():.4f} +- {last.std(ddof=1) if len(last) > 1 else 0:.4f}; '
      f'last {TAIL} epochs {tail.mean():.4f} +- {tail.std(ddof=1) if len(tail) > 1 else 0:.4f} '
      f'(seeds {[r["seed"] for r in mine]}: {", ".join(f"{v:.4f}" for v in tail)})'
    )
  return lines


def plot(runs: list[dict], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, (full, zoom) = plt.subplots(1, 2, figsize=(11, 4))
  for name in VARIANTS:
    curves = np.array([r['test_curve'] for r in runs if r['variant'] == name])
    if not len(curves):
      continue
    steps = np.arange(1, curves.shape[1] + 1) * runs[0]['steps_per_epoch']
    mean, std = curves.mean(0), curves.std(0, ddof=1) if len(curves) > 1 else np.zeros(curves.shape[1])
    for ax in (full, zoom):
      (line,) = ax.plot(steps, mean, label=f'{name} ({len(curves)} seed{"s" if len(curves) > 1 else ""})')
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.25)
  full.set_ylim(top=min(full.get_ylim()[1], 3.2))
  half = steps[len(steps) // 2]
  zoom.set_xlim(half, steps[-1])
  tails = np.array([r['test_curve'][len(steps) // 2 :] for r in runs])
  zoom.set_ylim(tails.min() - 0.02, tails.max() + 0.02)
  zoom.set_title('second half, zoomed')
  full.set_title(title)
  for ax in (full, zoom):
    ax.set_xlabel('training steps (batch 64)')
    ax.set_ylabel('test bits/dim (mean +- std over seeds)')
    ax.grid(alpha=0.3)
  full.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--epochs', type=int, default=100)
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--image-size', type=int, help='upscale the digits to SIZE x SIZE (bilinear)')
  parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS), metavar='NAME')
  parser.add_argument('--out', default='benchmarks/results/ablation', help='writes OUT.json and OUT.png')
  parser.add_argument('--plot-only', action='store_true', help='redraw OUT.png and the summary from OUT.json')
  args = parser.parse_args()
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  size = args.image_size or 8
  title = f'Glow ablation on the digits ({size}x{size}), L=2, K=8, width 64'
  if args.plot_only:
    with open(args.out + '.json') as f:
      runs = json.load(f)['runs']
  else:
    runs = []
    steps_per_epoch = math.ceil((data.load_digits('train')[0].shape[0]) / BATCH)
    for seed in args.seeds:  # seeds outermost: variants alternate, so machine noise spreads evenly
      for name in args.variants:
        permutation, coupling = VARIANTS[name]
        result = run(permutation, coupling, seed, args.epochs, args.image_size)
        result = dict(variant=name, seed=seed, epochs=args.epochs, steps_per_epoch=steps_per_epoch, **result)
        runs.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != 'test_curve'}), flush=True)
        with open(args.out + '.json', 'w') as f:  # after every run: a killed sweep keeps what it did
          json.dump(dict(args=vars(args), runs=runs), f)
  for line in summarize(runs):
    print(line)
  plot(runs, args.out + '.png', title)
  print(f'wrote {args.out}.json, {args.out}.png')


if __name__ == '__main__':
  main()
