"""GlowModel's files: `save` (NAME.keras), `save_weights` (NAME.weights.h5), `load_weights` and `export`
(a SavedModel), as keras.Model's, plus what a user's trained model needs: every file written atomically (a
temporary file renamed into place, so a kill leaves the previous file intact, `tfp_glow.atomic`), NaN / Inf
weights (a diverged model) never written, a file of another layout refused with the weights left as they
were, and errors that name the user's path, not the temporary one.

A mixin: `GlowModel` (tfp_glow/training/model.py) composes it with keras.Model.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Iterator

import tensorflow as tf

from tfp_glow import atomic
from tfp_glow.training import guard

if TYPE_CHECKING:  # for type checkers: the mixin's self is a GlowModel, whose keras.Model gives it the rest
  from keras import Model as _KerasModel
else:
  _KerasModel = object


class Files(_KerasModel):
  """save, save_weights, load_weights and export of a GlowModel (see the module docstring)."""

  def save(self, filepath: str | os.PathLike, overwrite: bool = True, **kwargs: Any) -> None:
    """`keras.Model.save`, written atomically (a temporary file renamed into place, so a kill
    leaves the previous file intact); refuses NaN / Inf weights (a diverged model), and any name
    but NAME.keras (the legacy .h5 format cannot hold a GlowModel's state)."""
    self._check_finite_weights(filepath)
    if not isinstance(filepath, (str, os.PathLike)) or kwargs.get('zipped') is False:
      return super().save(filepath, overwrite=overwrite, **kwargs)
    path = os.fspath(filepath)
    if not path.endswith('.keras'):
      legacy = path.endswith(('.h5', '.hdf5'))
      raise ValueError(
        f'GlowModel.save: {path!r}: '
        + (
          'the legacy HDF5 format cannot be loaded back; ' if legacy else 'a model file must end in .keras; '
        )
        + f'use {os.path.splitext(path)[0] if legacy else path}.keras (or save_weights(NAME.weights.h5)).'
      )
    if not overwrite and tf.io.gfile.exists(path):
      return super().save(filepath, overwrite=False, **kwargs)  # Keras asks the user
    with atomic.replacing(path) as tmp, _naming(tmp, path):
      super().save(tmp, overwrite=True, **kwargs)

  def save_weights(
    self, filepath: str | os.PathLike, overwrite: bool = True, max_shard_size: int | float | None = None
  ) -> None:
    """`keras.Model.save_weights`, written atomically; refuses NaN / Inf weights."""
    self._check_finite_weights(filepath)
    if max_shard_size is not None or not isinstance(filepath, (str, os.PathLike)):
      return super().save_weights(filepath, overwrite=overwrite, max_shard_size=max_shard_size)
    if not overwrite and tf.io.gfile.exists(os.fspath(filepath)):
      return super().save_weights(filepath, overwrite=False)
    if not os.fspath(filepath).endswith('.weights.h5'):
      raise ValueError(f'GlowModel.save_weights: {os.fspath(filepath)!r} must end in .weights.h5.')
    with atomic.replacing(filepath) as tmp, _naming(tmp, os.fspath(filepath)):
      super().save_weights(tmp, overwrite=True)

  def load_weights(self, filepath: str | os.PathLike, skip_mismatch: bool = False, **kwargs: Any) -> None:
    """`keras.Model.load_weights`; a file of another layout leaves the weights as they were (Keras would
    have loaded the parts that match) and gets an error that says what may be wrong."""
    before = [v.numpy() for v in self.weights]
    try:
      return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
    except ValueError as e:
      for v, value in zip(self.weights, before):
        v.assign(value)
      raise ValueError(
        f'GlowModel: {os.fspath(filepath)!r} does not match this model: build the model with the settings it '
        'was saved with (image shape, levels, steps, width, coupling, permutation, classes). Files written '
        "before tfp_glow stacked each level's step parameters into [K, ...] variables (one variable per step "
        f'and parameter) cannot be loaded. Keras says: {e}'
      ) from e

  def _check_finite_weights(self, filepath: str | os.PathLike) -> None:
    if not guard.finite_weights(self):
      raise guard.NonFiniteWeightsError(
        f'GlowModel: not saving {os.fspath(filepath)!r}: the weights contain NaN or Inf (a diverged model).'
      )

  def export(
    self, filepath: str | os.PathLike, format: str = 'tf_saved_model', verbose: bool = True, **kwargs: Any
  ) -> None:  # pylint: disable=redefined-builtin
    """Writes a SavedModel whose endpoints return what this model's methods return, and check their
    arguments as they do (loadable with `tf.saved_model.load`, without tfp_glow installed):
      log_prob(images [None, H, W, C] float32[, labels [None] int32]) -> [None]         = log_prob
      sample(n [] int32, temperature [] float32[, labels [None] int32]) -> uint8 images   = sample
      sample_floats(n, temperature[, labels]) -> float32 images        = sample(..., as_uint8=False)
    See `tfp_glow.training.export.export_saved_model`.
    """
    from tfp_glow.training.export import export_saved_model  # pylint: disable=import-outside-toplevel

    if format != 'tf_saved_model':
      raise ValueError(f'GlowModel.export supports format="tf_saved_model" only, got {format!r}.')
    export_saved_model(self, filepath, verbose=verbose)


@contextlib.contextmanager
def _naming(tmp: str, path: str) -> Iterator[None]:
  """Errors raised while writing `tmp` name the user's `path` instead of the temporary file."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if tmp not in str(e):
      raise
    text = str(e).replace(tmp, path)
    renamed: Exception
    try:
      if isinstance(e, OSError) and e.errno:  # keep errno (ENOSPC, EACCES, ...) for the callers
        filename = path if e.filename == tmp else e.filename
        renamed = type(e)(e.errno, str(e.strerror).replace(tmp, path), filename)
      else:
        renamed = type(e)(text)
    except Exception:  # pylint: disable=broad-except  (an exception class with other arguments)
      renamed = ValueError(text)
    raise renamed from e
