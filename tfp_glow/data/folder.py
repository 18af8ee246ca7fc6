"""`folder:PATH`: a folder of PNG / JPEG files, streamed through `tf.data` (decoded in parallel, once per image
per epoch, never held in memory unless a cache is asked for).

Layouts (the convention of `keras.utils.image_dataset_from_directory` and tfds' `ImageFolder`):
  PATH/*.png                  unlabeled; images directly in PATH.
  PATH/CLASS/**/*.png         labeled: one subfolder per class, label ids from the sorted names
                              (class_names[i] is label i); images anywhere below a class folder.
A top level holding both image files and subfolders with images is an error (which did you mean?).
Hidden files and folders (".name") are ignored, as are files of other suffixes.

Split: a file is "test" if Fingerprint64(relative path) read as a fraction is < 0.1 (`test_mask`), so
adding or removing files never moves another file between the splits, and each split reads only its own
files. (A folder whose hashes put no file in "test" gets the file of the smallest hash: tiny folders only.)

Bad files: a file that is not a complete PNG / JPEG (a cheap check of its signature and end marker, in the
pipeline) or decodes to another size than the others is skipped and recorded in `DatasetInfo.skipped`
(the first few are named in warnings); bad_files='error' instead decodes every file of the split once,
up front, and raises a ValueError naming the bad ones.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfp_glow.data.info import NAMED_SKIPS, SkippedFiles
from tfp_glow.data.pipeline import shuffled_indices
from tfp_glow.data.quantize import reduce_bits
from tfp_glow.data.transforms import center_crop, resize_uint8

FOLDER_PREFIX = 'folder:'
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
BAD_FILES = ('skip', 'error')
TEST_FRACTION = 0.1
_HASH_BUCKETS = 2**30
_PROBES = 16  # files decoded up front for the shape and channels: spread over the sorted listing
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith('.')


def _walk(root: str):
  """os.walk for local paths (fast), tf.io.gfile.walk for any other file system TensorFlow reads."""
  if '://' in root:
    yield from tf.io.gfile.walk(root)
  else:
    yield from os.walk(root)


def _images_below(root: str, top: str) -> list[str]:
  """Relative paths (to `root`) of every image file below root/top, recursively, hidden folders skipped."""
  found = []
  for directory, dirs, files in _walk(os.path.join(root, top)):
    dirs[:] = [d for d in dirs if not d.startswith('.')]  # os.walk honours this; gfile.walk lists anyway
    if any(part.startswith('.') for part in os.path.relpath(directory, root).split(os.sep) if part != '.'):
      continue
    found += [os.path.relpath(os.path.join(directory, f), root) for f in files if _is_image(f)]
  return found


def list_images(root: str) -> tuple[list[str], np.ndarray | None, tuple[str, ...] | None]:
  """(sorted relative paths, int32 labels or None, class names or None) of the folder `root`."""
  if not tf.io.gfile.isdir(root):
    raise ValueError(f'folder data set: {root!r} is not a directory')
  if '://' in root:
    entries = [e.rstrip('/') for e in tf.io.gfile.listdir(root) if not e.startswith('.')]
    is_dir = {e: tf.io.gfile.isdir(os.path.join(root, e)) for e in entries}
  else:  # one scandir: no stat per file (a flat folder of 100,000 images)
    with os.scandir(root) as it:
      is_dir = {e.name: e.is_dir() for e in it if not e.name.startswith('.')}
  top_files = sorted(e for e, d in is_dir.items() if not d and _is_image(e))
  subdirs = sorted(e for e, d in is_dir.items() if d)
  per_class = {d: sorted(_images_below(root, d)) for d in subdirs}
  classes = tuple(d for d in subdirs if per_class[d])
  if top_files and classes:
    raise ValueError(
      f'folder data set: {root!r} mixes image files ({", ".join(top_files[:3])}...) and subfolders with '
      f'images ({", ".join(classes[:3])}...) at its top level; put every image in a class subfolder '
      '(PATH/CLASS/image.png: labels from the folder names) or every image directly in PATH (no labels)'
    )
  if top_files:
    return top_files, None, None
  if not classes:
    raise ValueError(f'folder data set: no *.png, *.jpg or *.jpeg files in {root!r} or its subfolders')
  paths = [p for c in classes for p in per_class[c]]
  labels = np.concatenate([np.full(len(per_class[c]), i, np.int32) for i, c in enumerate(classes)])
  return paths, labels, classes


def test_mask(relative_paths: list[str]) -> np.ndarray:
  """True for the files of the test split: Fingerprint64 of the relative path (with '/' separators, so the
  split is the same on every OS; `tf.strings.to_hash_bucket_fast`, stable across TF versions), read as a
  fraction of _HASH_BUCKETS, below TEST_FRACTION. Vectorized: a few milliseconds for 100,000 paths."""
  if not relative_paths:
    return np.zeros(0, bool)
  paths = relative_paths if os.sep == '/' else [p.replace(os.sep, '/') for p in relative_paths]
  buckets = tf.strings.to_hash_bucket_fast(tf.constant(paths), _HASH_BUCKETS).numpy()
  mask = buckets < TEST_FRACTION * _HASH_BUCKETS
  if not mask.any() and len(relative_paths) >= 2:
    mask[np.argmin(buckets)] = True
  return mask


def complete_image(raw: tf.Tensor) -> tf.Tensor:
  """True if the bytes `raw` look like a whole PNG (signature ... IEND chunk) or JPEG (SOI ... EOI in the
  last 64 bytes, which tolerates the padding some writers append). Catches truncated and non-image files
  without decoding them; a file that passes can still hold corrupt data (see the module docstring)."""
  n = tf.strings.length(raw)
  png = tf.logical_and(
    tf.equal(tf.strings.substr(raw, 0, 8), _PNG_SIGNATURE),
    tf.equal(tf.strings.substr(raw, tf.maximum(n - 8, 0), 4), b'IEND'),
  )
  tail = tf.io.decode_raw(tf.strings.substr(raw, tf.maximum(n - 64, 0), 64), tf.uint8)
  eoi = tf.reduce_any(tf.logical_and(tf.equal(tail[:-1], 0xFF), tf.equal(tail[1:], 0xD9)))
  jpeg = tf.logical_and(tf.equal(tf.strings.substr(raw, 0, 2), b'\xff\xd8'), eoi)
  return tf.logical_and(n >= 16, tf.logical_or(png, jpeg))


def _probe(files: list[str], image_size: int | None, bad_files: str) -> tuple[int, int, int]:
  """(H, W, C) of the data set from `files` (up to _PROBES spread over the listing): C is 3 if any probed
  image has colour, else 1; without image_size, probed images of different sizes are an error."""
  shapes = {}
  for i in range(len(files)):
    try:
      raw = tf.io.read_file(files[i])
      if not bool(complete_image(raw)):
        raise ValueError('not a complete PNG or JPEG file')
      shapes[files[i]] = tuple(tf.io.decode_image(raw, expand_animations=False).shape)
    except (tf.errors.OpError, ValueError) as e:
      if bad_files == 'error':
        raise ValueError(f'folder data set: cannot decode image file {files[i]!r}') from e
  if not shapes:
    raise ValueError(
      f'folder data set: none of the {len(files)} files tried can be decoded, e.g. {files[0]!r}'
    )
  channels = 3 if any(s[2] >= 3 for s in shapes.values()) else 1
  if image_size is not None:
    return image_size, image_size, channels
  sizes = {s[:2]: f for f, s in shapes.items()}
  if len(sizes) > 1:
    (a, fa), (b, fb) = list(sizes.items())[:2]
    raise ValueError(
      f'folder data set: images have different sizes ({fa!r} is {a[0]}x{a[1]}, {fb!r} is {b[0]}x{b[1]}); '
      'pass image_size (--image-size) to center-crop and resize them all to image_size x image_size'
    )
  (h, w), _ = next(iter(sizes.items()))
  return h, w, channels


def _decode(raw: tf.Tensor, shape: tuple[int, int, int], resize: bool):
  """(uint8 image of `shape`, ok, reason): a zero image with ok False for a bad file."""
  h, w, c = shape
  complete = complete_image(raw)

  def decoded():
    image = tf.io.decode_image(raw, channels=c, expand_animations=False)
    if resize:
      image = resize_uint8(center_crop(image), h)
      return tf.ensure_shape(image, shape), tf.constant(True)
    fits = tf.reduce_all(tf.equal(tf.shape(image), shape))
    return tf.cond(fits, lambda: tf.reshape(image, shape), lambda: tf.zeros(shape, tf.uint8)), fits

  image, fits = tf.cond(complete, decoded, lambda: (tf.zeros(shape, tf.uint8), tf.constant(False)))
  reason = tf.where(complete, f'not {h}x{w} like the others: pass --image-size', 'not a complete PNG/JPEG')
  return image, fits, reason


def _check_every_file(files: list[str], shape, resize: bool) -> None:
  """bad_files='error': decodes every file once (in parallel) and raises naming the bad ones."""
  ds = tf.data.Dataset.from_tensor_slices(files)
  ds = ds.map(
    lambda p: (p, *_decode(tf.io.read_file(p), shape, resize)[1:]), num_parallel_calls=tf.data.AUTOTUNE
  )
  good = set()
  for path, ok, _ in ds.ignore_errors().as_numpy_iterator():  # a file that still fails to decode: absent
    if ok:
      good.add(path.decode())
  bad = [f for f in files if f not in good]
  if bad:
    more = f' and {len(bad) - NAMED_SKIPS} more' if len(bad) > NAMED_SKIPS else ''
    raise ValueError(
      f'folder data set: {len(bad)} image file(s) cannot be decoded or are not {shape[0]}x{shape[1]} '
      f'like the others: {", ".join(bad[:NAMED_SKIPS])}{more} (bad_files="skip" / --bad-files skip '
      'skips them)'
    )


def folder_bins(
  root: str,
  split: str,
  *,
  n_bits: int,
  image_size: int | None,
  with_labels: bool,
  shuffle: bool,
  seed: int | None,
  bad_files: str = 'skip',
  encoded: bool = False,
):
  """The streaming folder source -> (dataset of uint8 bins [, int32 labels], shape, class_names, n, skipped).

  Per element: read the file, check it is complete, decode it (channels forced to C), center-crop and
  resize if image_size, reduce to n_bits. Shuffling permutes the file list each epoch before decoding.
  encoded=True (for `tfp-glow prepare`): elements are (the file's bytes, or PNG bytes if resized, label).
  """
  if bad_files not in BAD_FILES:
    raise ValueError(f'bad_files must be one of {", ".join(BAD_FILES)}, got {bad_files!r}')
  relative, labels, class_names = list_images(root)
  if with_labels and class_names is None:
    raise ValueError(
      f'folder data set {root!r} has no class subfolders, so no labels: a class-conditional model '
      '(--conditional, with_labels=True) needs one subfolder per class (PATH/CLASS/image.png)'
    )
  if split == 'test' and len(relative) < 2:
    raise ValueError(f'folder data set: {root!r} has {len(relative)} image; a test split needs at least 2')
  keep = test_mask(relative) if split == 'test' else ~test_mask(relative)
  # Full paths are joined in one vectorized op: no Python work per file beyond the listing.
  relative_kept = np.asarray(relative, dtype=object)[keep]
  paths_t = tf.strings.join([os.path.join(root, ''), tf.constant(list(relative_kept), tf.string)])
  n = len(relative_kept)
  split_labels = labels[keep] if labels is not None else np.zeros(n, np.int32)
  # Probed over both splits' files, so that train and test agree on the shape and channels.
  picks = sorted({int(i) for i in np.linspace(0, len(relative) - 1, min(_PROBES, len(relative)))})
  shape = _probe([os.path.join(root, relative[i]) for i in picks], image_size, bad_files)
  resize = image_size is not None
  if bad_files == 'error':
    _check_every_file([p.decode() for p in paths_t.numpy()], shape, resize)
  skipped = SkippedFiles()

  def record(path, reason):
    skipped.record(path.numpy().decode(), reason.numpy().decode())
    return False

  labels_t = tf.constant(split_labels)

  def load(index):
    path = tf.gather(paths_t, index)
    raw = tf.io.read_file(path)
    image, ok, reason = _decode(raw, shape, resize)
    if encoded:
      bins = tf.io.encode_png(image) if resize else raw
    else:
      bins = tf.cast(reduce_bits(image, n_bits), tf.uint8)
    return bins, tf.gather(labels_t, index), ok, path, reason

  def keep_good(bins, label, ok, path, reason):
    return tf.cond(ok, lambda: True, lambda: tf.py_function(record, [path, reason], tf.bool))

  ds = shuffled_indices(n, shuffle, seed)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle or seed is not None)
  ds = ds.filter(keep_good).map(lambda bins, label, *_: (bins, label) if with_labels or encoded else bins)
  if bad_files == 'skip':
    ds = ds.ignore_errors(log_warning=True)  # last resort (a file deleted mid-run): logged by TensorFlow
  return ds, shape, class_names, n, skipped
