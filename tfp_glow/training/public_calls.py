"""GlowModel's user-facing calls: log p(x), sampling, encoding, decoding, interpolation and bits/dim.

Each call checks its arguments here, in Python (errors raised before any tracing), then runs one cached
tf.function (`tfp_glow.training.compiled`: traced once, reused for any n, batch, temperature or labels).
Inside a graph (a Keras `predict`, the user's own tf.function) or under a gradient tape it runs inline
instead, through the distribution (`GlowDistribution`), so every autodiff mode gives plain autodiff's answer.

A mixin: `GlowModel` (tfp_glow/training/model.py) composes it with keras.Model, and gives it what it reads:
`distribution`, `glow`, `dequantizer`, `n_bins`, `num_dims`, `bits_per_dim` (trainer.py), `_check_images` /
`_check_labels` and `_tfp` (its `calls`, a `CompiledCalls`, and a cache for `evaluate_bits_per_dim`'s log p).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeAlias

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_glow import checks
from tfp_glow import data as glow_data
from tfp_glow import dequantization as dequant
from tfp_glow.training.compiled import use_compiled

if TYPE_CHECKING:
  from tfp_glow.dequantization import VariationalDequantizer
  from tfp_glow.distribution import GlowDistribution

Images: TypeAlias = tf.Tensor | np.ndarray  # [N, H, W, C], in [-0.5, 0.5)
Labels: TypeAlias = (
  tf.Tensor | np.ndarray | int | None
)  # int [N] (or a scalar label), for a class-conditional model


class PublicCalls:
  """log_prob, sample, encode, decode, interpolate and evaluate_bits_per_dim of a GlowModel."""

  # What GlowModel gives this mixin (see the module docstring); annotations only.
  glow: Any  # the Glow bijector (training/ imports the flow only to build it, in model.py)
  distribution: GlowDistribution
  dequantizer: VariationalDequantizer | None
  n_bins: int
  num_dims: int
  _tfp: Any
  bits_per_dim: Callable[[tf.Tensor], tf.Tensor]
  _check_images: Callable[..., tf.Tensor]
  _check_labels: Callable[..., tf.Tensor | None]

  def call(self, inputs: Images | tuple[Images, Labels]) -> tf.Tensor:
    """log p(x) [N] per image (nats); `inputs` is images, or (images, labels) for a conditional model."""
    images, labels = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
    return self.log_prob(images, labels)

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def log_prob(self, images: Images, labels: Labels = None) -> tf.Tensor:
    """log p(x) [N] of images [N, H, W, C] in [-0.5, 0.5) (continuous density)."""
    images = self._check_images(images)
    labels = self._check_labels(labels, required=True)
    per_image = _per_image_labels(labels, int(images.shape[0])) if use_compiled() else False
    if per_image is False:  # inside a graph, or labels to broadcast as TFP does (or to refuse)
      return self.distribution.log_prob(images, labels=labels)
    return self._tfp.calls.log_prob(images, per_image)

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def sample(
    self,
    n: int | tf.Tensor,
    temperature: float | tf.Tensor = 1.0,
    labels: Labels = None,
    as_uint8: bool = True,
    seed: int | Sequence[int] | tf.Tensor | None = None,
    batch_size: int | None = None,
  ) -> tf.Tensor:
    """n images at a temperature (T = 0.7 looks best in the paper): uint8 [n, H, W, C] in
    0..255 (quantized to n_bins levels), or floats in the model's [-0.5, 0.5) scale.

    n: a Python integer or a scalar integer tensor (as TFP's `sample`). The images are drawn
    `batch_size` at a time (default: about 4M pixels a batch, see `sample_batch_size`), so memory
    stays bounded whatever n; with a `seed` (TFP's stateless seed, e.g. (1, 2)) the result is
    reproducible, and for n <= batch_size equals `distribution.sample(n, temperature=T, seed=seed)`
    (larger n: batch i uses the seed folded with i)."""
    n = _sample_count(n)
    temperature = _sample_temperature(temperature)
    labels = self._check_labels(labels, required=True, batch=n)
    if not use_compiled():  # inside a graph (n may be symbolic) or under a tape: one uncompiled batch
      x = self.distribution.sample(n, temperature=temperature, labels=labels, seed=seed)
      return glow_data.to_uint8(x, self.n_bins) if as_uint8 else x
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
      raise ValueError(f'sample: batch_size must be an integer >= 1, got {batch_size!r}.')
    batch = int(batch_size or self.sample_batch_size)
    seed = None if seed is None else tfp.random.sanitize_seed(seed)
    temperature = tf.constant(temperature, self.glow.dtype)
    parts = []
    for i, start in enumerate(range(0, max(n, 1), batch)):  # n = 0: one empty batch
      m = min(batch, n - start)
      batch_seed = seed if seed is None or n <= batch else tf.random.experimental.stateless_fold_in(seed, i)
      batch_labels = None if labels is None else labels[start : start + m]
      parts.append(self._tfp.calls.sample(tf.constant(m), temperature, batch_labels, batch_seed, as_uint8))
    return parts[0] if len(parts) == 1 else tf.concat(parts, 0)

  @property
  def sample_batch_size(self) -> int:
    """How many images `sample` draws per batch by default: about 2**22 pixels (H * W * C each),
    at most 1024 (a 32x32x3 model: 1024; 256x256x3: 21)."""
    return max(1, min(1024, 2**22 // self.num_dims))

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def encode(self, images: Images, labels: Labels = None) -> list[tf.Tensor]:
    """Images [N, H, W, C] -> per-level latents [eps_1, ..., eps_L]."""
    images = self._check_images(images)
    labels = self._check_labels(labels, required=True)
    per_image = _per_image_labels(labels, int(images.shape[0])) if use_compiled() else False
    if per_image is False:
      return self.distribution.encode(images, labels)
    return self._tfp.calls.encode(images, per_image)

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def decode(self, latents: Sequence[tf.Tensor | np.ndarray], labels: Labels = None) -> tf.Tensor:
    """Per-level latents -> images [N, H, W, C] (floats, model scale). Latents are not data: any real
    values, not checked (NaN in, NaN out; a diverged model's round trip must still run)."""
    labels = self._check_labels(labels, required=True)
    if use_compiled():
      latents = [tf.convert_to_tensor(z, self.glow.dtype) for z in latents]
      shapes = [tuple(z.shape) for z in latents]
      n = shapes[0][0] if shapes and len(shapes[0]) == 4 else None
      expected = [(n, *s) for s in self.glow.latent_shapes]
      per_image = _per_image_labels(labels, n)
      if n is not None and shapes == expected and per_image is not False:
        return self._tfp.calls.decode(latents, per_image)
    return self.distribution.decode(latents, labels)  # any error names the expected shapes

  @tf.autograph.experimental.do_not_convert  # inside a user's tf.function: no tensor-dependent Python here
  def interpolate(self, image_a: Images, image_b: Images, steps: int = 8, labels: Labels = None) -> tf.Tensor:
    """Decodes `steps` points on the straight line between the latents of two images [H, W, C]."""
    if not isinstance(steps, int) or steps < 2:
      raise ValueError(f'interpolate: steps must be an integer >= 2, got {steps!r}.')
    pair = self._check_images(tf.stack([image_a, image_b]))
    pair_labels = self._check_labels(None if labels is None else tf.reshape(labels, [2]), required=True)
    if use_compiled():
      return self._tfp.calls.interpolate(pair, tf.constant(steps), pair_labels)
    latents = self.encode(pair, pair_labels)
    t = tf.linspace(0.0, 1.0, steps)
    t = tf.cast(tf.reshape(t, [steps, 1, 1, 1]), latents[0].dtype)
    mixed = [z[:1] * (1 - t) + z[1:] * t for z in latents]
    mixed_labels = None
    if pair_labels is not None:  # labels follow the nearer end
      mixed_labels = tf.where(tf.reshape(t, [-1]) < 0.5, pair_labels[0], pair_labels[1])
    return self.decode(mixed, mixed_labels)

  # ---- bits per dimension, importance-weighted ----------------------------------------------------

  def evaluate_bits_per_dim(
    self,
    data: Images | tuple[Images, Labels] | tf.data.Dataset,
    samples: int = 1,
    seed: int | None = None,
    per_image: bool = False,
    max_images: int = 4096,
  ) -> float | np.ndarray:
    """Bits/dim of `data` with the importance-weighted estimate over `samples` draws u_s ~ q(u|x):

      bits/dim = (-(logsumexp_s [log p(x + u_s) - log q(u_s|x)] - log S) + D log n_bins) / (D ln 2)

    S = 1 is the training loss' bound; larger S tightens it (never above the S = 1 bound in expectation).
    q is the model's dequantization (uniform: log q = 0). `data`: images [N, H, W, C] in [-0.5, 0.5)
    (their bins are used, so dequantized images work), or a `tf.data.Dataset` of such batches (or of
    (images, labels)). Memory is bounded: each flow pass sees at most `max_images` images.
    `seed` makes it reproducible. Returns the mean over images (whatever the batching), or per-image values
    [N] if `per_image`.
    """
    if not isinstance(samples, (int, np.integer)) or samples < 1:
      raise ValueError(f'evaluate_bits_per_dim: samples must be an integer >= 1, got {samples!r}.')
    batches = data if isinstance(data, tf.data.Dataset) else [data]
    if getattr(self._tfp, 'iw_log_prob', None) is None:  # one traced log p for every call
      self._tfp.iw_log_prob = tf.function(
        lambda x, labels=None: self.distribution.log_prob(x, labels=labels), reduce_retracing=True
      )
    values = []
    for i, batch in enumerate(batches):
      images, labels, _ = keras.utils.unpack_x_y_sample_weight(batch)
      images = self._check_images(images)
      labels = self._check_labels(labels, required=True)
      log_p = dequant.importance_weighted_log_prob(
        self._tfp.iw_log_prob,
        images,
        self.n_bins,
        int(samples),
        self.dequantizer,
        seed=None if seed is None else tf.constant([seed, i], tf.int32),
        labels=labels,
        max_images=max_images,
        dtype=self.glow.dtype,
      )
      values.append(self.bits_per_dim(log_p).numpy())
    bpd = np.concatenate(values) if values else np.zeros([0], np.float32)
    return bpd if per_image else float(np.mean(bpd))


def _sample_count(n) -> int | tf.Tensor:
  """`sample`'s n as a Python int >= 0 (a Python integer, or an integer scalar tensor eagerly); a
  symbolic tensor inside a graph passes unchanged."""
  if isinstance(n, tf.Tensor) and n.dtype.is_integer and n.shape.rank == 0:
    if not tf.executing_eagerly():
      return n
    n = int(n.numpy())
  elif isinstance(n, np.ndarray) and n.dtype.kind in 'iu' and n.ndim == 0:
    n = int(n)
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
    raise ValueError(f'sample: n must be an integer >= 0 (or a scalar integer tensor), got {n!r}.')
  return int(n)


def _sample_temperature(temperature) -> float | tf.Tensor:
  """`sample`'s temperature as a Python float, checked: finite and > 0 (eagerly also for a scalar tensor)."""
  if isinstance(temperature, (tf.Tensor, tf.Variable, np.ndarray)):
    if len(temperature.shape) != 0:
      raise ValueError(f'sample: temperature must be a scalar, got shape {tuple(temperature.shape)}.')
    if not tf.executing_eagerly() and isinstance(temperature, tf.Tensor):  # symbolic: a graph assertion
      ok = tf.logical_and(tf.math.is_finite(temperature), temperature > 0)
      return checks.check(temperature, ok, 'sample: temperature must be > 0 and finite, got', temperature)
    temperature = float(np.asarray(temperature))
  if (
    not isinstance(temperature, (int, float, np.number))
    or not temperature > 0
    or not math.isfinite(temperature)
  ):
    raise ValueError(f'sample: temperature must be > 0 and finite, got {temperature!r}.')
  return float(temperature)


def _per_image_labels(labels, n: int | None):
  """(Eagerly) labels as int32 [n] for a compiled call (a scalar label broadcast), None without labels, or
  False when they have another shape (then the uncompiled call raises or broadcasts as TFP does)."""
  if labels is None:
    return None
  if n is None:
    return False
  if labels.shape.rank == 0:
    return tf.fill([n], labels)
  if labels.shape.rank == 1 and labels.shape[0] == n:
    return labels
  return False
