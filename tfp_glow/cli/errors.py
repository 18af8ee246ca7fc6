"""The errors of the `tfp-glow` commands: each becomes one `error:` line and an exit code (tfp_glow.cli.main).

No TensorFlow here: the entry point catches these without loading it (tests/test_cli_startup.py).
"""

from __future__ import annotations


class UsageError(Exception):
  """A problem with the user's flags or files: reported as one line, exit code 2."""


class Diverged(Exception):
  """Training diverged, or a model is not finite: reported as one line, exit code 1."""
