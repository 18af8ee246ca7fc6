"""The splits of a coupling: which elements condition (x_a) and which are transformed (x_b).

A coupling (`tfp_glow.bijectors.coupling.Coupling`) is split -> conditioner -> transform:

  x_a, x_b, kept = split.divide(x, parity)          x_a: the conditioner's input, an image [N, H, W, C_a]
  h_b = split.select(NN(x_a), parity)               the conditioner's numbers for x_b's elements only
  z_b, log|det| = transform.couple(x_b, h_b);   z = split.join(kept, z_b, parity)

(Not the multi-scale exit, `tfp_glow.bijectors.split.SplitPrior`.) Registered:

  'channel'       x_a = x[..., :C//2], x_b = x[..., C//2:]: Glow's, the default. C_a = C//2, and the conditioner
                  outputs (C - C//2) P channels (P = the transform's `params_per_channel`).
  'checkerboard'  RealNVP's spatial mask (Dinh et al. 2017): pixel (i, j) conditions where (i + j) % 2 == parity
  'stripes'       alternate rows: row i conditions where i % 2 == parity

A spatial split conditions on the masked image x_a = x * m (m [H, W, 1], 1 on the conditioning pixels; C_a = C)
and transforms every channel of the other pixels, gathered as x_b [N, H W / 2, 1, C]; the conditioner outputs
C P channels, of which those pixels' are used. The Jacobian is block-triangular (x_a passes unchanged, x_b moves
elementwise given x_a), so the log-det is exactly the transform's, summed over x_b. The parity alternates over a
level's steps (step k: (parity + k) % 2, a saved int variable of the stack, since a 1x1 convolution mixes
channels but never moves a pixel); both parities must split the pixels evenly (H W even; H even for stripes).

Each split is a frozen dataclass of its settings with `name`, `spatial`, `conditioner_channels(C)`,
`transformed_channels(C)`, `check(shape, who)`, `divide`, `select`, `join`. Adding one: a class here and one line
in `SPLITS`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Sequence

import numpy as np
import tensorflow as tf

# A step's parity: a Python int or an int32 scalar tensor (a stack's saved `split_parity[k]`).
Parity = Any


@dataclasses.dataclass(frozen=True)
class Channel:
  """Glow's channel halves: x_a = x[..., :C//2] conditions, x_b = x[..., C//2:] is transformed."""

  name: ClassVar[str] = 'channel'
  spatial: ClassVar[bool] = False  # the hand-built conv kernels (`tfp_glow.flow.kernels`) assume this split

  def conditioner_channels(self, channels: int) -> int:
    return channels // 2

  def transformed_channels(self, channels: int) -> int:
    return channels - channels // 2

  def check(self, shape: Sequence[int | None], who: str) -> None:
    if shape[-1] is not None and shape[-1] < 2:
      raise ValueError(f'{who}: the channel split needs >= 2 channels, got shape {tuple(shape)}.')

  def divide(self, x: tf.Tensor, parity: Parity = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    # tf.split, not two slices: its gradient is one concat, where each slice's gradient would be a
    # full-size zero-padded tensor, added up afterwards.
    x_a, x_b = tf.split(x, [x.shape[-1] // 2, x.shape[-1] - x.shape[-1] // 2], axis=-1)
    return x_a, x_b, x_a

  def select(self, h: tf.Tensor, parity: Parity = None) -> tf.Tensor:
    return h

  def join(self, kept: tf.Tensor, z_b: tf.Tensor, parity: Parity = None) -> tf.Tensor:
    return tf.concat([kept, z_b], axis=-1)


@dataclasses.dataclass(frozen=True)
class _Mask:
  """A spatial split by a fixed pixel mask (see the module's docstring); `parity` (0 or 1): which pixels
  condition at the first step."""

  parity: int = 0

  name: ClassVar[str]
  requirement: ClassVar[str]  # the sizes it splits evenly, for the error message
  spatial: ClassVar[bool] = True

  def __post_init__(self):
    if self.parity not in (0, 1) or isinstance(self.parity, bool):
      raise ValueError(f'{type(self).__name__}: parity must be 0 or 1, got {self.parity!r}.')

  def conditioner_channels(self, channels: int) -> int:
    return channels

  def transformed_channels(self, channels: int) -> int:
    return channels

  @staticmethod
  def conditioning(h: int, w: int) -> np.ndarray:
    """[H, W] bool: the conditioning pixels at parity 0."""
    raise NotImplementedError

  def check(self, shape: Sequence[int | None], who: str) -> None:
    """Refuses a size whose two parities split the pixels unevenly (a stack's steps share one shape)."""
    h, w = shape[-3], shape[-2]
    if h is not None and w is not None and self.conditioning(h, w).sum() * 2 != h * w:
      raise ValueError(
        f'{who}: the {self.name!r} split needs the pixels split evenly ({self.requirement}), got {h}x{w}.'
      )

  def _tables(self, x: tf.Tensor, parity: Parity):
    """(mask [H, W, 1], order [H W], inverse order [H W]) at `parity` (a Python int or an int32 scalar):
    order lists the conditioning pixels first, then the transformed ones."""
    h, w = x.shape[-3], x.shape[-2]
    self.check(x.shape, self.name)
    masks, orders, inverses = _mask_tables(self.name, h, w)
    return tuple(
      tf.gather(tf.constant(t), parity) for t in (masks.astype(x.dtype.as_numpy_dtype), orders, inverses)
    )

  def divide(self, x: tf.Tensor, parity: Parity = 0) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """x [N, H, W, C] -> (x * mask, x_b [N, H W / 2, 1, C], (x_a's values [N, H W / 2, C], H, W))."""
    mask, order, _ = self._tables(x, parity)
    h, w, c = x.shape[-3:]
    both = tf.gather(tf.reshape(x, [-1, h * w, c]), order, axis=1)
    kept, x_b = tf.split(both, 2, axis=1)
    return x * mask, x_b[:, :, tf.newaxis, :], (kept, h, w)

  def select(self, h: tf.Tensor, parity: Parity = 0) -> tf.Tensor:
    """The conditioner's output [N, H, W, C P] at the transformed pixels: [N, H W / 2, 1, C P]."""
    _, order, _ = self._tables(h, parity)
    rows, cols, c = h.shape[-3:]
    half = rows * cols // 2
    return tf.gather(tf.reshape(h, [-1, rows * cols, c]), order[half:], axis=1)[:, :, tf.newaxis, :]

  def join(self, kept: tuple[tf.Tensor, int, int], z_b: tf.Tensor, parity: Parity = 0) -> tf.Tensor:
    """The pixels back in place: [N, H, W, C] from `divide`'s (conditioning values, H, W) and z_b."""
    values, h, w = kept
    inverse = tf.gather(tf.constant(_mask_tables(self.name, h, w)[2]), parity)
    both = tf.concat([values, z_b[:, :, 0, :]], axis=1)
    return tf.reshape(tf.gather(both, inverse, axis=1), [-1, h, w, values.shape[-1]])


@dataclasses.dataclass(frozen=True)
class Checkerboard(_Mask):
  name: ClassVar[str] = 'checkerboard'
  requirement: ClassVar[str] = 'H * W even'

  @staticmethod
  def conditioning(h: int, w: int) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) % 2) == 0


@dataclasses.dataclass(frozen=True)
class Stripes(_Mask):
  name: ClassVar[str] = 'stripes'
  requirement: ClassVar[str] = 'H even'

  @staticmethod
  def conditioning(h: int, w: int) -> np.ndarray:
    return np.repeat((np.arange(h) % 2 == 0)[:, None], w, axis=1)


@functools.cache
def _mask_tables(name: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per parity (axis 0 of each): mask [2, H, W, 1], order [2, H W] (conditioning pixels first, row-major),
  inverse order [2, H W]."""
  first = SPLITS[name].conditioning(h, w).reshape(-1)
  masks, orders, inverses = [], [], []
  for condition in (first, ~first):
    order = np.concatenate([np.flatnonzero(condition), np.flatnonzero(~condition)]).astype(np.int32)
    masks.append(condition.reshape(h, w, 1))
    orders.append(order)
    inverses.append(np.argsort(order).astype(np.int32))
  return np.stack(masks), np.stack(orders), np.stack(inverses)


Split = Channel | Checkerboard | Stripes
# Registry: the names `Coupling(split=...)` and `tfp_glow.flow.level.build_steps(split=...)` accept.
SPLITS: dict[str, Any] = {cls.name: cls for cls in (Channel, Checkerboard, Stripes)}


def split_from(spec: str | Split) -> Split:
  """A split from its registry name ('channel', 'checkerboard', 'stripes') or an instance (returned as is)."""
  if isinstance(spec, str):
    if spec in SPLITS:
      return SPLITS[spec]()
  elif isinstance(spec, tuple(SPLITS.values())):
    return spec
  raise ValueError(f'coupling split must be one of {tuple(SPLITS)} or an instance of one, got {spec!r}.')
