"""The elementwise transforms of a coupling: how the transformed half x_b moves, given the conditioner's output h.

A coupling (`tfp_glow.bijectors.coupling.Coupling`) is split -> conditioner -> transform:

  x_a, x_b = split(x);   h = NN(x_a);   z_b, log|det| = transform.couple(x_b, h);   z = concat(x_a, z_b)

Each transform here is a small frozen dataclass holding its settings (so it is also its spec, saved with a
model by name and settings), with the math image -> latent (`couple`, the paper's direction) and latent ->
image (`uncouple`), each returning the value and the log|det| of that map summed per image ([N], or [] when
it is the same for every image). h has `params_per_channel` numbers per transformed channel, laid out
channel-major: h [N, H, W, C_b * P] reshapes to [N, H, W, C_b, P], so one element's numbers are contiguous.
A conditioner whose last layer is zero-initialized gives h = 0 at the start; `Additive` and `Spline` are then
exactly the identity, `Affine` the paper's constant scale sigmoid(2).

Adding a transform: one class here with `name`, `params_per_channel`, `couple`, `uncouple`, and one line in
`TRANSFORMS`. The gradient kernels (`tfp_glow.flow.kernels`) differentiate `couple` under a tape and invert
with `uncouple`, so a new transform gets the fast paths without touching them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, TypeAlias, cast

import tensorflow as tf

Tensor: TypeAlias = tf.Tensor


def _sum_per_image(t: Tensor) -> Tensor:
  return tf.reduce_sum(t, axis=[1, 2, 3])


@dataclasses.dataclass(frozen=True)
class Affine:
  """The paper's affine transform (Kingma & Dhariwal 2018, section 3.3, after the reference code):

  shift, raw = h[..., :C_b], h[..., C_b:]       (the network's two halves)
  scale = sigmoid(raw + 2)                     in (0, 1); sigmoid(2) ~ 0.88 at h = 0
  z_b = (x_b + shift) * scale                  log|det| = sum log(scale)
  """

  name: ClassVar[str] = 'affine'
  params_per_channel: ClassVar[int] = 2

  def couple(self, x_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    shift, raw = tf.split(h, 2, axis=-1)
    raw = raw + 2.0
    return (x_b + shift) * tf.sigmoid(raw), _sum_per_image(tf.math.log_sigmoid(raw))

  def uncouple(self, z_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    shift, raw = tf.split(h, 2, axis=-1)
    raw = raw + 2.0
    return z_b / tf.sigmoid(raw) - shift, -_sum_per_image(tf.math.log_sigmoid(raw))


@dataclasses.dataclass(frozen=True)
class Additive:
  """NICE's additive transform (Dinh et al. 2015): z_b = x_b + h, log|det| = 0."""

  name: ClassVar[str] = 'additive'
  params_per_channel: ClassVar[int] = 1

  def couple(self, x_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    return x_b + h, tf.zeros([], x_b.dtype)

  def uncouple(self, z_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    return z_b - h, tf.zeros([], z_b.dtype)


@dataclasses.dataclass(frozen=True)
class Standardize:
  """The split prior's conditional Gaussian (`tfp_glow.bijectors.split.SplitPrior`) as a transform: h holds
  the mean and log-std of z_b given z_a,

    mean, log_std = h[..., :C_b], h[..., C_b:]
    eps_b = (z_b - mean) * exp(-log_std)         log|det| = -sum log_std

  so that a standard-normal eps_b is z_b drawn from N(mean, exp(log_std)). Not a coupling choice (not in
  `TRANSFORMS`): it is what a level's exit does.
  """

  name: ClassVar[str] = 'standardize'
  params_per_channel: ClassVar[int] = 2

  def couple(self, x_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    mean, log_std = tf.split(h, 2, axis=-1)
    return (x_b - mean) * tf.exp(-log_std), -_sum_per_image(log_std)

  def uncouple(self, z_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    mean, log_std = tf.split(h, 2, axis=-1)
    return mean + tf.exp(log_std) * z_b, _sum_per_image(log_std)


@dataclasses.dataclass(frozen=True)
class Spline:
  """The rational-quadratic spline of Durkan et al. 2019 ("Neural Spline Flows"), per element, with identity
  (linear) tails outside [-B, B].

  Per transformed element, h holds 3K - 1 numbers: K width logits u, K height logits v, K - 1 interior
  derivative logits s (K = `bins`, B = `bound`):
    widths  = 2B (m_w + (1 - K m_w) softmax(u))       knots x_0 = -B < x_1 < ... < x_K = B (cumulative)
    heights = 2B (m_h + (1 - K m_h) softmax(v))       knots y_0 = -B < ... < y_K = B
    d_k     = m_d + softplus(s_k + c),  c = log(exp(1 - m_d) - 1)    (d_0 = d_K = 1: continuous tails)
  In bin k, with w, t the bin's width and height, S = t / w, xi = (x - x_k) / w in [0, 1]:
    y = y_k + t (S xi^2 + d_k xi (1 - xi)) / (S + (d_k + d_{k+1} - 2 S) xi (1 - xi))
    dy/dx = S^2 (d_{k+1} xi^2 + 2 S xi (1 - xi) + d_k (1 - xi)^2) / (S + (d_k + d_{k+1} - 2 S) xi (1 - xi))^2
  The inverse solves that quadratic in xi (the numerically stable root, 2c / (-b - sqrt(b^2 - 4ac))).
  h = 0 gives equal bins and unit derivatives: exactly the identity (the constant c makes d = 1 there).
  Inputs are clamped to [-B, B] before the spline's math, so the branch not taken never makes a NaN or its
  gradient; the math runs in the flow's dtype (float32 under a mixed policy: the conditioner's output is
  cast before it reaches here).

  Defaults: Durkan et al.'s released CIFAR-10 8-bit image recipe (K = 4 bins, B = 3, minimum bin width,
  height and derivative 1e-3; they used K = 8 for ImageNet-64 and 2 for 5-bit data).
  """

  bins: int = 4
  bound: float = 3.0
  min_bin_width: float = 1e-3
  min_bin_height: float = 1e-3
  min_derivative: float = 1e-3

  name: ClassVar[str] = 'spline'

  def __post_init__(self) -> None:
    if not isinstance(self.bins, int) or isinstance(self.bins, bool) or self.bins < 1:
      raise ValueError(f'Spline: bins must be an integer >= 1, got {self.bins!r}.')
    if not (isinstance(self.bound, (int, float)) and math.isfinite(self.bound) and self.bound > 0):
      raise ValueError(f'Spline: bound must be a finite number > 0, got {self.bound!r}.')
    for field in ('min_bin_width', 'min_bin_height'):
      value = getattr(self, field)
      if not 0 <= value < 1 / self.bins:
        raise ValueError(f'Spline: {field} must be in [0, 1/bins) = [0, {1 / self.bins:g}), got {value!r}.')
    if not 0 <= self.min_derivative < 1:
      raise ValueError(f'Spline: min_derivative must be in [0, 1), got {self.min_derivative!r}.')

  @property
  def params_per_channel(self) -> int:
    return 3 * self.bins - 1

  def _knots(self, h: Tensor, channels: int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """From h [N, H, W, C_b * (3K - 1)]: the knot positions x_0..x_K, y_0..y_K and derivatives d_0..d_K,
    each a list of K + 1 tensors [N, H, W, C_b] (x_0 = y_0 = -B, x_K = y_K = B, d_0 = d_K = 1 as scalars).

    Why lists, not a [.., K + 1] axis: K is small, and softmax, cumsum and the bin's pick over a last axis
    of a few numbers are slow (reductions and one-hot products over a tiny inner axis, and their
    gradients), while a few elementwise ops on [N, H, W, C_b] tensors per bin are cheap."""
    k, dtype = self.bins, h.dtype
    h = tf.reshape(h, tf.concat([tf.shape(h)[:-1], [channels, self.params_per_channel]], 0))
    params = tf.unstack(h, num=self.params_per_channel, axis=-1)
    u, v, s = params[:k], params[k : 2 * k], params[2 * k :]
    bound = tf.constant(self.bound, dtype)

    def knots(logits: list[Tensor], minimum: float) -> list[Tensor]:
      top = logits[0]
      for logit in logits[1:]:
        top = tf.maximum(top, logit)
      top = tf.stop_gradient(top)  # softmax is shift-invariant: the max only guards exp from overflow
      exps = [tf.exp(logit - top) for logit in logits]
      scale = (1 - minimum * k) / tf.add_n(exps)
      inner, running = [], None
      for e in exps[:-1]:  # the cumulative sum; the last knot is exactly B, not a rounded sum
        size = minimum + e * scale
        running = size if running is None else running + size
        inner.append((2 * running - 1) * bound)
      return [-bound, *inner, bound]

    offset = tf.constant(math.log(math.expm1(1 - self.min_derivative)), dtype)
    one = tf.constant(1.0, dtype)
    derivatives = [one, *(self.min_derivative + tf.nn.softplus(s_k + offset) for s_k in s), one]
    return knots(u, self.min_bin_width), knots(v, self.min_bin_height), derivatives

  def _bin(self, knots: list[Tensor], t: Tensor, derivatives: list[Tensor], y_knots: list[Tensor]):
    """The bin of each element of t (clamped) by `knots`, and that bin's (x_k, w, y_k, t_k, d_k, d_k+1),
    picked as sum_k mask_k * value_k with exact 0/1 masks (mask_k = [t >= x_k] - [t >= x_k+1]): one term
    is the value, the others exact zeros, so the pick is exact; products and sums are cheaper than selects
    on CPUs, and so are their gradients (mask_k times the incoming gradient)."""
    k = self.bins
    if k == 1:
      masks = [tf.ones_like(t)]
    else:  # [t >= x_0] = 1 (t is clamped), [t >= x_K] counts as 0 (t = B is in the last bin)
      above = [tf.cast(t >= knots[i], t.dtype) for i in range(1, k)]
      masks = [1 - above[0], *(above[i - 1] - above[i] for i in range(1, k - 1)), above[-1]]

    def pick(values: list[Tensor]) -> Tensor:
      return tf.add_n([mask * value for mask, value in zip(masks, values)])

    x_k, y_k, d0 = pick(knots[:-1]), pick(y_knots[:-1]), pick(derivatives[:-1])
    return x_k, pick(knots[1:]) - x_k, y_k, pick(y_knots[1:]) - y_k, d0, pick(derivatives[1:])

  def couple(self, x_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    xs, ys, ds = self._knots(h, x_b.shape[-1])
    bound = tf.constant(self.bound, x_b.dtype)
    inside = tf.abs(x_b) < bound
    x = tf.clip_by_value(x_b, -bound, bound)
    x_k, w, y_k, t, d0, d1 = self._bin(xs, x, ds, ys)
    slope = t / w
    xi = (x - x_k) / w
    both = xi * (1 - xi)
    denominator = slope + (d0 + d1 - 2 * slope) * both  # shared by the value and its derivative
    y = y_k + t * (slope * xi**2 + d0 * both) / denominator
    derivative = slope**2 * (d1 * xi**2 + 2 * slope * both + d0 * (1 - xi) ** 2) / denominator**2
    log_det = tf.where(inside, tf.math.log(derivative), tf.zeros_like(x))
    return tf.where(inside, y, x_b), _sum_per_image(log_det)

  def uncouple(self, z_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    xs, ys, ds = self._knots(h, z_b.shape[-1])
    bound = tf.constant(self.bound, z_b.dtype)
    inside = tf.abs(z_b) < bound
    y = tf.clip_by_value(z_b, -bound, bound)
    y_k, t, x_k, w, d0, d1 = self._bin(ys, y, ds, xs)
    slope = t / w
    dy = y - y_k
    curvature = d0 + d1 - 2 * slope
    a = t * (slope - d0) + dy * curvature
    b = t * d0 - dy * curvature
    c = -slope * dy
    discriminant = tf.maximum(b**2 - 4 * a * c, 0.0)  # >= 0 in exact arithmetic; rounding may dip below
    xi = (2 * c) / (-b - tf.sqrt(discriminant))
    x = x_k + xi * w
    log_det = tf.where(inside, -tf.math.log(_spline_derivative(slope, xi, d0, d1)), tf.zeros_like(y))
    return tf.where(inside, x, z_b), _sum_per_image(log_det)


def _spline_derivative(slope: Tensor, xi: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
  """dy/dx of the rational-quadratic bin at xi (see `Spline`):
  S^2 (d1 xi^2 + 2 S xi (1 - xi) + d0 (1 - xi)^2) / (S + (d0 + d1 - 2 S) xi (1 - xi))^2."""
  both = xi * (1 - xi)
  denominator = slope + (d0 + d1 - 2 * slope) * both
  return slope**2 * (d1 * xi**2 + 2 * slope * both + d0 * (1 - xi) ** 2) / denominator**2


Transform = Affine | Additive | Spline | Standardize
# Registry: the names `Glow(coupling=...)`, `GlowModel` and the CLI accept.
TRANSFORMS: dict[str, type] = {cls.name: cls for cls in (Affine, Additive, Spline)}


def transform_from(spec: str | Transform) -> Transform:
  """A transform from its registry name ('affine', 'additive', 'spline') or an instance (returned as is)."""
  if isinstance(spec, (*TRANSFORMS.values(), Standardize)):
    return cast(Transform, spec)  # (type checkers cannot narrow through the registry)
  if isinstance(spec, str) and spec in TRANSFORMS:
    return TRANSFORMS[spec]()
  raise ValueError(
    f'coupling transform must be one of {tuple(TRANSFORMS)} or an instance of one, got {spec!r}.'
  )
