"""A kill-safe training run: `train(config, out)` trains a GlowModel into the folder `out` and returns
its metrics; `tfp-glow train` is flags -> config -> this.

One run, step by step (each step's module):
  RunDirectory.check        out is a writable directory, made if needed             (directory.py)
  Cluster.make              the strategy, chief or not, where to write, which shard  (cluster.py)
  lock.held                 one run per out (fcntl.flock)                           (lock.py)
  RunDirectory.state/begin  new / resume / finished / continue / fresh               (directory.py)
  Run.build                 data, model, optimizer, callbacks (the backup first)    (this module)
  Run.fit                   model.fit; backups every epoch and every N steps        (backup.py)
  finish                    weights choice, evaluation, model.keras, metrics.json   (finish.py)
  RunBackup.finished        the backup goes only now: a kill before resumes here    (backup.py)

What a run guarantees (README, "Surviving training"): a kill at any moment resumes (rerun the same call);
a finite model is never deleted (only NaN / Inf is refused: `Diverged`); a finished run is left alone
unless `continue_run` or `fresh`, and then stays until the new model.keras and metrics.json are written.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

from tfp_glow import atomic, ood, specs
from tfp_glow import data as glow_data
from tfp_glow.runs import lock
from tfp_glow.runs.backup import EndResumedEpoch, RunBackup
from tfp_glow.runs.cluster import Cluster
from tfp_glow.runs.config import run_config
from tfp_glow.runs.directory import RunDirectory, read_json_dict
from tfp_glow.runs.errors import OutUnwritable, RunError, user_errors, write_error
from tfp_glow.runs.finish import RawWeights, display_zoom, finish, grid_layout
from tfp_glow.runs.pause_points import EpochPausePoints, pause_point
from tfp_glow.training import distribute, guard
from tfp_glow.training.callbacks import BackupUnreadableError, SampleGrid
from tfp_glow.training.model import GlowModel
from tfp_glow.training.optim import default_optimizer
from tfp_glow.training.precision import global_policy


class _CSVLogger(keras.callbacks.CSVLogger):
  """Keras' CSVLogger, which also closes a TensorFlow file (gs://, ram://): `GFile` has no `closed`."""

  def on_train_end(self, logs=None):
    if self.csv_file is not None:
      self.csv_file.close()
      self.csv_file = None
    self.writer = None


def train(
  config: Mapping[str, Any],
  out: str,
  *,
  continue_run: bool = False,
  fresh: bool = False,
  backup_every: int | None = None,
  strategy: str = 'default',
  tpu: str | None = None,
  data_dir: str | None = None,
  tensorboard: bool = False,
  callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict:
  """Trains a Glow model into the folder `out`, kill-safe; returns its metrics (also in out/metrics.json).

    metrics = tfp_glow.train({'dataset': 'digits', 'epochs': 20}, 'runs/digits')

  config: the run's settings (`tfp_glow.runs.run_config`'s keys: dataset, levels, steps, width, epochs,
    lr, ...); the ones left out take `tfp-glow train`'s defaults for the data set.
  out: the run's folder (local, or a TensorFlow path such as gs://..., without a lock there). Rerun the same
    call after a kill: it resumes from the last backup. A finished run is left alone (its metrics are
    returned) unless `continue_run` (train it on up to config['epochs']) or `fresh` (a new model; the old
    files stay until the new ones are written).
  backup_every: also back up every this many training steps (default: at each epoch's end only).
  strategy, tpu: a tf.distribute strategy (`tfp_glow.training.distribute.STRATEGIES`).
  callbacks: more Keras callbacks for `fit` (after the run's own).

  Raises RunError (settings, files, a locked `out`) or Diverged (NaN / Inf; nothing saved), one line each.
  """
  if continue_run and fresh:
    raise RunError('give at most one of continue_run (--continue) and fresh (--fresh)')
  if backup_every is not None and (
    isinstance(backup_every, bool) or not isinstance(backup_every, int) or backup_every < 1
  ):
    raise RunError(
      f'backup_every (--backup-every) must be a whole number of steps >= 1, got {backup_every!r}'
    )
  config = run_config(**config)
  directory = RunDirectory(os.fspath(out))
  directory.check()
  try:
    with user_errors():
      cluster = Cluster.make(directory.out, strategy, tpu=tpu)  # before any other TF op
    options = dict(data_dir=data_dir, tensorboard=tensorboard, backup_every=backup_every, callbacks=callbacks)
    return _locked(config, directory, cluster, continue_run, fresh, options)
  except OSError as e:  # the lock file, the first write: out not writable
    if lock.LOCK_NAME not in str(e.filename or ''):
      raise
    raise RunError(f'cannot write to --out {directory.out!r} ({lock.describe_os_error(e)})') from e
  finally:
    directory.cleanup()


def _locked(
  config: dict, directory: RunDirectory, cluster: Cluster, continue_run: bool, fresh: bool, options: dict
) -> dict:
  try:
    # The chief locks for all workers.
    with lock.held(directory.out, enabled=cluster.chief) as note:
      if note:
        print(note)
      started = time.time()
      state = directory.state(config, continue_run=continue_run, fresh=fresh)
      if state == 'finished':
        metrics = directory.metrics()
        print(
          f'{directory.out} holds a finished run ({metrics.get("epochs", "?")} epochs, test '
          f'{metrics.get("test_bits_per_dim", float("nan")):.4f} bits/dim); nothing to do. '
          '--continue (continue_run=True) trains it on up to --epochs, --fresh (fresh=True) trains a new model'
        )
        return metrics
      run = Run(config, directory, cluster, state, started, **options)
      run.build()
      try:
        return run.fit_and_finish()
      except (OSError, tf.errors.OpError, RuntimeError) as e:
        unwritable = write_error(directory.out, e)
        if unwritable is None:
          raise
        raise unwritable from e
  except lock.RunLocked as e:
    raise RunError(str(e)) from e


class Run:
  """One training run in `directory`, in a state that `RunDirectory.state` decided."""

  def __init__(
    self,
    config: dict,
    directory: RunDirectory,
    cluster: Cluster,
    state: str,
    started: float,
    *,
    data_dir: str | None = None,
    tensorboard: bool = False,
    backup_every: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
  ):
    self.config = config
    self.directory = directory
    self.cluster = cluster
    self.state = state
    self.started = started  # time.time() when the run took its lock: metrics['wall_seconds']
    self.data_dir = data_dir
    self.tensorboard = tensorboard
    self.backup_every = backup_every
    self.extra_callbacks = list(callbacks)
    self.report = glow_data.ImageReport()  # one per run: each skipped or converted file is warned about once

  def load_split(self, split: str, shuffle: bool, shard: bool = True) -> tuple[tf.data.Dataset, Any]:
    """A split of the run's data set; with several workers, this worker's shard (`shard`)."""
    config = self.config
    dataset, info = glow_data.load_dataset(
      config['dataset'],
      split,
      batch_size=config['batch_size'],
      n_bits=config['n_bits'],
      image_size=config['image_size'],
      pad_to_32=config['pad_to_32'],
      with_labels=config['conditional'],
      shuffle=shuffle,
      data_dir=self.data_dir,
      seed=config['seed'],
      cache=config.get('cache'),
      bad_files=config.get('bad_files', 'skip'),
      worker_shard=self.cluster.worker_shard if shard else None,
      report=self.report,
    )
    if shard and self.cluster.distributed:
      dataset = distribute.shard(dataset, info.sharded_by_file)
    return dataset, info

  def build(self) -> None:
    """The data, the model (compiled), and its starting point (new, the backup's, a finished run's)."""
    config, cluster = self.config, self.cluster
    keras.utils.set_random_seed(config['seed'])
    # The model is built and compiled in the chosen precision; the process' policy is restored after.
    with user_errors(), cluster.strategy.scope(), global_policy(config.get('precision', 'float32')):
      self.train_ds, info = self.load_split('train', shuffle=True)
      self.test_ds, _ = self.load_split('test', shuffle=False)
      if config['background_noise']:  # a background model (tfp_glow.ood.likelihood_ratio) sees perturbed data
        self.train_ds = ood.perturbed_dataset(
          self.train_ds, config['background_noise'], info.n_bins, seed=config['seed']
        )
      if cluster.distributed and info.sharded_by_file and cluster.worker_shard is not None:  # (implied)
        workers, index = cluster.worker_shard
        print(f'worker {index}: reads TFRecord shards {index}, {index} + {workers}, ... of {info.num_shards}')
      if info.class_names:
        print('classes: ' + ', '.join(f'{i}={name}' for i, name in enumerate(info.class_names)))
      self.info = info
      run_spec = specs.RunSpec.from_dict(config)
      num_classes = info.num_classes if config['conditional'] else None
      self.model = model = GlowModel.from_spec(
        run_spec.model_spec(info.image_shape, num_classes, info.n_bins)
      )
      steps_per_epoch = math.ceil(info.num_examples / config['batch_size']) if info.num_examples else 1000
      model.compile(
        optimizer=default_optimizer(
          config['lr'],
          round(config['warmup_epochs'] * steps_per_epoch),
          use_ema=config['ema'],
          clipnorm=config['clipnorm'],
        )
      )
      self.directory.check_space(model.count_params())
      self.initial_epoch = self.directory.begin(self.state, config)
      if self.state == 'continue':  # the finished run's last epoch, its weights and optimizer state
        model.load_weights(self.directory.checkpoint)
      if cluster.distributed:  # the same init images on every worker: unshuffled, seeded
        init_ds, _ = self.load_split('train', shuffle=False, shard=False)
        init_batch = next(iter(init_ds.unbatch().batch(256).take(1)))
        images, labels = init_batch if config['conditional'] else (init_batch, None)
        distribute.initialize_actnorm(model, images, cluster.strategy, labels)
      distribute.rank1_step_outputs(model, cluster.strategy)

  def _sample_grid(self, wout: str) -> SampleGrid:
    n, columns, labels = grid_layout(16, self.model.num_classes)
    return SampleGrid(
      os.path.join(wout, 'samples'),
      every_n_epochs=self.config['sample_every'],
      n=n,
      labels=labels,
      seed=self.config['seed'],
      columns=columns,
      zoom=display_zoom(self.info.image_shape),
      log_dir=os.path.join(wout, 'logs', 'samples') if self.tensorboard else None,
    )

  def fit_and_finish(self) -> dict:
    """`fit` from the starting point, then the finish; the backup goes last."""
    config, out, wout = self.config, self.directory.out, self.cluster.write_dir
    tf.io.gfile.makedirs(wout)
    atomic.remove_stale(wout)  # temporary files of a killed run
    atomic.write_json(os.path.join(wout, 'config.json'), config)
    # First: restores before the rest; every worker restores from the chief's backup. Keeps the previous
    # backup too, in case the latest is unreadable.
    backup = RunBackup(self.directory.backup_dir, self.cluster.strategy, every_steps=self.backup_every)
    raw = RawWeights()
    callbacks = [
      backup,
      keras.callbacks.ModelCheckpoint(os.path.join(wout, 'checkpoints', 'latest.keras')),
      _CSVLogger(os.path.join(wout, 'history.csv'), append=self.state in ('resume', 'continue')),
      self._sample_grid(wout),
      keras.callbacks.TerminateOnNaN(),
      *([keras.callbacks.TensorBoard(os.path.join(wout, 'logs'))] if self.tensorboard else []),
      *([raw] if config['ema'] else []),  # the weights before fit writes the EMA over them
      *self.extra_callbacks,
      EpochPausePoints(),  # after the checkpoint and backup of each epoch
      EndResumedEpoch(backup),  # last: it must see every other callback's stop_training
    ]
    fit_started = time.time()
    try:
      history = self.model.fit(
        self.train_ds,
        validation_data=self.test_ds,
        epochs=config['epochs'],
        initial_epoch=self.initial_epoch,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
      )
    except BackupUnreadableError as e:
      raise RunError(str(e)) from e
    except guard.NonFiniteWeightsError:  # a checkpoint or backup refused to save NaN weights
      raise self.directory.diverged('the weights became NaN or Inf') from None
    except guard.TrainingDivergedError as e:
      reason = f'{e.skipped_in_a_row} steps in a row were skipped ({e.causes}; --max-consecutive-skips)'
      raise self.directory.diverged(reason) from None
    train_seconds = time.time() - fit_started
    pause_point('after_fit')
    metrics = finish(self, history, train_seconds, raw)
    self.directory.finished()
    backup.finished()  # only now: a kill before this resumes into the finish
    distribute.remove_write_dir(out, self.cluster.strategy)
    wrote = (
      f'wrote {out}/model.keras, samples.png, metrics.json' if wout == out else 'the chief writes the files'
    )
    print(
      f'test {metrics["test_bits_per_dim"]:.4f} bits/dim, train {metrics["train_bits_per_dim"]:.4f} '
      f'bits/dim ({metrics["weights"]} weights), {metrics["wall_seconds"]:.0f} s; {wrote}'
    )
    return metrics


__all__ = ['OutUnwritable', 'Run', 'read_json_dict', 'train']
