"""scikit-learn's bundled 8x8 digits: the offline default data set."""

from __future__ import annotations

import numpy as np

DIGITS_BINS = 17  # scikit-learn's digits hold the integers 0..16: 17 levels, not 8-bit pixels
DIGITS_TEST_SIZE = 297  # 1797 images -> 1500 train + 297 test
_SPLIT_SEED = 0  # fixed: the train-test split must not depend on the user's seed


def check_split(split: str) -> None:
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_digits(split: str = 'train') -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's bundled 8x8 digits: (bins int32 `[N, 8, 8, 1]` in [0, 17), labels int32 `[N]`).

  Fixed split: a permutation with a fixed seed, of which the last 297 images are "test", the rest
  (1500) "train". Needs no network.
  """
  check_split(split)
  from sklearn.datasets import load_digits as sk_load_digits  # lazy: only this data set needs sklearn

  digits = sk_load_digits()
  order = np.random.RandomState(_SPLIT_SEED).permutation(len(digits.target))
  order = order[:-DIGITS_TEST_SIZE] if split == 'train' else order[-DIGITS_TEST_SIZE:]
  bins = digits.images[order].astype(np.int32)[..., None]
  return bins, digits.target[order].astype(np.int32)
