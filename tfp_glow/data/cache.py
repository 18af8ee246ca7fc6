"""File caches of decoded images (`load_dataset(cache=PATH)`, `tfp-glow train --cache PATH`) that cannot leak.

`tf.data.Dataset.cache(PREFIX)` writes, during the first full pass over a dataset:
  PREFIX_0.lockfile, PREFIX_0.data-*.tempstate*   while it writes (the lockfile says a writer is at work),
  PREFIX.index, PREFIX.data-00000-of-00001        once the pass is complete (the lockfile is gone);
and every later pass reads PREFIX.index and the data files, whatever the dataset in front of it would give.
So one PREFIX shared by two splits, or by two data sets, hands the second the images of the first, and a
run killed during its first pass leaves a lockfile on which the next run fails (AlreadyExistsError).

Here the user's PATH is only the start of the prefix:
  PATH-SPLIT-DIGEST   (PATH/SPLIT-DIGEST when PATH is a directory or ends with '/')
where DIGEST (12 hex digits of a SHA-256) covers everything that changes what is cached: this library's
version and cache format, the source (its
name, its absolute path, and for local files the size and modification time of the path and of the entries
directly in it), the split, bits, image size, padding, labels, the worker's shard, and what the source
reported (shape, bins, number of images, class names). Another split, data set or setting gets its own
files; the old ones stay on disk (delete them by hand) but are never read for it.

Before a dataset is built, `prepare_file_cache` looks at PREFIX's files:
  - complete (PREFIX.index and its data, no lockfile): read as is;
  - nothing there: written during the first pass;
  - anything else (a leftover lockfile, temporary or partial files: a run stopped during its first pass,
    or an index without its data) is half-written: removed, with a note, and written again, unless the
    process that is writing it is still running on this host (PREFIX.writer names it), then a ValueError
    says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket

import tensorflow as tf

import tfp_glow  # for __version__, read at call time (the package is still importing this module)

_LOG = logging.getLogger('tfp_glow.data')
# In every digest: bump _FORMAT when the decoding of a source changes what is cached for the same settings
# (crop / resize rules, colour conversion, ...), so that old caches are not read (a release changes it too).
_FORMAT = 1
WRITER_SUFFIX = '.writer'  # PREFIX.writer: {"host", "pid"} of the process that last started writing PREFIX


def source_stamp(path: str) -> list:
  """What identifies a path source's files cheaply: [name, size, mtime_ns] of the path and of the entries
  directly in it (local files; adding or removing a file changes its folder's mtime); [] for remote paths
  (their identity is their name). Editing a file inside a class subfolder in place is not seen."""
  if '://' in path or not os.path.exists(path):
    return []
  stat = os.stat(path)
  stamp = [['.', stat.st_size, stat.st_mtime_ns]]
  if os.path.isdir(path):
    with os.scandir(path) as entries:
      for e in sorted(entries, key=lambda e: e.name):
        s = e.stat()
        stamp.append([e.name, s.st_size, s.st_mtime_ns])
  return stamp


def cache_prefix(cache: str, split: str, identity: dict) -> str:
  """The file prefix of one split's cache: PATH-SPLIT-DIGEST (PATH/SPLIT-DIGEST for a directory PATH).

  identity: every setting that changes the cached images (JSON-serializable; see the module docstring)."""
  stamp = {'format': _FORMAT, 'version': tfp_glow.__version__, 'split': split}
  text = json.dumps({**stamp, **identity}, sort_keys=True, default=str)
  digest = hashlib.sha256(text.encode()).hexdigest()[:12]
  if cache.endswith(('/', os.sep)) or tf.io.gfile.isdir(cache):
    return os.path.join(cache, f'{split}-{digest}')
  return f'{cache}-{split}-{digest}'


def _files(prefix: str) -> list[str]:
  """The names of PREFIX's files in its folder (PREFIX.*, PREFIX_*), the writer note excluded."""
  folder, base = os.path.split(prefix)
  if not tf.io.gfile.isdir(folder or '.'):
    return []
  return sorted(
    n
    for n in tf.io.gfile.listdir(folder or '.')
    if n.startswith((base + '.', base + '_')) and n != base + WRITER_SUFFIX
  )


def is_complete(prefix: str) -> bool:
  """True when `Dataset.cache(prefix)` finished a pass: its index and data are there, no lockfile."""
  base = os.path.basename(prefix)
  names = _files(prefix)
  return (
    base + '.index' in names
    and any(n.startswith(base + '.data-') and 'tempstate' not in n for n in names)
    and not any(n.endswith('.lockfile') or 'tempstate' in n for n in names)
  )


def _live_writer(prefix: str) -> str | None:
  """'pid N on HOST' when PREFIX.writer names another process that is still running on this host."""
  path = prefix + WRITER_SUFFIX
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      writer = json.load(f)
    host, pid = str(writer['host']), int(writer['pid'])
  except (ValueError, KeyError, TypeError, OSError):  # unreadable: nobody we can ask
    return None
  if pid == os.getpid() and host == socket.gethostname():
    return None  # this process: an iterator abandoned mid-pass removes its own files, so these are older
  if host != socket.gethostname():
    return f'pid {pid} on host {host}'  # cannot be asked from here: assume it still writes
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return None
  except PermissionError:  # alive, owned by another user
    pass
  return f'pid {pid} on host {host}'


def prepare_file_cache(prefix: str) -> str:
  """Makes `prefix` ready for `Dataset.cache(prefix)`: 'complete' (read as is), 'new' (written during the
  first pass) or 'rebuilt' (half-written files removed with a note, written again). Creates its folder.

  Raises ValueError when another running process is writing this cache (PREFIX.writer)."""
  folder = os.path.dirname(prefix)
  if folder and not tf.io.gfile.isdir(folder):
    tf.io.gfile.makedirs(folder)
  if is_complete(prefix):
    return 'complete'
  leftovers = _files(prefix)
  state = 'new'
  if leftovers:
    writer = _live_writer(prefix)
    if writer:
      raise ValueError(
        f'cache {prefix!r} is being written by another process ({writer}); wait for it to finish its '
        f'first epoch, or give another cache path (if that process is gone, delete {prefix}*)'
      )
    for name in leftovers:
      tf.io.gfile.remove(os.path.join(folder, name))
    _LOG.warning(
      'tfp_glow: cache %s was half-written (a run stopped during its first epoch?): removed %d file(s) '
      '(%s); it is written again during the first epoch',
      prefix,
      len(leftovers),
      ', '.join(leftovers[:3]) + (', ...' if len(leftovers) > 3 else ''),
    )
    state = 'rebuilt'
  with tf.io.gfile.GFile(prefix + WRITER_SUFFIX, 'w') as f:
    json.dump({'host': socket.gethostname(), 'pid': os.getpid()}, f)
  return state
