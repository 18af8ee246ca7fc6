"""Atomic writes: a process killed (SIGKILL) in the middle of writing leaves every file complete."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import atomic
from tfp_glow.training.model import GlowModel

# Writes a model, its weights, a PNG and a JSON file over and over, so that a kill at almost any
# moment lands inside a write.
WRITER = textwrap.dedent("""
    import os, sys
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
    import numpy as np
    from tfp_glow import GlowModel, atomic, data
    from tfp_glow.images import save_png
    out = sys.argv[1]
    model = GlowModel((8, 8, 1), levels=2, steps=1, width=8, n_bins=17, seed=0)
    model.compile()
    model.initialize(next(iter(data.load_dataset('digits', 'train', batch_size=64, seed=0)[0])))
    for i in range(10**6):
        model.save(os.path.join(out, 'model.keras'))
        model.save_weights(os.path.join(out, 'model.weights.h5'))
        save_png(os.path.join(out, 'image.png'), np.full((64, 64, 1), i % 256, np.uint8))
        atomic.write_json(os.path.join(out, 'state.json'), {'i': i, 'pad': 'x' * 100000})
        if i == 0:
            print('wrote', flush=True)
""")


def check_complete(out):
  """Every file in `out` is complete (loads), besides hidden temporary files."""
  names = sorted(n for n in os.listdir(out) if not n.startswith('.tmp'))
  assert names == ['image.png', 'model.keras', 'model.weights.h5', 'state.json'], names
  model = keras.models.load_model(os.path.join(out, 'model.keras'))
  model.load_weights(os.path.join(out, 'model.weights.h5'))
  assert model.is_initialized
  assert tf.io.decode_png(tf.io.read_file(os.path.join(out, 'image.png'))).shape == (64, 64, 1)
  with open(os.path.join(out, 'state.json')) as f:
    assert len(json.load(f)['pad']) == 100000


@pytest.mark.slow
def test_a_kill_at_any_moment_leaves_every_file_complete(tmp_path):
  """One writer process, frozen (SIGSTOP) at several moments while its files are copied: each copy
  is what a kill at that moment would leave on disk. Then a real SIGKILL, and its files checked."""
  out = tmp_path / 'out'
  out.mkdir()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.Popen([sys.executable, '-c', WRITER, str(out)], stdout=subprocess.PIPE, env=env)
  snapshots = []
  try:
    assert proc.stdout.readline().strip() == b'wrote', 'the writer failed'
    for i, delay in enumerate([0.0, 0.03, 0.07, 0.11, 0.17, 0.23, 0.31]):
      time.sleep(delay)
      proc.send_signal(signal.SIGSTOP)
      snapshots.append(tmp_path / f'at{i}')
      shutil.copytree(out, snapshots[-1])
      proc.send_signal(signal.SIGCONT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == -signal.SIGKILL
  for directory in [*snapshots, out]:
    check_complete(directory)
  atomic.remove_stale(out)
  assert not [n for n in os.listdir(out) if n.startswith('.tmp')]


def test_replacing_keeps_the_old_file_when_the_writer_fails(tmp_path):
  path = tmp_path / 'a.json'
  atomic.write_json(path, {'v': 1})
  with pytest.raises(ValueError, match='Out of range float'):
    atomic.write_json(path, {'v': float('nan')})  # strict JSON: NaN is refused, not written
  with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
    with open(tmp, 'w') as f:
      f.write('{"v": ')
    raise RuntimeError('killed mid-write')
  assert json.loads(path.read_text()) == {'v': 1}
  assert os.listdir(tmp_path) == ['a.json']


def test_a_model_with_nan_weights_is_never_saved_over_a_good_one(tmp_path):
  model = GlowModel((8, 8, 1), levels=1, steps=1, width=8, n_bins=17, seed=0)
  model.compile()
  model.initialize(np.random.default_rng(0).uniform(-0.5, 0.5, [8, 8, 8, 1]).astype(np.float32))
  model.save(tmp_path / 'm.keras')
  model.save_weights(tmp_path / 'm.weights.h5')
  variable = model.trainable_variables[0]
  good = variable.numpy().copy()
  variable.assign(np.full(variable.shape, np.nan, np.float32))
  for save, path in ((model.save, 'm.keras'), (model.save_weights, 'm.weights.h5')):
    with pytest.raises(ValueError, match='NaN or Inf'):
      save(tmp_path / path)
  np.testing.assert_array_equal(
    keras.models.load_model(tmp_path / 'm.keras').trainable_variables[0].numpy(), good
  )
  model.load_weights(tmp_path / 'm.weights.h5')
  np.testing.assert_array_equal(variable.numpy(), good)
  assert sorted(os.listdir(tmp_path)) == ['m.keras', 'm.weights.h5']


def test_remove_stale_leaves_other_writers_directories_and_vanished_files_alone(tmp_path, monkeypatch):
  # The chief cleans `out` while another worker writes into `out/.worker_worker_1` (hidden): the
  # worker's temporary files are live, not stale, and one may be renamed away between listing and
  # removal.
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / '.worker_worker_1').mkdir()
  for name in ['.tmp1-a.json', 'checkpoints/.tmp1-latest.keras', '.worker_worker_1/.tmp2-config.json']:
    (tmp_path / name).write_text('{')
  (tmp_path / '.tmp3-vanishing.json').write_text('{')
  remove = tf.io.gfile.remove

  def renamed_first(path):
    if path.endswith('vanishing.json'):
      os.remove(path)  # its writer renamed it into place a moment ago
    remove(path)

  monkeypatch.setattr(tf.io.gfile, 'remove', renamed_first)
  removed = atomic.remove_stale(tmp_path)
  assert sorted(os.path.relpath(p, tmp_path) for p in removed) == [
    '.tmp1-a.json',
    'checkpoints/.tmp1-latest.keras',
  ]
  assert (tmp_path / '.worker_worker_1/.tmp2-config.json').exists()
