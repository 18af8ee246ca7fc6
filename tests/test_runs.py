"""`tfp_glow.train`, the library's kill-safe run: mid-epoch backups, remote folders, its settings.

A kill is simulated by a callback that raises at a chosen training step (what is on disk then is what a
SIGKILL at that moment leaves: every write is atomic); tests/test_run_safety.py kills real processes.
"""

import json

import keras
import pytest
import tensorflow as tf

import tfp_glow
from tfp_glow import cli, runs

TINY = dict(
  dataset='digits', levels=2, steps=1, width=8, batch_size=256, ema=False, lr=3e-2, warmup_epochs=0.2
)
BATCHES = 6  # digits' training split at batch size 256: 6 batches per epoch


class _Killed(Exception):
  pass


class _KillAt(keras.callbacks.Callback):
  """Raises after the `step`-th training step of this `fit` (counted from 1)."""

  def __init__(self, step: int):
    super().__init__()
    self.step, self.seen = step, 0

  def on_train_batch_end(self, batch, logs=None):
    self.seen += 1
    if self.seen == self.step:
      raise _Killed(f'killed after step {self.step}')


class _Count(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.steps = 0

  def on_train_batch_end(self, batch, logs=None):
    self.steps += 1


def _metadata(out: str) -> dict:
  with tf.io.gfile.GFile(f'{out}/backup/training_metadata.json') as f:
    return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize('where', ['local', 'ram'])
def test_a_run_killed_mid_epoch_resumes_there_with_the_steps_of_an_uninterrupted_run(tmp_path, where):
  """Backups every 2 steps; killed after step 9 (3 batches into epoch 2): the backup holds epoch 2 with 2
  batches done, and the rerun trains the 4 batches left, so the run ends after 2 * 6 = 12 steps, as an
  uninterrupted one (Keras' own resume would train all of epoch 2 again: 14). `ram://` stands in for a
  remote folder (gs://): no lock there, the same files."""
  out = str(tmp_path / 'run') if where == 'local' else f'ram://{tmp_path.name}/run'
  config = dict(TINY, epochs=2)
  with pytest.raises(_Killed):
    tfp_glow.train(config, out, backup_every=2, callbacks=[_KillAt(BATCHES + 3)])
  assert _metadata(out)['epoch'] == 1 and _metadata(out)['batches_done'] == 2
  assert not tf.io.gfile.exists(f'{out}/metrics.json')
  count = _Count()
  metrics = tfp_glow.train(config, out, backup_every=2, callbacks=[count])
  assert count.steps == BATCHES - 2
  assert metrics['steps'] == 2 * BATCHES and metrics['epochs'] == 2 and metrics['epochs_this_run'] == 1
  with tf.io.gfile.GFile(f'{out}/history.csv') as f:
    assert [line.split(',')[0] for line in f.read().splitlines()[1:]] == ['0', '1']
  assert not tf.io.gfile.exists(f'{out}/backup')
  again = _Count()
  assert (
    tfp_glow.train(config, out, callbacks=[again]) == metrics and again.steps == 0
  )  # finished: left alone


@pytest.mark.slow
def test_backups_every_n_steps_are_also_written_at_each_epochs_end(tmp_path):
  """backup_every larger than an epoch: the epoch's end still backs up (killed early in epoch 2: the rerun
  trains epoch 2 only)."""
  out = tmp_path / 'run'
  with pytest.raises(_Killed):
    tfp_glow.train(dict(TINY, epochs=2), out, backup_every=100, callbacks=[_KillAt(BATCHES + 1)])
  assert _metadata(str(out)) == {'epoch': 1, 'batch': 0, 'batches_done': 0}
  count = _Count()
  assert tfp_glow.train(dict(TINY, epochs=2), out, callbacks=[count])['steps'] == 2 * BATCHES
  assert count.steps == BATCHES


def test_run_config_fills_the_clis_defaults_and_names_unknown_settings():
  config = runs.run_config(dataset='digits', epochs=3)
  assert config['epochs'] == 3 and config['width'] == 64 and config['sample_every'] == 1  # digits' defaults
  with pytest.raises(runs.RunError, match='unknown run settings bogus, epoch;'):
    runs.run_config(epoch=3, bogus=1)
  with pytest.raises(runs.RunError, match='unknown data set'):
    runs.run_config(dataset='no_such_set')


@pytest.mark.parametrize('bad', [0, -2, 1.5, True])
def test_backup_every_must_be_a_positive_whole_number(tmp_path, bad):
  with pytest.raises(runs.RunError, match='backup_every'):
    tfp_glow.train(TINY, tmp_path / 'run', backup_every=bad)
  assert not (tmp_path / 'run').exists()


def test_cli_backup_every_is_checked_like_the_other_counts(tmp_path, capsys):
  assert cli.main(['train', '--backup-every', '0', '--out', str(tmp_path / 'run')]) == 2
  assert '--backup-every' in capsys.readouterr().err
