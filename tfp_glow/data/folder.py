"""`folder:PATH`: a folder of PNG / JPEG files, streamed through `tf.data` (decoded in parallel, once per image
per epoch, never held in memory unless a cache is asked for).

Layouts (the convention of `keras.utils.image_dataset_from_directory` and tfds' `ImageFolder`):
  PATH/*.png                  unlabeled; images directly in PATH.
  PATH/CLASS/**/*.png         labeled: one subfolder per class, label ids from the sorted names
                              (class_names[i] is label i); images anywhere below a class folder,
                              symlinked folders followed (a symlink to a folder above it, a loop, is
                              skipped with a warning naming it).
A top level holding both image files and subfolders with images is an error (which did you mean?).
Hidden files and folders (".name") are ignored, as are files of other suffixes.

Split: a file is "test" if Fingerprint64(relative path) read as a fraction is < 0.1 (`test_mask`), so
adding or removing files never moves another file between the splits, and each split reads only its own
files. (A folder whose hashes put no file in "test" gets the file of the smallest hash: tiny folders only.)

Bad files: a file that does not decode (decided by decoding it, in the pipeline: bytes after the image's
end, which phones often append, are fine) or decodes to another size than the others is skipped and
recorded in `DatasetInfo.skipped` (the first few are named in warnings); bad_files='error' instead decodes
every file of the split once, up front, and raises a ValueError naming the bad ones.

Conversions (`transforms.decode_image`, `fit_to_size`): JPEGs are turned by their EXIF orientation, grey
files repeated to RGB in a colour set (colour to luma in a grey one), alpha dropped, and with image_size
every image center-cropped and resized; what was converted is counted per file in `DatasetInfo.conversions`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfp_glow.data import listing_cache
from tfp_glow.data.info import _LOG, NAMED_SKIPS, ImageReport, SkippedFiles
from tfp_glow.data.pipeline import shuffled_indices
from tfp_glow.data.quantize import reduce_bits
from tfp_glow.data.transforms import convert_decoded, fit_to_size, orient
from tfp_glow.names import BAD_FILES

FOLDER_PREFIX = 'folder:'
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
TEST_FRACTION = 0.1
_HASH_BUCKETS = 2**30
_PROBES = 16  # files decoded up front for the shape and channels: spread over the sorted listing
_CYCLE = 16  # AUTOTUNE's default, the number of cores, starves the decoders on small machines
_NOTE_BATCH = 64  # files whose skips and conversions are recorded by one Python call


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith('.')


def _walk(root: str):
  """(directory, subfolders, files) below `root`, hidden entries left out: tf.io.gfile.walk on file systems
  other than the local one, else a walk that follows symlinked folders (os.walk does not, by default), where
  a symlink to a folder above it (a loop) is skipped with a warning naming it."""
  if '://' in root:
    for directory, dirs, files in tf.io.gfile.walk(root):
      if not any(part.startswith('.') for part in os.path.relpath(directory, root).split('/') if part != '.'):
        yield (
          directory,
          [d for d in dirs if not d.startswith('.')],
          [f for f in files if not f.startswith('.')],
        )
    return
  stack = [(root, frozenset({os.path.realpath(root)}))]  # (folder, real paths of it and its ancestors)
  while stack:
    directory, ancestors = stack.pop()
    dirs, files = [], []
    with os.scandir(directory) as entries:
      for entry in entries:
        if entry.name.startswith('.'):
          continue
        if not entry.is_dir():  # follows symlinks: a link to a folder is a folder
          files.append(entry.name)
          continue
        real = os.path.realpath(entry.path)
        if real in ancestors:
          _LOG.warning(
            'tfp_glow: not following %s: a symlink to %s, a folder above it (a loop)', entry.path, real
          )
          continue
        dirs.append(entry.name)
        stack.append((entry.path, ancestors | {real}))
    yield directory, dirs, files


def _images_below(root: str, top: str, walked: list[str]) -> list[str]:
  """Relative paths (to `root`) of every image file below root/top, recursively, hidden folders skipped;
  the directories walked are appended to `walked` (relative to root)."""
  found = []
  for directory, _, files in _walk(os.path.join(root, top)):
    walked.append(os.path.relpath(directory, root))
    found += [os.path.relpath(os.path.join(directory, f), root) for f in files if _is_image(f)]
  return found


def list_images(root: str) -> tuple[list[str], np.ndarray | None, tuple[str, ...] | None]:
  """(sorted relative paths, int32 labels or None, class names or None) of the folder `root`."""
  return _list_images(root, [])


def listing(
  root: str,
) -> tuple[np.ndarray | list[str], np.ndarray | None, tuple[str, ...] | None, np.ndarray]:
  """`list_images(root)` and its `test_mask`, kept between runs where the folder has not changed
  (`tfp_glow.data.listing_cache`); the paths are a list of str, or UTF-8 bytes [N] from the cache."""
  if not tf.io.gfile.isdir(root):
    raise ValueError(f'folder data set: {root!r} is not a directory')
  kept = listing_cache.load(root)
  if kept is not None:
    return kept
  walked = ['.']
  relative, labels, class_names = _list_images(root, walked)
  mask = test_mask(relative)
  listing_cache.save(root, walked, relative, labels, class_names, mask)
  return relative, labels, class_names, mask


def _list_images(root: str, walked: list[str]) -> tuple[list[str], np.ndarray | None, tuple[str, ...] | None]:
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
  per_class = {d: sorted(_images_below(root, d, walked)) for d in subdirs}
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


def _probe(files: list[str], image_size: int | None, bad_files: str) -> tuple[int, int, int]:
  """(H, W, C) of the data set from `files` (up to _PROBES spread over the listing): C is 3 if any probed
  image has colour, else 1; without image_size, probed images of different sizes are an error. Sizes are
  after the EXIF orientation (a portrait photo is taller than wide)."""
  shapes = {}
  for i in range(len(files)):
    try:
      raw = tf.io.read_file(files[i])
      image = tf.io.decode_image(raw, expand_animations=False)
      shapes[files[i]] = tuple(orient(raw, image).shape)
    except tf.errors.OpError:
      if bad_files == 'error':
        raise ValueError(f'folder data set: cannot decode image file {files[i]!r}') from None
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


_UNDECODABLE = 'cannot be decoded as an image'


def _decode_all(paths: tf.Tensor, indices: tf.data.Dataset, shape, resize: bool, deterministic: bool):
  """indices -> (index, path, raw bytes, uint8 image of `shape`, ok, reason, flags) per file, decoded in
  parallel, in order when `deterministic`; a file that does not decode or fit gives a zero image, ok False.

  "Decodable" is decided by decoding: each file's read and decode run in a one-element dataset whose
  errors are ignored, followed by a fallback element, of which the first is taken (tf.data has no in-graph
  try/except; this is the way to skip a bad file and still know which it was). Only the decode runs
  there: a nested dataset costs per file, more so with branches in it; the rest is an ordinary map."""
  h, w, c = shape

  def attempt(index, path):
    raw = tf.io.read_file(path)
    return index, path, raw, tf.io.decode_image(raw, expand_animations=False), tf.constant(True)

  def one(index):
    path = tf.gather(paths, index)
    fallback = (index, path, tf.constant(b''), tf.zeros([1, 1, c], tf.uint8), False)
    tried = tf.data.Dataset.from_tensors((index, path)).map(attempt).ignore_errors()
    return tried.concatenate(tf.data.Dataset.from_tensors(fallback)).take(1)

  def convert(index, path, raw, image, decoded):
    image, flags = convert_decoded(raw, image, c)
    if resize:
      image, fit_flags = fit_to_size(image, h, w)
      return index, path, raw, image, decoded, tf.where(decoded, '', _UNDECODABLE), flags | fit_flags
    fits = tf.logical_and(decoded, tf.reduce_all(tf.equal(tf.shape(image), shape)))
    # Cut or pad to `shape` (no tf.cond, which costs per image): unchanged when it fits, dropped if not.
    image = image[:h, :w]
    image = tf.pad(image, [[0, h - tf.shape(image)[0]], [0, w - tf.shape(image)[1]], [0, 0]])
    reason = tf.where(
      decoded, tf.where(fits, '', f'not {h}x{w} like the others: pass --image-size'), _UNDECODABLE
    )
    return index, path, raw, tf.ensure_shape(image, shape), fits, reason, flags

  ds = indices.interleave(
    one,
    cycle_length=_CYCLE,  # files decoded at a time; each inner dataset is one element
    block_length=1,
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=deterministic,
  )
  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _check_every_file(files: list[str], shape, resize: bool) -> None:
  """bad_files='error': decodes every file once (in parallel) and raises naming the bad ones."""
  ds = _decode_all(tf.constant(files), tf.data.Dataset.range(len(files)), shape, resize, deterministic=False)
  bad = sorted(path.decode() for _, path, _, _, ok, _, _ in ds.as_numpy_iterator() if not ok)
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
  report: ImageReport | None = None,
) -> tuple[tf.data.Dataset, tuple[int, int, int], tuple[str, ...] | None, int, SkippedFiles | None]:
  """The streaming folder source -> (dataset of uint8 bins [, int32 labels], shape, class_names, n, skipped).

  Per element: read the file, decode it (a file that does not decode is skipped), turn it by its EXIF
  orientation, convert it to C channels, center-crop and resize if image_size (`transforms.fit_to_size`),
  reduce to n_bits. Shuffling permutes the file list each epoch before decoding. encoded=True (for
  `tfp-glow prepare`): elements are (the file's bytes, or PNG bytes if resized, label). Skips and
  conversions are recorded in `report` (a new one if None); `skipped` is `report.skipped`.
  """
  if bad_files not in BAD_FILES:
    raise ValueError(f'bad_files must be one of {", ".join(BAD_FILES)}, got {bad_files!r}')
  relative, labels, class_names, test = listing(root)
  if with_labels and class_names is None:
    raise ValueError(
      f'folder data set {root!r} has no class subfolders, so no labels: a class-conditional model '
      '(--conditional, with_labels=True) needs one subfolder per class (PATH/CLASS/image.png)'
    )
  if split == 'test' and len(relative) < 2:
    raise ValueError(f'folder data set: {root!r} has {len(relative)} image; a test split needs at least 2')
  keep = test if split == 'test' else ~test
  # Full paths are joined in one vectorized op: no Python work per file beyond the listing.
  relative_kept = np.asarray(relative, dtype=None if isinstance(relative, np.ndarray) else object)[keep]
  paths_t = tf.strings.join([os.path.join(root, ''), tf.constant(relative_kept, tf.string)])
  n = len(relative_kept)
  split_labels = labels[keep] if labels is not None else np.zeros(n, np.int32)
  # Probed over both splits' files, so that train and test agree on the shape and channels.
  picks = sorted({int(i) for i in np.linspace(0, len(relative) - 1, min(_PROBES, len(relative)))})
  names = [p.decode() if isinstance(p, bytes) else p for p in (relative[i] for i in picks)]
  shape = _probe([os.path.join(root, name) for name in names], image_size, bad_files)
  resize = image_size is not None
  if bad_files == 'error':
    _check_every_file([p.decode() for p in paths_t.numpy()], shape, resize)
  report = report if report is not None else ImageReport()
  labels_t = tf.constant(split_labels)
  deterministic = not shuffle or seed is not None
  ds = _decode_all(paths_t, shuffled_indices(n, shuffle, seed), shape, resize, deterministic)

  def finish(index, path, raw, image, ok, reason, flags):
    if encoded:
      bins = tf.io.encode_png(image) if resize else raw
    else:
      bins = tf.cast(reduce_bits(image, n_bits), tf.uint8)
    return bins, tf.gather(labels_t, index), ok, path, reason, flags

  def note(paths, oks, reasons, flags):  # Python: skips and conversions into the report, once per file
    for path, ok, reason, flag in zip(paths.numpy(), oks.numpy(), reasons.numpy(), flags.numpy()):
      if not ok:
        report.skipped.record(path.decode(), reason.decode())
      else:
        report.conversions.record(path.decode(), int(flag))
    return True

  def record(bins, label, ok, path, reason, flags):
    # One Python call per _NOTE_BATCH files, and only when one of them was skipped or converted.
    news = tf.reduce_any(tf.logical_or(tf.logical_not(ok), tf.not_equal(flags, 0)))
    done = tf.cond(news, lambda: tf.py_function(note, [path, ok, reason, flags], tf.bool), lambda: True)
    with tf.control_dependencies([done]):
      return bins, label, tf.identity(ok)

  ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  ds = ds.batch(_NOTE_BATCH).map(record).unbatch()
  ds = ds.filter(lambda bins, label, ok: ok)
  ds = ds.map(lambda bins, label, ok: (bins, label) if with_labels or encoded else bins)
  return ds, shape, class_names, n, report.skipped
