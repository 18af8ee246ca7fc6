"""What the `tfp-glow` commands share: their errors (tfp_glow.cli.errors), turning flag errors into them,
sample-grid helpers and reading a run's JSON."""

from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np
import tensorflow as tf

from tfp_glow.cli.errors import Diverged, UsageError
from tfp_glow.images import image_grid, save_png
from tfp_glow.training.model import GlowModel

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
def flag_errors():
  """ValueErrors (and TF argument checks) raised while acting on the user's flags become UsageErrors."""
  try:
    yield
  except ValueError as e:
    raise UsageError(str(e)) from e
  except tf.errors.InvalidArgumentError as e:
    raise UsageError(e.message.strip().splitlines()[0]) from e


def grid_layout(n: int, num_classes: int | None) -> tuple[int, int, np.ndarray | None]:
  """(n, columns, labels) for a sample grid; conditional models get one column per class."""
  if not num_classes:
    return n, math.ceil(math.sqrt(n)), None
  n = math.ceil(n / num_classes) * num_classes
  return n, num_classes, np.arange(n, dtype=np.int32) % num_classes


def display_zoom(image_shape) -> int:
  return max(1, 32 // max(image_shape[:2]))  # small images (8x8 digits) shown at about 32x32


def save_grid(path: str, images, columns: int, zoom: int | None = None) -> None:
  if tf.io.gfile.isdir(path):
    raise UsageError(
      f'--out {path!r} is a directory; give a file name (e.g. {os.path.join(path, "grid.png")})'
    )
  save_png(path, image_grid(np.asarray(images), columns, zoom=zoom or display_zoom(images.shape[1:])))


def bits_per_dim(model: GlowModel, dataset) -> float:
  """The model's bits/dim on `dataset`: the mean over its images, whatever the batch size (`model.evaluate`)."""
  return float(model.evaluate(dataset, verbose=0, return_dict=True)['bits_per_dim'])


def read_json_dict(path: str) -> dict:
  """A JSON object from `path`, or {} if there is none."""
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    obj = json.load(f)
  return obj if isinstance(obj, dict) else {}
