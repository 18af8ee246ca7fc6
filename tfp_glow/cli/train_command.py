"""`tfp-glow train`: configuration (flags, --config, per-data-set defaults), resuming a killed run, the
training itself, and refusing to save a diverged model.

What a run guarantees (README, "Surviving training"):
  - one run per --out (`run_lock`), and --out is checked (writable, a directory, space) before any work;
  - a kill at any moment resumes: during the epochs from the backup, after them into the finish, since the
    backup stays until model.keras and metrics.json are both written (then it is removed);
  - a finite model is never deleted: only NaN / Inf is refused (exit 1); checkpoints/latest.keras, the
    last finite epoch, stays even then. A finite model worse than the uniform one is saved, with a warning;
  - with --ema, the averaged and the raw weights are both evaluated; model.keras keeps the better on the
    training split (metrics.json holds both scores), so a short run is not judged by lagging averages;
  - rerunning a finished run changes nothing; --continue trains it further, --fresh starts afresh.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import atomic, configs, ood
from tfp_glow import data as glow_data
from tfp_glow.cli import run_lock
from tfp_glow.cli.common import (
  Diverged,
  UsageError,
  bits_per_dim,
  display_zoom,
  flag_errors,
  grid_layout,
  read_json_dict,
  save_grid,
)
from tfp_glow.cli.flags import DEFAULTS, LARGE_DEFAULTS, SAMPLE_TEMPERATURE
from tfp_glow.cli.pause_points import EpochPausePoints, pause_point
from tfp_glow.training import distribute, guard
from tfp_glow.training.callbacks import BackupUnreadableError, SampleGrid
from tfp_glow.training.model import GlowModel
from tfp_glow.training.optim import default_optimizer
from tfp_glow.training.precision import global_policy

# Other config changes would invalidate a backup.
_MAY_CHANGE_ON_RESUME = ('epochs', 'sample_every', 'max_consecutive_skips', 'cache', 'bad_files')


def _train_config(args) -> dict:
  """The flags; unset ones from --config (tfp_glow.configs), then from the data set's DEFAULTS."""
  preset = configs.get_config(args.config).train_flags() if args.config else {}
  dataset = args.dataset or preset.pop('dataset', None) or ('digits' if not args.config else None)
  preset.pop('dataset', None)
  if dataset is None:
    hint = (
      configs.get_config(args.config).data_hint or f'{glow_data.FOLDER_PREFIX}PATH (a folder of its images)'
    )
    raise UsageError(f'--config {args.config} names no data set we can download: give --dataset {hint}')
  if dataset not in DEFAULTS and not glow_data.is_path_source(dataset):
    raise UsageError(
      f'unknown data set {dataset!r}; accepted: {", ".join(glow_data.DATASETS)}, or {glow_data.SOURCES_HELP}'
    )
  config = {
    'dataset': dataset,
    **{
      k: getattr(args, k)
      for k in (
        'clipnorm',
        'seed',
        'max_consecutive_skips',
        'memory_saving',
        'precision',
        'dequantization',
        'background_noise',
        'cache',
        'bad_files',
      )
    },
  }
  fallback = dict(coupling='affine', permutation='conv_lu', conditional=False, conditioner='conv')
  for key, default in {**DEFAULTS.get(dataset, LARGE_DEFAULTS), **fallback, **preset}.items():
    config[key] = default if getattr(args, key) is None else getattr(args, key)
  if not 0.0 <= config['background_noise'] <= 1.0:
    raise UsageError(f'--background-noise must be a fraction in [0, 1], got {config["background_noise"]}')
  config['sample_every'] = args.sample_every or max(1, config['epochs'] // 10)
  if args.config:
    config['config'] = args.config
  return config


def _load_split(
  config: dict, split: str, shuffle: bool, data_dir: str | None, worker_shard=None, report=None
):
  return glow_data.load_dataset(
    config['dataset'],
    split,
    batch_size=config['batch_size'],
    n_bits=config['n_bits'],
    image_size=config['image_size'],
    pad_to_32=config['pad_to_32'],
    with_labels=config['conditional'],
    shuffle=shuffle,
    data_dir=data_dir,
    seed=config['seed'],
    cache=config.get('cache'),
    bad_files=config.get('bad_files', 'skip'),
    worker_shard=worker_shard,
    report=report,  # one per run: each skipped or converted file is warned about and counted once
  )


# Free space --out needs, in bytes per parameter: model.keras, checkpoints/latest.keras and two backups,
# each with weights and optimizer moments (EMA too), plus slack.
_BYTES_PER_PARAMETER = 4 * 4 * 4
_MIN_FREE_BYTES = 16 << 20


class _OutUnwritable(Exception):
  """--out cannot be written (read-only, no permission, full disk): exit 2 naming the path and cause."""


def _check_out(out: str) -> bool:
  """--out must be a directory (or a path where one can be made) that we can write: one line otherwise.
  Returns whether it was made here (a run that fails before writing anything removes it again)."""
  if tf.io.gfile.exists(out) and not tf.io.gfile.isdir(out):
    raise UsageError(f'--out {out!r} is a file; give a directory (new, or a run to resume)')
  if '://' in out:
    return False  # remote file systems: their errors come at write time
  existed = os.path.isdir(out)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UsageError(f'--out {out!r} cannot be created ({run_lock.describe_os_error(e)})') from e
  return not existed


def _check_space(out: str, model: GlowModel) -> None:
  if '://' in out:
    return
  need = _MIN_FREE_BYTES + _BYTES_PER_PARAMETER * model.count_params()
  free = shutil.disk_usage(out).free
  if free < need:
    raise UsageError(
      f'--out {out!r} has {free / 2**20:.1f} MB free; this run needs about {need / 2**20:.0f} MB '
      '(No space left on device)'
    )


def _run_state(out: str, config: dict, args) -> str:
  """What --out holds and what to do with it: 'new', 'resume' (an interrupted run, a backup) or
  'finished' (metrics.json, written last: nothing to do unless --continue / --fresh)."""
  finished = tf.io.gfile.exists(os.path.join(out, 'metrics.json'))
  backup = tf.io.gfile.exists(os.path.join(out, 'backup', 'training_metadata.json')) or tf.io.gfile.exists(
    os.path.join(out, 'backup', 'latest.weights.h5')
  )
  if args.fresh:
    if finished or backup:
      print(f'note: --fresh: training a new model in {out}; the old files are replaced at the end')
    return 'fresh'
  if finished and backup and not args.continue_run:  # killed between metrics.json and the backup's removal
    tf.io.gfile.rmtree(os.path.join(out, 'backup'))
    print(f'note: {out}: the run had finished; removed its leftover backup/')
  if finished:
    if not args.continue_run:
      return 'finished'
    done = read_json_dict(os.path.join(out, 'metrics.json')).get('epochs', 0)
    if config['epochs'] <= done:
      raise UsageError(f'--continue: the run in {out} has {done} epochs already; give --epochs above {done}')
    print(f'note: --continue: training the finished run in {out} from epoch {done + 1} to {config["epochs"]}')
    return 'continue'
  if not backup:
    return 'new'
  saved = read_json_dict(os.path.join(out, 'config.json'))
  changed = [k for k in saved if k not in _MAY_CHANGE_ON_RESUME and saved[k] != config.get(k)]
  if changed:
    raise UsageError(
      f'{out} holds an interrupted run with different {", ".join(changed)} '
      f'({", ".join(f"{k}={saved[k]!r}" for k in changed)}); use those flags to resume it, '
      f'--fresh to replace it, or another --out'
    )
  print(f'note: resuming the interrupted run in {out}')
  return 'resume'


def train(args) -> int:
  """Trains, then writes model.keras, samples.png and metrics.json into --out."""
  config = _train_config(args)
  out = args.out or os.path.join('runs', re.sub(r'[^A-Za-z0-9_.-]+', '_', config['dataset']).strip('_'))
  created = _check_out(out)
  try:
    return _train_in(args, config, out)
  finally:
    if created and os.path.isdir(out) and not os.listdir(out):  # failed before writing anything
      os.rmdir(out)


def _train_in(args, config: dict, out: str) -> int:
  with flag_errors():
    strategy = distribute.make_strategy(args.strategy, tpu=args.tpu)  # before any other TF op
  try:
    # Remote --out (gs://...): no lock (os.open would make a local file); the chief locks for all workers.
    with run_lock.held(out, enabled=distribute.is_chief(strategy) and '://' not in out) as note:
      if note:
        print(note)
      return _train_locked(args, config, out, strategy)
  except run_lock.RunLocked as e:
    raise UsageError(str(e)) from e
  except _OutUnwritable as e:
    raise UsageError(str(e)) from e
  except OSError as e:  # the lock file, the first write: --out not writable
    if run_lock.LOCK_NAME not in str(e.filename or ''):
      raise
    raise UsageError(f'cannot write to --out {out!r} ({run_lock.describe_os_error(e)})') from e


_WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO)


def _write_error(out: str, e: BaseException) -> _OutUnwritable | None:
  """A failed write into --out as one line (naming the file where known), or None if `e` is another error."""
  if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
    where = e.filename if isinstance(e.filename, str) else out
    # os.strerror: h5py's own strerror runs over several lines
    return _OutUnwritable(f'cannot write {_user_path(where)!r} ({os.strerror(e.errno)})')
  text = str(e)  # h5py and TensorFlow wrap the OSError in their own
  for cause in ('No space left on device', 'Read-only file system', 'Disk quota exceeded'):
    if cause.lower() in text.lower():
      return _OutUnwritable(f'cannot write into --out {out!r} ({cause})')
  return None


def _user_path(path: str) -> str:
  """The file a user knows: temporary names (.tmpPID-NAME) of atomic writes become NAME."""
  directory, name = os.path.split(path)
  return os.path.join(directory, re.sub(r'^(\.tmp\d+-)+', '', name))


def _train_locked(args, config: dict, out: str, strategy) -> int:
  started = time.time()
  state = _run_state(out, config, args)
  if state == 'finished':
    metrics = read_json_dict(os.path.join(out, 'metrics.json'))
    print(
      f'{out} holds a finished run ({metrics.get("epochs", "?")} epochs, test '
      f'{metrics.get("test_bits_per_dim", float("nan")):.4f} bits/dim); nothing to do. '
      '--continue trains it on up to --epochs, --fresh trains a new model'
    )
    return 0
  wout = distribute.write_dir(out, strategy)  # `out` on the chief, a temporary directory elsewhere
  keras.utils.set_random_seed(config['seed'])
  # The model is built and compiled in the chosen precision; the process' policy is restored after.
  with flag_errors(), strategy.scope(), global_policy(config.get('precision', 'float32')):
    mine = distribute.worker_shard(strategy)  # (W, i): TFRecord shards are split among the workers
    report = glow_data.ImageReport()
    split = dict(data_dir=args.data_dir, worker_shard=mine, report=report)
    train_ds, info = _load_split(config, 'train', shuffle=True, **split)
    test_ds, test_info = _load_split(config, 'test', shuffle=False, **split)
    if config['background_noise']:  # a background model (tfp_glow.ood.likelihood_ratio) sees perturbed data
      train_ds = ood.perturbed_dataset(train_ds, config['background_noise'], info.n_bins, seed=config['seed'])
    if args.strategy != 'default':
      train_ds = distribute.shard(train_ds, info.sharded_by_file)
      test_ds = distribute.shard(test_ds, test_info.sharded_by_file)
      if info.sharded_by_file:
        workers, index = mine
        print(f'worker {index}: reads TFRecord shards {index}, {index} + {workers}, ... of {info.num_shards}')
    if info.class_names:
      print('classes: ' + ', '.join(f'{i}={name}' for i, name in enumerate(info.class_names)))
    model = GlowModel(
      info.image_shape,
      levels=config['levels'],
      steps=config['steps'],
      width=config['width'],
      coupling=config['coupling'],
      conditioner=config['conditioner'],
      permutation=config['permutation'],
      num_classes=info.num_classes if config['conditional'] else None,
      n_bins=info.n_bins,
      max_consecutive_skips=config['max_consecutive_skips'],
      memory_saving=False if config['memory_saving'] == 'off' else config['memory_saving'],
      seed=config['seed'],
      dequantization=config['dequantization'],
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
    _check_space(out, model)
    n, columns, labels = grid_layout(16, model.num_classes)
    sample_grid = SampleGrid(
      os.path.join(wout, 'samples'),
      every_n_epochs=config['sample_every'],
      n=n,
      labels=labels,
      seed=config['seed'],
      columns=columns,
      zoom=display_zoom(info.image_shape),
      log_dir=os.path.join(wout, 'logs', 'samples') if args.tensorboard else None,
    )
    initial_epoch = _start_state(model, out, state)
    if args.strategy != 'default':  # the same init images on every worker: unshuffled, seeded
      init_ds, _ = _load_split(config, 'train', shuffle=False, data_dir=args.data_dir, report=report)
      init_batch = next(iter(init_ds.unbatch().batch(256).take(1)))
      images, labels = init_batch if config['conditional'] else (init_batch, None)
      distribute.initialize_actnorm(model, images, strategy, labels)
    distribute.rank1_step_outputs(model, strategy)
  try:
    return _fit_and_finish(
      args,
      config,
      out,
      wout,
      strategy,
      model,
      info,
      state,
      initial_epoch,
      started,
      train_ds,
      test_ds,
      sample_grid,
      test_info=test_info,
      worker_shard=mine,
      report=report,
    )
  except (OSError, tf.errors.OpError, RuntimeError) as e:
    unwritable = _write_error(out, e)
    if unwritable is None:
      raise
    raise unwritable from e


def _start_state(model: GlowModel, out: str, state: str) -> int:
  """The epoch training starts from: 0, the backup's (BackupAndRestore restores it in `fit`), or for
  --continue the finished run's, with its last checkpoint's weights and optimizer state."""
  if state in ('fresh', 'new'):
    if state == 'fresh':  # the old run's bookkeeping goes now; its model files are replaced at the end
      for name in ('backup', 'metrics.json'):
        path = os.path.join(out, name)
        if tf.io.gfile.exists(path):
          (tf.io.gfile.rmtree if tf.io.gfile.isdir(path) else tf.io.gfile.remove)(path)
    return 0
  if state == 'continue':
    metrics = read_json_dict(os.path.join(out, 'metrics.json'))
    checkpoint = os.path.join(out, 'checkpoints', 'latest.keras')
    if not tf.io.gfile.exists(checkpoint):
      raise UsageError(f'--continue: {checkpoint!r} is missing; use --fresh to train a new model')
    done = int(metrics.get('epochs', 0))
    model.load_weights(checkpoint)
    tf.io.gfile.remove(os.path.join(out, 'metrics.json'))  # from now on an interrupted run (its backup)
    return done
  return 0  # resume: from the backup


class _BackupKeptUntilFinished(distribute.MultiWorkerBackupAndRestore):
  """The backup outlives `fit`: removed by `finished()` once model.keras and metrics.json are written,
  so a kill between the last epoch and the final files resumes into the finish (not into epoch 1)."""

  def on_train_end(self, logs=None):
    pass

  def finished(self) -> None:
    super().on_train_end()


class _RawWeights(keras.callbacks.Callback):
  """The raw (not averaged) weights after the last epoch (or the restored backup), before `fit`
  overwrites them with the EMA (`optimizer.finalize_variable_values`)."""

  def __init__(self):
    super().__init__()
    self.values = None

  def _keep(self):
    self.values = [v.numpy() for v in self.model.trainable_weights]

  def on_train_begin(self, logs=None):
    self._keep()

  def on_epoch_end(self, epoch, logs=None):
    self._keep()


def _fit_and_finish(
  args,
  config,
  out,
  wout,
  strategy,
  model,
  info,
  state,
  initial_epoch,
  started,
  train_ds,
  test_ds,
  sample_grid,
  test_info,
  worker_shard,
  report,
) -> int:
  resuming = state in ('resume', 'continue')
  tf.io.gfile.makedirs(wout)
  atomic.remove_stale(wout)  # temporary files of a killed run
  atomic.write_json(os.path.join(wout, 'config.json'), config)
  # First: restores before the rest; every worker restores from the chief's backup. Keeps the previous
  # backup too, in case the latest is unreadable.
  backup = _BackupKeptUntilFinished(os.path.join(out, 'backup'), strategy, double_checkpoint=True)
  raw = _RawWeights()
  callbacks = [
    backup,
    keras.callbacks.ModelCheckpoint(os.path.join(wout, 'checkpoints', 'latest.keras')),
    keras.callbacks.CSVLogger(os.path.join(wout, 'history.csv'), append=resuming),
    sample_grid,
    keras.callbacks.TerminateOnNaN(),
    *([keras.callbacks.TensorBoard(os.path.join(wout, 'logs'))] if args.tensorboard else []),
    *([raw] if config['ema'] else []),  # the weights before fit writes the EMA over them
    EpochPausePoints(),  # last: after the checkpoint and backup of each epoch
  ]
  fit_started = time.time()
  try:
    history = model.fit(
      train_ds,
      validation_data=test_ds,
      epochs=config['epochs'],
      initial_epoch=initial_epoch,
      callbacks=callbacks,
      verbose=1 if sys.stdout.isatty() else 2,
    )
  except BackupUnreadableError as e:
    raise UsageError(str(e)) from e
  except guard.NonFiniteWeightsError:  # a checkpoint or backup refused to save NaN weights
    _diverged(out, 'the weights became NaN or Inf')
  except guard.TrainingDivergedError as e:
    _diverged(out, f'{e.skipped_in_a_row} steps in a row were skipped ({e.causes}; --max-consecutive-skips)')
  train_seconds = time.time() - fit_started
  pause_point('after_fit')
  losses = history.history.get('loss', [])
  if not np.all(np.isfinite(losses)):
    _diverged(out, f'the loss became NaN or Inf in epoch {initial_epoch + len(losses)}')
  # Never save or report a diverged model as if it were trained: check before writing anything.
  train_eval_ds, _ = _load_split(
    config, 'train', shuffle=False, data_dir=args.data_dir, worker_shard=worker_shard, report=report
  )
  if args.strategy != 'default':
    train_eval_ds = distribute.shard(train_eval_ds, info.sharded_by_file)
  scores = _choose_weights(model, raw.values if config['ema'] else None, train_eval_ds, test_ds)
  train_bpd, test_bpd = scores['train_bits_per_dim'], scores['test_bits_per_dim']
  if not (math.isfinite(test_bpd) and math.isfinite(train_bpd)) or not guard.finite_weights(model):
    _diverged(out, f'the final model is not finite (test {test_bpd} bits/dim)')
  uniform = math.log2(info.n_bins)
  if test_bpd > uniform:
    print(
      f"warning: the final test bits/dim, {test_bpd:.4g}, is worse than the uniform model's {uniform:.4g}; "
      'the model is saved all the same. A short run may be: more --epochs, fewer --warmup-epochs, or a lower '
      '--lr may help',
      file=sys.stderr,
    )
  _save_model(model, os.path.join(wout, 'model.keras'))
  pause_point('after_model')
  if info.class_names:  # label id i is line i
    atomic.write_bytes(
      os.path.join(wout, 'class_names.txt'), ''.join(f'{c}\n' for c in info.class_names).encode()
    )
  n, columns, labels = grid_layout(64, model.num_classes)
  save_grid(
    os.path.join(wout, 'samples.png'),
    model.sample(n, temperature=SAMPLE_TEMPERATURE, labels=labels, seed=tf.constant([config['seed'], 1])),
    columns,
  )
  metrics = dict(
    train_bits_per_dim=train_bpd,
    test_bits_per_dim=test_bpd,
    weights=scores['weights'],
    scores=scores['scores'],
    uniform_bits_per_dim=uniform,
    epochs=config['epochs'],
    epochs_this_run=len(history.epoch),
    train_seconds=round(train_seconds, 1),
    wall_seconds=round(time.time() - started, 1),
    image_shape=list(info.image_shape),
    n_bins=info.n_bins,
    num_classes=model.num_classes,
    config=config,
    num_parameters=int(sum(np.prod(v.shape) for v in model.trainable_variables)),
    strategy=args.strategy,
    replicas=strategy.num_replicas_in_sync,
    weights_sha256=distribute.weights_digest(model),
    class_names=list(info.class_names) if info.class_names else None,
    skipped_files=report.skipped.count,
    converted_files=report.conversions.counts(),  # {kind: files}: grayscale to RGB, resized, ...
  )
  if report.skipped.count:
    print(f'warning: {report.skipped.summary()}')
  if report.conversions.counts():
    print(f'note: {report.conversions.summary()}')
  if args.strategy != 'default':
    print(f'weights sha256 {metrics["weights_sha256"]} ({metrics["replicas"]} replicas)')
  wrote = (
    f'wrote {out}/model.keras, samples.png, metrics.json' if wout == out else 'the chief writes the files'
  )
  atomic.write_json(os.path.join(wout, 'metrics.json'), metrics)
  pause_point('after_metrics')
  backup.finished()  # only now: a kill before this resumes into the finish
  distribute.remove_write_dir(out, strategy)
  print(
    f'test {metrics["test_bits_per_dim"]:.4f} bits/dim, train {metrics["train_bits_per_dim"]:.4f} '
    f'bits/dim ({metrics["weights"]} weights), {metrics["wall_seconds"]:.0f} s; {wrote}'
  )
  return 0


def _choose_weights(model: GlowModel, raw_values, train_ds, test_ds) -> dict:
  """Scores the weights `fit` left (the EMA if `raw_values` is given, else the raw ones) and, with
  `raw_values`, the raw weights too; keeps in `model` the better on the training split (the test split
  only reports) and returns {'weights': 'ema' | 'raw', 'scores': {...}, 'train_/test_bits_per_dim'}."""
  candidates = {'ema' if raw_values is not None else 'raw': [v.numpy() for v in model.trainable_weights]}
  if raw_values is not None:
    candidates['raw'] = raw_values
  scores = {}
  for name, values in candidates.items():
    for v, value in zip(model.trainable_weights, values):
      v.assign(value)
    scores[name] = dict(
      train_bits_per_dim=bits_per_dim(model, train_ds), test_bits_per_dim=bits_per_dim(model, test_ds)
    )
  finite = [k for k in scores if all(math.isfinite(x) for x in scores[k].values())]
  best = min(finite, key=lambda k: scores[k]['train_bits_per_dim']) if finite else next(iter(scores))
  for v, value in zip(model.trainable_weights, candidates[best]):
    v.assign(value)
  return dict(weights=best, scores=scores, **scores[best])


def _save_model(model: GlowModel, path: str) -> None:
  """model.keras, atomically; the `saving_model` pause point lies between the write and the rename."""
  with atomic.replacing(path) as tmp:
    keras.Model.save(model, tmp)  # GlowModel.save's own checks ran already (finite weights)
    pause_point('saving_model')


def _diverged(out: str, reason: str):
  """Removes the backup (so that a rerun with other flags starts afresh), keeps checkpoints/latest.keras
  (the last finite epoch: a NaN model is never written), then raises."""
  path = os.path.join(out, 'backup')
  if tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)
  checkpoint = os.path.join(out, 'checkpoints', 'latest.keras')
  kept = f'; the last finite epoch is kept in {checkpoint}' if tf.io.gfile.exists(checkpoint) else ''
  raise Diverged(
    f'training failed: {reason}; no model.keras was saved{kept}. Try a lower --lr, --clipnorm 1.0, '
    'more --warmup-epochs.'
  )
