"""The backup of an unfinished run (`out/backup/`): written every epoch and, with `every_steps`, every N
training steps; restored by a rerun, mid-epoch where it stopped.

Keras' `BackupAndRestore` (3.x) restores the weights, the optimizer state (its step count included) and the
epoch, but not the position inside the epoch: a run killed k batches into epoch E would train epoch E in
full again, k steps too many. Here the backup also records `batches_done` = k, and the resumed epoch E is
cut after its remaining N - k batches (N: batches per epoch), so the run's total is epochs * N steps, as an
uninterrupted one. Which images those N - k batches hold is a fresh draw of the shuffled training stream,
as every epoch is; a data set of unknown length (N unknown) repeats the k batches instead.
"""

from __future__ import annotations

import json
from typing import Any

import keras
import tensorflow as tf

from tfp_glow.training import distribute


class RunBackup(distribute.MultiWorkerBackupAndRestore):
  """`MultiWorkerBackupAndRestore` (atomic writes, the chief's backup shared by every worker), which

  - outlives `fit`: removed by `finished()` once model.keras and metrics.json are written, so a kill
    between the last epoch and the final files resumes into the finish, not into epoch 1;
  - saves every `every_steps` training steps (None: only at each epoch's end) as well as at each epoch's
    end, and records how many batches of the current epoch are done (`resume_at` after a restore).
  """

  def __init__(self, backup_dir: str, strategy: tf.distribute.Strategy, every_steps: int | None = None):
    super().__init__(backup_dir, strategy, save_freq=every_steps or 'epoch', double_checkpoint=True)
    self.resume_at: tuple[int, int] | None = None  # (epoch, batches done) of a mid-epoch backup
    self._offset = 0  # batches of the current epoch done before the restored backup
    self._batches_done = 0

  def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
    super().on_train_begin(logs)  # restores the weights, the optimizer and the epoch
    self.resume_at = None
    if tf.io.gfile.exists(self._training_metadata_path):
      with tf.io.gfile.GFile(self._training_metadata_path) as f:
        metadata = json.load(f)
      if metadata.get('batches_done'):
        self.resume_at = (int(metadata['epoch']), int(metadata['batches_done']))

  def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
    self._current_epoch = epoch  # Keras counts only the epochs ended in this process: 0 after a restore
    self._offset = self.resume_at[1] if self.resume_at and epoch == self.resume_at[0] else 0
    self._batches_done = self._offset

  def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
    self._batches_done = self._offset + batch + 1
    super().on_train_batch_end(batch, logs)

  def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
    self._batches_done = 0
    super().on_epoch_end(epoch, logs)  # the epoch count; saves here with save_freq='epoch'
    if self.save_freq != 'epoch':  # every N steps *and* every epoch
      self._batches_seen_since_last_saving = 0
      self._save_model()

  def _metadata(self) -> dict:
    return {**super()._metadata(), 'batches_done': self._batches_done}

  def batches_done(self) -> int:
    """Batches of the current epoch done, those before the restored backup included."""
    return self._batches_done

  def in_resumed_epoch(self) -> bool:
    """Whether the current epoch is the one a mid-epoch backup was restored into."""
    return self._offset > 0

  def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
    pass

  def finished(self) -> None:
    """Removes the backup (the chief's): the run's final files are written."""
    super().on_train_end()


class EndResumedEpoch(keras.callbacks.Callback):
  """Ends the epoch a mid-epoch backup was taken in after its remaining batches (`RunBackup`'s module
  docstring). Put it last: it stops the epoch only if no other callback stopped training at that batch,
  and lets the next epochs run (Keras checks `stop_training` again only after every `on_epoch_end`)."""

  def __init__(self, backup: RunBackup):
    super().__init__()
    self.backup = backup
    self._ended = False

  def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
    steps = self.params.get('steps')
    if not (self.backup.resume_at and steps) or self.model.stop_training:
      return
    if self.backup.in_resumed_epoch() and self.backup.batches_done() >= steps:
      self.model.stop_training = True  # ends this epoch's batch loop
      self._ended = True

  def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
    if self._ended:
      self.model.stop_training = False  # ... but not the training
      self._ended = False
