"""Named points of a training run (`tfp_glow.train`, `tfp-glow train`) where a test can stop it for
certain, then kill it.

With TFP_GLOW_PAUSE_AT=NAME in the environment, the run prints `tfp-glow: paused at NAME` (flushed) when
it reaches NAME and then sleeps; the test waits for that line and sends SIGKILL. So a kill lands exactly
between two named writes, however loaded the machine is, and tests need no timing. Names:
  epoch{E}_batch        after the first batch of epoch E (counted from 1): in the middle of an epoch
  epoch{E}_end          after epoch E's checkpoint and backup are written
  after_fit             training is over; the final evaluation and files are next
  saving_model          model.keras is being written (its temporary file exists, not yet renamed)
  after_model           model.keras is written, metrics.json not yet
  after_metrics         metrics.json is written; the backup is still there
Without the variable every point is a no-op.
"""

from __future__ import annotations

import os
import time
from typing import Any

import keras

ENV = 'TFP_GLOW_PAUSE_AT'


def pause_point(name: str) -> None:
  if os.environ.get(ENV) == name:
    print(f'tfp-glow: paused at {name}', flush=True)
    while True:
      time.sleep(60)


class EpochPausePoints(keras.callbacks.Callback):
  """`epoch{E}_batch` and `epoch{E}_end` (put it after the checkpoint and backup callbacks)."""

  def __init__(self) -> None:
    super().__init__()
    self._epoch = 0

  def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
    self._epoch = epoch + 1

  def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
    if batch == 0:
      pause_point(f'epoch{self._epoch}_batch')

  def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
    pause_point(f'epoch{epoch + 1}_end')
