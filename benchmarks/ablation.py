"""The paper's ablation (its figure 3) at small scale, on the offline digits.

Glow's figure 3 compares, on CIFAR-10 over 3 seeds: the 1x1 convolution against a fixed random shuffle and
against channel reversal, and affine against additive coupling. Here the same comparison on scikit-learn's
8x8 digits (n_bins = 17), with a small model that trains in about a minute per run on 2 CPU cores:

  python benchmarks/ablation.py [--epochs 40] [--seeds 0 1]

Prints one JSON line per run (test bits/dim at the end, seconds) and a summary per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfp_glow import GlowModel, data, optim  # noqa: E402

VARIANTS = {  # name -> (permutation, coupling)
  'reverse + affine': ('reverse', 'affine'),
  'shuffle + affine': ('shuffle', 'affine'),
  '1x1 conv + affine': ('conv_lu', 'affine'),
  '1x1 conv + additive': ('conv_lu', 'additive'),
}


def run(permutation: str, coupling: str, seed: int, epochs: int) -> dict:
  keras.utils.set_random_seed(seed)
  train, info = data.load_dataset('digits', 'train', batch_size=64, seed=seed)
  test, _ = data.load_dataset('digits', 'test', batch_size=297, shuffle=False, seed=seed)
  model = GlowModel(
    info.image_shape,
    levels=2,
    steps=8,
    width=64,
    coupling=coupling,
    permutation=permutation,
    n_bins=info.n_bins,
    seed=seed,
  )
  model.compile(optimizer=optim.default_optimizer(2e-3, warmup_steps=48))
  t0 = time.perf_counter()
  history = model.fit(train, validation_data=test, epochs=epochs, verbose=0)
  return dict(
    test_bits_per_dim=round(history.history['val_bits_per_dim'][-1], 4),
    train_bits_per_dim=round(history.history['bits_per_dim'][-1], 4),
    seconds=round(time.perf_counter() - t0, 1),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--epochs', type=int, default=40)
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
  args = parser.parse_args()
  results = {name: [] for name in VARIANTS}
  for seed in args.seeds:  # seeds outermost: variants alternate, so machine noise spreads evenly
    for name, (permutation, coupling) in VARIANTS.items():
      result = run(permutation, coupling, seed, args.epochs)
      results[name].append(result['test_bits_per_dim'])
      print(json.dumps(dict(variant=name, seed=seed, epochs=args.epochs, **result)), flush=True)
  for name, values in results.items():
    print(f'{name:22s} test bits/dim {np.mean(values):.3f} +- {np.std(values):.3f} over seeds {args.seeds}')


if __name__ == '__main__':
  main()
