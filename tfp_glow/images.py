"""Image files and grids: uint8 images [N, H, W, C] tiled, written as PNG and read back.

No Pillow or matplotlib: PNGs are encoded with `tf.io.encode_png` and written with `tf.io.gfile`
(so `gs://` and other remote paths work too), each file atomically (`tfp_glow.atomic`).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import tensorflow as tf

from tfp_glow import atomic
from tfp_glow.data.transforms import conversion_names, fit_to_size, orient, to_channels


def image_grid(
  images: np.ndarray, columns: int | None = None, pad: int = 1, pad_value: int = 128, zoom: int = 1
) -> np.ndarray:
  """Tiles uint8 images [N, H, W, C] into one uint8 image, row by row.

  Returns [rows * h + (rows - 1) * pad, columns * w + (columns - 1) * pad, C] with h = H * zoom,
  w = W * zoom (each image enlarged `zoom` times by pixel repetition, handy for 8x8 digits), rows =
  ceil(N / columns), columns default ceil(sqrt(N)). Separators and unused cells are `pad_value`.
  C is kept as is (1: grayscale, 3: RGB, 2 / 4: with alpha).
  """
  images = np.asarray(images)
  if (
    images.dtype != np.uint8
    or images.ndim != 4
    or images.shape[0] == 0
    or images.shape[-1] not in (1, 2, 3, 4)
  ):
    raise ValueError(
      f'image_grid: expected uint8 images [N >= 1, H, W, C in 1..4], got {images.dtype} {images.shape}.'
    )
  if zoom < 1 or pad < 0:
    raise ValueError(f'image_grid: need zoom >= 1 and pad >= 0, got zoom={zoom}, pad={pad}.')
  n = images.shape[0]
  columns = columns or math.ceil(math.sqrt(n))
  if columns < 1:
    raise ValueError(f'image_grid: columns must be >= 1, got {columns}.')
  columns = min(columns, n)
  rows = math.ceil(n / columns)
  if zoom > 1:
    images = images.repeat(zoom, axis=1).repeat(zoom, axis=2)
  _, h, w, c = images.shape
  grid = np.full((rows * h + (rows - 1) * pad, columns * w + (columns - 1) * pad, c), pad_value, np.uint8)
  for i, image in enumerate(images):
    top, left = (i // columns) * (h + pad), (i % columns) * (w + pad)
    grid[top : top + h, left : left + w] = image
  return grid


def save_png(path: str, image: np.ndarray | tf.Tensor) -> None:
  """Writes uint8 [H, W, C] (C in 1..4) as a PNG; via a temporary name, so `path` is never half-written."""
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8 or image.shape.rank != 3:
    raise ValueError(f'save_png: expected a uint8 image [H, W, C], got {image.dtype.name} {image.shape}.')
  atomic.write_bytes(path, tf.io.encode_png(image).numpy())


def read_image(path: str, shape: Sequence[int] | None = None) -> tf.Tensor:
  """A PNG / JPEG / BMP / GIF file as uint8 [H, W, C], turned by its EXIF orientation; with `shape`
  (H, W, C in {1, 3}) fitted to it as the data sources do (see `read_image_noting`). Raises ValueError if
  the file cannot be decoded."""
  return read_image_noting(path, shape)[0]


def read_image_noting(path: str, shape: Sequence[int] | None = None) -> tuple[tf.Tensor, list[str]]:
  """(`read_image`'s image, the conversions made: [] or some of 'grayscale to RGB', 'RGB to grayscale',
  'alpha dropped', 'cropped', 'resized'). With `shape`: C channels (grey repeated to RGB, RGB to luma,
  alpha dropped), then the central region of the target's aspect ratio, resized to H x W with antialiased
  bilinear interpolation (`tfp_glow.data.transforms.fit_to_size`, the rule of every data source)."""
  try:
    raw = tf.io.read_file(path)
    image = tf.io.decode_image(raw, dtype=tf.uint8, expand_animations=False)
  except tf.errors.OpError as e:
    # e.message starts with TensorFlow's graph-node name ({{function_node ...}}) and ends with the op's:
    # only the decoder's own sentence is the user's business.
    reason = re.sub(r'\{\{[^}]*\}\}|\[Op:[^\]]*\].*', '', e.message).strip().splitlines()[0].strip()
    raise ValueError(f'cannot read image {path!r}: {reason or type(e).__name__}') from None
  image = orient(raw, image)
  if shape is None:
    return image, []
  height, width, channels = shape
  image, flags = to_channels(image, channels)
  image, fit_flags = fit_to_size(image, height, width)
  return image, conversion_names(int(flags | fit_flags))
