"""`npz:PATH` / `npy:PATH`: images stored as NumPy arrays, the format in which downsampled ImageNet is
distributed today (image-net.org, "Downsampled ImageNet" 32x32 / 64x64, Chrabaszcz et al. 2017:
Imagenet32_train_npz.zip holds train_data_batch_1.npz .. _10.npz and Imagenet32_val_npz.zip val_data.npz,
each with 'data' uint8 `[N, 3 * S * S]` (channel planes, row-major: R plane, G plane, B plane) and
'labels' in 1..1000).

PATH is one .npz / .npy file or a directory of them. In a directory, files whose names start with
"train" are the train split and those starting with "val" or "test" the test split; if no name says,
every file is both, split by example index (every 10th example, i % 10 == 9, is "test": appending
examples moves none). A single file is split the same way.

Image arrays, in an .npz under the key 'data', 'images', 'image', 'x' or 'arr_0' (an .npy file holds
just them): uint8 `[N, H, W, C]`, `[N, C, H, W]` (C in 1, 3 and H, W > 4), `[N, H, W]` (grey), or
`[N, C * S * S]` rows of channel planes as above (C = 3 if divisible into a square, else 1).
Labels (.npz only): 'labels', 'label' or 'y'; labels running 1..K (no 0) are shifted to 0..K-1.
The files are read one at a time (.npy memory-mapped), so a data set larger than RAM streams.
"""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np
import tensorflow as tf

from tfp_glow.data.quantize import reduce_bits
from tfp_glow.data.transforms import fit_to_size

ARRAY_PREFIXES = ('npz:', 'npy:')
IMAGE_KEYS = ('data', 'images', 'image', 'x', 'arr_0')
LABEL_KEYS = ('labels', 'label', 'y')
_CHUNK = 4096  # examples per tensor handed to tf.data


def _files(path: str) -> tuple[list[str], list[str]]:
  """(train files, test files); the same list twice when the split is by index."""
  if not os.path.exists(path):
    raise ValueError(f'array data set: {path!r} does not exist')
  if os.path.isfile(path):
    return [path], [path]
  files = sorted(
    os.path.join(path, f) for f in os.listdir(path) if f.endswith(('.npz', '.npy')) and not f.startswith('.')
  )
  if not files:
    raise ValueError(f'array data set: no .npz or .npy files in {path!r}')
  train = [f for f in files if os.path.basename(f).lower().startswith('train')]
  test = [f for f in files if os.path.basename(f).lower().startswith(('val', 'test'))]
  return (train, test) if train and test else (files, files)


def _header(path: str) -> tuple[str | None, tuple[int, ...], str | None]:
  """(image key, image array shape, label key) without reading the arrays."""
  if path.endswith('.npy'):
    return None, np.load(path, mmap_mode='r').shape, None
  with zipfile.ZipFile(path) as z:
    names = {n[: -len('.npy')] for n in z.namelist() if n.endswith('.npy')}
    key = next((k for k in IMAGE_KEYS if k in names), None)
    if key is None:
      raise ValueError(f'array data set: {path!r} has none of the image keys {", ".join(IMAGE_KEYS)}')
    with z.open(key + '.npy') as f:
      version = np.lib.format.read_magic(f)
      read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
      shape, _, _ = read(f)
  return key, shape, next((k for k in LABEL_KEYS if k in names), None)


def _image_shape(shape: tuple[int, ...], path: str) -> tuple[int, int, int]:
  """(H, W, C) of one example from the stored array's shape (see the module docstring)."""
  if len(shape) == 2:
    c = 3 if math.isqrt(shape[1] // 3) ** 2 * 3 == shape[1] else 1
    s = math.isqrt(shape[1] // c)
    if s * s * c != shape[1]:
      raise ValueError(f'array data set: rows of {shape[1]} values in {path!r} are not C x S x S images')
    return s, s, c
  if len(shape) == 3:
    return shape[1], shape[2], 1
  if len(shape) == 4:
    if shape[1] in (1, 3) and shape[3] not in (1, 3) and min(shape[2:]) > 4:
      return shape[2], shape[3], shape[1]
    return shape[1], shape[2], shape[3]
  raise ValueError(f'array data set: {path!r} holds an array of shape {shape}, not images')


def _to_nhwc(images: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
  h, w, c = hwc
  if images.ndim == 2:
    return images.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
  if images.ndim == 3:
    return images[..., None]
  if images.shape[1:] != hwc:  # NCHW
    return images.transpose(0, 2, 3, 1)
  return images


def stored_shape(path: str, split: str) -> tuple[int, int, int]:
  """(H, W, C) of the images stored for `split`, from the files' headers."""
  train, test = _files(path)
  f = (train if split == 'train' else test)[0]
  return _image_shape(_header(f)[1], f)


def array_bins(
  path: str,
  split: str,
  *,
  n_bits: int,
  image_size: int | None,
  with_labels: bool,
  shuffle: bool,
  seed: int | None,
) -> tuple[tf.data.Dataset, tuple[int, int, int], int | None, int]:
  """The array source -> (dataset of uint8 bins [, int32 labels], shape, num_classes, num_examples)."""
  train, test = _files(path)
  files = train if split == 'train' else test
  by_index = train == test
  headers = [_header(f) for f in files]
  shapes = {_image_shape(shape, f) for f, (_, shape, _) in zip(files, headers)}
  if len(shapes) > 1:
    raise ValueError(
      f'array data set: the files in {path!r} hold images of different shapes {sorted(shapes)}'
    )
  hwc = shapes.pop()
  counts = [shape[0] for _, shape, _ in headers]
  if by_index:
    counts = [n // 10 if split == 'test' else n - n // 10 for n in counts]
  num_classes, offset = None, 0
  if with_labels:
    if any(label_key is None for _, _, label_key in headers):
      raise ValueError(
        f'array data set {path!r} has no labels (keys {", ".join(LABEL_KEYS)}) for a class-conditional '
        'model (--conditional, with_labels=True)'
      )
    every_file = sorted(set(train + test))  # the same ids in both splits
    all_labels = np.concatenate([np.load(f)[_header(f)[2]] for f in every_file])
    offset = 1 if all_labels.min() == 1 else 0  # downsampled ImageNet counts its classes from 1
    num_classes = int(all_labels.max()) + 1 - offset
  shape = (image_size, image_size, hwc[2]) if image_size else hwc
  epoch = [0]

  def chunks():
    rng = np.random.RandomState(None if seed is None else seed + epoch[0])
    epoch[0] += 1
    order = rng.permutation(len(files)) if shuffle else range(len(files))
    for i in order:
      key, _, label_key = headers[i]
      if key is None:
        images, labels = np.load(files[i], mmap_mode='r'), None
      else:
        stored = np.load(files[i])
        images, labels = stored[key], (stored[label_key] if with_labels else None)
      rows = np.arange(len(images))
      if by_index:
        rows = rows[(rows % 10 == 9) == (split == 'test')]
      for start in range(0, len(rows), _CHUNK):
        part = rows[start : start + _CHUNK]
        x = _to_nhwc(np.asarray(images[part]), hwc)
        if x.dtype != np.uint8:
          raise ValueError(
            f'array data set: {files[i]!r} holds {x.dtype} images; uint8 pixels 0..255 expected'
          )
        y = (labels[part].astype(np.int32) - offset) if labels is not None else np.zeros(len(part), np.int32)
        yield x, y

  ds = tf.data.Dataset.from_generator(
    chunks,
    output_signature=(
      tf.TensorSpec([None, *hwc], tf.uint8),
      tf.TensorSpec([None], tf.int32),
    ),
  ).unbatch()

  def prepare(image, label):
    if image_size:
      image = fit_to_size(image, image_size, image_size)[0]
    bins = tf.cast(reduce_bits(tf.ensure_shape(image, shape), n_bits), tf.uint8)
    return (bins, label) if with_labels else bins

  return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE), shape, num_classes, sum(counts)
