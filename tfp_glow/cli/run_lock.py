"""One run per output folder: `--out/.lock` holds the process id and host of the run writing there.

A second `tfp-glow train` on the same `--out` finds the lock and stops (exit 2) with one line naming the
other process. A lock whose process is gone (killed: SIGKILL leaves its lock behind) is taken over, with
a note; that can be decided only on the host that wrote it, so a lock from another host is respected
until it is deleted by hand. Multi-worker runs: only the chief takes the lock (the other workers write
nowhere in `--out` but their own temporary folders), so all workers of one cluster share the chief's.

Creating the lock is also the first write into `--out`: a folder that is not writable (read-only, no
permission, full) is found here, before any data is loaded or a model built.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from typing import Iterator

LOCK_NAME = '.lock'


class RunLocked(Exception):
  """Another live process holds the lock of this output folder."""


def describe_os_error(e: OSError) -> str:
  """'Permission denied', 'No space left on device', ... (the cause, without the path)."""
  return e.strerror or (errno.errorcode.get(e.errno, '') if e.errno else '') or type(e).__name__


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      holder = json.load(f)
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):  # vanished, or half-written by a writer killed between open and write
    return {}


def acquire(out: str) -> str | None:
  """Takes the lock of `out` (created if needed); returns a note if a stale lock was taken over.

  Raises RunLocked if a live process holds it, OSError if `out` cannot be written."""
  path = os.path.join(out, LOCK_NAME)
  me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime('%Y-%m-%d %H:%M:%S'))
  note = None
  for _ in range(10):  # a few rounds, in case another process takes over the same stale lock
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read(path)
      pid, host = holder.get('pid'), holder.get('host')
      if holder and pid == me['pid'] and host == me['host']:
        raise RunLocked(f'this process already runs in {out}') from None
      if not holder and time.time() - os.path.getmtime(path) < 5:
        time.sleep(0.2)  # being written right now
        continue
      if holder and (host != me['host'] or (isinstance(pid, int) and _alive(pid))):
        where = 'this host' if host == me['host'] else f'host {host}'
        raise RunLocked(
          f'--out {out} is in use by process {pid} on {where} (since {holder.get("started", "?")}); '
          f'wait for it to end or give another --out'
          + ('' if host == me['host'] else f' (if that process is gone, delete {path})')
        ) from None
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      note = f'note: took over the lock {path} of process {pid}, which is no longer running'
      continue
    with os.fdopen(fd, 'w') as f:
      json.dump(me, f)
      f.flush()
      os.fsync(f.fileno())
    return note
  raise RunLocked(f'--out {out}: cannot take its lock {path} (other processes keep taking it)')


def release(out: str) -> None:
  """Removes the lock of `out` if this process holds it."""
  path = os.path.join(out, LOCK_NAME)
  holder = _read(path)
  if holder.get('pid') == os.getpid() and holder.get('host') == socket.gethostname():
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def held(out: str, enabled: bool = True) -> Iterator[str | None]:
  """`acquire` ... `release` (nothing if not `enabled`: a non-chief worker shares the chief's lock)."""
  if not enabled:
    yield None
    return
  note = acquire(out)
  try:
    yield note
  finally:
    release(out)
