"""`tfp-glow`: train, sample, evaluate, interpolate and manipulate Glow models from the command line.

  tfp-glow train                          # offline 8x8 digits into runs/digits, minutes on 2 CPU cores
  tfp-glow sample runs/digits --n 64 --temperature 0.7 --out grid.png
  tfp-glow evaluate runs/digits/model.keras      # JSON: test bits/dim, reconstruction error
  tfp-glow interpolate runs/digits test:0 test:1 --steps 8 --out row.png
  tfp-glow manipulate runs/digits test:19 --from-class 1 --to-class 7 --alphas 0 0.5 1 --out 1to7.png
  tfp-glow train --config cifar10 --strategy multi-worker   # the paper's CIFAR-10 run, TF_CONFIG per host
Bad flags, missing data and unreadable models print one `error:` line and exit with code 2; a
diverged run or model (NaN/Inf, or worse than the uniform model) exits with code 1 and leaves no model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import atomic, configs, distribute, guard, manipulation
from tfp_glow import data as glow_data
from tfp_glow.callbacks import (
  BackupUnreadableError,
  SampleGrid,
  image_grid,
  read_image,
  save_png,
)
from tfp_glow.cli_flags import DEFAULTS, LARGE_DEFAULTS, SAMPLE_TEMPERATURE, build_parser
from tfp_glow.model import GlowModel
from tfp_glow.nets import global_policy
from tfp_glow.optim import default_optimizer

# Other config changes would invalidate a backup.
_MAY_CHANGE_ON_RESUME = ('epochs', 'sample_every', 'max_consecutive_skips')


class UsageError(Exception):
  """A problem with the user's flags or files: reported as one line, exit code 2."""


class Diverged(Exception):
  """Training diverged, or a model is not finite: reported as one line, exit code 1."""


@contextlib.contextmanager
def _flag_errors():
  """ValueErrors (and TF argument checks) raised while acting on the user's flags become UsageErrors."""
  try:
    yield
  except ValueError as e:
    raise UsageError(str(e)) from e
  except tf.errors.InvalidArgumentError as e:
    raise UsageError(e.message.strip().splitlines()[0]) from e


def _train_config(args) -> dict:
  """The flags; unset ones from --config (tfp_glow.configs), then from the data set's DEFAULTS."""
  preset = configs.get_config(args.config).train_flags() if args.config else {}
  dataset = args.dataset or preset.pop('dataset', None) or ('digits' if not args.config else None)
  preset.pop('dataset', None)
  if dataset is None:
    raise UsageError(
      f'--config {args.config} names no data set we can download: give --dataset '
      f'{glow_data.FOLDER_PREFIX}PATH (a folder of its images)'
    )
  if dataset not in DEFAULTS and not dataset.startswith(glow_data.FOLDER_PREFIX):
    raise UsageError(
      f'unknown data set {dataset!r}; accepted: {", ".join(glow_data.DATASETS)}, '
      f'or {glow_data.FOLDER_PREFIX}PATH (a folder of PNG/JPEG images)'
    )
  config = {
    'dataset': dataset,
    **{
      k: getattr(args, k) for k in ('clipnorm', 'seed', 'max_consecutive_skips', 'memory_saving', 'precision')
    },
  }
  fallback = dict(coupling='affine', permutation='conv_lu', conditional=False)
  for key, default in {**DEFAULTS.get(dataset, LARGE_DEFAULTS), **fallback, **preset}.items():
    config[key] = default if getattr(args, key) is None else getattr(args, key)
  config['sample_every'] = args.sample_every or max(1, config['epochs'] // 10)
  if args.config:
    config['config'] = args.config
  return config


def _load_split(config: dict, split: str, shuffle: bool, data_dir: str | None):
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
  )


def _check_resume(out: str, config: dict) -> bool:
  """True if `out` holds an interrupted run (a backup) of the same configuration."""
  if not tf.io.gfile.exists(os.path.join(out, 'backup', 'latest.weights.h5')):
    if tf.io.gfile.exists(os.path.join(out, 'metrics.json')):
      print(f'note: {out} holds a finished run; training a new model from scratch, replacing it.')
    return False
  saved = _read_json_dict(os.path.join(out, 'config.json'))
  changed = [k for k in saved if k not in _MAY_CHANGE_ON_RESUME and saved[k] != config.get(k)]
  if changed:
    raise UsageError(
      f'{out} holds an interrupted run with different {", ".join(changed)} '
      f'({", ".join(f"{k}={saved[k]!r}" for k in changed)}); use those flags to resume it, '
      f'or another --out (or delete {os.path.join(out, "backup")}) to start afresh'
    )
  print(f'note: resuming the interrupted run in {out}')
  return True


def _grid_layout(n: int, num_classes: int | None) -> tuple[int, int, np.ndarray | None]:
  """(n, columns, labels) for a sample grid; conditional models get one column per class."""
  if not num_classes:
    return n, math.ceil(math.sqrt(n)), None
  n = math.ceil(n / num_classes) * num_classes
  return n, num_classes, np.arange(n, dtype=np.int32) % num_classes


def _display_zoom(image_shape) -> int:
  return max(1, 32 // max(image_shape[:2]))  # small images (8x8 digits) shown at about 32x32


def _save_grid(path: str, images, columns: int, zoom: int | None = None) -> None:
  if tf.io.gfile.isdir(path):
    raise UsageError(
      f'--out {path!r} is a directory; give a file name (e.g. {os.path.join(path, "grid.png")})'
    )
  save_png(path, image_grid(np.asarray(images), columns, zoom=zoom or _display_zoom(images.shape[1:])))


def _bits_per_dim(model: GlowModel, dataset) -> float:
  return float(model.evaluate(dataset, verbose=0, return_dict=True)['bits_per_dim'])


def train(args) -> int:
  """Trains, then writes model.keras, samples.png and metrics.json into --out."""
  started = time.time()
  config = _train_config(args)
  out = args.out or os.path.join('runs', re.sub(r'[^A-Za-z0-9_.-]+', '_', config['dataset']).strip('_'))
  if tf.io.gfile.exists(out) and not tf.io.gfile.isdir(out):
    raise UsageError(f'--out {out!r} is a file; give a directory (new, or a run to resume)')
  with _flag_errors():
    strategy = distribute.make_strategy(args.strategy, tpu=args.tpu)  # before any other TF op
  wout = distribute.write_dir(out, strategy)  # `out` on the chief, a temporary directory elsewhere
  keras.utils.set_random_seed(config['seed'])
  # The model is built and compiled in the chosen precision; the process' policy is restored after.
  with _flag_errors(), strategy.scope(), global_policy(config.get('precision', 'float32')):
    train_ds, info = _load_split(config, 'train', shuffle=True, data_dir=args.data_dir)
    test_ds, _ = _load_split(config, 'test', shuffle=False, data_dir=args.data_dir)
    if args.strategy != 'default':
      train_ds, test_ds = distribute.shard(train_ds), distribute.shard(test_ds)
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
    n, columns, labels = _grid_layout(16, model.num_classes)
    sample_grid = SampleGrid(
      os.path.join(wout, 'samples'),
      every_n_epochs=config['sample_every'],
      n=n,
      labels=labels,
      seed=config['seed'],
      columns=columns,
      zoom=_display_zoom(info.image_shape),
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
  train_eval_ds, _ = _load_split(config, 'train', shuffle=False, data_dir=args.data_dir)
  if args.strategy != 'default':
    train_eval_ds = distribute.shard(train_eval_ds)
  train_bpd, test_bpd = _bits_per_dim(model, train_eval_ds), _bits_per_dim(model, test_ds)
  uniform = math.log2(info.n_bins)
  if not (math.isfinite(test_bpd) and math.isfinite(train_bpd)) or not guard.finite_weights(model):
    _diverged(out, f'the final model is not finite (test {test_bpd} bits/dim)')
  if test_bpd > uniform:
    _diverged(
      out, f"the final test bits/dim, {test_bpd:.4g}, is worse than the uniform model's {uniform:.4g}"
    )
  model.save(os.path.join(wout, 'model.keras'))  # atomic: never a half-written model.keras
  n, columns, labels = _grid_layout(64, model.num_classes)
  _save_grid(
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
  )
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


def _load_model(path: str, require_finite: bool = True) -> GlowModel:
  """A trained GlowModel from a .keras file (or a `train --out` directory holding model.keras)."""
  if tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, 'model.keras')):
    path = os.path.join(path, 'model.keras')
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise UsageError(f'model file {path!r} does not exist')
  try:
    model = keras.models.load_model(path, compile=False)
  except Exception as e:  # pylint: disable=broad-except  (corrupt zip, wrong format, unknown class, ...)
    detail = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise UsageError(f'cannot load model file {path!r} ({type(e).__name__}: {detail})') from e
  if not isinstance(model, GlowModel):
    raise UsageError(f'model file {path!r} holds a {type(model).__name__}, not a tfp_glow GlowModel')
  if require_finite and not guard.finite_weights(model):
    raise Diverged(f'model file {path!r} holds NaN or Inf weights (a diverged model)')
  model.compile()
  return model


def _read_json_dict(path: str) -> dict:
  """A JSON object from `path`, or {} if there is none."""
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    obj = json.load(f)
  return obj if isinstance(obj, dict) else {}


def _load_matching_split(model: GlowModel, args, split: str = 'test', with_labels: bool | None = None):
  """The split of --dataset (default: the model's training data set), in the model's shape and bins;
  with labels if the model is class-conditional (or `with_labels`)."""
  model_dir = args.model if tf.io.gfile.isdir(args.model) else os.path.dirname(args.model)
  trained = _read_json_dict(os.path.join(model_dir, 'config.json'))  # the `train` config of its --out
  dataset = args.dataset or trained.get('dataset', 'digits')
  same = trained.get('dataset') == dataset  # then default to the training run's resizing and padding
  image_size = trained.get('image_size') if same and args.image_size is None else args.image_size
  pad_to_32 = args.pad_to_32 if args.pad_to_32 is not None else bool(same and trained.get('pad_to_32'))
  n_bits = max(1, min(8, round(math.log2(model.n_bins))))
  ds, info = glow_data.load_dataset(
    dataset,
    split,
    batch_size=args.batch_size,
    n_bits=n_bits,
    image_size=image_size,
    pad_to_32=pad_to_32,
    with_labels=bool(model.num_classes) if with_labels is None else with_labels,
    shuffle=False,
    data_dir=args.data_dir,
    seed=0,
  )
  if tuple(info.image_shape) != tuple(model.image_shape) or info.n_bins != model.n_bins:
    raise UsageError(
      f'data set {dataset!r} gives images {info.image_shape} with {info.n_bins} levels, but '
      f'the model expects {model.image_shape} with {model.n_bins}; pick the data set it was '
      'trained on (--dataset), or match its shape with --image-size / --pad-to-32'
    )
  return ds, info, dataset


def sample(args) -> int:
  model = _load_model(args.model)
  n, columns, labels = _grid_layout(args.n, None if args.label is not None else model.num_classes)
  labels = labels if args.label is None else np.full([n], args.label, np.int32)
  seed = None if args.seed is None else tf.constant([args.seed, 0], tf.int32)
  images = model.sample(n, temperature=args.temperature, labels=labels, seed=seed)
  _save_grid(args.out, images, args.columns or columns, args.zoom)
  print(f'wrote {args.out}: {n} samples at temperature {args.temperature:g}')
  return 0


def evaluate(args) -> int:
  """Prints strict JSON (a non-finite figure is null); exits 1 if the model is not finite."""
  model = _load_model(args.model, require_finite=False)
  ds, info, dataset = _load_matching_split(model, args)
  roundtrip_error = tf.function(lambda x, y: tf.reduce_max(tf.abs(model.decode(model.encode(x, y), y) - x)))
  errors = []
  for batch in ds:
    images, labels = batch if model.num_classes else (batch, None)
    errors.append(float(roundtrip_error(images, labels)))  # max |decode(encode(x)) - x|
  error = float(np.max(errors)) if errors else math.nan  # np.max keeps a NaN, max() would hide it
  bpd = _bits_per_dim(model, ds)
  finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
  result = dict(
    model=args.model,
    dataset=dataset,
    split='test',
    num_examples=info.num_examples,
    test_bits_per_dim=finite(bpd),
    reconstruction_max_abs_error=finite(error),
  )
  print(json.dumps(result, indent=2, allow_nan=False))
  if not (math.isfinite(bpd) and math.isfinite(error)) or not guard.finite_weights(model):
    raise Diverged(f'{args.model!r} is not a finite model (NaN or Inf weights or results)')
  return 0


def _read_image(spec: str, model: GlowModel, args) -> tuple[tf.Tensor, int | None]:
  """`test:I` (the I-th test image of --dataset, with its label) or an image file -> (bin centres, label)."""
  if re.fullmatch(r'test:\d+', spec):
    ds, info, _ = _load_matching_split(model, args)
    batch = next(iter(ds.unbatch().skip(int(spec[len('test:') :])).take(1)), None)
    if batch is None:
      raise UsageError(f'{spec!r}: the test split has {info.num_examples} images, counted from 0')
    x, label = batch if model.num_classes else (batch, None)
    bins = tf.floor((x + 0.5) * model.n_bins)  # undo the dequantization noise
    return (bins + 0.5) / model.n_bins - 0.5, (None if label is None else int(label))
  if not tf.io.gfile.exists(spec):
    raise UsageError(f'image {spec!r} does not exist (give an image file or test:INDEX)')
  pixels = tf.cast(read_image(spec, model.image_shape), tf.float32)
  bins = tf.floor(pixels * model.n_bins / 256.0)  # 0..255 -> n_bins levels
  return (bins + 0.5) / model.n_bins - 0.5, args.label


def interpolate(args) -> int:
  model = _load_model(args.model)
  (a, label_a), (b, label_b) = _read_image(args.image1, model, args), _read_image(args.image2, model, args)
  labels = None
  if model.num_classes:
    if label_a is None or label_b is None:
      raise UsageError('the model is class-conditional: pass --label K for image files')
    labels = tf.constant([label_a, label_b], tf.int32)
  row = glow_data.to_uint8(model.interpolate(a, b, steps=args.steps, labels=labels), model.n_bins)
  _save_grid(args.out, row, args.steps, args.zoom)
  print(f'wrote {args.out}: {args.steps} images from {args.image1} to {args.image2}')
  return 0


def manipulate(args) -> int:
  """Moves an image along a class direction: mean latent of --to-class minus that of --from-class."""
  model = _load_model(args.model)
  image, label = _read_image(args.image, model, args)
  if model.num_classes and label is None:
    raise UsageError('the model is class-conditional: pass --label K for image files')
  ds, info, dataset = _load_matching_split(model, args, split=args.split, with_labels=True)
  batches = list(ds)
  images = tf.concat([b[0] for b in batches], 0)
  labels = np.concatenate([b[1].numpy() for b in batches])
  for flag, value in (('--to-class', args.to_class), ('--from-class', args.from_class)):
    if value is not None and not 0 <= value < info.num_classes:
      raise UsageError(f'{flag} {value}: data set {dataset!r} has classes 0..{info.num_classes - 1}')
  if args.from_class == args.to_class:
    raise UsageError('--from-class and --to-class must differ')
  keep = (
    np.ones_like(labels, bool)
    if args.from_class is None
    else np.isin(labels, [args.from_class, args.to_class])
  )
  images = (
    tf.floor((tf.boolean_mask(images, keep) + 0.5) * model.n_bins) + 0.5
  ) / model.n_bins - 0.5  # bin centres
  direction = manipulation.attribute_direction(
    model, images, labels[keep] == args.to_class, labels=labels[keep] if model.num_classes else None
  )
  row = manipulation.manipulate(
    model, image, direction, args.alphas, label=label if model.num_classes else None
  )
  _save_grid(args.out, glow_data.to_uint8(row, model.n_bins), len(args.alphas), args.zoom)
  source = 'all other classes' if args.from_class is None else f'class {args.from_class}'
  print(
    f'wrote {args.out}: {args.image} moved toward class {args.to_class} (direction from {int(keep.sum())} '
    f'{args.split} images: class {args.to_class} minus {source}), alphas {args.alphas}'
  )
  return 0


def _build_parser() -> argparse.ArgumentParser:
  handlers = dict(
    train=train, sample=sample, evaluate=evaluate, interpolate=interpolate, manipulate=manipulate
  )
  return build_parser(handlers, description=__doc__.split('\n')[0])


def main(argv: list[str] | None = None) -> int:
  """Runs `tfp-glow`; returns the exit code (0: done, 2: bad flags, data or files)."""
  parser = _build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help, or argparse's own usage errors
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
  try:
    with contextlib.nullcontext() if args.command == 'train' else _flag_errors():  # train: its own
      return args.handler(args)
  except (UsageError, glow_data.DatasetUnavailableError) as e:
    print(f'tfp-glow {args.command}: error: {e}', file=sys.stderr)
    return 2
  except Diverged as e:
    print(f'tfp-glow {args.command}: error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    resume = '; rerun the same command to resume' if args.command == 'train' else ''
    print(f'tfp-glow {args.command}: interrupted{resume}', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
