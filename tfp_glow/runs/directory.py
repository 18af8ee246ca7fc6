"""A run's output folder (`--out`): its checks, what it holds, and what happens to its files.

  out/.lock                     the run lock (tfp_glow.runs.lock), while a run is in it
  out/config.json               the run's settings (written when training starts)
  out/backup/                   the state of an unfinished run (weights, optimizer, epoch and batch)
  out/checkpoints/latest.keras  the model after the last finished epoch
  out/replacing.json            a --continue or --fresh run over a finished one is under way
  out/model.keras, metrics.json the finished run (metrics.json is written last)

State (`RunDirectory.state`):
  new       nothing there: train from scratch;
  resume    a backup of an interrupted run: go on from it (mid-epoch, where it stopped);
  finished  metrics.json: nothing to do, unless --continue or --fresh;
  continue  --continue: train the finished run on, from its checkpoint, up to more epochs;
  fresh     --fresh: train a new model.
A --continue or --fresh run over a finished one leaves the finished model.keras and metrics.json in place
until its own are written; `replacing.json` (holding a digest of the old metrics.json) says that it is under
way, so a rerun after a kill resumes it instead of mistaking its backup for a finished run's leftover.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import tensorflow as tf

from tfp_glow import atomic
from tfp_glow.runs.config import upgrade_saved
from tfp_glow.runs.errors import Diverged, RunError
from tfp_glow.runs.lock import describe_os_error, is_remote

# Other config changes would invalidate a backup.
MAY_CHANGE_ON_RESUME = ('epochs', 'sample_every', 'max_consecutive_skips', 'cache', 'bad_files')
# Free space --out needs, in bytes per parameter: model.keras, checkpoints/latest.keras and two backups,
# each with weights and optimizer moments (EMA too), plus slack.
BYTES_PER_PARAMETER = 4 * 4 * 4
MIN_FREE_BYTES = 16 << 20


def read_json_dict(path: str) -> dict:
  """A JSON object from `path`, or {} if there is none."""
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    obj = json.load(f)
  return obj if isinstance(obj, dict) else {}


def _digest(path: str) -> str | None:
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _remove(path: str) -> None:
  if tf.io.gfile.exists(path):
    (tf.io.gfile.rmtree if tf.io.gfile.isdir(path) else tf.io.gfile.remove)(path)


class RunDirectory:
  """The output folder `out` of one run."""

  def __init__(self, out: str):
    self.out = out
    self.created = False  # made by `check`: removed again by `cleanup` if nothing was written into it

  def path(self, *names: str) -> str:
    return os.path.join(self.out, *names)

  @property
  def backup_dir(self) -> str:
    return self.path('backup')

  @property
  def checkpoint(self) -> str:
    return self.path('checkpoints', 'latest.keras')

  def check(self) -> None:
    """--out must be a directory (or a path where one can be made) that we can write: one line otherwise."""
    out = self.out
    if tf.io.gfile.exists(out) and not tf.io.gfile.isdir(out):
      raise RunError(f'--out {out!r} is a file; give a directory (new, or a run to resume)')
    if is_remote(out):
      return  # remote file systems: their errors come at write time
    existed = os.path.isdir(out)
    try:
      os.makedirs(out, exist_ok=True)
    except OSError as e:
      raise RunError(f'--out {out!r} cannot be created ({describe_os_error(e)})') from e
    self.created = not existed

  def cleanup(self) -> None:
    """Removes `out` if `check` made it and the run failed before writing anything."""
    if self.created and os.path.isdir(self.out) and not os.listdir(self.out):
      os.rmdir(self.out)

  def check_space(self, num_parameters: int) -> None:
    if is_remote(self.out):
      return
    need = MIN_FREE_BYTES + BYTES_PER_PARAMETER * num_parameters
    free = shutil.disk_usage(self.out).free
    if free < need:
      raise RunError(
        f'--out {self.out!r} has {free / 2**20:.1f} MB free; this run needs about {need / 2**20:.0f} MB '
        '(No space left on device)'
      )

  def metrics(self) -> dict:
    return read_json_dict(self.path('metrics.json'))

  def _has_backup(self) -> bool:
    return any(
      tf.io.gfile.exists(os.path.join(self.backup_dir, name))
      for name in ('training_metadata.json', 'latest.weights.h5')
    )

  def _replacing(self) -> dict | None:
    """The --continue / --fresh run under way over the finished one, or None. One that wrote its own
    metrics.json already (killed before cleaning up) is done: its leftovers go now."""
    marker = read_json_dict(self.path('replacing.json'))
    if not marker:
      return None
    if marker.get('previous') == _digest(self.path('metrics.json')):
      return marker
    _remove(self.backup_dir)
    _remove(self.path('replacing.json'))
    return None

  def state(self, config: dict, continue_run: bool = False, fresh: bool = False) -> str:
    """'new', 'resume', 'finished', 'continue' or 'fresh' (module docstring); prints what it does."""
    out = self.out
    replacing = self._replacing()
    finished = tf.io.gfile.exists(self.path('metrics.json'))
    backup = self._has_backup()
    if fresh:
      if finished or backup:
        print(f'note: --fresh: training a new model in {out}; the old files are replaced at the end')
      return 'fresh'
    if replacing and backup and (replacing.get('mode') == 'fresh' or continue_run):
      return self._resume(config, f'resuming the interrupted --{replacing.get("mode")} run in {out}')
    if replacing and not backup and replacing.get('mode') == 'fresh':
      print(f'note: --fresh: training a new model in {out}; the old files are replaced at the end')
      return 'fresh'
    if replacing and backup:  # an interrupted --continue, rerun without --continue: both stay
      print(
        f'note: {out} holds an interrupted --continue (to {replacing.get("epochs")} epochs) in backup/; '
        'add --continue to resume it'
      )
    elif finished and backup and not continue_run:  # killed between metrics.json and the backup's removal
      tf.io.gfile.rmtree(self.backup_dir)
      print(f'note: {out}: the run had finished; removed its leftover backup/')
    if finished:
      if not continue_run:
        return 'finished'
      done = self.metrics().get('epochs', 0)
      if config['epochs'] <= done:
        raise RunError(f'--continue: the run in {out} has {done} epochs already; give --epochs above {done}')
      print(
        f'note: --continue: training the finished run in {out} from epoch {done + 1} to {config["epochs"]}'
      )
      return 'continue'
    if not backup:
      return 'new'
    return self._resume(config, f'resuming the interrupted run in {out}')

  def _resume(self, config: dict, note: str) -> str:
    saved = upgrade_saved(read_json_dict(self.path('config.json')))  # also one written before the spec
    changed = [k for k in saved if k not in MAY_CHANGE_ON_RESUME and saved[k] != config.get(k)]
    if changed:
      raise RunError(
        f'{self.out} holds an interrupted run with different {", ".join(changed)} '
        f'({", ".join(f"{k}={saved[k]!r}" for k in changed)}); use those flags to resume it, '
        f'--fresh to replace it, or another --out'
      )
    print(f'note: {note}')
    return 'resume'

  def begin(self, state: str, config: dict) -> int:
    """Prepares `state` (from `state`); returns the epoch training starts from: 0, the finished run's for
    'continue' (the model loads `checkpoint`), or 0 for 'resume' (the backup restores its own epoch)."""
    if state == 'continue' and not tf.io.gfile.exists(self.checkpoint):
      raise RunError(f'--continue: {self.checkpoint!r} is missing; use --fresh to train a new model')
    if state in ('fresh', 'continue'):
      _remove(self.backup_dir)  # an older interrupted run's: not this one's
      _remove(self.path('replacing.json'))
      previous = _digest(self.path('metrics.json'))
      if previous:  # the finished run stays until this one writes its own files
        marker = dict(mode=state, epochs=config['epochs'], previous=previous)
        atomic.write_json(self.path('replacing.json'), marker)
    return int(self.metrics().get('epochs', 0)) if state == 'continue' else 0

  def finished(self) -> None:
    """After metrics.json: the replaced run's marker goes (the backup goes next, `RunBackup.finished`)."""
    _remove(self.path('replacing.json'))

  def diverged(self, reason: str) -> Diverged:
    """Removes the backup (so that a rerun with other flags starts afresh), keeps checkpoints/latest.keras
    (the last finite epoch: a NaN model is never written); returns the error to raise."""
    _remove(self.backup_dir)
    kept = (
      f'; the last finite epoch is kept in {self.checkpoint}' if tf.io.gfile.exists(self.checkpoint) else ''
    )
    return Diverged(
      f'training failed: {reason}; no model.keras was saved{kept}. Try a lower --lr, --clipnorm 1.0, '
      'more --warmup-epochs.'
    )
