"""A run's settings: one flat dict, the same that `tfp-glow train` builds from its flags and writes to
out/config.json (and metrics.json['config']).

The defaults are `tfp-glow train`'s (per data set: tfp_glow.cli.flags.DEFAULTS), so a run from Python and
one from the command line with the same settings are the same run (and resume each other). They are read
from the CLI's parser until one spec holds every setting once (issue 23, part 4).
"""

from __future__ import annotations

from typing import Any

from tfp_glow.runs.errors import RunError


def run_config(**settings: Any) -> dict:
  """The complete settings of a run: `settings` (e.g. dataset='digits', epochs=20, config='cifar10' for a
  paper experiment's), the rest as `tfp-glow train` defaults them. Unknown names raise RunError."""
  from tfp_glow import cli  # here, not at the top: tfp_glow.cli imports this package
  from tfp_glow.cli import common, train_command

  args = cli._build_parser().parse_args(['train'])
  known = set(train_command._train_config(args)) | {'config', 'sample_every'}
  unknown = sorted(set(settings) - known)
  if unknown:
    raise RunError(f'unknown run settings {", ".join(unknown)}; accepted: {", ".join(sorted(known))}')
  for key, value in settings.items():
    setattr(args, key, value)
  try:
    return train_command._train_config(args)
  except common.UsageError as e:
    raise RunError(str(e)) from e
