"""A seeded Glow's initial weights: every random draw made while the flow is built comes from its `seed`.

Keras 3 draws the seed of an unseeded initializer (`GlorotUniform()`, `'glorot_uniform'`, a user's own layer's
defaults) from Python's `random` module (`keras.random.make_default_seed`), which `keras.utils.set_random_seed`
seeds globally. A `Glow(seed=s)` must give the same weights in every process without the user touching global
state, so it builds its layers inside `initializers_seeded_by(s)`: Python's `random` is seeded from s for the
build and restored afterwards (the caller's own random stream is not consumed). With seed None nothing changes:
the weights are random, or follow `keras.utils.set_random_seed` as in any Keras model.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator


@contextlib.contextmanager
def initializers_seeded_by(seed: int | None, purpose: str = 'flow') -> Iterator[None]:
  """Within: Keras initializers without a seed of their own draw from `seed` (None: untouched). `purpose`
  names the stream (the flow's, a dequantizer's): two parts of one model seeded alike draw differently."""
  if seed is None:
    yield
    return
  state = random.getstate()
  # A stream of its own, apart from the permutations' numpy stream drawn from the same seed.
  random.seed(f'tfp_glow {purpose} initial weights {seed}')
  try:
    yield
  finally:
    random.setstate(state)
