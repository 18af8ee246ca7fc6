"""The rational-quadratic spline transform of a coupling (Durkan et al. 2019, "Neural Spline Flows"): its value
and log-det (`Spline.couple`), exact inverse (`Spline.uncouple`), and its vector-Jacobian product written out by
hand (`Spline.couple_vjp`), which the training step's gradient kernels call instead of re-tracing the spline
under a tape (`tfp_glow.flow.kernels`) and which is `couple`'s gradient under TensorFlow's autodiff. One of the
coupling transforms of `tfp_glow.bijectors.transforms`.

Why a hand-written VJP: the spline is ~100 small elementwise ops on [N, H, W, C_b] tensors; TensorFlow's own
gradient of them is 2-3 times as many ops (each binary op's gradient also reduces and reshapes for
broadcasting, with the batch size unknown at trace time), and the kernels' tape has to run the forward ops a
second time to record them. `couple_vjp` recomputes only the intermediates it needs from (x_b, h) and takes the
chain rule through them in one pass, storing nothing. It is exact (the same math; tests/test_couplings.py
compares it with TensorFlow's gradient of the same ops in float64), and since it is itself made of
differentiable ops of (x_b, h), higher orders through it are exact too (tests/test_autodiff_modes.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, TypeAlias

import tensorflow as tf

Tensor: TypeAlias = tf.Tensor


def _sum_per_image(t: Tensor) -> Tensor:
  return tf.reduce_sum(t, axis=[1, 2, 3])


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

  # ---- the pieces, each a list over bins of [N, H, W, C_b] tensors ----------------------------------------
  # Why lists, not a [.., K + 1] axis: K is small, and softmax, cumsum and the bin's pick over a last axis of
  # a few numbers are slow (reductions and one-hot products over a tiny inner axis, and their gradients),
  # while a few elementwise ops on [N, H, W, C_b] tensors per bin are cheap.

  def _logits(self, h: Tensor, channels: int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """h [N, H, W, C_b * (3K - 1)] (channel-major) -> the K width logits u, K height logits v and K - 1
    derivative logits s, each [N, H, W, C_b]."""
    k = self.bins
    h = tf.reshape(h, tf.concat([tf.shape(h)[:-1], [channels, self.params_per_channel]], 0))
    params = tf.unstack(h, num=self.params_per_channel, axis=-1)
    return params[:k], params[k : 2 * k], params[2 * k :]

  def _knots(self, logits: list[Tensor], minimum: float) -> tuple[list[Tensor | float], list[Tensor]]:
    """The knots -B = k_0 < ... < k_K = B (k_0 and k_K as numbers) and Q_j = 2B (1 - K m) softmax(logits)_j,
    bin j's size above its minimum 2B m (what the VJP of the softmax needs): k_i = k_{i-1} + 2B m + Q_{i-1}."""
    k, two_b = self.bins, 2 * self.bound
    top = logits[0]
    for logit in logits[1:]:
      top = tf.maximum(top, logit)
    top = tf.stop_gradient(top)  # softmax is shift-invariant: the max only guards exp from overflow
    exps = [tf.exp(logit - top) for logit in logits]
    scale = two_b * (1 - minimum * k) / tf.add_n(exps)
    extras = [e * scale for e in exps]
    inner: list[tf.Tensor] = []
    for q in extras[:-1]:  # the cumulative sum; the last knot is exactly B, not a rounded sum
      inner.append(q + (two_b * minimum - self.bound) if not inner else inner[-1] + two_b * minimum + q)
    return [-self.bound, *inner, self.bound], extras

  def _derivatives(self, s: list[Tensor]) -> list[Tensor | float]:
    """d_0 .. d_K: 1 at both ends, m_d + softplus(s_k + c) inside."""
    offset = math.log(math.expm1(1 - self.min_derivative))
    return [1.0, *(self.min_derivative + tf.nn.softplus(s_k + offset) for s_k in s), 1.0]

  def _masks(self, t: Tensor, knots: list) -> list[Tensor]:
    """Each bin's exact 0/1 mask for t (clamped): mask_k = [t >= k_k] - [t >= k_k+1], where [t >= k_0] = 1
    and [t >= k_K] counts as 0 (t = B is in the last bin). Picking a bin's number as sum_k mask_k value_k is
    exact (one term is the value, the others exact zeros), and products and sums are cheaper than selects
    on CPUs."""
    if self.bins == 1:
      return [tf.ones_like(t)]
    above = [tf.cast(t >= knot, t.dtype) for knot in knots[1:-1]]
    return [1 - above[0], *(above[i - 1] - above[i] for i in range(1, len(above))), above[-1]]

  def _parts(self, x_b: Tensor, h: Tensor, inverse: bool = False) -> dict:
    """What couple, uncouple and couple_vjp share: the knots, the clamped input, its bin's masks and the
    bin's (x_k, w, y_k, t, d0, d1). `inverse`: the bin is found among the y knots, for a latent z_b."""
    u, v, s = self._logits(h, x_b.shape[-1])
    xs, qx = self._knots(u, self.min_bin_width)
    ys, qy = self._knots(v, self.min_bin_height)
    ds = self._derivatives(s)
    bound = tf.constant(self.bound, x_b.dtype)
    inside = tf.abs(x_b) < bound
    x = tf.clip_by_value(x_b, -bound, bound)
    masks = self._masks(x, ys if inverse else xs)

    def pick(values: list) -> Tensor:
      return tf.add_n([mask * value for mask, value in zip(masks, values)])

    x_k, y_k = pick(xs[:-1]), pick(ys[:-1])
    return dict(
      s=s, qx=qx, qy=qy, inside=inside, x=x, masks=masks, x_k=x_k, w=pick(xs[1:]) - x_k,
      y_k=y_k, t=pick(ys[1:]) - y_k, d0=pick(ds[:-1]), d1=pick(ds[1:]),
    )  # fmt: skip

  # ---- the transform's protocol ----------------------------------------------------------------------------

  def couple(self, x_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """(z_b, log-det [N]); its gradient under TensorFlow's autodiff is `couple_vjp`, computed from x_b and h
    with differentiable ops, so that a gradient of that gradient (or a forward-mode derivative, which
    TensorFlow takes through it) is exact as well."""

    @tf.custom_gradient
    def spline(x_b, h):
      def gradient(dz_b, dlog_det):
        dz_b = tf.zeros_like(x_b) if dz_b is None else dz_b
        dlog_det = tf.zeros(tf.shape(x_b)[:1], x_b.dtype) if dlog_det is None else dlog_det
        dh, dx_b = self.couple_vjp(x_b, h, dz_b, dlog_det)
        return dx_b, dh

      return self.couple_value(x_b, h), gradient

    return spline(x_b, h)

  def couple_value(self, x_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """`couple` without its hand-written gradient (TensorFlow differentiates these ops as they are)."""
    p = self._parts(x_b, h)
    x, x_k, w, t, d0, d1 = p['x'], p['x_k'], p['w'], p['t'], p['d0'], p['d1']
    slope = t / w
    xi = (x - x_k) / w
    both = xi * (1 - xi)
    denominator = slope + (d0 + d1 - 2 * slope) * both  # shared by the value and its derivative
    y = p['y_k'] + t * (slope * xi**2 + d0 * both) / denominator
    derivative = slope**2 * (d1 * xi**2 + 2 * slope * both + d0 * (1 - xi) ** 2) / denominator**2
    log_det = tf.where(p['inside'], tf.math.log(derivative), tf.zeros_like(x))
    return tf.where(p['inside'], y, x_b), _sum_per_image(log_det)

  def uncouple(self, z_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    p = self._parts(z_b, h, inverse=True)
    y, y_k, t, x_k, w, d0, d1 = p['x'], p['y_k'], p['t'], p['x_k'], p['w'], p['d0'], p['d1']
    slope = t / w
    dy = y - y_k
    curvature = d0 + d1 - 2 * slope
    a = t * (slope - d0) + dy * curvature
    b = t * d0 - dy * curvature
    c = -slope * dy
    discriminant = tf.maximum(b**2 - 4 * a * c, 0.0)  # >= 0 in exact arithmetic; rounding may dip below
    xi = (2 * c) / (-b - tf.sqrt(discriminant))
    x = x_k + xi * w
    log_det = tf.where(p['inside'], -tf.math.log(_spline_derivative(slope, xi, d0, d1)), tf.zeros_like(y))
    return tf.where(p['inside'], x, z_b), _sum_per_image(log_det)

  def couple_vjp(self, x_b: Tensor, h: Tensor, dz_b: Tensor, dlog_det: Tensor) -> tuple[Tensor, Tensor]:
    """The VJP of `couple` at (x_b, h) with cotangents dz_b (x_b's shape) and dlog_det ([N]):
    (dh [h's shape], dx_b), first order, by the chain rule through the formulas of the class docstring.

    Inside [-B, B], with A = d1 xi^2 + 2 S xi(1 - xi) + d0 (1 - xi)^2 and den the denominator, so that
    y = y_k + t num / den and log dy/dx = 2 log S + log A - 2 log den (g_y, g_l the cotangents there):
      d num = g_y t / den;   d den = -d num (num / den) - 2 g_l / den;   d A = g_l / A
      d S, d xi, d d0, d d1 from num, A and den;  then xi = (x - x_k) / w and S = t / w give d x, d x_k,
      d w, d t;  w = x_{k+1} - x_k and t = y_{k+1} - y_k give the bin's four knots' cotangents.
    Each interior knot i collects mask_i d x_k + mask_{i-1} d x_{k+1} (and so for y and d); a knot is -B
    plus the sizes of the bins below it, a size is 2B m + Q_j with Q_j = 2B (1 - K m) softmax(u)_j, so
      d size_j = sum_{i > j} d knot_i,   d u_j = Q_j (d size_j - sum_l Q_l d size_l / (2B (1 - K m)))
    and d s_i = d d_i sigmoid(s_i + c). Outside [-B, B]: d x_b = dz_b, dh = 0.
    """
    p = self._parts(x_b, h)
    inside, x_k, w, t, d0, d1 = p['inside'], p['x_k'], p['w'], p['t'], p['d0'], p['d1']
    zero = tf.zeros_like(x_b)
    g_y = tf.where(inside, dz_b, zero)
    g_l = tf.where(inside, tf.reshape(dlog_det, [-1, 1, 1, 1]) + zero, zero)
    slope = t / w
    xi = (p['x'] - x_k) / w
    xi_c = 1 - xi
    both = xi * xi_c
    curvature = d0 + d1 - 2 * slope
    inverse_den = 1 / (slope + curvature * both)
    ratio = (slope * xi**2 + d0 * both) * inverse_den  # y = y_k + t ratio
    d_num = g_y * t * inverse_den
    d_den = -(d_num * ratio) - 2 * g_l * inverse_den
    d_a = g_l / (d1 * xi**2 + 2 * slope * both + d0 * xi_c**2)
    d_den_both = d_den * both
    d_slope = 2 * g_l / slope + d_num * xi**2 + 2 * d_a * both + d_den - 2 * d_den_both
    d_d0 = d_num * both + d_a * xi_c**2 + d_den_both
    d_d1 = d_a * xi**2 + d_den_both
    d_both = d_num * d0 + 2 * slope * d_a + d_den * curvature
    d_xi = 2 * slope * xi * d_num + 2 * d_a * (d1 * xi - d0 * xi_c) + d_both * (1 - 2 * xi)
    q = d_xi / w  # = d x (the clamp passes the gradient inside)
    r = d_slope / w
    d_t = g_y * ratio + r
    d_w = -(q * xi + r * slope)
    # The knots' cotangents: x_k and x_{k+1} are the bin's lower and upper knot (w = x_{k+1} - x_k).
    d_u = self._knots_vjp(p['masks'], -q - d_w, d_w, p['qx'], self.min_bin_width)
    d_v = self._knots_vjp(p['masks'], g_y - d_t, d_t, p['qy'], self.min_bin_height)
    masks, offset = p['masks'], math.log(math.expm1(1 - self.min_derivative))
    d_s = [
      (masks[i] * d_d0 + masks[i - 1] * d_d1) * tf.sigmoid(s_i + offset) for i, s_i in enumerate(p['s'], 1)
    ]
    dh = tf.reshape(tf.stack([*d_u, *d_v, *d_s], axis=-1), tf.shape(h))
    return dh, tf.where(inside, q, dz_b)

  def _knots_vjp(self, masks, d_lower, d_upper, extras, minimum) -> list[Tensor]:
    """The logits' cotangents from those of the bin's lower and upper knot (see `couple_vjp`; `extras`: the
    Q_j of `_knots`)."""
    k = self.bins
    if k == 1:
      return [tf.zeros_like(d_lower)]  # one bin: [-B, B] whatever the logit
    d_knots = [masks[i] * d_lower + masks[i - 1] * d_upper for i in range(1, k)]  # knots 1 .. K-1
    d_sizes, running = [], None  # d size_j = sum of the knots' cotangents above j (a reverse cumulative sum)
    for d in reversed(d_knots):
      running = d if running is None else running + d
      d_sizes.append(running)
    d_sizes.reverse()  # sizes 0 .. K-2; size K-1 moves no knot
    # softmax: d u_j = Q_j (d size_j - sum_l Q_l d size_l / (2B (1 - K m)))
    dot = tf.add_n([q * d for q, d in zip(extras, d_sizes)]) * (1 / (2 * self.bound * (1 - k * minimum)))
    return [q * (d - dot) for q, d in zip(extras, d_sizes)] + [-extras[-1] * dot]


def _spline_derivative(slope: Tensor, xi: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
  """dy/dx of the rational-quadratic bin at xi (see `Spline`):
  S^2 (d1 xi^2 + 2 S xi (1 - xi) + d0 (1 - xi)^2) / (S + (d0 + d1 - 2 S) xi (1 - xi))^2."""
  both = xi * (1 - xi)
  denominator = slope + (d0 + d1 - 2 * slope) * both
  return slope**2 * (d1 * xi**2 + 2 * slope * both + d0 * (1 - xi) ** 2) / denominator**2
