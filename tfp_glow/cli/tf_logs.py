"""TensorFlow's C++ log lines (CUDA stubs, CPU features, absl's preamble), kept off the commands' output
unless the user asks for them by setting TF_CPP_MIN_LOG_LEVEL (an explicit value always wins).

TF_CPP_MIN_LOG_LEVEL=2 keeps errors only, but TensorFlow logs some lines before absl's logging starts, at
any level ('WARNING: All log messages before absl::InitializeLog() is called ...', 'Could not find cuda
drivers'); those are caught by pointing the stderr file descriptor at a file while TensorFlow imports and
finds its devices, then replaying every line that is not such a log line (Python warnings, tracebacks).
No TensorFlow import at module level: `tfp-glow --help` does not load it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile

LEVEL_VARIABLE = 'TF_CPP_MIN_LOG_LEVEL'
QUIET_LEVEL = '2'  # errors and fatal errors only
# absl's preamble, info and warning lines ('I0000 00:00:17.. 123 file.cc:31] ...'), the CPU-feature note's
# second line, and the error line of a CUDA build on a machine without a GPU driver (it then runs on CPUs).
_NOISE = re.compile(
  r'WARNING: All log messages before absl::InitializeLog\(\) is called'
  r'|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]'
  r'|To enable the following instructions:'
  r'|E\d{4} [\d:.]+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit'
)


_set_here = (
  False  # this process's TF_CPP_MIN_LOG_LEVEL is ours (an earlier `main` call set it), not the user's
)


def quiet_by_default() -> bool:
  """Sets TF_CPP_MIN_LOG_LEVEL=2 for this process unless the user set it; True if it was set here."""
  global _set_here  # noqa: PLW0603
  if LEVEL_VARIABLE in os.environ:
    return _set_here and os.environ[LEVEL_VARIABLE] == QUIET_LEVEL
  os.environ[LEVEL_VARIABLE] = QUIET_LEVEL
  _set_here = True
  return True


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow and finds its devices with TensorFlow's C++ log lines left out of stderr.

  Call it only if `quiet_by_default()` set the level (the user asked for nothing). Does nothing if
  TensorFlow is loaded already; an import that fails replays everything it wrote."""
  if 'tensorflow' in sys.modules:
    return
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no stderr descriptor to redirect: import as is
    importlib.import_module('tensorflow')
    return
  with tempfile.TemporaryFile() as log:
    os.dup2(log.fileno(), 2)
    failed = True
    try:
      tf = importlib.import_module('tensorflow')
      tf.config.list_physical_devices()  # CUDA's probe logs here, once
      failed = False
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      log.seek(0)
      for line in log.read().decode(errors='replace').splitlines(keepends=True):
        if failed or not _NOISE.match(line):
          sys.stderr.write(line)
      sys.stderr.flush()
