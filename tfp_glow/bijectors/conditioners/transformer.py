"""The transformer conditioner (Jet, Kolesnikov et al. 2025): a small pre-LN ViT on patches of x_a predicts the
transform's numbers h for every pixel of x_b.

  x_a [N, H, W, C_a] -> patches [N, T, p p C_a]          T = (H / p) (W / p) tokens, p = patch_size
  t = patches @ E + e + pos                              [N, T, D]   (+ context @ C_ctx, one vector per image)
  depth times:  t = t + Attn(LN(t));  t = t + MLP(LN(t))   pre-LN blocks, `heads` heads, MLP D -> 4D -> D (GELU)
  h = LN(t) @ W_head + b_head                            [N, T, p p out], W_head = b_head = 0 at the start
  h -> [N, H, W, out]                                    each token back to its p x p pixels

The head is zero-initialized, so h = 0 exactly and a fresh coupling is its transform at h = 0 (the identity for
'additive' and 'spline', the constant scale sigmoid(2) for 'affine'), as with the conv conditioner.

Weights are stacked over a level's K steps ([K, ...], and [K, depth, ...] for a block's), so K couplings run as
one loop (`tfp_glow.flow.stack.StepStack`); `apply_transformer` takes one step's slice as arguments. Under a
mixed policy the matmuls run in the policy's compute dtype; layer norms and the attention softmax in float32.
Cost per image and step: ~ T (2 p^2 C_a D + depth (12 D^2 + 2 T D) + 2 D p^2 out) multiply-adds x 2 FLOPs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Sequence

import keras
import tensorflow as tf

from tfp_glow.bijectors.nets import MIXED_POLICIES

# Order of the weights (`StackedTransformers.weights_in_order`, `apply_transformer`); the block weights carry a
# depth axis after the step axis. 'context_kernel' is last, and only there when `context_size` is set.
WEIGHT_NAMES = (
  'embed_kernel',  # [p p C_a, D]
  'embed_bias',  # [D]
  'position',  # [T, D]
  'ln1_scale',  # [depth, D]
  'ln1_bias',
  'qkv_kernel',  # [depth, D, 3D]
  'qkv_bias',  # [depth, 3D]
  'proj_kernel',  # [depth, D, D]
  'proj_bias',
  'ln2_scale',
  'ln2_bias',
  'mlp_in_kernel',  # [depth, D, M]
  'mlp_in_bias',  # [depth, M]
  'mlp_out_kernel',  # [depth, M, D]
  'mlp_out_bias',
  'ln_scale',  # [D]: the final layer norm
  'ln_bias',
  'head_kernel',  # [D, p p out], zeros
  'head_bias',  # [p p out], zeros
)


@dataclasses.dataclass(frozen=True)
class Transformer:
  """The transformer conditioner's settings (its spec, saved with a model as `dataclasses.asdict`).

  depth: pre-LN blocks. width: the token size D. heads: attention heads (D divisible by heads).
  patch_size: p, pixels per token side; each level's spatial size must be divisible by it. mlp_ratio: the MLP's
  hidden size M = mlp_ratio * D. context_size: the size E of an optional per-image context vector [N, E]
  (added to every token through a learned E x D projection); None: no context.

  Defaults, for 32x32 images at L = 3 (levels of 16x16, 8x8 and 4x4): depth 2, width 128, 4 heads, p = 2 (64, 16
  and 4 tokens), mlp_ratio 4. p = 2 keeps every level of a 32x32 Glow with up to 4 levels usable.
  """

  depth: int = 2
  width: int = 128
  heads: int = 4
  patch_size: int = 2
  mlp_ratio: int = 4
  context_size: int | None = None

  name: ClassVar[str] = 'transformer'
  has_kernels: ClassVar[bool] = False  # no hand-built VJP: the gradients use the generic per-step path

  def __post_init__(self) -> None:
    for field in ('depth', 'width', 'heads', 'patch_size', 'mlp_ratio'):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'Transformer conditioner: {field} must be an integer >= 1, got {value!r}.')
    if self.width % self.heads:
      raise ValueError(
        f'Transformer conditioner: width {self.width} must be divisible by heads {self.heads}.'
      )
    if self.context_size is not None and (not isinstance(self.context_size, int) or self.context_size < 1):
      raise ValueError(
        f'Transformer conditioner: context_size must be None or an integer >= 1, got {self.context_size!r}.'
      )

  def check_spatial(self, spatial: tuple[int, int] | None, who: str) -> None:
    """Refuses a spatial size [h, w] that p does not divide (the tokens are p x p patches)."""
    if spatial is None:
      raise ValueError(
        f'{who}: the transformer conditioner needs the spatial size (height, width) of its input.'
      )
    h, w = spatial
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(
        f"{who}: the transformer conditioner's patch_size {self.patch_size} must divide the spatial size, got "
        f'{h}x{w}; choose a patch_size that divides it (1 always does) or fewer levels.'
      )

  def stacked(
    self,
    in_channels: int,
    out_channels: int,
    steps: int,
    width: int,
    spatial: tuple[int, int],
    dtype: Any,
    name: str,
  ) -> StackedTransformers:
    """K = `steps` conditioners x_a [.., C_a] -> h [.., out] as one stack (`width` is the conv's: unused)."""
    del width
    return StackedTransformers(self, in_channels, out_channels, spatial, steps, dtype, name)

  def apply(
    self, weights: Sequence[tf.Tensor], x: tf.Tensor, compute_dtype: Any, context: tf.Tensor | None = None
  ) -> tf.Tensor:
    return apply_transformer(self, weights, x, compute_dtype, context)


def _stats_dtype(compute_dtype) -> tf.DType:
  compute_dtype = tf.as_dtype(compute_dtype)
  return tf.float32 if compute_dtype in (tf.bfloat16, tf.float16) else compute_dtype


def _layer_norm(t, scale, bias, eps=1e-6):
  """LN over the last axis, statistics in float32 (or float64); the output in t's dtype."""
  s = tf.cast(t, _stats_dtype(t.dtype))
  mean, variance = tf.nn.moments(s, axes=[-1], keepdims=True)
  s = (s - mean) * tf.math.rsqrt(variance + eps)
  return tf.cast(s, t.dtype) * scale + bias


def to_patches(x: tf.Tensor, p: int) -> tf.Tensor:
  """[N, H, W, C] -> [N, (H/p)(W/p), p p C], each token one p x p patch (row-major), pixel-major inside."""
  _, h, w, c = x.shape
  x = tf.reshape(x, [-1, h // p, p, w // p, p, c])
  x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
  return tf.reshape(x, [-1, (h // p) * (w // p), p * p * c])


def from_patches(t: tf.Tensor, h: int, w: int, p: int) -> tf.Tensor:
  """`to_patches`' inverse: [N, (H/p)(W/p), p p C] -> [N, H, W, C]."""
  c = t.shape[-1] // (p * p)
  t = tf.reshape(t, [-1, h // p, w // p, p, p, c])
  t = tf.transpose(t, [0, 1, 3, 2, 4, 5])
  return tf.reshape(t, [-1, h, w, c])


def apply_transformer(
  spec: Transformer,
  weights: Sequence[tf.Tensor],
  x: tf.Tensor,
  compute_dtype: Any,
  context: tf.Tensor | None = None,
) -> tf.Tensor:
  """One step's conditioner with its weights as arguments (`WEIGHT_NAMES` order, no step axis):
  x [N, H, W, C_a] -> h [N, H, W, out] in `compute_dtype`. `context`: [N, E] or None."""
  w = dict(zip(WEIGHT_NAMES, (tf.cast(v, compute_dtype) for v in weights)))
  _, h, wd, _ = x.shape
  p, heads = spec.patch_size, spec.heads
  t = to_patches(tf.cast(x, compute_dtype), p) @ w['embed_kernel'] + w['embed_bias'] + w['position']
  if context is not None and spec.context_size is None:
    raise ValueError('The transformer conditioner got a context but was built without context_size.')
  if context is not None:
    t += (tf.cast(context, compute_dtype) @ tf.cast(weights[len(WEIGHT_NAMES)], compute_dtype))[:, None, :]
  tokens, d = t.shape[1], t.shape[2]
  dh = d // heads
  for b in range(spec.depth):
    a = _layer_norm(t, w['ln1_scale'][b], w['ln1_bias'][b])
    qkv = tf.reshape(a @ w['qkv_kernel'][b] + w['qkv_bias'][b], [-1, tokens, 3, heads, dh])
    q, k, v = tf.unstack(qkv, 3, axis=2)  # [N, T, heads, dh] each
    logits = tf.einsum('nthd,nshd->nhts', q, k) * tf.constant(1 / math.sqrt(dh), compute_dtype)
    attention = tf.cast(tf.nn.softmax(tf.cast(logits, _stats_dtype(compute_dtype)), axis=-1), compute_dtype)
    mixed = tf.reshape(tf.einsum('nhts,nshd->nthd', attention, v), [-1, tokens, d])
    t += mixed @ w['proj_kernel'][b] + w['proj_bias'][b]
    a = _layer_norm(t, w['ln2_scale'][b], w['ln2_bias'][b])
    t += (
      tf.nn.gelu(a @ w['mlp_in_kernel'][b] + w['mlp_in_bias'][b]) @ w['mlp_out_kernel'][b]
      + w['mlp_out_bias'][b]
    )
  out = _layer_norm(t, w['ln_scale'], w['ln_bias']) @ w['head_kernel'] + w['head_bias']
  return from_patches(out, h, wd, p)


class StackedTransformers(keras.layers.Layer):
  """The weights of K transformer conditioners, stacked over a level's K steps ([K, ...] each, in
  `WEIGHT_NAMES` order; `weights_in_order()`). Step k: `apply_transformer(spec, [v[k] for v in weights], ...)`.

  Initialization, per step (and per block): Glorot-uniform kernels, zero biases, unit layer-norm scales,
  N(0, 0.02^2) position embeddings, and a zero head (h = 0: the coupling starts at its transform's h = 0).
  """

  def __init__(
    self,
    spec: Transformer,
    in_channels: int,
    out_channels: int,
    spatial: tuple[int, int],
    steps: int,
    dtype: Any = 'float32',
    name: str = 'transformer',
  ) -> None:
    dtype = dtype if dtype in MIXED_POLICIES else tf.as_dtype(dtype).name
    super().__init__(dtype=dtype, name=name)
    self.spec = spec
    p, d, depth = spec.patch_size, spec.width, spec.depth
    m, tokens = spec.mlp_ratio * d, (spatial[0] // p) * (spatial[1] // p)
    patch_in, patch_out = p * p * in_channels, p * p * out_channels

    def glorot(shape, dtype=None):
      # Glorot's fans are one matrix's [fan_in, fan_out], drawn for each step (and block) separately: an
      # unseeded initializer draws its seed once, so one reused initializer would start every step equal.
      lead = shape[:-2]
      draws = [keras.initializers.GlorotUniform()(shape[-2:], dtype=dtype) for _ in range(math.prod(lead))]
      return tf.reshape(tf.stack(draws), shape)

    def position(shape, dtype=None):
      return keras.initializers.RandomNormal(stddev=0.02)(shape, dtype=dtype)

    shapes = {
      'embed_kernel': ((patch_in, d), glorot),
      'embed_bias': ((d,), 'zeros'),
      'position': ((tokens, d), position),
      'ln1_scale': ((depth, d), 'ones'),
      'ln1_bias': ((depth, d), 'zeros'),
      'qkv_kernel': ((depth, d, 3 * d), glorot),
      'qkv_bias': ((depth, 3 * d), 'zeros'),
      'proj_kernel': ((depth, d, d), glorot),
      'proj_bias': ((depth, d), 'zeros'),
      'ln2_scale': ((depth, d), 'ones'),
      'ln2_bias': ((depth, d), 'zeros'),
      'mlp_in_kernel': ((depth, d, m), glorot),
      'mlp_in_bias': ((depth, m), 'zeros'),
      'mlp_out_kernel': ((depth, m, d), glorot),
      'mlp_out_bias': ((depth, d), 'zeros'),
      'ln_scale': ((d,), 'ones'),
      'ln_bias': ((d,), 'zeros'),
      'head_kernel': ((d, patch_out), 'zeros'),
      'head_bias': ((patch_out,), 'zeros'),
    }
    if spec.context_size is not None:
      shapes['context_kernel'] = ((spec.context_size, d), glorot)
    self._ordered = [
      self.add_weight(shape=(steps, *shape), initializer=init, name=key)
      for key, (shape, init) in shapes.items()
    ]
    self.built = True

  def weights_in_order(self) -> list[keras.Variable]:
    return list(self._ordered)

  def call(self, inputs: Any) -> Any:  # Keras wants a call; this layer is read, never called.
    return inputs
