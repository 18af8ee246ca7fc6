"""Keras callbacks for watching a GlowModel train (sample grids as PNG files) and backing it up.

Every file is written atomically (`tfp_glow.atomic`).
GlowModel's own `save` / `save_weights` are atomic and refuse NaN weights, so
`keras.callbacks.ModelCheckpoint` needs nothing from here; `AtomicBackupAndRestore` also makes
the backup's bookkeeping file atomic and turns an unreadable backup into one clear error.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import atomic
from tfp_glow.images import image_grid, save_png
from tfp_glow.training import guard


class SampleGrid(keras.callbacks.Callback):
  """Every `every_n_epochs` epochs and at the end of training, samples the model at each temperature.

  Writes one PNG per temperature, `directory/samples_epoch{E:03d}_t{T:g}.png` (E counted from 1, as
  Keras prints it), holding `n` samples in a square-ish grid (see `image_grid`). The same `seed`
  is used every time, so successive files show the same latent noise as the model learns, and the
  temperatures show the same noise scaled by T. With `log_dir`, also logs the grids to TensorBoard
  as `samples/T={T:g}` (image summaries, written without needing the tensorboard package).

  Class-conditional models sample `labels` (one per image, or one for all); by default the
  labels cycle over the classes, i % num_classes.
  Temperatures must be > 0 (the model rejects 0; use e.g. 0.01 for the mode-like look).
  """

  def __init__(
    self,
    directory: str,
    every_n_epochs: int = 1,
    temperatures: Sequence[float] = (0.5, 0.7, 1.0),
    n: int = 16,
    log_dir: str | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    seed: int = 0,
    columns: int | None = None,
    zoom: int = 1,
  ):
    super().__init__()
    if every_n_epochs < 1:
      raise ValueError(f'SampleGrid: every_n_epochs must be >= 1, got {every_n_epochs}.')
    if not temperatures or any(not t > 0 for t in temperatures):
      raise ValueError(f'SampleGrid: temperatures must be > 0, got {temperatures!r}.')
    if n < 1:
      raise ValueError(f'SampleGrid: n must be >= 1, got {n}.')
    self.directory = directory
    self.every_n_epochs = every_n_epochs
    self.temperatures = tuple(float(t) for t in temperatures)
    self.n = n
    self.log_dir = log_dir
    self.labels = labels
    self.seed = seed
    self.columns = columns
    self.zoom = zoom
    self._writer = None
    self._last_epoch_written: int | None = None
    self._epochs_done = 0

  def paths(self, epoch: int) -> list[str]:
    """The files written for (1-based) `epoch`, one per temperature."""
    return [os.path.join(self.directory, f'samples_epoch{epoch:03d}_t{t:g}.png') for t in self.temperatures]

  def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
    if self.log_dir and self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)

  def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
    self._epochs_done = epoch + 1
    if self._epochs_done % self.every_n_epochs == 0:
      self.write(self._epochs_done)

  def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
    if self._epochs_done and self._last_epoch_written != self._epochs_done:
      self.write(self._epochs_done)
    if self._writer is not None:
      self._writer.flush()

  def write(self, epoch: int) -> None:
    """Samples the model now and writes the grids under the name of (1-based) `epoch`
    (nothing, with a warning, if the weights are not finite: NaN samples show nothing)."""
    if not guard.finite_weights(self.model):
      print(f'SampleGrid: epoch {epoch}: the weights contain NaN or Inf; no samples written.')
      return
    labels = self._sample_labels()
    for temperature, path in zip(self.temperatures, self.paths(epoch)):
      images = self.model.sample(
        self.n, temperature=temperature, labels=labels, seed=tf.constant([self.seed, 0], tf.int32)
      )
      grid = image_grid(images.numpy(), columns=self.columns, zoom=self.zoom)
      save_png(path, grid)
      if self._writer is not None:
        _write_image_summary(self._writer, f'samples/T={temperature:g}', grid, epoch)
    self._last_epoch_written = epoch

  def _sample_labels(self):
    num_classes = getattr(self.model, 'num_classes', None)
    if not num_classes:
      return None
    if self.labels is not None:
      return self.labels
    return np.arange(self.n, dtype=np.int32) % num_classes


class BackupUnreadableError(ValueError):
  """The backup of an interrupted run cannot be read (see `AtomicBackupAndRestore`)."""


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
  """`keras.callbacks.BackupAndRestore` whose every write is atomic, so a run killed at any moment
  resumes from the last complete backup; a backup that is unreadable all the same (a disk error,
  another program's file) raises `BackupUnreadableError`, one line naming the file and the fix,
  instead of h5py's traceback."""

  def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
    try:
      super().on_train_begin(logs)
    except Exception as e:  # OSError (h5py), KeyError / ValueError (wrong weights), JSON errors
      bad = self._weights_path
      if isinstance(e, json.JSONDecodeError | KeyError) and tf.io.gfile.exists(self._training_metadata_path):
        bad = self._training_metadata_path
      detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise BackupUnreadableError(
        f'cannot resume from the backup {bad!r} ({detail}); delete {self.backup_dir!r} to start '
        'afresh (the files beside it, e.g. checkpoints/, are kept)'
      ) from e

  def _save_model(self):  # what Keras' version does, through atomic writes
    if self.double_checkpoint:
      for path, previous in (
        (self._weights_path, self._prev_weights_path),
        (self._training_metadata_path, self._prev_training_metadata_path),
      ):
        if tf.io.gfile.exists(path):
          with atomic.replacing(previous) as tmp:
            tf.io.gfile.copy(path, tmp, overwrite=True)
    with atomic.replacing(self._weights_path) as tmp:
      self.model.save_weights(tmp, overwrite=True)
    atomic.write_json(self._training_metadata_path, self._metadata())

  def _metadata(self) -> dict:
    """What training_metadata.json holds (Keras reads 'epoch'; subclasses may add keys)."""
    return {'epoch': self._current_epoch, 'batch': self._last_batch_seen}


def _write_image_summary(writer, tag: str, image: np.ndarray, step: int) -> None:
  """What `tf.summary.image` writes for one uint8 image [H, W, C], but with core TF alone:
  a string tensor [width, height, png] tagged for TensorBoard's image plugin."""
  metadata = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name='images')
  )
  height, width = image.shape[:2]
  tensor = tf.stack([tf.as_string(width), tf.as_string(height), tf.io.encode_png(image)])
  with writer.as_default():
    tf.summary.write(tag, tensor, step=step, metadata=metadata)
