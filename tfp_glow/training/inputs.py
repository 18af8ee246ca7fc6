"""What `GlowModel` checks and prepares in its inputs, before any of it reaches the flow.

- `check_images` / `check_labels` (and `check_label_dtype` of fit's data): shape and dtype errors raised at once (also while tracing), value checks
  (NaN/Inf, range, class ids) as graph assertions when `validate` is on.
- `first_images`: the first training images of `fit`'s data, for actnorm's data-dependent init.
- `even_batches`: under N > 1 replicas, batches cut to a multiple of N.
- `set_monitor_direction`: tells 'auto'-mode callbacks which way our own metrics improve.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import checks

RANGE_MESSAGE = 'GlowModel: image values must be in [-0.5, 0.5) (raw 0..255 pixels? see tfp_glow.data).'


def check_images(images, image_shape: Sequence[int], dtype: tf.DType, validate: bool) -> tf.Tensor:
  """Images [N, H, W, C] as floats of `dtype` in [-0.5, 0.5); raises on integer pixels or a wrong shape,
  and with `validate` asserts (in the graph) finite values in range."""
  images = tf.convert_to_tensor(images)
  if images.dtype.is_integer or images.dtype == tf.uint8:
    raise TypeError(
      f'GlowModel: got {images.dtype.name} images; the model expects floats in [-0.5, 0.5). '
      'Convert raw 0..255 pixels with tfp_glow.data.dequantize(tfp_glow.data.reduce_bits(x, '
      'n_bits), 2**n_bits) or load data with tfp_glow.data.load_dataset.'
    )
  images = tf.cast(images, dtype)
  if images.shape.rank != 4 or tuple(images.shape[1:]) != tuple(image_shape):
    raise ValueError(
      f'GlowModel: expected images of shape [N, {", ".join(map(str, image_shape))}], got {images.shape}.'
    )
  if validate:  # the bound 0.5 itself passes: float32 rounding of (bins + u) / n_bins - 0.5 can reach it
    images = checks.all_finite(images, 'GlowModel: the images contain NaN or Inf.')
    images = checks.in_range(images, -0.5, 0.5, RANGE_MESSAGE)
  return images


def check_labels(labels, num_classes: int | None, required: bool, batch=None, validate: bool = True):
  """Class ids as int32 [N] (broadcast to `batch` if given), or None for an unconditional model; raises
  when labels are given to an unconditional model, missing for a conditional one (if `required`), or not
  integers; with `validate` asserts (in the graph) 0 <= label < num_classes."""
  if not num_classes:
    if labels is not None:
      raise ValueError(
        'GlowModel: labels were given, but the model is not class-conditional (num_classes=None).'
      )
    return None
  if labels is None:
    if required:
      raise ValueError(
        f'GlowModel: this model is class-conditional (num_classes={num_classes}); '
        'pass labels (integer class ids), or (images, labels) pairs to fit, evaluate or predict.'
      )
    return None
  labels = tf.convert_to_tensor(labels)
  if not labels.dtype.is_integer:
    raise TypeError(f'GlowModel: labels must be integer class ids, got {labels.dtype.name}.')
  labels = tf.cast(labels, tf.int32)
  if batch is not None:
    labels = tf.broadcast_to(labels, [batch])
  if validate:
    labels = checks.in_range(
      labels, 0, num_classes - 1, f'GlowModel: labels must be in [0, num_classes={num_classes})'
    )
  return labels


def label_dtype(x, y) -> tf.DType | None:
  """The dtype of the labels in `fit`-style data (x, y), without reading any data: `y`, the second part of
  a tuple `x`, or of a Dataset's elements; None where there are none (or they cannot be told)."""
  if y is None and isinstance(x, tf.data.Dataset):
    spec = x.element_spec
    y = spec[1] if isinstance(spec, tuple) and len(spec) >= 2 else None
    return y.dtype if isinstance(y, tf.TensorSpec) else None
  if y is None and isinstance(x, (tuple, list)) and len(x) == 2:  # (images, labels), as first_images reads it
    y = x[1]
  if y is None or isinstance(y, (tf.data.Dataset, dict)):
    return None
  dtype = getattr(y, 'dtype', None)
  if dtype is None:  # a list: what numpy makes of it
    dtype = np.asarray(y).dtype
  try:
    return tf.as_dtype(dtype)
  except TypeError:  # numpy strings (<U5) and objects have no TF dtype
    return tf.string


def check_label_dtype(dtype: tf.DType | None, num_classes: int | None, caller: str) -> None:
  """Raises (one line) if labels of `dtype` are not integer class ids; class names are not mapped:
  only the user knows which name is which id."""
  if dtype is None or dtype.is_integer:
    return
  if not num_classes:
    raise ValueError(
      f'{caller}: labels were given, but the model is not class-conditional (num_classes=None).'
    )
  if dtype != tf.string:
    raise TypeError(
      f'{caller}: labels must be integer class ids 0..{num_classes - 1}, got {dtype.name} (one id per image; '
      "one-hot rows: np.argmax(labels, -1); whole-number floats: labels.astype('int32'))."
    )
  raise TypeError(
    f'{caller}: labels must be integer class ids 0..{num_classes - 1}, got strings (class names?); map names to '
    'ids first, e.g. names = sorted(set(labels)); ids = np.array([names.index(n) for n in labels]) (keep '
    '`names`), or tf.keras.layers.StringLookup(vocabulary=names, num_oov_indices=0) in a Dataset.map.'
  )


def first_images(x, y, count: int):
  """The first `count` images (and labels, or None) of fit's training data, for actnorm init."""
  if isinstance(x, tf.data.Dataset):
    images, labels, n = [], [], 0
    for batch in x:
      bx, by, _ = keras.utils.unpack_x_y_sample_weight(batch)
      images.append(bx)
      labels.append(by)
      n += int(bx.shape[0])
      if n >= count:
        break
    if not images:
      raise ValueError('GlowModel.fit: the training dataset is empty.')
    cat = lambda parts: None if parts[0] is None else tf.concat(parts, 0)[:count]  # noqa: E731
    return cat(images), cat(labels)
  if x is None:
    raise ValueError('GlowModel.fit: no training data given.')
  if isinstance(x, (tuple, list)) and y is None:
    x, y = x
  return x[:count], (None if y is None else y[:count])


def even_batches(data, replicas: int):
  """Under N = `replicas` > 1, a tf.data.Dataset's batches cut to a multiple of N images (with a
  warning): Keras (3.15) cannot split an uneven batch across replicas ('Inputs to operation AddN
  must have the same size'). Other data, and single-device runs, pass unchanged."""
  if replicas == 1 or not isinstance(data, tf.data.Dataset):
    return data
  batch = tf.nest.flatten(data.element_spec)[0].shape[0]
  if batch is not None and batch % replicas == 0:
    return data
  warnings.warn(
    f'GlowModel: {replicas} replicas: a batch whose size is not a multiple of {replicas} is cut to '
    f'one (up to {replicas - 1} of its images left out). Batch sizes that are multiples of '
    f'{replicas} (and drop_remainder=True) keep every image.',
    stacklevel=4,
  )

  def cut(*parts):
    n = tf.shape(tf.nest.flatten(parts)[0])[0]
    kept = tf.nest.map_structure(lambda t: t[: n - n % replicas], parts)
    return kept if len(kept) > 1 else kept[0]

  return data.map(cut).filter(lambda *parts: tf.shape(tf.nest.flatten(parts)[0])[0] > 0)


def set_monitor_direction(callback, metrics) -> None:
  """Gives a callback in mode 'auto' (EarlyStopping, ModelCheckpoint, ReduceLROnPlateau) the
  direction of the metric it monitors. Keras 3 infers it only for 'loss' and compiled metrics,
  not for a model's own trackers; ours declare it (`_direction`, as Keras' metrics do)."""
  if getattr(callback, 'mode', None) != 'auto' or not isinstance(getattr(callback, 'monitor', None), str):
    return
  name = callback.monitor.removeprefix('val_')
  for metric in metrics:
    direction = getattr(metric, '_direction', None)  # Keras metrics' own attribute
    if metric.name == name and direction in ('up', 'down'):
      callback.mode = 'max' if direction == 'up' else 'min'
