"""What the `tfp-glow` commands share: their errors (tfp_glow.cli.errors), turning flag errors into them,
sample-grid helpers and reading a run's JSON."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np
import tensorflow as tf

from tfp_glow.cli.errors import Diverged, UsageError
from tfp_glow.images import image_grid, save_png

# Shared with the library's runs; re-exported for the commands.
from tfp_glow.runs.directory import read_json_dict  # noqa: F401
from tfp_glow.runs.errors import RunError, user_errors
from tfp_glow.runs.finish import bits_per_dim, display_zoom, grid_layout  # noqa: F401

__all__ = [  # the errors are re-exported: the commands import them from here with the helpers
  'Diverged',
  'UsageError',
  'bits_per_dim',
  'display_zoom',
  'flag_errors',
  'grid_layout',
  'read_json_dict',
  'save_grid',
]


@contextlib.contextmanager
def flag_errors() -> Iterator[None]:
  """ValueErrors (and TF argument checks) raised while acting on the user's flags become UsageErrors: the
  library's `runs.errors.user_errors`, whose RunError the command line reports as a UsageError."""
  try:
    with user_errors():
      yield
  except RunError as e:
    raise UsageError(str(e)) from e.__cause__


def save_grid(path: str, images: np.ndarray | tf.Tensor, columns: int, zoom: int | None = None) -> None:
  if tf.io.gfile.isdir(path):
    raise UsageError(
      f'--out {path!r} is a directory; give a file name (e.g. {os.path.join(path, "grid.png")})'
    )
  save_png(path, image_grid(np.asarray(images), columns, zoom=zoom or display_zoom(images.shape[1:])))
