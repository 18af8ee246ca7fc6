"""The data sources through the command line: a folder of class subfolders trains conditionally, bad files
are counted in metrics.json, and a TFRecord set made by `tfp-glow prepare` trains on two local workers,
each reading only its own shards."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import cli
from tfp_glow import data as glow_data

TINY = ['--levels', '2', '--steps', '1', '--width', '8', '--batch-size', '64', '--no-ema', '--lr', '3e-2']
TINY += ['--warmup-epochs', '0.2', '--n-bits', '4', '--epochs', '3']


def _digit_folder(root, per_class=60, classes=(3, 7)):
  """root/three, root/seven: digits of those classes as 8x8 grey PNGs (bins b -> round(b * 255 / 16))."""
  bins, labels = glow_data.load_digits('train')
  names = {3: 'three', 7: 'seven'}
  for c in classes:
    os.makedirs(root / names[c])
    for j, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
      pixels = np.round(bins[i] * 255.0 / 16).astype(np.uint8)
      tf.io.write_file(str(root / names[c] / f'{j}.png'), tf.io.encode_png(pixels))
  return root


def test_class_subfolders_train_conditionally_and_the_mapping_is_saved(tmp_path, capsys):
  root = _digit_folder(tmp_path / 'digits')
  (root / 'seven' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
  out = tmp_path / 'run'
  assert cli.main(['train', *TINY, '--dataset', f'folder:{root}', '--conditional', '--out', str(out)]) == 0
  printed = capsys.readouterr().out
  assert 'classes: 0=seven, 1=three' in printed
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['num_classes'] == 2 and metrics['class_names'] == ['seven', 'three']
  assert (out / 'class_names.txt').read_text().splitlines() == ['seven', 'three']
  assert metrics['skipped_files'] == 1 and 'broken.png' in printed
  # Asked to, the same run is refused before training, naming the file, with nothing written.
  refused = tmp_path / 'refused'
  flags = ['--dataset', f'folder:{root}', '--bad-files', 'error', '--out', str(refused)]
  assert cli.main(['train', *TINY, *flags]) == 2  # train loads both splits up front: either has it
  err = capsys.readouterr().err
  assert 'broken.png' in err and 'Traceback' not in err and not refused.exists()


def test_a_flat_folder_with_conditional_names_the_flag(tmp_path, capsys):
  for i in range(4):
    tf.io.write_file(str(tmp_path / f'{i}.png'), tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)))
  assert (
    cli.main(
      ['train', *TINY, '--dataset', f'folder:{tmp_path}', '--conditional', '--out', str(tmp_path / 'x')]
    )
    == 2
  )
  err = capsys.readouterr().err
  assert '--conditional' in err and 'with_labels' in err and 'subfolder per class' in err


def test_prepare_refuses_bad_arguments(tmp_path, capsys):
  assert cli.main(['prepare', str(tmp_path / 'nope'), str(tmp_path / 'out')]) == 2
  assert 'nope' in capsys.readouterr().err
  assert cli.main(['prepare', 'digits', str(tmp_path / 'out'), '--shards', '0']) == 2
  assert '--shards' in capsys.readouterr().err and not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_tfrecord_shards_train_on_two_workers_each_reading_its_own(tmp_path):
  shards = tmp_path / 'shards'
  assert cli.main(['prepare', 'digits', str(shards), '--shards', '4']) == 0
  from test_distribute import TINY_RUN, _finish, _free_ports  # noqa: PLC0415

  workers = [f'127.0.0.1:{p}' for p in _free_ports(2)]
  procs = []
  for index in range(2):
    tf_config = {'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}}
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL='3')
    cmd = [sys.executable, '-m', 'tfp_glow.cli', 'train', '--strategy', 'multi-worker', *TINY_RUN]
    cmd += ['--dataset', f'tfrecord:{shards}', '--out', str(tmp_path / 'run')]
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = _finish(procs)
  for index, output in enumerate(outputs):
    assert f'worker {index}: reads TFRecord shards {index}, {index} + 2, ... of 4' in output
  digests = [line for output in outputs for line in output.splitlines() if line.startswith('weights sha256')]
  assert len(digests) == 2 and digests[0] == digests[1]  # the two workers end with the same model
  metrics = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
  assert metrics['replicas'] == 2 and metrics['test_bits_per_dim'] < np.log2(17)


def test_imagenet_configs_name_the_npz_files_that_can_be_had(tmp_path, capsys):
  for size in (32, 64):
    assert cli.main(['train', '--config', f'imagenet{size}', '--out', str(tmp_path / 'x')]) == 2
    err = capsys.readouterr().err
    assert 'npz:DIR' in err and f'Imagenet{size}_train_npz' in err and 'image-net.org' in err
  # Given the files (here two tiny stand-ins in image-net.org's layout), the config reads them.
  rows = np.random.RandomState(0).randint(0, 256, (20, 3 * 32 * 32)).astype(np.uint8)
  np.savez(tmp_path / 'train_data_batch_1.npz', data=rows[:15], labels=np.arange(15) % 3 + 1)
  np.savez(tmp_path / 'val_data.npz', data=rows[15:], labels=np.arange(5) % 3 + 1)
  _, info = glow_data.load_dataset(f'npz:{tmp_path}', batch_size=4, with_labels=True)
  assert info.image_shape == (32, 32, 3) and info.num_classes == 3 and info.num_examples == 15
