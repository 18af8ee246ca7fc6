"""SavedModel export of a GlowModel: `log_prob`, `sample` and `sample_floats` endpoints, no tfp_glow needed
to load; `load_saved_model` loads one with tfp_glow installed, for errors without TensorFlow's text."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeAlias

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import checks
from tfp_glow import data as glow_data

if TYPE_CHECKING:
  from tfp_glow.training.model import GlowModel

Number: TypeAlias = int | float | np.ndarray | tf.Tensor  # a Python number, or a scalar array or tensor


def range_message(n_bins: int) -> str:
  """The SavedModel's error for images outside [-0.5, 0.5): what the model takes, for a user without tfp_glow."""
  return (
    f'SavedModel log_prob: image values must be in [-0.5, 0.5) (raw 0..255 pixels? this model takes '
    f'x = (floor(pixel * {n_bins} / 256) + u) / {n_bins} - 0.5, u ~ U[0, 1))'
  )


def endpoint_signatures(model: GlowModel) -> list[str]:
  """One line per endpoint of `export_saved_model`: name(arguments) -> result."""
  shape = ', '.join(map(str, model.image_shape))
  dtype = model.glow.dtype.name
  labels = ', labels: int32 [None]' if model.num_classes else ''
  sample_args = f'n: int32 [], temperature: {dtype} []{labels}'
  return [
    f'log_prob(images: {dtype} [None, {shape}]{labels}) -> {dtype} [None]',
    f'sample({sample_args}) -> uint8 [n, {shape}]',
    f'sample_floats({sample_args}) -> {dtype} [n, {shape}]',
  ]


def export_saved_model(model: GlowModel, filepath: str | os.PathLike, verbose: bool = True) -> None:
  """Writes a SavedModel at `filepath` whose endpoints return what the GlowModel's methods return
  (any batch size; `labels` only for a class-conditional model, one class id per image):

    log_prob(images, [labels]) -> log p(x) [N]               = model.log_prob(images, labels)
    sample(n, temperature, [labels]) -> uint8 [n, H, W, C]   = model.sample(n, temperature, labels)
    sample_floats(n, temperature, [labels]) -> [n, H, W, C]  = model.sample(..., as_uint8=False): the
      flow's output in the model's scale, not clipped (samples may leave [-0.5, 0.5))

  The endpoints check their arguments as GlowModel does (there is no Python left to do it), each with an
  InvalidArgumentError naming the problem: images NaN / Inf or outside [-0.5, 0.5) (raw 0..255 pixels),
  labels outside [0, num_classes) or not one per image, n < 0, a temperature not finite and > 0. n = 0
  and zero images give empty results (TFP's convention). Images of another dtype than the model's get
  TensorFlow's TypeError when the endpoint is called. TensorFlow writes lines of its own around our
  message (which graph node failed); `load_saved_model` gives our message alone.

  Load with `tf.saved_model.load(filepath)` (no tfp_glow needed) or `load_saved_model(filepath)`.
  `verbose`: print one line saying what was written where, and the endpoints' signatures.
  """
  if not model.is_initialized:
    raise ValueError('export: the model is not initialized (train it, or call model.initialize(images)).')
  dtype = model.glow.dtype
  images_spec = tf.TensorSpec([None, *model.image_shape], dtype, name='images')
  labels_spec = tf.TensorSpec([None], tf.int32, name='labels')
  sample_specs = [tf.TensorSpec([], tf.int32, name='n'), tf.TensorSpec([], dtype, name='temperature')]
  dist = model.distribution

  def checked_labels(labels, n, who):
    if labels is None:
      return None
    size = tf.size(labels)
    labels = checks.check(
      labels,
      tf.equal(size, n),
      f'SavedModel {who}: labels must be one class id per image; got',
      size,
      'labels for',
      n,
      'images',
    )
    return checks.in_range(
      labels,
      0,
      model.num_classes - 1,
      f'SavedModel {who}: labels must be in [0, num_classes={model.num_classes})',
    )

  def log_prob(images, labels=None):
    images = checks.all_finite(images, 'SavedModel log_prob: the images contain NaN or Inf.')
    images = checks.in_range(images, -0.5, 0.5, range_message(model.n_bins))  # 0.5 passes, as in GlowModel
    labels = checked_labels(labels, tf.shape(images)[0], 'log_prob')
    return dist.log_prob(images, **({} if labels is None else {'labels': labels}))

  def sample_floats(n, temperature, labels=None):
    n = checks.check(n, n >= 0, 'SavedModel sample: n must be >= 0, got', n)
    ok = tf.logical_and(tf.math.is_finite(temperature), temperature > 0)
    temperature = checks.check(
      temperature, ok, 'SavedModel sample: temperature must be > 0 and finite, got', temperature
    )
    labels = checked_labels(labels, n, 'sample')
    return dist.sample(n, temperature=temperature, **({} if labels is None else {'labels': labels}))

  def sample(n, temperature, labels=None):
    return glow_data.to_uint8(sample_floats(n, temperature, labels), model.n_bins)

  archive = keras.export.ExportArchive()
  archive.track(model)
  with_labels = [labels_spec] if model.num_classes else []
  archive.add_endpoint('log_prob', log_prob, [images_spec, *with_labels])
  archive.add_endpoint('sample', sample, [*sample_specs, *with_labels])
  archive.add_endpoint('sample_floats', sample_floats, [*sample_specs, *with_labels])
  archive.write_out(filepath, verbose=False)  # Keras' verbose output lists every captured variable
  if verbose:
    print(f'wrote a SavedModel to {filepath} (load with tf.saved_model.load); endpoints:')
    for line in endpoint_signatures(model):
      print(f'  {line}')


class SavedGlow:
  """A SavedModel of `export_saved_model`, loaded with tfp_glow installed: the same endpoints, whose
  errors (InvalidArgumentError) carry our message alone. Arguments may be Python numbers or arrays."""

  def __init__(self, filepath: str | os.PathLike):
    self.saved_model = tf.saved_model.load(filepath)
    self.filepath = filepath

  def log_prob(
    self, images: np.ndarray | tf.Tensor, labels: np.ndarray | tf.Tensor | None = None
  ) -> tf.Tensor:
    dtype = tf.as_dtype(images.dtype if tf.is_tensor(images) else np.asarray(images).dtype)
    if dtype.is_integer:  # as GlowModel (the endpoint itself would give TensorFlow's TypeError)
      raise TypeError(
        f'SavedModel log_prob: got {dtype.name} images; the model takes floats in [-0.5, 0.5) '
        '(raw 0..255 pixels? convert them as tfp_glow.data.dequantize does).'
      )
    return self._call('log_prob', images, labels=labels)

  def sample(
    self, n: Number, temperature: Number = 1.0, labels: np.ndarray | tf.Tensor | None = None
  ) -> tf.Tensor:
    return self._call('sample', n, temperature, labels=labels)

  def sample_floats(
    self, n: Number, temperature: Number = 1.0, labels: np.ndarray | tf.Tensor | None = None
  ) -> tf.Tensor:
    return self._call('sample_floats', n, temperature, labels=labels)

  def _call(self, name, *args, labels=None):
    endpoint = getattr(self.saved_model, name)
    spec = endpoint.concrete_functions[0].structured_input_signature[0]
    args = [tf.convert_to_tensor(a, s.dtype) if not tf.is_tensor(a) else a for a, s in zip(args, spec)]
    if labels is not None:
      args.append(tf.convert_to_tensor(labels, tf.int32))
    try:
      return endpoint(*args)
    except tf.errors.InvalidArgumentError as e:
      raise tf.errors.InvalidArgumentError(None, None, checks.clean_message(e)) from None


def load_saved_model(filepath: str | os.PathLike) -> SavedGlow:
  """Loads a SavedModel written by `GlowModel.export` (see `export_saved_model`); its endpoints' errors
  carry our message alone."""
  return SavedGlow(filepath)
