"""What can stop a run, as one line each: the user's problem (`RunError`: flags, files, a folder that cannot
be written) or a diverged model (`Diverged`). The CLI prints them and exits 2 or 1."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from typing import Iterator

import tensorflow as tf

from tfp_glow.runs.lock import describe_os_error

__all__ = ['Diverged', 'OutUnwritable', 'RunError', 'describe_os_error', 'user_errors', 'write_error']


class RunError(Exception):
  """A problem with the run's settings or its files: one line (the CLI exits 2)."""


class Diverged(Exception):
  """Training diverged, or the final model is not finite: one line (the CLI exits 1)."""


class OutUnwritable(RunError):
  """--out cannot be written (read-only, no permission, full disk): names the path and the cause."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """ValueErrors (and TF argument checks) raised while acting on the settings become RunErrors."""
  try:
    yield
  except ValueError as e:
    raise RunError(str(e)) from e
  except tf.errors.InvalidArgumentError as e:
    raise RunError(e.message.strip().splitlines()[0]) from e


_WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO)


def write_error(out: str, e: BaseException) -> OutUnwritable | None:
  """A failed write into --out as one line (naming the file where known), or None if `e` is another error."""
  if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
    where = e.filename if isinstance(e.filename, str) else out
    # os.strerror: h5py's own strerror runs over several lines
    return OutUnwritable(f'cannot write {user_path(where)!r} ({os.strerror(e.errno)})')
  text = str(e)  # h5py and TensorFlow wrap the OSError in their own
  for cause in ('No space left on device', 'Read-only file system', 'Disk quota exceeded'):
    if cause.lower() in text.lower():
      return OutUnwritable(f'cannot write into --out {out!r} ({cause})')
  return None


def user_path(path: str) -> str:
  """The file a user knows: temporary names (.tmpPID-NAME) of atomic writes become NAME."""
  directory, name = os.path.split(path)
  return os.path.join(directory, re.sub(r'^(\.tmp\d+-)+', '', name))
