"""One run per output folder: an OS lock (`fcntl.flock`) on `--out/.lock`.

Who holds the lock is decided by the kernel, not by what the file says: `flock` is released by the kernel
when its process ends, however it ends (SIGKILL, an OOM kill, a container restart), so a restarted run
never meets a stale lock, even when it has the same host name and the same small pid as the killed one (a
new pid namespace hands out pid 1 again). The file holds the holder's pid, host and start time only to
name it in the message. Two runs that start at once cannot both win: both lock the same file, and the
kernel gives it to one; the winner then checks that the file it locked is still the one at `.lock` (a
releasing run deletes it), else it tries again.

Where it holds:
  - local file systems (ext4, xfs, overlay in containers, tmpfs, ...): always;
  - network file systems (NFS, SMB, FUSE mounts, ...): Linux emulates `flock` with the server's locks,
    which some servers or mounts (`nolock`) do not provide, so there a lock file naming another host is
    respected even if `flock` succeeds: it is deleted by hand (the message says when that is safe);
  - remote paths (`gs://`, `s3://`, `ram://`): no lock at all (`held` warns): one run per `--out` is then
    up to the user. docs/distributed.md says the same.

Creating the lock is also the first write into `--out`: a folder that is not writable is found here,
before any data is loaded or a model built.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator

LOCK_NAME = '.lock'

# File systems on which `flock` may not exclude other hosts (the type names of /proc/self/mountinfo).
NETWORK_FILE_SYSTEMS = ('nfs', 'nfs4', 'cifs', 'smb3', 'smbfs', '9p', 'ceph', 'lustre', 'gpfs', 'afs')


class RunLocked(Exception):
  """Another live run holds the lock of this output folder."""


def describe_os_error(e: OSError) -> str:
  """'Permission denied', 'No space left on device', ... (the cause, without the path)."""
  return e.strerror or (errno.errorcode.get(e.errno, '') if e.errno else '') or type(e).__name__


def is_remote(out: str) -> bool:
  """`gs://...`, `ram://...`: TensorFlow file systems, where no OS lock exists."""
  return '://' in out


def filesystem_type(path: str) -> str:
  """The type of the file system holding `path` ('ext4', 'nfs4', 'overlay', ...; '' if unknown)."""
  path = os.path.realpath(path)
  best, kind = '', ''
  try:
    with open('/proc/self/mountinfo') as f:
      for line in f:  # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - TYPE SOURCE SUPER_OPTIONS
        fields = line.split()
        point, after = fields[4], fields[fields.index('-') + 1 :]
        inside = path == point or path.startswith(point.rstrip('/') + '/')
        if inside and len(point) >= len(best) and after:
          best, kind = point, after[0]
  except (OSError, ValueError, IndexError):  # not Linux
    return ''
  return kind


def is_network(path: str) -> bool:
  """Whether `path` lies on a network file system (where `flock` may not exclude other hosts)."""
  kind = filesystem_type(path)
  return kind in NETWORK_FILE_SYSTEMS or kind.startswith('fuse')


def _read(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    holder = json.loads(os.read(fd, 1 << 16) or b'{}')
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):  # half-written by a writer killed between truncate and write
    return {}


def _same_file(fd: int, path: str) -> bool:
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def _safe_to_delete(path: str, holder: dict) -> str:
  return (
    f'the lock {path} is freed when that process ends; delete it by hand only if no process of that run '
    f'is left{" on " + str(holder.get("host")) if holder.get("host") else ""}'
  )


class RunLock:
  """The lock of one output folder; `acquire` takes it, `release` gives it back (and deletes the file)."""

  def __init__(self, out: str):
    self.out = out
    self.path = os.path.join(out, LOCK_NAME)
    self._fd: int | None = None

  def acquire(self) -> str | None:
    """Takes the lock; returns a note if a dead run's lock file was taken over.

    Raises RunLocked if a live run holds it, OSError if `out` cannot be written."""
    me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime('%Y-%m-%d %H:%M:%S'))
    network = is_network(self.out)
    for _ in range(100):  # another run may delete the file between our open and our lock: then again
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise RunLocked(self._in_use(holder, me)) from None
      if not _same_file(fd, self.path):  # released (deleted) by its holder meanwhile
        os.close(fd)
        continue
      holder = _read(fd)
      if network and holder.get('host') not in (None, me['host']):
        os.close(fd)  # flock may not reach the other host: its lock file stands until deleted
        raise RunLocked(
          f'--out {self.out} is in use by process {holder.get("pid")} on host {holder.get("host")} (since '
          f'{holder.get("started", "?")}; a network file system, where this lock cannot tell whether that '
          f'run is alive); wait for it to end or give another --out. If that run has ended, delete '
          f'{self.path}'
        )
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, json.dumps(me).encode())
      os.fsync(fd)
      self._fd = fd
      if holder.get('pid') is None:
        return None
      return (
        f'note: took over the lock {self.path} of process {holder.get("pid")}, which is no longer running'
      )
    raise RunLocked(f'--out {self.out}: cannot take its lock {self.path} (other runs keep taking it)')

  def _in_use(self, holder: dict, me: dict) -> str:
    if holder.get('pid') == me['pid'] and holder.get('host') == me['host']:
      return f'this process already runs in {self.out} (it holds {self.path} until that run ends)'
    where = 'this host' if holder.get('host') in (None, me['host']) else f'host {holder.get("host")}'
    return (
      f'--out {self.out} is in use by process {holder.get("pid", "?")} on {where} (since '
      f'{holder.get("started", "?")}); wait for it to end or give another --out '
      f'({_safe_to_delete(self.path, holder)})'
    )

  def release(self) -> None:
    """Deletes the lock file, then unlocks it (in this order: a run that opened the file before the
    deletion finds it deleted once it gets the lock, and tries again)."""
    if self._fd is None:
      return
    with contextlib.suppress(FileNotFoundError):
      if _same_file(self._fd, self.path):
        os.remove(self.path)
    os.close(self._fd)  # closing the last descriptor releases the flock
    self._fd = None


@contextlib.contextmanager
def held(out: str, enabled: bool = True) -> Iterator[str | None]:
  """Holds the lock of `out` for the block; yields a note (a stale lock taken over, no lock on a remote
  path) or None. Not `enabled` (a non-chief worker, which shares the chief's lock): nothing."""
  if not enabled:
    yield None
    return
  if is_remote(out):
    print(
      f'warning: --out {out} is a remote path: there is no run lock there (start one run per --out), and '
      'its renames are copies (docs/distributed.md)',
      file=sys.stderr,
    )
    yield None
    return
  lock = RunLock(out)
  note = lock.acquire()
  if note is None and is_network(out):
    note = (
      f'note: --out {out} is on a network file system ({filesystem_type(out)}): its lock holds between '
      'hosts only where the server supports locks (docs/distributed.md)'
    )
  try:
    yield note
  finally:
    lock.release()
