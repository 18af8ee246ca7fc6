"""File caches (`load_dataset(cache=PATH)`, `train --cache PATH`) cannot leak: one cache per split and per
source/settings, half-written caches of a stopped run are rebuilt with a note (tfp_glow.data.cache)."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import data
from tfp_glow.data import cache as cache_module


def _folder(root, ids, shape=(6, 6, 3)):
  """PNG files root/{i}.png whose first pixel is i: each image says which it is."""
  os.makedirs(root, exist_ok=True)
  for i in ids:
    x = np.random.RandomState(i).randint(0, 256, size=shape).astype(np.uint8)
    x[0, 0, 0] = i
    tf.io.write_file(os.path.join(str(root), f'{i}.png'), tf.io.encode_png(x))
  return f'folder:{root}'


def _ids(ds):
  """The first pixel (image id) of every image of one pass, sorted."""
  x = np.concatenate([b.numpy() for b in ds])
  return sorted(np.floor((x[:, 0, 0, 0] + 0.5) * 256).astype(int).tolist())


def _load(source, split, cache, **kw):
  return data.load_dataset(source, split, batch_size=4, cache=cache, seed=0, **kw)[0]


def _cache_files(folder):
  return sorted(n for n in os.listdir(folder) if not n.endswith(cache_module.WRITER_SUFFIX))


def test_train_and_test_splits_get_their_own_cache(tmp_path):
  source = _folder(tmp_path / 'img', range(40))
  expected = {
    s: _ids(data.load_dataset(source, s, batch_size=4, shuffle=False)[0]) for s in ('train', 'test')
  }
  assert expected['train'] and expected['test'] and not set(expected['train']) & set(expected['test'])
  os.makedirs(tmp_path / 'cache')
  cache = str(tmp_path / 'cache' / 'run')
  train, test = _load(source, 'train', cache), _load(source, 'test', cache, shuffle=False)
  for _ in range(2):  # the first pass writes each split's cache, the second reads it
    assert _ids(train) == expected['train']
    assert _ids(test) == expected['test']  # measured on test images, not the cached training images
  # and a later run (new datasets over the complete caches) reads each split's own images
  assert _ids(_load(source, 'test', cache, shuffle=False)) == expected['test']
  names = _cache_files(tmp_path / 'cache')
  assert any(n.startswith('run-train-') and n.endswith('.index') for n in names)
  assert any(n.startswith('run-test-') and n.endswith('.index') for n in names)


def test_another_data_set_or_setting_with_the_same_cache_does_not_read_the_old_images(tmp_path):
  first, second = _folder(tmp_path / 'a', range(0, 30)), _folder(tmp_path / 'b', range(100, 130))
  cache = str(tmp_path / 'cache')
  assert set(_ids(_load(first, 'train', cache))) <= set(range(0, 30))
  got = _ids(_load(second, 'train', cache))
  assert got and set(got) <= set(range(100, 130))
  # fewer bits change the cached bins: their own cache, not the 8-bit one
  four_bits = np.concatenate([b.numpy() for b in _load(first, 'train', cache, n_bits=4)])
  assert np.all(np.floor((four_bits + 0.5) * 16) < 16) and len(four_bits) == len(
    _ids(_load(first, 'train', None))
  )
  # NumPy arrays at the same --cache: also their own
  arrays = np.stack([np.full((6, 6, 3), 200 + i % 50, np.uint8) for i in range(30)])
  np.savez(tmp_path / 'arrays.npz', images=arrays)
  got = _ids(_load(f'npz:{tmp_path / "arrays.npz"}', 'train', cache))
  assert got and min(got) >= 200


def test_files_added_to_the_source_folder_give_a_new_cache(tmp_path):
  source = _folder(tmp_path / 'img', range(20))
  cache = str(tmp_path / 'cache')
  before = _ids(_load(source, 'train', cache))
  _folder(tmp_path / 'img', range(20, 40))
  after = _ids(_load(source, 'train', cache))
  assert set(before) < set(after) and max(after) >= 20


def _half_written(tmp_path, source):
  """A complete train cache turned into what a run killed during its first epoch leaves: TensorFlow's
  lockfile and temporary data, no index. Returns the prefix."""
  cache = tmp_path / 'cache'
  os.makedirs(cache)
  _ids(_load(source, 'train', str(cache) + '/'))
  (index,) = [n for n in os.listdir(cache) if n.endswith('.index')]
  prefix = str(cache / index[: -len('.index')])
  for name in os.listdir(cache):
    if not name.endswith(cache_module.WRITER_SUFFIX):
      os.remove(cache / name)
  with open(prefix + '_0.lockfile', 'w') as f:
    f.write('Created at: 1796542215')
  with open(prefix + '_0.data-00000-of-00001.tempstate8185292373971338713', 'wb') as f:
    f.write(b'\0' * 100)
  return prefix


def test_a_half_written_cache_is_rebuilt_with_a_note(tmp_path, caplog):
  source = _folder(tmp_path / 'img', range(30))
  expected = _ids(data.load_dataset(source, 'train', batch_size=4, shuffle=False)[0])
  prefix = _half_written(tmp_path, source)
  dead = subprocess.run(
    [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
  )
  with open(prefix + cache_module.WRITER_SUFFIX, 'w') as f:  # its writer has exited
    f.write(f'{{"host": "{os.uname().nodename}", "pid": {int(dead.stdout)}}}')
  with caplog.at_level(logging.WARNING, logger='tfp_glow.data'):
    ds = _load(source, 'train', str(tmp_path / 'cache') + '/')  # TensorFlow alone: AlreadyExistsError
  assert 'half-written' in caplog.text and prefix in caplog.text
  assert not os.path.exists(prefix + '_0.lockfile')
  assert _ids(ds) == expected and _ids(ds) == expected
  assert cache_module.is_complete(prefix)


def test_a_cache_another_running_process_writes_is_refused(tmp_path):
  source = _folder(tmp_path / 'img', range(30))
  prefix = _half_written(tmp_path, source)
  with open(prefix + cache_module.WRITER_SUFFIX, 'w') as f:  # our parent: alive
    f.write(f'{{"host": "{os.uname().nodename}", "pid": {os.getppid()}}}')
  with pytest.raises(ValueError, match=f'being written by another process \\(pid {os.getppid()}'):
    _load(source, 'train', str(tmp_path / 'cache') + '/')
  assert os.path.exists(prefix + '_0.lockfile')  # left alone


def test_cache_prefix_names_the_split_and_depends_on_every_setting(tmp_path):
  base = dict(source='x', n_bits=8)
  a = cache_module.cache_prefix(str(tmp_path / 'c'), 'train', base)
  assert os.path.basename(a).startswith('c-train-')
  assert a != cache_module.cache_prefix(str(tmp_path / 'c'), 'test', base)
  assert a != cache_module.cache_prefix(str(tmp_path / 'c'), 'train', dict(base, n_bits=5))
  assert a == cache_module.cache_prefix(str(tmp_path / 'c'), 'train', dict(base))
  inside = cache_module.cache_prefix(str(tmp_path) + '/', 'train', base)
  assert os.path.dirname(inside) == str(tmp_path) and os.path.basename(inside).startswith('train-')


@pytest.mark.slow
def test_train_with_a_file_cache_writes_one_cache_per_split_and_reruns_over_a_half_written_one(
  tmp_path, capsys
):
  """`tfp-glow train --cache PATH` (the CLI's plumbing): a train and a test cache, each complete; a rerun
  after a kill in the first epoch (simulated: the train cache half-written, no run yet) trains."""
  from tfp_glow import cli

  source = _folder(tmp_path / 'img', range(40), shape=(8, 8, 3))
  tiny = ['--levels', '2', '--steps', '1', '--width', '8', '--batch-size', '16', '--no-ema', '--epochs', '1']
  os.makedirs(tmp_path / 'cache')
  argv = ['train', *tiny, '--dataset', source, '--cache', str(tmp_path / 'cache') + '/']
  assert cli.main([*argv, '--out', str(tmp_path / 'run1')]) == 0
  indexes = sorted(n for n in os.listdir(tmp_path / 'cache') if n.endswith('.index'))
  assert [n.split('-')[0] for n in indexes] == ['test', 'train']
  for name in indexes:
    prefix = str(tmp_path / 'cache' / name[: -len('.index')])
    assert cache_module.is_complete(prefix)
    if name.startswith('train'):
      for leftover in os.listdir(tmp_path / 'cache'):
        if leftover.startswith(os.path.basename(prefix) + '.'):
          os.remove(tmp_path / 'cache' / leftover)
      open(prefix + '_0.lockfile', 'w').close()
  capsys.readouterr()
  assert cli.main([*argv, '--out', str(tmp_path / 'run2')]) == 0
  assert 'AlreadyExistsError' not in capsys.readouterr().err
  assert all(cache_module.is_complete(str(tmp_path / 'cache' / n[: -len('.index')])) for n in indexes)
