"""What `GlowModel` checks and prepares in its inputs, before any of it reaches the flow.

- `check_images` / `check_labels` (and `check_label_dtype` of fit's data): shape and dtype errors raised at once (also while tracing), value checks
  (NaN/Inf, range, class ids) as graph assertions when `validate` is on.
- `first_images`: the first training images of `fit`'s data, for actnorm's data-dependent init.
- `arrays_as_datasets`: under N > 1 replicas, NumPy arrays / tensors given to fit or evaluate become a
  batched tf.data.Dataset (as Keras would batch, shuffle and split them), so that `pad_batches` applies.
- `pad_batches`: under N > 1 replicas, batches padded to a multiple of N, the padding weighted 0.
- `set_monitor_direction`: tells 'auto'-mode callbacks which way our own metrics improve.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from typing import Any, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import checks

RANGE_MESSAGE = 'GlowModel: image values must be in [-0.5, 0.5) (raw 0..255 pixels? see tfp_glow.data).'


def check_images(
  images: tf.Tensor | np.ndarray, image_shape: Sequence[int], dtype: tf.DType, validate: bool
) -> tf.Tensor:
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


def check_labels(
  labels: tf.Tensor | np.ndarray | int | None,
  num_classes: int | None,
  required: bool,
  batch: int | tf.Tensor | None = None,
  validate: bool = True,
) -> tf.Tensor | None:
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
  ids = tf.convert_to_tensor(labels)
  if not ids.dtype.is_integer:
    raise TypeError(f'GlowModel: labels must be integer class ids, got {ids.dtype.name}.')
  ids = tf.cast(ids, tf.int32)
  if batch is not None:
    ids = tf.broadcast_to(ids, [batch])
  if validate:
    ids = checks.in_range(
      ids, 0, num_classes - 1, f'GlowModel: labels must be in [0, num_classes={num_classes})'
    )
  return ids


def label_dtype(x: Any, y: Any) -> tf.DType | None:
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


@contextlib.contextmanager
def epoch_length_unknown_is_fine(steps_given: bool) -> Iterator[None]:
  """Inside `fit` / `evaluate` when the user set no step count (`steps_per_epoch`, `validation_steps`,
  `steps`): Keras then reads a Dataset of unknown length (a folder whose undecodable files are skipped)
  to its end, learns the epoch's length, and still warns "Your input ran out of data; interrupting
  training" once per call, a warning meant for a step count the data cannot fill. Here it can only be
  that, so it is not shown; with a step count given it is (it then means what it says)."""
  if steps_given:
    yield
    return
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='Your input ran out of data', category=UserWarning)
    yield


def first_images(x: Any, y: Any, count: int) -> tuple[tf.Tensor, tf.Tensor | None]:
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


def arrays_as_datasets(
  x: Any, y: Any, kwargs: dict[str, Any], replicas: int, caller: str, args: Sequence = ()
) -> tuple[Any, Any, dict[str, Any]]:
  """(x, y, kwargs) of `fit` / `evaluate` (`caller`), with NumPy arrays or tensors turned into a batched
  tf.data.Dataset under N = `replicas` > 1, so that `pad_batches` pads their uneven last batch as it pads a
  Dataset's (Keras' own split of an uneven array batch over the replicas trains wrongly: the weights end far
  from one device's, tests/test_distributed_arrays.py). Keras' own array handling is kept:
  - batches of `batch_size` (default 32, or ceil(n / steps) when only `steps` / `steps_per_epoch` is
    given), the last one shorter;
  - fit's `shuffle` (default True: a fresh order every epoch; 'batch': within each batch only);
  - fit's `validation_split` (the last floor(n * split)-th part, before shuffling) and array
    `validation_data`, batched at `validation_batch_size` or `batch_size`.
  `args`: evaluate's positional arguments after x and y, returned as keywords. Other data (Datasets,
  generators) passes unchanged, but for fit's array `validation_data`; single-device runs pass unchanged."""
  if args:
    names = list(inspect.signature(keras.Model.evaluate).parameters)[3:]  # after self, x, y
    kwargs = {**dict(zip(names, args)), **kwargs}
  arrays = _is_array(x) and (y is None or _is_array(y))
  if replicas == 1 or not (arrays or caller == 'fit'):
    return x, y, kwargs
  kwargs = dict(kwargs)
  if caller != 'fit':
    batch_size = kwargs.pop('batch_size', None) or _default_batch_size(x, kwargs.get('steps'))
    return _batched(x, y, batch_size), None, kwargs
  batch_size = kwargs.pop('batch_size', None) if arrays else kwargs.get('batch_size')
  split = kwargs.pop('validation_split', 0.0) if arrays else 0.0  # Keras refuses it for other data
  if split and kwargs.get('validation_data') is None:
    n = int(x.shape[0])
    at = int(math.floor(n * (1.0 - split)))
    if at in (0, n):
      raise ValueError(
        f'GlowModel.fit: validation_split={split} leaves no image for training or validation of {n}.'
      )
    kwargs['validation_data'] = (x[at:],) if y is None else (x[at:], y[at:])
    x, y = x[:at], (None if y is None else y[:at])
  validation = kwargs.get('validation_data')
  if validation is not None and not isinstance(validation, tf.data.Dataset):
    vx, vy, vw = keras.utils.unpack_x_y_sample_weight(validation)
    if vw is not None:
      raise ValueError(
        'GlowModel.fit: validation_data holds sample weights, which a density model cannot honour (bits/dim '
        'is the mean -log p(x) over images, every image counted once); leave them out.'
      )
    if _is_array(vx) and (vy is None or _is_array(vy)):
      validation_batch_size = kwargs.pop('validation_batch_size', None) or batch_size
      kwargs['validation_data'] = _batched(vx, vy, validation_batch_size or _default_batch_size(vx, None))
  if not arrays:
    return x, y, kwargs
  batch_size = batch_size or _default_batch_size(x, kwargs.get('steps_per_epoch'))
  return _batched(x, y, batch_size, kwargs.pop('shuffle', True)), None, kwargs


def _default_batch_size(x, steps: int | None) -> int:
  """Keras' batch size for arrays given without one: ceil(n / steps) if a step count is given, else 32."""
  return math.ceil(int(x.shape[0]) / steps) if steps else 32


def _is_array(value) -> bool:
  return isinstance(value, (np.ndarray, tf.Tensor)) and len(value.shape) >= 1


def _batched(x, y, batch_size: int, shuffle: bool | str = False) -> tf.data.Dataset:
  """Batches of x (and y), in order, or reshuffled every epoch (`shuffle` True), or each batch shuffled
  within itself (`shuffle` 'batch', Keras' mode for data read in order, e.g. from HDF5)."""
  ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
  if shuffle and shuffle != 'batch':
    ds = ds.shuffle(int(x.shape[0]), reshuffle_each_iteration=True)
  ds = ds.batch(batch_size)
  if shuffle == 'batch':

    def shuffle_within(*parts):
      order = tf.random.shuffle(tf.range(tf.shape(parts[0])[0]))
      shuffled = tuple(tf.gather(part, order) for part in parts)
      return shuffled if len(shuffled) > 1 else shuffled[0]

    ds = ds.map(shuffle_within)
  return ds


def pad_batches(data: Any, replicas: int) -> Any:
  """Under N = `replicas` > 1, a tf.data.Dataset whose batches are padded to a multiple of N images, each
  element packed into one tensor [n + pad, D + 1 (+ 1)], pad = (-n) mod N: per row the image's D pixels
  (flattened), its weight (1 for the data's images, 0 for the padding), and its label for (images, labels)
  data; padding rows are all zeros. `unpack` reads it back.

  Keras (3.15) cannot split an uneven batch across replicas ('Inputs to operation AddN must have the
  same size'); cutting the batch would leave images out, padding keeps every one, and GlowModel's loss
  and metrics give the padding weight 0 (the mean over the real images; padded images never move a
  weight). One tensor rather than a nest: Keras reduces the first batch of a distributed dataset with
  `strategy.reduce`, which takes no nest under MultiWorkerMirroredStrategy. Labels are stored as floats
  (exact for class ids below 2**24). Other data, and single-device runs, pass unchanged."""
  if replicas == 1 or not isinstance(data, tf.data.Dataset):
    return data
  batch = tf.nest.flatten(data.element_spec)[0].shape[0]
  if batch is not None and batch % replicas == 0:
    return data
  spec = data.element_spec
  packed_already = isinstance(spec, tf.TensorSpec) and spec.shape.rank == 2  # fit's validation data, again

  def pad(*parts):
    element = parts if len(parts) > 1 else parts[0]
    packed = element if packed_already else _pack(element)
    if packed is None:  # not images the model takes: its own checks name the problem
      return element
    extra = (replicas - tf.shape(packed)[0] % replicas) % replicas
    return tf.pad(packed, [[0, extra], [0, 0]])  # zero rows: weight 0

  return data.map(pad)


def _pack(element) -> tf.Tensor | None:
  """images [n, H, W, C] (and labels [n]) -> [n, D + 1 (+ 1)]: pixels, weight 1, (label); None for
  anything else."""
  images, labels, _ = unpack(element)
  images = tf.convert_to_tensor(images)
  if not images.dtype.is_floating or images.shape.rank != 4 or not images.shape[1:].is_fully_defined():
    return None
  n = tf.shape(images)[0]
  columns = [tf.reshape(images, [n, math.prod(images.shape[1:])]), tf.ones([n, 1], images.dtype)]
  if labels is not None:
    columns.append(tf.cast(tf.reshape(labels, [n, 1]), images.dtype))
  return tf.concat(columns, axis=1)


def unpack(
  data: Any, image_shape: Sequence[int] | None = None
) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
  """(images, labels or None, per-image weights or None) of one element of fit's or evaluate's data:
  images, (images, labels), or `pad_batches`' packed form [n, D + 1 (+ 1)] (read when `image_shape` is
  given; weights 1 for an image, 0 for padding). Sample weights of the user's own ((images, labels,
  weights), `evaluate(sample_weight=...)`) are refused, as `fit` refuses `sample_weight`: every image
  counts once in the mean -log p(x)."""
  images, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
  if weights is not None:
    raise ValueError(
      'GlowModel: the data holds sample weights (images, labels, weights); a density model cannot honour '
      'them (bits/dim is the mean -log p(x) over images, every image counted once): leave them out, or '
      'repeat / filter examples instead.'
    )
  if image_shape is None or labels is not None or not isinstance(images, tf.Tensor) or images.shape.rank != 2:
    return images, labels, None
  d = math.prod(image_shape)
  if images.shape[1] not in (d + 1, d + 2):
    return images, labels, None  # not packed: check_images names the wrong shape
  packed = images
  images = tf.reshape(packed[:, :d], [-1, *image_shape])
  labels = tf.cast(tf.round(packed[:, d + 1]), tf.int32) if packed.shape[1] == d + 2 else None
  return images, labels, packed[:, d]


def set_monitor_direction(
  callback: keras.callbacks.Callback, metrics: Sequence[keras.metrics.Metric]
) -> None:
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
