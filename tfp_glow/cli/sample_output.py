"""Where `tfp-glow sample` puts its samples: one grid PNG (small n), an .npy of uint8 images, or a folder
of PNGs; generated in batches, so memory stays bounded whatever --n (for FID and other evaluations).

Every output is written atomically: a temporary file or folder renamed into place when complete. Remote
paths (gs://, s3://, ...) are written through tf.io.gfile; there a png-dir folder is filled file by file (each
file atomic), and removed again if the run fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Iterator

import numpy as np
import tensorflow as tf

from tfp_glow import atomic
from tfp_glow.cli.common import UsageError, save_grid

if TYPE_CHECKING:
  from tfp_glow.training.model import GlowModel
from tfp_glow.cli.flags import MAX_GRID_SAMPLES
from tfp_glow.images import save_png

FORMATS = ('png', 'npy', 'png-dir')


def resolve(out: str, fmt: str | None, n: int) -> tuple[str, str]:
  """(format, path). Without --format: .npy -> npy; a name without suffix -> png-dir; otherwise png if n
  fits one grid (MAX_GRID_SAMPLES), else npy beside it (NAME.npy), with a note."""
  stem, suffix = os.path.splitext(out)
  if fmt is None:
    if suffix.lower() == '.npy':
      fmt = 'npy'
    elif not suffix and not tf.io.gfile.exists(out):
      fmt = 'png-dir'
    elif n <= MAX_GRID_SAMPLES:
      fmt = 'png'
    else:
      print(f'note: {n} samples are too many for one grid (up to {MAX_GRID_SAMPLES}); writing {stem}.npy')
      return 'npy', stem + '.npy'
  if fmt == 'png' and n > MAX_GRID_SAMPLES:
    raise UsageError(
      f'--n {n}: a grid PNG holds up to {MAX_GRID_SAMPLES} samples; use --format npy or png-dir'
    )
  if fmt != 'png-dir' and tf.io.gfile.isdir(out):
    raise UsageError(f'--out {out!r} is a directory; give a file name (e.g. {os.path.join(out, "grid.png")})')
  if fmt == 'png-dir' and tf.io.gfile.exists(out):
    if not tf.io.gfile.isdir(out):
      raise UsageError(f'--out {out!r} is a file; --format png-dir writes a folder')
    if tf.io.gfile.listdir(out):
      raise UsageError(f'--out {out!r} is a folder that is not empty; give a new one')
  return fmt, out


def batches(
  model: GlowModel,
  n: int,
  batch_size: int,
  temperature: float,
  labels: np.ndarray | None,
  seed: int | None,
) -> Iterator[np.ndarray]:
  """uint8 samples [b, H, W, C], b <= batch_size, n in all: one `model.sample` call per batch
  (seeded per batch: [seed, batch index], so a run with --seed is reproducible)."""
  for index, start in enumerate(range(0, n, batch_size)):
    size = min(batch_size, n - start)
    batch_labels = None if labels is None else labels[start : start + size]
    batch_seed = None if seed is None else tf.constant([seed, index], tf.int32)
    yield np.asarray(model.sample(size, temperature=temperature, labels=batch_labels, seed=batch_seed))


def write(
  fmt: str,
  path: str,
  images: Iterator[np.ndarray],
  n: int,
  image_shape: tuple[int, ...],
  columns: int,
  zoom: int | None,
) -> None:
  """Writes the samples to `path` (local, or remote through tf.io.gfile: gs://, s3://, ...)."""
  if fmt == 'png':  # at most MAX_GRID_SAMPLES: kept in memory for the one grid
    save_grid(path, np.concatenate(list(images)), columns, zoom)
  elif fmt == 'npy':
    _write_npy(path, images, n, image_shape)
  elif _is_remote(path):
    _write_remote_png_dir(path, images, n)
  else:
    _write_png_dir(path, images, n)


def _is_remote(path: str) -> bool:
  """A path that only tf.io.gfile can write (gs://, s3://, hdfs://, ram://, ...), not Python's `open`."""
  return '://' in path


def _fill_npy(local_path: str, images: Iterator[np.ndarray], n: int, image_shape) -> None:
  """An .npy of uint8 [n, *image_shape] at a local path, filled batch by batch (memory-mapped)."""
  array = np.lib.format.open_memmap(local_path, mode='w+', dtype=np.uint8, shape=(n, *image_shape))
  start = 0
  for batch in images:
    array[start : start + len(batch)] = batch
    start += len(batch)
  array.flush()
  del array


def _write_npy(path: str, images: Iterator[np.ndarray], n: int, image_shape) -> None:
  with atomic.replacing(path) as tmp:
    if not _is_remote(tmp):
      _fill_npy(tmp, images, n, image_shape)
      return
    # numpy memory-maps local files only: fill a local temporary file, then copy it to the remote one.
    with tempfile.TemporaryDirectory() as local_dir:
      local = os.path.join(local_dir, 'samples.npy')
      _fill_npy(local, images, n, image_shape)
      tf.io.gfile.copy(local, tmp, overwrite=True)


def _png_names(images: Iterator[np.ndarray], n: int) -> Iterator[tuple[str, np.ndarray]]:
  width = max(6, len(str(n - 1)))
  i = 0
  for batch in images:
    for image in batch:
      yield f'{i:0{width}d}.png', image
      i += 1


def _write_png_dir(path: str, images: Iterator[np.ndarray], n: int) -> None:
  """path/000000.png ...; written into a hidden folder beside, renamed into place when complete."""
  parent, name = os.path.split(os.path.normpath(path))
  tmp = os.path.join(parent, f'.tmp{os.getpid()}-{name}')
  try:
    os.makedirs(tmp, exist_ok=True)
    for file_name, image in _png_names(images, n):
      save_png(os.path.join(tmp, file_name), image)
    if os.path.isdir(path):  # empty: checked by `resolve`
      os.rmdir(path)
    os.rename(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _write_remote_png_dir(path: str, images: Iterator[np.ndarray], n: int) -> None:
  """path/000000.png ... on a remote file system, where a folder is a name prefix that cannot be renamed
  in one step: the files go straight into `path` (each written atomically); if the run fails, the files
  written so far are removed again (and the folder, if this made it)."""
  made = not tf.io.gfile.exists(path)  # otherwise an empty folder: checked by `resolve`
  written = []
  try:
    tf.io.gfile.makedirs(path)
    for file_name, image in _png_names(images, n):
      written.append(os.path.join(path, file_name))
      save_png(written[-1], image)
  except BaseException:
    for file_path in written:
      if tf.io.gfile.exists(file_path):
        tf.io.gfile.remove(file_path)
    if made and tf.io.gfile.exists(path):
      tf.io.gfile.rmtree(path)
    raise
