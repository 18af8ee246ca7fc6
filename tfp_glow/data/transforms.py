"""Per-image work shared by the sources: decoding (EXIF orientation, channel conversion), the one crop and
resize rule (`fit_to_size`), zero-padding to 32x32.

Every source that changes an image's size (folder, tfrecord, arrays, tfds, the CLI's single images) goes
through `fit_to_size`, so that the same file gives the same pixels whichever way it is read. Conversions
are reported as bit flags (`CONVERSIONS`), which `tfp_glow.data.info.Conversions` counts.
"""

from __future__ import annotations

import tensorflow as tf

from tfp_glow.data.exif import apply_orientation, may_have_orientation, orientation

# What a source may do to an image to make it fit, as bit flags: flag 2**i is CONVERSIONS[i].
CONVERSIONS = ('grayscale to RGB', 'RGB to grayscale', 'alpha dropped', 'cropped', 'resized')
GRAY_TO_RGB, RGB_TO_GRAY, ALPHA_DROPPED, CROPPED, RESIZED = (1 << i for i in range(len(CONVERSIONS)))


def conversion_names(flags: int) -> list[str]:
  """The names of the conversions set in `flags` (CONVERSIONS order)."""
  return [name for i, name in enumerate(CONVERSIONS) if int(flags) >> i & 1]


def fit_conversions(h: int, w: int, height: int, width: int) -> list[str]:
  """What `fit_to_size` does to every h x w image for a height x width target: [], ['cropped'],
  ['resized'] or both (for sources whose images all have one size)."""
  crop_h, crop_w = min(h, w * height // width), min(w, h * width // height)
  return ['cropped'] * ((crop_h, crop_w) != (h, w)) + ['resized'] * ((crop_h, crop_w) != (height, width))


def decode_image(raw: tf.Tensor, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Encoded PNG / JPEG / GIF / BMP bytes -> (uint8 `[H, W, channels]` turned by its EXIF orientation,
  int32 conversion flags). channels 3: grey is repeated (GRAY_TO_RGB); channels 1: colour becomes luma
  (RGB_TO_GRAY, `tf.image.rgb_to_grayscale`); an alpha channel is dropped, not blended (ALPHA_DROPPED).
  Bytes after the image's end marker are ignored (the decoders stop there). Raises (an OpError) on bytes
  that do not decode."""
  if channels not in (1, 3):
    raise ValueError(f'decode_image: channels must be 1 or 3, got {channels}')
  image = tf.io.decode_image(raw, expand_animations=False)  # the file's own channels: 1, 2, 3 or 4
  return convert_decoded(raw, image, channels)


def convert_decoded(raw: tf.Tensor, image: tf.Tensor, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
  """`decode_image` after the decoding: `image` (uint8 `[H, W, 1..4]`, decoded from `raw`) turned by its EXIF
  orientation and converted to `channels` -> (image, flags)."""
  # The common case, a PNG without EXIF of the data set's channels, skips the work below.
  plain = tf.logical_and(tf.logical_not(may_have_orientation(raw)), tf.equal(tf.shape(image)[-1], channels))
  return tf.cond(
    plain,
    lambda: (tf.ensure_shape(image, [None, None, channels]), tf.constant(0)),
    lambda: to_channels(orient(raw, image), channels),
  )


def orient(raw: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
  """The decoded `image` of the bytes `raw` turned by its EXIF orientation (a JPEG's or a PNG's `eXIf`
  chunk; others as they are). The tag is looked for only where `may_have_orientation` says it may be."""
  return tf.cond(may_have_orientation(raw), lambda: apply_orientation(image, orientation(raw)), lambda: image)


def to_channels(image: tf.Tensor, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
  """uint8 `[H, W, c]`, c in 1..4 (grey, grey + alpha, RGB, RGBA) -> (`[H, W, channels]`, flags)."""
  c = tf.shape(image)[-1]
  alpha = tf.equal(c % 2, 0)
  colour = c >= 3
  image = image[..., : c - tf.cast(alpha, tf.int32)]
  if channels == 3:
    image = tf.cond(colour, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))
    converted = tf.logical_not(colour)
    flag = GRAY_TO_RGB
  else:
    luma = lambda: tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image[..., :3], tf.float32))), tf.uint8)  # noqa: E731
    image = tf.cond(colour, luma, lambda: image[..., :1])
    converted, flag = colour, RGB_TO_GRAY
  flags = tf.where(converted, flag, 0) + tf.where(alpha, ALPHA_DROPPED, 0)
  return tf.ensure_shape(image, [None, None, channels]), flags


def fit_to_size(image: tf.Tensor, height: int, width: int) -> tuple[tf.Tensor, tf.Tensor]:
  """THE crop and resize rule of every source: uint8 `[h, w, C]` -> (`[height, width, C]`, flags).

  The largest central region with the target's aspect ratio is kept (for a square target: the central
  min(h, w) square; CROPPED when that is not the whole image), then resized with antialiased bilinear
  interpolation (RESIZED when its size is not the target's). A non-square image is never squashed."""
  h, w = tf.shape(image, out_type=tf.int64)[0], tf.shape(image, out_type=tf.int64)[1]
  # keep h' x w' with h' / w' = height / width, as large as fits: h' = min(h, w * height / width)
  crop_h = tf.minimum(h, w * height // width)
  crop_w = tf.minimum(w, h * width // height)
  top, left = (h - crop_h) // 2, (w - crop_w) // 2
  image = image[top : top + crop_h, left : left + crop_w]
  cropped = tf.logical_or(crop_h < h, crop_w < w)
  same = tf.logical_and(tf.equal(crop_h, height), tf.equal(crop_w, width))
  image = tf.cond(same, lambda: image, lambda: resize_uint8(image, (height, width)))
  flags = tf.where(cropped, CROPPED, 0) + tf.where(same, 0, RESIZED)
  return tf.ensure_shape(image, [height, width, image.shape[-1]]), flags


def resize_uint8(images: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
  """Bilinear resize with antialiasing (good for down-scaling) to size x size (or (height, width)),
  rounded back to uint8. Squashes a non-square image: sources call `fit_to_size`, which crops first."""
  height_width = (size, size) if isinstance(size, int) else tuple(size)
  x = tf.image.resize(tf.cast(images, tf.float32), height_width, method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def center_crop(image: tf.Tensor, size: int | None = None) -> tf.Tensor:
  """Central `size` x `size` crop of a `[H, W, C]` image; size None: the largest square."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  s = tf.minimum(h, w) if size is None else size
  top, left = (h - s) // 2, (w - s) // 2
  return image[top : top + s, left : left + s]


def padded_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
  """Shape after `pad_to_32`; rejects images that are already larger."""
  h, w, c = shape
  if h is None or w is None or h > 32 or w > 32:
    raise ValueError(f'pad_to_32 needs images of at most 32x32, these are {h}x{w}')
  return 32, 32, c


def pad_to_32_image(image: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
  """Zero-pad `[..., H, W, C]` of static `shape` to 32x32, centred (MNIST 28x28 -> 32x32 as the reference)."""
  h, w, _ = shape
  top, left = (32 - h) // 2, (32 - w) // 2
  paddings = [[0, 0]] * (len(image.shape) - 3) + [[top, 32 - h - top], [left, 32 - w - left], [0, 0]]
  return tf.pad(image, paddings)
