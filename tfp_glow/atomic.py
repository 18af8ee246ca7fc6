"""Atomic file writes: write under a temporary name in the same directory, then rename into place.

A rename within one directory replaces the old file in one step (POSIX `rename`), so a process
killed at any moment leaves either the previous complete file or the new complete one, never a
half-written one; at worst a hidden `.tmp<pid>-NAME` file is left beside it (`remove_stale` cleans
those). The temporary name keeps the file's suffix, which Keras checks (`.keras`, `.weights.h5`).
Paths go through `tf.io.gfile`, so `gs://` and other remote paths work too (their renames are
copies, atomic or not as the file system makes them).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

import tensorflow as tf

_PREFIX = '.tmp'


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside `path`; write the file there. When the block ends without an
  error, the temporary file is flushed to disk and renamed onto `path`; on an error it is removed
  and `path` is left as it was.

    with atomic.replacing('run/model.keras') as tmp:
      model.save(tmp)
  """
  path = os.fspath(path)
  directory, name = os.path.split(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  tmp = os.path.join(directory, f'{_PREFIX}{os.getpid()}-{name}')
  try:
    yield tmp
    _flush_to_disk(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with replacing(path) as tmp, tf.io.gfile.GFile(tmp, 'wb') as f:
    f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as strict JSON (no NaN / Infinity: a ValueError instead) to `path` atomically."""
  write_bytes(path, json.dumps(obj, indent=2, allow_nan=False).encode())


def remove_stale(directory: str | os.PathLike) -> list[str]:
  """Removes the temporary files that killed writers left under `directory`; returns their paths.

  Hidden subdirectories (names starting with '.') are not entered: they belong to other writers that
  may be running now (another worker's `.worker_*` directory), whose temporary files are not stale.
  A file that disappears meanwhile (renamed into place by its writer) is not an error.
  """
  directory = os.fspath(directory)
  if not tf.io.gfile.isdir(directory):
    return []
  stale = []
  for root, subdirs, files in tf.io.gfile.walk(directory):
    subdirs[:] = [d for d in subdirs if not d.startswith('.')]  # walk is top-down: this prunes them
    for name in files:
      if name.startswith(_PREFIX) and '-' in name:
        path = os.path.join(root, name)
        try:
          tf.io.gfile.remove(path)
        except tf.errors.NotFoundError:
          continue
        stale.append(path)
  return stale


def _flush_to_disk(path: str) -> None:
  if '://' in path:  # remote file systems flush on close
    return
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
