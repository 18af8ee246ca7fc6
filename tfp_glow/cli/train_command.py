"""`tfp-glow train`: configuration (flags, --config, per-data-set defaults), resuming a killed run, the
training itself, and refusing to save a diverged model."""

from __future__ import annotations

import math
import os
import re
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import atomic, configs, ood
from tfp_glow import data as glow_data
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
  fallback = dict(coupling='affine', permutation='conv_lu', conditional=False)
  for key, default in {**DEFAULTS.get(dataset, LARGE_DEFAULTS), **fallback, **preset}.items():
    config[key] = default if getattr(args, key) is None else getattr(args, key)
  if not 0.0 <= config['background_noise'] <= 1.0:
    raise UsageError(f'--background-noise must be a fraction in [0, 1], got {config["background_noise"]}')
  config['sample_every'] = args.sample_every or max(1, config['epochs'] // 10)
  if args.config:
    config['config'] = args.config
  return config


def _load_split(config: dict, split: str, shuffle: bool, data_dir: str | None, worker_shard=None):
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
  )


def _check_resume(out: str, config: dict) -> bool:
  """True if `out` holds an interrupted run (a backup) of the same configuration."""
  if not tf.io.gfile.exists(os.path.join(out, 'backup', 'latest.weights.h5')):
    if tf.io.gfile.exists(os.path.join(out, 'metrics.json')):
      print(f'note: {out} holds a finished run; training a new model from scratch, replacing it.')
    return False
  saved = read_json_dict(os.path.join(out, 'config.json'))
  changed = [k for k in saved if k not in _MAY_CHANGE_ON_RESUME and saved[k] != config.get(k)]
  if changed:
    raise UsageError(
      f'{out} holds an interrupted run with different {", ".join(changed)} '
      f'({", ".join(f"{k}={saved[k]!r}" for k in changed)}); use those flags to resume it, '
      f'or another --out (or delete {os.path.join(out, "backup")}) to start afresh'
    )
  print(f'note: resuming the interrupted run in {out}')
  return True


def train(args) -> int:
  """Trains, then writes model.keras, samples.png and metrics.json into --out."""
  started = time.time()
  config = _train_config(args)
  out = args.out or os.path.join('runs', re.sub(r'[^A-Za-z0-9_.-]+', '_', config['dataset']).strip('_'))
  if tf.io.gfile.exists(out) and not tf.io.gfile.isdir(out):
    raise UsageError(f'--out {out!r} is a file; give a directory (new, or a run to resume)')
  with flag_errors():
    strategy = distribute.make_strategy(args.strategy, tpu=args.tpu)  # before any other TF op
  wout = distribute.write_dir(out, strategy)  # `out` on the chief, a temporary directory elsewhere
  keras.utils.set_random_seed(config['seed'])
  # The model is built and compiled in the chosen precision; the process' policy is restored after.
  with flag_errors(), strategy.scope(), global_policy(config.get('precision', 'float32')):
    mine = distribute.worker_shard(strategy)  # (W, i): TFRecord shards are split among the workers
    train_ds, info = _load_split(config, 'train', shuffle=True, data_dir=args.data_dir, worker_shard=mine)
    test_ds, test_info = _load_split(config, 'test', shuffle=False, data_dir=args.data_dir, worker_shard=mine)
    if config['background_noise']:  # a background model (tfp_glow.ood.likelihood_ratio) sees perturbed data
      train_ds = ood.perturbed_dataset(train_ds, config['background_noise'], info.n_bins)
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
    resuming = _check_resume(out, config)
    if args.strategy != 'default':  # the same init images on every worker: unshuffled, seeded
      init_ds, _ = _load_split(config, 'train', shuffle=False, data_dir=args.data_dir)
      init_batch = next(iter(init_ds.unbatch().batch(256).take(1)))
      images, labels = init_batch if config['conditional'] else (init_batch, None)
      distribute.initialize_actnorm(model, images, strategy, labels)
    distribute.rank1_step_outputs(model, strategy)
  tf.io.gfile.makedirs(wout)
  atomic.remove_stale(wout)  # temporary files of a killed run
  atomic.write_json(os.path.join(wout, 'config.json'), config)
  callbacks = [
    # First: restores before the rest; every worker restores from the chief's backup. Keeps the
    # previous backup too, in case the latest is unreadable.
    distribute.MultiWorkerBackupAndRestore(os.path.join(out, 'backup'), strategy, double_checkpoint=True),
    keras.callbacks.ModelCheckpoint(os.path.join(wout, 'checkpoints', 'latest.keras')),
    keras.callbacks.CSVLogger(os.path.join(wout, 'history.csv'), append=resuming),
    sample_grid,
    keras.callbacks.TerminateOnNaN(),
    *([keras.callbacks.TensorBoard(os.path.join(wout, 'logs'))] if args.tensorboard else []),
  ]
  fit_started = time.time()
  try:
    history = model.fit(
      train_ds,
      validation_data=test_ds,
      epochs=config['epochs'],
      callbacks=callbacks,
      verbose=1 if sys.stdout.isatty() else 2,
    )
  except BackupUnreadableError as e:
    raise UsageError(str(e)) from e
  except guard.NonFiniteWeightsError:  # a checkpoint or backup refused to save NaN weights
    _diverged(out, 'the weights became NaN or Inf')
  except guard.TrainingDivergedError as e:
    _diverged(
      out,
      f'{e.skipped_in_a_row} steps in a row were skipped (a NaN or Inf loss or gradients, or invalid '
      'batches; --max-consecutive-skips)',
    )
  train_seconds = time.time() - fit_started
  losses = history.history.get('loss', [])
  if not np.all(np.isfinite(losses)):
    _diverged(out, f'the loss became NaN or Inf in epoch {len(losses)}')
  # Never save or report a diverged model as if it were trained: check before writing anything.
  train_eval_ds, _ = _load_split(config, 'train', shuffle=False, data_dir=args.data_dir, worker_shard=mine)
  if args.strategy != 'default':
    train_eval_ds = distribute.shard(train_eval_ds, info.sharded_by_file)
  train_bpd, test_bpd = bits_per_dim(model, train_eval_ds), bits_per_dim(model, test_ds)
  uniform = math.log2(info.n_bins)
  if not (math.isfinite(test_bpd) and math.isfinite(train_bpd)) or not guard.finite_weights(model):
    _diverged(out, f'the final model is not finite (test {test_bpd} bits/dim)')
  if test_bpd > uniform:
    _diverged(
      out, f"the final test bits/dim, {test_bpd:.4g}, is worse than the uniform model's {uniform:.4g}"
    )
  model.save(os.path.join(wout, 'model.keras'))  # atomic: never a half-written model.keras
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
    skipped_files=sum(i.skipped.count for i in (info, test_info) if i.skipped is not None),
  )
  for i in (info, test_info):
    if i.skipped is not None and i.skipped.count:
      print(f'warning: {i.skipped.summary()}')
  if args.strategy != 'default':
    print(f'weights sha256 {metrics["weights_sha256"]} ({metrics["replicas"]} replicas)')
  wrote = (
    f'wrote {out}/model.keras, samples.png, metrics.json' if wout == out else 'the chief writes the files'
  )
  atomic.write_json(os.path.join(wout, 'metrics.json'), metrics)
  distribute.remove_write_dir(out, strategy)
  print(
    f'test {metrics["test_bits_per_dim"]:.4f} bits/dim, train {metrics["train_bits_per_dim"]:.4f} '
    f'bits/dim, {metrics["wall_seconds"]:.0f} s; {wrote}'
  )
  return 0


def _diverged(out: str, reason: str):
  """Removes what could pass for a trained model (the last checkpoint, the backup), then raises."""
  removed = []
  for path in (os.path.join(out, 'checkpoints', 'latest.keras'), os.path.join(out, 'backup')):
    if tf.io.gfile.exists(path):
      (tf.io.gfile.rmtree if tf.io.gfile.isdir(path) else tf.io.gfile.remove)(path)
      removed.append(os.path.relpath(path, out))
  raise Diverged(
    f'training failed: {reason}; no model was saved'
    + (f' (removed {", ".join(removed)})' if removed else '')
    + '. Try a lower --lr, --clipnorm 1.0, more --warmup-epochs (or, if it did not diverge, more --epochs).'
  )
