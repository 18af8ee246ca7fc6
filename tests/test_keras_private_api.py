"""The training floor overrides four private Keras hooks (docs/design.md, "Private TensorFlow, TFP and Keras
APIs"); these tests say plainly which one a Keras upgrade removed or renamed, instead of a silent fallback."""

import inspect

import keras
import pytest

import tfp_glow
from tfp_glow.training import callbacks, distribute, optim

# (class, private name, who relies on it)
HOOKS = [
  (keras.optimizers.Optimizer, '_backend_update_step', 'optim.py: the warmup factor on every backend'),
  (keras.optimizers.Optimizer, '_update_model_variables_moving_average', 'optim.py: the fused weight EMA'),
  (keras.optimizers.Optimizer, '_get_variable_index', 'optim.py: the fused Adam(ax) kernels find slots'),
  (keras.callbacks.BackupAndRestore, '_save_model', 'distribute.py: workers write backups elsewhere'),
  (keras.Model, '_maybe_symbolic_build', "trainer.py: no first-batch reduce across workers' own shards"),
]
# The attributes GlowModel._maybe_symbolic_build reads to decide that nothing needs building.
MODEL_ATTRIBUTES = ('_compile_metrics', '_compile_loss')


@pytest.mark.parametrize('cls, name, user', HOOKS, ids=[h[1] for h in HOOKS])
def test_keras_still_has_the_hook(cls, name, user):
  assert callable(getattr(cls, name, None)), (
    f'Keras {keras.__version__} has no {cls.__name__}.{name}, which tfp_glow overrides or calls ({user}).'
  )


def test_the_model_attributes_we_read_exist():
  model = tfp_glow.GlowModel((4, 4, 1), levels=1, steps=1, width=4, n_bins=4)
  model.compile()
  missing = [name for name in MODEL_ATTRIBUTES if not hasattr(model, name)]
  assert not missing, f'Keras {keras.__version__} models lack {missing} (GlowModel._maybe_symbolic_build)'


def test_the_backup_paths_we_redirect_exist():
  backup = keras.callbacks.BackupAndRestore('/tmp/unused_backup_dir', double_checkpoint=True)
  missing = [name for name in distribute._BACKUP_PATHS if not hasattr(backup, name)]
  assert not missing, (
    f'Keras {keras.__version__} BackupAndRestore lacks {missing}: distribute.py redirects them for non-chief '
    'workers.'
  )


# What tfp_glow.runs.backup.RunBackup reads and sets on Keras' BackupAndRestore to back up every N steps and
# resume mid-epoch.
RUN_BACKUP_ATTRIBUTES = ('_current_epoch', '_last_batch_seen', '_batches_seen_since_last_saving', 'save_freq')


def test_the_backup_counters_runs_keep_exist():
  backup = keras.callbacks.BackupAndRestore('/tmp/unused_backup_dir', save_freq=3)
  missing = [name for name in RUN_BACKUP_ATTRIBUTES if not hasattr(backup, name)]
  assert not missing, (
    f'Keras {keras.__version__} BackupAndRestore lacks {missing}: tfp_glow/runs/backup.py counts the batches '
    'of an epoch with them.'
  )


# (our class, the Keras class whose private method it overrides, the method)
OVERRIDES = [
  (optim.WarmupAdamax, keras.optimizers.Adamax, '_backend_update_step'),
  (optim.WarmupAdam, keras.optimizers.Adam, '_update_model_variables_moving_average'),
  (callbacks.AtomicBackupAndRestore, keras.callbacks.BackupAndRestore, '_save_model'),
  (distribute.MultiWorkerBackupAndRestore, keras.callbacks.BackupAndRestore, '_save_model'),
  (tfp_glow.GlowModel, keras.Model, '_maybe_symbolic_build'),
]


@pytest.mark.parametrize('ours, theirs, name', OVERRIDES, ids=[f'{o.__name__}.{n}' for o, _, n in OVERRIDES])
def test_our_overrides_keep_the_signatures(ours, theirs, name):
  assert getattr(ours, name) is not getattr(theirs, name), f'{ours.__name__} no longer overrides {name}'
  expected = list(inspect.signature(getattr(theirs, name)).parameters)
  assert list(inspect.signature(getattr(ours, name)).parameters) == expected, (
    f'{ours.__name__}.{name} no longer takes what Keras {keras.__version__} passes: {expected}'
  )
