"""EXIF orientation of JPEGs and PNGs, read and applied with TensorFlow ops (inside a `tf.data` map, in parallel).

Cameras and phones store the pixels as the sensor read them and say in the EXIF tag Orientation (0x0112)
how to turn them for display; `tf.io.decode_jpeg` ignores the tag, so a portrait photo would train on its
side. Why not Pillow's `ImageOps.exif_transpose`: it would need a `tf.py_function` per image (one Python
call at a time, under the GIL, in a pipeline that otherwise decodes in parallel) and a dependency; the tag
sits at a fixed place in a simple structure, which a few vectorized ops read:

  FF D8                          start of image
  FF Ex LEN(2, big-endian) ...   application segments APP0..APP15, LEN counts itself; EXIF is the APP1
                                 segment whose data starts "Exif\\0\\0", then a TIFF structure:
    "II" (little-endian) or "MM" (big-endian), 42, OFFSET(4) of IFD0 from the TIFF start
    IFD0: COUNT(2), then COUNT entries of 12 bytes: TAG(2) TYPE(2) N(4) VALUE(4); Orientation is TAG
    0x0112, a SHORT whose value sits in the first 2 bytes of VALUE.

Orientation v in 1..8 says how the stored image must be transformed for display (EXIF 2.3, Pillow's
`exif_transpose` does the same): 1 as stored, 2 mirrored left-right, 3 rotated 180, 4 mirrored top-bottom,
5 transposed (mirrored about the main diagonal), 6 rotated 90 degrees clockwise, 7 transversed (mirrored about
the other diagonal), 8 rotated 90 degrees counter-clockwise. Anything else (no EXIF, a GIF or BMP, a damaged or
out-of-range tag) reads as 1. A PNG carries the same TIFF structure in its `eXIf` chunk
(`png_orientation`).
"""

from __future__ import annotations

import tensorflow as tf

ORIENTATION_TAG = 0x0112
_HEAD = 1 << 17  # bytes read: EXIF is the first or second segment, and a segment is at most 64 KiB
_MAX_SEGMENTS = 16  # JPEG segments / PNG chunks walked before giving up (EXIF comes early)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_MAX_ENTRIES = 64  # IFD0 entries looked at (cameras write about a dozen)


def jpeg_orientation(raw: tf.Tensor) -> tf.Tensor:
  """The EXIF orientation (int32 scalar in 1..8) of the encoded JPEG `raw` (a scalar string); 1 if none."""
  byte, size = _bytes(raw)

  def walk(i, pos, tiff, done):  # one segment: FF marker LEN
    marker = byte(pos + 1)
    exif = tf.reduce_all(tf.equal(byte(pos + 4 + tf.range(6, dtype=tf.int64)), list(b'Exif\0\0')))
    found = tf.logical_and(tf.equal(byte(pos), 0xFF), tf.logical_and(tf.equal(marker, 0xE1), exif))
    stop = tf.logical_or(tf.not_equal(byte(pos), 0xFF), tf.reduce_any(tf.equal(marker, [0xDA, 0xD9])))
    stop = tf.logical_or(stop, pos + 4 > size)
    length = byte(pos + 2) * 256 + byte(pos + 3)
    return i + 1, pos + 2 + length, tf.where(found, pos + 10, tiff), tf.logical_or(found, stop)

  is_jpeg = tf.logical_and(tf.equal(byte(0), 0xFF), tf.equal(byte(1), 0xD8))
  return _tiff_orientation(byte, _find(walk, 2, is_jpeg))


def png_orientation(raw: tf.Tensor) -> tf.Tensor:
  """The EXIF orientation (int32 scalar in 1..8) of the encoded PNG `raw` (a scalar string); 1 if none.

  A PNG is an 8-byte signature, then chunks LEN(4, big-endian) TYPE(4) DATA(LEN) CRC(4); the `eXIf` chunk's
  data is the TIFF structure itself (no "Exif\\0\\0" prefix). It is looked for before the first IDAT
  (where the PNG extensions put it and where writers such as Pillow write it)."""
  byte, size = _bytes(raw)

  def walk(i, pos, tiff, done):  # one chunk
    kind = byte(pos + 4 + tf.range(4, dtype=tf.int64))
    found = tf.reduce_all(tf.equal(kind, list(b'eXIf')))
    stop = tf.logical_or(
      tf.reduce_all(tf.equal(kind, list(b'IDAT'))), tf.reduce_all(tf.equal(kind, list(b'IEND')))
    )
    stop = tf.logical_or(stop, pos + 8 > size)
    length = sum(byte(pos + k) * 256 ** (3 - k) for k in range(4))
    return i + 1, pos + 12 + length, tf.where(found, pos + 8, tiff), tf.logical_or(found, stop)

  is_png = tf.reduce_all(tf.equal(byte(tf.range(8, dtype=tf.int64)), list(PNG_SIGNATURE)))
  return _tiff_orientation(byte, _find(walk, 8, is_png))


def _bytes(raw: tf.Tensor):
  """(byte(i) -> int64 value of byte i of the file's head, 0 past its end; the head's size)."""
  head = tf.io.decode_raw(tf.strings.substr(raw, 0, tf.minimum(tf.strings.length(raw), _HEAD)), tf.uint8)
  size = tf.shape(head, out_type=tf.int64)[0]
  # Reads past the end give 0 (one padding byte, indices clipped onto it): no out-of-range errors.
  data = tf.concat([tf.cast(head, tf.int64), tf.zeros([1], tf.int64)], 0)

  def byte(i):
    return tf.gather(data, tf.clip_by_value(tf.cast(i, tf.int64), 0, size))

  return byte, size


def _find(walk, first: int, is_format: tf.Tensor) -> tf.Tensor:
  """Walks the file's segments or chunks from offset `first` with `walk`; the TIFF start, or -1."""
  start = (tf.constant(0), tf.constant(first, tf.int64), tf.constant(-1, tf.int64), tf.logical_not(is_format))
  _, _, tiff, _ = tf.while_loop(
    lambda i, pos, tiff, done: tf.logical_and(i < _MAX_SEGMENTS, tf.logical_not(done)), walk, start
  )
  return tiff


def _tiff_orientation(byte, tiff: tf.Tensor) -> tf.Tensor:
  """Orientation (int32 in 1..8; 1 if absent or invalid) from the TIFF structure at offset `tiff` (-1: none)."""
  little = tf.logical_and(tf.equal(byte(tiff), 0x49), tf.equal(byte(tiff + 1), 0x49))  # "II"

  def unsigned(at, n):  # n-byte integer(s) at tiff + at, in the file's byte order
    parts = [byte(tiff + at + k) for k in range(n)]
    big = sum(p * 256 ** (n - 1 - k) for k, p in enumerate(parts))
    small = sum(p * 256**k for k, p in enumerate(parts))
    return tf.where(little, small, big)

  ifd = unsigned(4, 4)
  count = tf.minimum(unsigned(ifd, 2), _MAX_ENTRIES)
  entry = ifd + 2 + 12 * tf.range(_MAX_ENTRIES, dtype=tf.int64)
  tags = unsigned(entry, 2)
  values = unsigned(entry + 8, 2)
  hit = tf.logical_and(tf.equal(tags, ORIENTATION_TAG), tf.range(_MAX_ENTRIES, dtype=tf.int64) < count)
  value = tf.reduce_max(tf.where(hit, values, 0))  # the tag appears once; 0 when absent
  valid = tf.logical_and(tiff >= 0, tf.logical_and(value >= 1, value <= 8))
  return tf.cast(tf.where(valid, value, 1), tf.int32)


def orientation(raw: tf.Tensor) -> tf.Tensor:
  """The EXIF orientation of a JPEG or a PNG `raw` (int32 scalar in 1..8); 1 for other formats or none."""
  is_jpeg = tf.equal(tf.strings.substr(raw, 0, 2), b'\xff\xd8')
  return tf.cond(is_jpeg, lambda: jpeg_orientation(raw), lambda: png_orientation(raw))


def may_have_orientation(raw: tf.Tensor) -> tf.Tensor:
  """A cheap bool scalar: False where `raw` surely carries no EXIF orientation (a PNG without an `eXIf`
  chunk name in its head), so that the common PNG skips the chunk walk; True for every JPEG."""
  is_jpeg = tf.equal(tf.strings.substr(raw, 0, 2), b'\xff\xd8')
  head = tf.strings.substr(raw, 0, tf.minimum(tf.strings.length(raw), _HEAD))
  # A byte-wise split (a regex would read the bytes as UTF-8, which PNG data is not).
  return tf.logical_or(is_jpeg, tf.size(tf.strings.split(head, sep='eXIf')) > 1)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
  """`[H, W, C]` turned for display by EXIF `orientation` (1..8, see the module docstring); orientations
  5..8 swap H and W. Pure index shuffles: pixel values are unchanged."""

  def transposed(x):
    return tf.transpose(x, [1, 0, 2])

  branches = [
    lambda: image,  # 1
    lambda: image[:, ::-1],  # 2: mirror left-right
    lambda: image[::-1, ::-1],  # 3: rotate 180
    lambda: image[::-1],  # 4: mirror top-bottom
    lambda: transposed(image),  # 5: transpose
    lambda: transposed(image)[:, ::-1],  # 6: rotate 90 clockwise
    lambda: transposed(image)[::-1, ::-1],  # 7: transverse
    lambda: transposed(image)[::-1],  # 8: rotate 90 counter-clockwise
  ]
  orientation = tf.clip_by_value(orientation, 1, 8)
  return tf.cond(tf.equal(orientation, 1), lambda: image, lambda: tf.switch_case(orientation - 1, branches))
