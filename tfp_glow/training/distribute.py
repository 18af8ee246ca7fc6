"""Training on many devices and hosts with `tf.distribute`: strategies, chief-only writes, backups.

  strategy = make_strategy('multi-worker')          # reads TF_CONFIG; create it before any other TF op
  with strategy.scope():
    model = GlowModel(...); model.compile(...)
  initialize_actnorm(model, init_images, strategy)   # identical on every replica of every worker
  model.fit(shard(train_ds), callbacks=[MultiWorkerBackupAndRestore(backup_dir, strategy), ...])

Strategies (`STRATEGIES`):
  default       one device (TensorFlow's default strategy).
  mirrored      every GPU (or the given devices) of this host; synchronous data parallelism.
  multi-worker  MultiWorkerMirroredStrategy: every device of every host listed in TF_CONFIG, one process
                per host, each started with its own TF_CONFIG ({"cluster": {"worker": [...]},
                "task": {"type": "worker", "index": i}}); worker 0 is the chief.
  tpu           TPUStrategy on the TPU named by --tpu (or the local one); untested here.

Batches are global: a dataset batched at B gives each of the R replicas B / R images per step (Keras
splits it); with several workers, each worker reads its own TFRecord shards (auto-shard policy FILE) when
there are at least as many shards as workers, else every W-th batch (DATA), so every worker must build the
same dataset (same seed). Only the chief writes the run's files; the others write
to a temporary directory that they delete (the Keras multi-worker convention), so the collective ops
that saving may run still happen on every worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import TYPE_CHECKING, Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_glow.names import STRATEGIES
from tfp_glow.training.callbacks import AtomicBackupAndRestore

if TYPE_CHECKING:
  from tfp_glow.training.model import GlowModel


def make_strategy(
  name: str = 'default', tpu: str | None = None, devices: Sequence[str] | None = None
) -> tf.distribute.Strategy:
  """The tf.distribute strategy called `name` (see the module docstring).

  multi-worker reads the cluster from the TF_CONFIG environment variable and must be created before
  TensorFlow runs any op. tpu: the TPU's name or grpc:// address (None: the local TPU VM's).
  """
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    return tf.distribute.MirroredStrategy(devices)
  if name == 'multi-worker':
    if 'TF_CONFIG' not in os.environ:
      raise ValueError(
        'strategy multi-worker needs the TF_CONFIG environment variable on every host, e.g. '
        '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
      )
    try:
      json.loads(os.environ['TF_CONFIG'])
    except json.JSONDecodeError as e:
      raise ValueError(f'TF_CONFIG is not valid JSON ({e})') from e
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == 'tpu':
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or '')
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f'unknown strategy {name!r}; accepted: {", ".join(STRATEGIES)}')


def task(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
  """(task type, task index) of this process in a multi-worker cluster; (None, 0) otherwise."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not getattr(resolver, 'task_type', None):
    return None, 0
  return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True for the process that writes the run's files: worker 0 (or the 'chief' task), or any
  single-host strategy."""
  task_type, task_id = task(strategy)
  if task_type in (None, 'chief'):
    return True
  has_chief = 'chief' in strategy.cluster_resolver.cluster_spec().as_dict()
  return task_type == 'worker' and task_id == 0 and not has_chief


def write_dir(out: str, strategy: tf.distribute.Strategy) -> str:
  """Where this process writes: `out` on the chief, `out/.worker_TYPE_INDEX` (temporary) elsewhere."""
  if is_chief(strategy):
    return out
  task_type, task_id = task(strategy)
  return os.path.join(out, f'.worker_{task_type}_{task_id}')


def remove_write_dir(out: str, strategy: tf.distribute.Strategy) -> None:
  """Deletes a non-chief's temporary directory (nothing on the chief)."""
  path = write_dir(out, strategy)
  if path != out and tf.io.gfile.exists(path):
    tf.io.gfile.rmtree(path)


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """Hosts (worker and chief tasks) in the strategy's cluster; 1 for single-host strategies."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not getattr(resolver, 'task_type', None):
    return 1
  jobs = resolver.cluster_spec().as_dict()
  return sum(len(jobs.get(job, ())) for job in ('chief', 'worker')) or 1


def worker_shard(strategy: tf.distribute.Strategy) -> tuple[int, int] | None:
  """(W, i): this process is worker i of W (the chief counted first), for `load_dataset(worker_shard=)`;
  None on one host."""
  workers = num_workers(strategy)
  if workers == 1:
    return None
  task_type, task_id = task(strategy)
  has_chief = 'chief' in strategy.cluster_resolver.cluster_spec().as_dict()
  return workers, (0 if task_type == 'chief' else task_id + int(has_chief))


def shard(dataset: tf.data.Dataset, by_file: bool = False) -> tf.data.Dataset:
  """Sets how tf.distribute shards `dataset` over the workers.

  by_file=False: auto-shard policy DATA, every worker runs the whole pipeline and keeps every W-th batch
  (in-memory and streamed-folder data have no file list to split). by_file=True (`DatasetInfo.
  sharded_by_file`, a TFRecord set read with `worker_shard`): each worker already reads only its own
  shards (policy FILE, applied by the source), so tf.distribute's sharding is turned off.

  With shards split by file, workers whose shards differ in size see a different last batch; tfp-glow
  prepare deals examples round robin, so give it a number of shards that divides evenly among the workers.
  """
  options = tf.data.Options()
  policy = tf.data.experimental.AutoShardPolicy
  options.experimental_distribute.auto_shard_policy = policy.OFF if by_file else policy.DATA
  return dataset.with_options(options)


def initialize_actnorm(
  model: GlowModel, images: tf.Tensor, strategy: tf.distribute.Strategy, labels: tf.Tensor | None = None
) -> None:
  """Actnorm's data-dependent init, identical on every replica of every worker.

  Every worker runs the init on `images` (give every worker the same ones: the first images of an
  unshuffled, seeded stream), then every variable is broadcast from replica 0 (on the chief), as the
  reference broadcasts from Horovod's rank 0: a sum over replicas of (value on replica 0, zeros on
  the others) is exact, so the replicas end bit-identical even if hosts computed slightly different
  statistics. A no-op for an initialized model (e.g. one restored from a backup).
  """
  if model.is_initialized:
    return
  model.initialize(images, labels)
  if strategy.num_replicas_in_sync > 1:
    broadcast_from_first_replica(model.weights, strategy)


def broadcast_from_first_replica(variables: Sequence[tf.Variable], strategy: tf.distribute.Strategy) -> None:
  """Sets every float variable, on every replica, to its value on replica 0."""
  floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]

  def replica_fn():
    ctx = tf.distribute.get_replica_context()
    first = tf.equal(ctx.replica_id_in_sync_group, 0)
    values = [tf.where(first, tf.convert_to_tensor(v), tf.zeros_like(v)) for v in floats]
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)

  summed = strategy.run(tf.function(replica_fn))
  for v, value in zip(floats, summed):
    v.assign(strategy.experimental_local_results(value)[0])


def rank1_step_outputs(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
  """Works around Keras 3 under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388): Keras reduces
  the logs of `train_step`/`test_step` with `strategy.reduce(MEAN, value, axis=0)`, which fails on
  scalars. The steps' metrics are already reduced over all replicas (Keras metrics are sync-on-read),
  so reshaping each to [1] changes nothing but lets that reduction run. A no-op for other strategies.
  """
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return

  def rank1(step):
    return lambda data: {k: tf.reshape(v, [1]) for k, v in step(data).items()}

  model.train_step = rank1(model.train_step)  # instance attributes: nothing is saved with the model
  model.test_step = rank1(model.test_step)


def weights_digest(model: keras.Model) -> str:
  """SHA-256 of every weight's bytes, in order: equal digests mean bit-identical models."""
  h = hashlib.sha256()
  for v in model.weights:
    h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
  return h.hexdigest()


# The file paths of keras.callbacks.BackupAndRestore (Keras 3), redirected on non-chief workers.
_BACKUP_PATHS = (
  '_weights_path',
  '_training_metadata_path',
  '_prev_weights_path',
  '_prev_training_metadata_path',
)


class MultiWorkerBackupAndRestore(AtomicBackupAndRestore):
  """`keras.callbacks.BackupAndRestore` (with atomic writes) for several workers sharing a file system.

  Every worker restores from the chief's `backup_dir` (all replicas hold the same weights, so the
  chief's backup is everyone's); the chief writes there, the other workers write to a temporary
  directory and delete it at once; only the chief deletes the backup when training ends. On one host
  it is the plain Keras callback. A worker killed mid-run is resumed by restarting every worker with
  the same command: all restart from the last epoch the chief backed up.
  """

  def __init__(self, backup_dir: str, strategy: tf.distribute.Strategy, **kwargs: Any):
    super().__init__(backup_dir, **kwargs)
    self._chief = is_chief(strategy)
    self._temporary = None if self._chief else write_dir(backup_dir, strategy)

  def _save_model(self):
    if self._chief:
      return super()._save_model()
    # Every path the parent writes (incl. double_checkpoint's previous backup) moves to `temp`.
    names = [n for n in _BACKUP_PATHS if hasattr(self, n)]
    chief_paths = {n: getattr(self, n) for n in names}
    temp = self._temporary
    for n in names:
      setattr(self, n, os.path.join(temp, os.path.basename(chief_paths[n])))
    try:
      super()._save_model()
    finally:
      for n, path in chief_paths.items():
        setattr(self, n, path)
      shutil.rmtree(temp, ignore_errors=True)

  def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
    if self._chief:
      super().on_train_end(logs)
