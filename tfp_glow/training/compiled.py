"""GlowModel's user-facing calls as cached `tf.function`s: each traced once per model and reused.

Eagerly, TensorFlow runs a Glow op by op from Python; the same work inside a `tf.function` runs as one
graph, several times faster (figures in BENCHMARKS.md). `GlowModel.sample/encode/decode/log_prob/
interpolate` check their arguments in Python first (the same errors as before, raised before any tracing),
then call one of these functions. Every function has an `input_signature` with an unknown batch size, and
the number of images, the temperature, the labels and the seed are tensors: calls with another n, batch,
temperature or class do not retrace. The variants are bounded: with or without labels (fixed by the model:
a class-conditional model always has them), with or without a seed, uint8 or float output, and with or
without XLA, so at most 8 traces of `sample` and one of each other call.

XLA: the functions are compiled with `jit_compile=True` when the model was compiled so
(`model.compile(jit_compile=True)`, or Keras' 'auto' on an accelerator); on a CPU plain graphs are faster
(BENCHMARKS.md).

  calls = CompiledCalls(model)
  calls.log_prob(images [N, H, W, C], labels [N] | None) -> [N]
  calls.sample(n [], temperature [], labels [n] | None, seed [2] | None, as_uint8) -> [n, H, W, C]
  calls.tracing_count('sample')     # traces so far, over all variants (tests check it stays bounded)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import tensorflow as tf

from tfp_glow import data as glow_data
from tfp_glow.flow import tape_state

if TYPE_CHECKING:
  from tfp_glow.training.model import GlowModel

LABELS = tf.TensorSpec([None], tf.int32, name='labels')
SEED = tf.TensorSpec([2], tf.int32, name='seed')


def use_compiled() -> bool:
  """True when a public call may run its cached tf.function: eagerly, and with no gradient tape or forward
  accumulator active. Under a tape the uncompiled call runs instead, so every autodiff mode (forward-mode
  JVPs through a function with a while loop fail in TensorFlow) gives plain autodiff's answer."""
  return tf.executing_eagerly() and not tape_state.recording()


class CompiledCalls:
  """The tf.functions behind one GlowModel's public calls, built on first use and kept."""

  def __init__(self, model: GlowModel):
    self._model = model
    self._functions: dict[tuple, tf.types.experimental.GenericFunction] = {}

  # ---- what the functions compute ---------------------------------------------------------------

  def log_prob(self, images: tf.Tensor, labels: tf.Tensor | None = None) -> tf.Tensor:
    return self._function('log_prob', labels is not None)(images, *_present(labels))

  def encode(self, images: tf.Tensor, labels: tf.Tensor | None = None) -> list[tf.Tensor]:
    return self._function('encode', labels is not None)(images, *_present(labels))

  def decode(self, latents: Sequence[tf.Tensor], labels: tf.Tensor | None = None) -> tf.Tensor:
    return self._function('decode', labels is not None)(list(latents), *_present(labels))

  def sample(
    self,
    n: tf.Tensor,
    temperature: tf.Tensor,
    labels: tf.Tensor | None = None,
    seed: tf.Tensor | None = None,
    as_uint8: bool = True,
  ) -> tf.Tensor:
    fn = self._function('sample', labels is not None, seed is not None, as_uint8)
    return fn(n, temperature, *_present(labels), *_present(seed))

  def interpolate(self, pair: tf.Tensor, steps: tf.Tensor, labels: tf.Tensor | None = None) -> tf.Tensor:
    return self._function('interpolate', labels is not None)(pair, steps, *_present(labels))

  def tracing_count(self, name: str) -> int:
    """How often the calls named `name` ('sample', 'log_prob', ...) were traced, all variants."""
    return sum(f.experimental_get_tracing_count() for key, f in self._functions.items() if key[0] == name)

  # ---- building them ------------------------------------------------------------------------------

  def _function(self, name: str, *variant) -> Callable:
    jit = self._jit_compile()
    key = (name, jit, *variant)
    if key not in self._functions:
      body, signature = getattr(self, f'_{name}_body')(*variant)
      self._functions[key] = tf.function(body, input_signature=signature, jit_compile=jit or None)
    return self._functions[key]

  def _jit_compile(self) -> bool:
    model = self._model
    return bool(getattr(model, 'compiled', False)) and model.jit_compile is True

  def _images_spec(self, name='images'):
    return tf.TensorSpec([None, *self._model.image_shape], self._model.glow.dtype, name=name)

  def _log_prob_body(self, with_labels):
    dist = self._model.distribution

    def log_prob(images, labels=None):
      return dist.log_prob(images, labels=labels)

    return log_prob, [self._images_spec(), *([LABELS] if with_labels else [])]

  def _encode_body(self, with_labels):
    dist = self._model.distribution
    return dist.encode, [self._images_spec(), *([LABELS] if with_labels else [])]

  def _decode_body(self, with_labels):
    model = self._model
    specs = [
      tf.TensorSpec([None, *shape], model.glow.dtype, name=f'latent_{i}')
      for i, shape in enumerate(model.glow.latent_shapes)
    ]
    return model.distribution.decode, [specs, *([LABELS] if with_labels else [])]

  def _sample_body(self, with_labels, with_seed, as_uint8):
    model = self._model
    dist = model.distribution

    def sample(n, temperature, *rest):
      labels = rest[0] if with_labels else None
      seed = rest[-1] if with_seed else None
      kwargs = {} if labels is None else {'labels': labels}
      x = dist.sample(n, temperature=temperature, seed=seed, **kwargs)
      return glow_data.to_uint8(x, model.n_bins) if as_uint8 else x

    signature = [
      tf.TensorSpec([], tf.int32, name='n'),
      tf.TensorSpec([], model.glow.dtype, name='temperature'),
    ]
    return sample, signature + ([LABELS] if with_labels else []) + ([SEED] if with_seed else [])

  def _interpolate_body(self, with_labels):
    model = self._model

    def interpolate(pair, steps, labels=None):
      # z(t) = (1 - t) z_a + t z_b per level, t = 0, 1/(steps-1), ..., 1; labels follow the nearer end.
      latents = model.distribution.encode(pair, labels)
      t = tf.cast(tf.reshape(tf.linspace(0.0, 1.0, steps), [-1, 1, 1, 1]), latents[0].dtype)
      mixed = [z[:1] * (1 - t) + z[1:] * t for z in latents]
      mixed_labels = None if labels is None else tf.where(tf.reshape(t, [-1]) < 0.5, labels[0], labels[1])
      return model.distribution.decode(mixed, mixed_labels)

    pair = tf.TensorSpec([2, *model.image_shape], model.glow.dtype, name='pair')
    signature = [pair, tf.TensorSpec([], tf.int32, name='steps')]
    return interpolate, signature + ([tf.TensorSpec([2], tf.int32, name='labels')] if with_labels else [])


def _present(value) -> tuple:
  """`(value,)`, or `()` for None: optional arguments of a function with an input signature."""
  return () if value is None else (value,)
