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
with `uncouple`, so a new transform gets the fast paths without touching them; a transform may also offer
`couple_vjp(x_b, h, dz_b, dlog_det) -> (dh, dx_b)`, its first-order VJP by hand, which they then call instead
of the tape (the spline does: `tfp_glow.bijectors.spline`, in a module of its own for its size).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, TypeAlias, cast

import tensorflow as tf

from tfp_glow.bijectors.spline import Spline  # (re-exported: `transforms.Spline`)

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
