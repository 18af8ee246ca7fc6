"""Training precision: float32, or a Keras mixed policy for the networks inside the flow.

Only the coupling and prior networks compute in low precision (`tfp_glow.bijectors.nets.network_policy`);
actnorm, the 1x1 convolutions, the coupling arithmetic, log-determinants and priors stay float32.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras

from tfp_glow.names import MIXED_POLICIES as MIXED_POLICIES  # re-exported: imported from here before
from tfp_glow.names import PRECISIONS as PRECISIONS


@contextlib.contextmanager
def global_policy(name: str) -> Iterator[None]:
  """Keras' global dtype policy set to `name` ('float32' or one of MIXED_POLICIES) inside the block,
  the previous one restored after it. A GlowModel built and compiled inside computes its networks in
  that precision (and, for 'mixed_float16', trains with loss scaling)."""
  if name not in PRECISIONS:
    raise ValueError(f'precision must be one of {PRECISIONS}, got {name!r}.')
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)
