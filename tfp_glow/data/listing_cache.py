"""A `folder:PATH` listing kept between runs, so that a large folder is not listed again on every run, resume
or evaluation: with 100,000 files the listing (scandir, sort, the split's hashes) is most of what grows with the
folder in the time to the first batch.

What is kept: the sorted relative paths, labels, class names and test-split mask of `folder.list_images` /
`folder.test_mask`, in one .npz per folder (the key: the folder's real path and this format's version) under
$XDG_CACHE_HOME/tfp_glow/folder-listings (default ~/.cache/...). Never inside the data folder.

When it is used: only if every directory the listing walked still has the modification time it had
(os.stat(dir).st_mtime_ns; adding, removing or renaming a file or folder in a directory changes it; changing
a file's pixels does not, and need not: the listing holds names, not images). A listing is kept only when
every one of those directories was last changed more than RACY_SECONDS ago: a file added within the same
clock tick as the listing would not change the time (git's "racy" entries), so a folder still being written
is listed afresh each time. Remote paths (gs://...) are never cached. Any problem reading or writing the
cache (no home, read-only, a half-written or foreign file) means listing the folder as before, silently.

How big it grows: at most MAX_ENTRIES listings (one per folder). Each use refreshes a listing's file time, and
each write removes the least recently used beyond that (and temporary files a killed writer left behind), so
the cache stays bounded however many folders a machine sees (test suites and sweeps make many).
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

VERSION = 1  # bump when what is stored, or how the split is computed, changes
RACY_SECONDS = 2.0
MAX_ENTRIES = 64  # listings kept; the least recently used beyond this are removed on each write
STALE_TEMPORARY_SECONDS = 3600.0  # a temporary file older than this was left by a killed writer


def cache_dir() -> str:
  """$XDG_CACHE_HOME/tfp_glow/folder-listings, or ~/.cache/tfp_glow/folder-listings."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'tfp_glow', 'folder-listings')


def _file(root: str) -> str:
  key = hashlib.sha256(f'{VERSION}\0{os.path.realpath(root)}'.encode()).hexdigest()[:32]
  return os.path.join(cache_dir(), f'{key}.npz')


def _mtimes(root: str, dirs: list[str]) -> np.ndarray:
  return np.array([os.stat(os.path.join(root, d)).st_mtime_ns for d in dirs], np.int64)


def load(root: str) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None, np.ndarray] | None:
  """(relative paths as UTF-8 bytes [N], labels int32 [N] or None, class names or None, test mask bool [N])
  of the folder `root` as last listed, or None if there is no valid cache (then list the folder)."""
  if '://' in root:
    return None
  try:
    with np.load(_file(root), allow_pickle=False) as z:
      if str(z['root']) != os.path.realpath(root):
        return None
      dirs = [str(d) for d in z['dirs']]
      if not np.array_equal(_mtimes(root, dirs), z['mtimes']):
        return None
      classes = tuple(str(c) for c in z['classes']) if z['classes'].size else None
      listing = z['relative'], z['labels'] if classes else None, classes, z['mask']
  except (OSError, KeyError, ValueError):
    return None
  try:
    os.utime(_file(root))  # used now: the last to be evicted
  except OSError:
    pass
  return listing


def save(
  root: str,
  dirs: list[str],
  relative: list[str],
  labels: np.ndarray | None,
  classes: tuple[str, ...] | None,
  mask: np.ndarray,
) -> bool:
  """Keeps the listing of `root` (`dirs`: the directories walked, relative to root, '.' for root itself)
  unless one of them changed less than RACY_SECONDS ago; True if written."""
  if '://' in root:
    return False
  try:
    mtimes = _mtimes(root, dirs)
    if mtimes.size and time.time_ns() - int(mtimes.max()) < RACY_SECONDS * 1e9:
      return False
    path = _file(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f'{path}.{os.getpid()}.tmp.npz'
    np.savez(
      temporary,
      root=np.array(os.path.realpath(root)),
      dirs=np.array(dirs, dtype=str),
      mtimes=mtimes,
      relative=np.array([p.encode() for p in relative], dtype=bytes),
      labels=labels if labels is not None else np.zeros(0, np.int32),
      classes=np.array(classes or (), dtype=str),
      mask=np.asarray(mask, bool),
    )
    os.replace(temporary, path)  # whole or not at all: a reader never sees half a file
  except (OSError, ValueError):
    return False
  evict(MAX_ENTRIES)
  return True


def evict(keep: int) -> int:
  """Removes all but the `keep` most recently used listings, and temporary files older than
  STALE_TEMPORARY_SECONDS; returns how many files were removed. Errors (a file removed meanwhile by another
  process, a read-only cache) are skipped: eviction never fails a run."""
  try:
    entries = [e for e in os.scandir(cache_dir()) if e.is_file() and e.name.endswith('.npz')]
  except OSError:
    return 0
  now, listings, doomed = time.time(), [], []
  for entry in entries:
    try:
      mtime = entry.stat().st_mtime
    except OSError:
      continue
    if '.tmp.' in entry.name:
      if now - mtime > STALE_TEMPORARY_SECONDS:
        doomed.append(entry.path)
    else:
      listings.append((mtime, entry.path))
  listings.sort(reverse=True)
  doomed += [path for _, path in listings[keep:]]
  removed = 0
  for path in doomed:
    try:
      os.remove(path)
      removed += 1
    except OSError:
      pass
  return removed
