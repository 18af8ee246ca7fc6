"""Training runs as a library: `train(config, out)` gives a Python user what `tfp-glow train` guarantees
(one run per folder, resume after a kill at any moment, mid-epoch backups, a finished run left alone, no
diverged model saved). One concept per module:

  run.py        `train` and the `Run` it drives (data, model, fit, finish)
  config.py     the run's settings (`run_config`: defaults as the CLI's)
  directory.py  the output folder: checks, state (new / resume / finished / continue / fresh), cleanup
  lock.py       one run per folder (fcntl.flock; what holds on NFS and gs://)
  backup.py     backups every epoch and every N steps, resumed mid-epoch
  finish.py     raw-vs-EMA weights, final evaluation, model.keras, metrics.json
  cluster.py    chief / write directory / shard of this process, decided once
  errors.py     RunError (exit 2 in the CLI), Diverged (exit 1), write errors as one line
  pause_points.py  named points where the kill tests stop a run
"""

from tfp_glow.runs.config import run_config
from tfp_glow.runs.errors import Diverged, RunError
from tfp_glow.runs.lock import RunLocked
from tfp_glow.runs.run import train

__all__ = ['Diverged', 'RunError', 'RunLocked', 'run_config', 'train']
