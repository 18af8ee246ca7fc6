"""The `tfp-glow` command line (run in-process through `main`) and the sample-grid callback."""

import csv
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import cli
from tfp_glow import data as glow_data
from tfp_glow.images import image_grid, save_png
from tfp_glow.training import guard
from tfp_glow.training.callbacks import SampleGrid
from tfp_glow.training.model import GlowModel

# Tiny and fast, yet better than the uniform model after one epoch (train refuses to save one that is not).
TINY = [
  '--levels',
  '2',
  '--steps',
  '1',
  '--width',
  '8',
  '--batch-size',
  '128',
  '--no-ema',
  '--lr',
  '3e-2',
  '--warmup-epochs',
  '0.2',
]


def _png(path) -> np.ndarray:
  return tf.io.decode_png(tf.io.read_file(str(path))).numpy()


def _train(out, *flags) -> int:
  return cli.main(['train', *TINY, '--epochs', '2', '--out', str(out), *flags])


def _history_epochs(out) -> list[int]:
  with open(os.path.join(out, 'history.csv')) as f:
    return [int(row['epoch']) for row in csv.DictReader(f)]


def _digit_pixels(index: int) -> np.ndarray:
  """Test digit `index` as displayable uint8 pixels, bins b -> round(b * 255 / 16)."""
  bins, _ = glow_data.load_digits('test')
  return np.round(bins[index] * 255.0 / 16).astype(np.uint8)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny digits model trained by `tfp-glow train`, shared by the tests that only read it."""
  out = tmp_path_factory.mktemp('run') / 'digits'
  assert _train(out) == 0
  return out


def _nan_model_file(path):
  """A model file holding NaN weights, as an older version or another program could write it."""
  model = _tiny_model()
  model.initialize(next(iter(glow_data.load_dataset('digits', 'train', batch_size=16, seed=0)[0])))
  model.trainable_variables[0].assign(np.full(model.trainable_variables[0].shape, np.nan))
  with pytest.raises(ValueError, match='NaN or Inf'):
    model.save(path)  # GlowModel refuses
  keras.Model.save(model, path)  # Keras' own save does not look
  return path


# ---- train -----------------------------------------------------------------------------------------


def _no_model_left(out) -> bool:
  """No model.keras or metrics.json (nor a backup to resume into NaN); a checkpoint left is finite."""
  checkpoint = out / 'checkpoints' / 'latest.keras'
  if checkpoint.exists():
    assert guard.finite_weights(keras.models.load_model(checkpoint, compile=False))
  return not any((out / name).exists() for name in ('model.keras', 'metrics.json', 'backup'))


def test_diverged_training_fails_and_saves_nothing(tmp_path, capsys):
  out = tmp_path / 'diverged'
  assert _train(out, '--lr', '1e4', '--warmup-epochs', '0') == 1
  err = capsys.readouterr().err
  assert 'NaN or Inf' in err or 'with a non-finite loss or gradients' in err, err
  assert 'no model.keras was saved' in err and len(err.strip().splitlines()) == 1
  assert _no_model_left(out)


@pytest.mark.slow
def test_a_finite_run_worse_than_the_uniform_model_is_saved_with_a_warning(tmp_path, capsys):
  # A short run judged by lagging EMA weights (the case): finite, so kept, never deleted.
  out = tmp_path / 'short'
  flags = ['--lr', '1e-6', '--warmup-epochs', '1', '--ema', '--epochs', '1']  # barely moves from the init
  assert cli.main(['train', *TINY, '--out', str(out), *flags]) == 0
  captured = capsys.readouterr()
  metrics = json.loads((out / 'metrics.json').read_text())
  assert (out / 'model.keras').is_file() and not (out / 'backup').exists()
  assert set(metrics['scores']) == {'ema', 'raw'} and metrics['weights'] in ('ema', 'raw')
  best = metrics['scores'][metrics['weights']]
  assert best['train_bits_per_dim'] == min(s['train_bits_per_dim'] for s in metrics['scores'].values())
  assert metrics['test_bits_per_dim'] == best['test_bits_per_dim']
  assert metrics['test_bits_per_dim'] > metrics['uniform_bits_per_dim']
  assert 'worse than the uniform model' in captured.err and '--epochs' in captured.err
  model = cli._load_model(str(out))
  test_ds, _ = glow_data.load_dataset('digits', 'test', batch_size=256, shuffle=False, seed=0)
  assert abs(cli.bits_per_dim(model, test_ds) - metrics['test_bits_per_dim']) < 0.02  # the kept weights


def test_train_writes_every_output(run):
  for name in (
    'model.keras',
    'samples.png',
    'history.csv',
    'metrics.json',
    'config.json',
    'checkpoints/latest.keras',
  ):
    assert (run / name).is_file(), name
  assert not (run / 'backup').exists()  # BackupAndRestore removes its backup after a finished run
  assert not list(run.rglob('*.tmp')) and not list(run.rglob('*.partial.keras'))
  assert _history_epochs(run) == [0, 1]
  metrics = json.loads((run / 'metrics.json').read_text())
  for key in ('train_bits_per_dim', 'test_bits_per_dim'):
    assert math.isfinite(metrics[key]) and 0 < metrics[key] < 10, metrics
  assert metrics['epochs'] == metrics['epochs_this_run'] == 2
  assert metrics['wall_seconds'] >= metrics['train_seconds'] > 0
  assert metrics['config']['levels'] == 2 and metrics['config']['width'] == 8
  assert metrics['image_shape'] == [8, 8, 1] and metrics['n_bins'] == 17
  # samples/: sample_every defaults to max(1, epochs // 10) = 1: both epochs, three temperatures.
  assert sorted(p.name for p in (run / 'samples').iterdir()) == [
    f'samples_epoch{e:03d}_t{t}.png' for e in (1, 2) for t in ('0.5', '0.7', '1')
  ]
  # samples.png: 64 samples, 8 x 8 grid of 8x8 digits shown 4x larger, 1-pixel separators.
  assert _png(run / 'samples.png').shape == (8 * 32 + 7, 8 * 32 + 7, 1)


def test_final_model_loads_and_matches_the_metrics(run):
  model = keras.models.load_model(run / 'model.keras')
  assert isinstance(model, GlowModel) and model.is_initialized
  model.compile()
  test_ds, _ = glow_data.load_dataset('digits', 'test', batch_size=256, shuffle=False, seed=0)
  bpd = model.evaluate(test_ds, verbose=0, return_dict=True)['bits_per_dim']
  metrics = json.loads((run / 'metrics.json').read_text())
  assert abs(bpd - metrics['test_bits_per_dim']) < 0.02


@pytest.mark.slow
@pytest.mark.parametrize('precision', ['mixed_bfloat16', 'mixed_float16'])
def test_train_in_mixed_precision(run, tmp_path, precision):
  out = tmp_path / precision
  assert _train(out, '--precision', precision) == 0
  assert keras.mixed_precision.global_policy().name == 'float32'  # the process' policy is restored
  metrics = json.loads((out / 'metrics.json').read_text())
  reference = json.loads((run / 'metrics.json').read_text())
  assert metrics['config']['precision'] == precision and reference['config']['precision'] == 'float32'
  # The runs are deterministic: 16-bit networks change the result, but only a little.
  assert metrics['test_bits_per_dim'] != reference['test_bits_per_dim']
  assert abs(metrics['test_bits_per_dim'] - reference['test_bits_per_dim']) < 0.1
  model = cli._load_model(str(out))
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == 'mixed_float16')


@pytest.mark.slow
def test_rerun_with_fresh_after_a_finished_run_trains_afresh(tmp_path, capsys):
  out = tmp_path / 'again'
  assert cli.main(['train', *TINY, '--epochs', '1', '--out', str(out)]) == 0
  first = json.loads((out / 'metrics.json').read_text())
  capsys.readouterr()
  flags = [
    '--seed',
    '3',
    '--tensorboard',
    '--gradient',
    'inverse',
    '--fresh',
  ]  # without --fresh: a no-op
  assert cli.main(['train', *TINY, '--epochs', '1', '--out', str(out), *flags]) == 0
  assert list((out / 'logs' / 'train').iterdir()) and list((out / 'logs' / 'samples').iterdir())
  assert '--fresh: training a new model' in capsys.readouterr().out
  second = json.loads((out / 'metrics.json').read_text())
  assert second['epochs_this_run'] == 1 and second['config']['seed'] == 3 and first['config']['seed'] == 0
  assert first['config']['gradient'] == 'stored' and second['config']['gradient'] == 'inverse'
  assert cli._load_model(str(out)).get_config()['gradient'] == 'inverse'  # trained and saved with it
  assert _history_epochs(out) == [0]  # a fresh history, not appended
  assert not (out / 'backup').exists()


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
  out = tmp_path / 'killed'

  def die_in_second_epoch(self, epoch, logs=None):
    if epoch == 1:
      raise KeyboardInterrupt('killed')

  monkeypatch.setattr(SampleGrid, 'on_epoch_begin', die_in_second_epoch, raising=False)
  assert cli.main(['train', *TINY, '--epochs', '3', '--out', str(out)]) == 130  # as after Ctrl-C
  assert 'rerun the same command to resume' in capsys.readouterr().err
  monkeypatch.undo()
  assert (out / 'backup').is_dir() and not (out / 'metrics.json').exists()
  assert _history_epochs(out) == [0]

  # A different architecture cannot resume this backup: a clear error, the backup kept.
  assert cli.main(['train', *TINY, '--epochs', '3', '--out', str(out), '--width', '16']) == 2
  assert 'width' in capsys.readouterr().err
  assert (out / 'backup').is_dir()

  assert cli.main(['train', *TINY, '--epochs', '3', '--out', str(out)]) == 0
  assert 'resuming' in capsys.readouterr().out
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['epochs'] == 3 and metrics['epochs_this_run'] == 2
  assert _history_epochs(out) == [0, 1, 2]
  assert not (out / 'backup').exists()


@pytest.mark.slow
def test_conditional_training_samples_and_evaluation(tmp_path, capsys):
  out = tmp_path / 'cond'
  assert cli.main(['train', *TINY, '--levels', '1', '--epochs', '2', '--conditional', '--out', str(out)]) == 0
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['num_classes'] == 10 and math.isfinite(metrics['test_bits_per_dim'])
  assert _png(out / 'samples.png').shape == (7 * 32 + 6, 10 * 32 + 9, 1)  # 70 samples, a column per class
  assert cli.main(['sample', str(out), '--label', '3', '--n', '4', '--out', str(tmp_path / 's.png')]) == 0
  assert _png(tmp_path / 's.png').shape == (2 * 32 + 1, 2 * 32 + 1, 1)
  capsys.readouterr()
  assert cli.main(['evaluate', str(out / 'model.keras')]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result['reconstruction_max_abs_error'] < 1e-3 and math.isfinite(result['test_bits_per_dim'])


# ---- errors ---------------------------------------------------------------------------------------


def test_unknown_dataset_names_the_accepted_ones(tmp_path, capsys):
  assert cli.main(['train', '--dataset', 'not_a_dataset', '--out', str(tmp_path / 'x')]) == 2
  err = capsys.readouterr().err
  assert 'not_a_dataset' in err and all(name in err for name in glow_data.DATASETS)
  assert 'Traceback' not in err and not (tmp_path / 'x').exists()


def test_conditional_needs_a_labeled_dataset(tmp_path, capsys):
  folder = tmp_path / 'images'
  for i in range(4):
    save_png(str(folder / f'{i}.png'), _digit_pixels(i))
  assert (
    cli.main(['train', *TINY, '--dataset', f'folder:{folder}', '--conditional', '--out', str(tmp_path / 'x')])
    == 2
  )
  assert 'labels' in capsys.readouterr().err


def test_bad_flag_values_exit_2(tmp_path, capsys):
  # 8x8 digits cannot be squeezed 4 times.
  assert cli.main(['train', '--levels', '4', '--out', str(tmp_path / 'x')]) == 2
  assert 'levels' in capsys.readouterr().err
  assert cli.main(['train', '--coupling', 'nope']) == 2  # argparse's own check


def test_corrupt_missing_and_foreign_model_files(tmp_path, capsys):
  corrupt = tmp_path / 'corrupt.keras'
  corrupt.write_bytes(b'this is not a zip archive')
  assert cli.main(['sample', str(corrupt), '--out', str(tmp_path / 's.png')]) == 2
  assert str(corrupt) in capsys.readouterr().err
  assert cli.main(['evaluate', str(tmp_path / 'missing.keras')]) == 2
  assert 'missing.keras' in capsys.readouterr().err
  foreign = tmp_path / 'dense.keras'
  keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(foreign)
  assert cli.main(['interpolate', str(foreign), 'test:0', 'test:1', '--out', str(tmp_path / 'r.png')]) == 2
  assert 'GlowModel' in capsys.readouterr().err
  assert not (tmp_path / 's.png').exists() and not (tmp_path / 'r.png').exists()


# ---- sample, evaluate, interpolate ------------------------------------------------------------------


def test_sample_writes_a_grid_of_the_requested_size(run, tmp_path):
  out = tmp_path / 'grid.png'
  assert (
    cli.main(
      [
        'sample',
        str(run / 'model.keras'),
        '--n',
        '6',
        '--columns',
        '3',
        '--zoom',
        '2',
        '--seed',
        '1',
        '--out',
        str(out),
      ]
    )
    == 0
  )
  assert _png(out).shape == (2 * 16 + 1, 3 * 16 + 2, 1)
  assert cli.main(['sample', str(run), '--out', str(tmp_path / 'default.png')]) == 0  # a run directory works
  assert _png(tmp_path / 'default.png').shape == (4 * 32 + 3, 4 * 32 + 3, 1)  # 16 samples, zoom 4
  # --seed fixes the samples.
  for name, seed in (('same.png', '1'), ('other.png', '2')):
    assert (
      cli.main(
        [
          'sample',
          str(run),
          '--n',
          '6',
          '--columns',
          '3',
          '--zoom',
          '2',
          '--seed',
          seed,
          '--out',
          str(tmp_path / name),
        ]
      )
      == 0
    )
  assert np.array_equal(_png(out), _png(tmp_path / 'same.png'))
  assert not np.array_equal(_png(out), _png(tmp_path / 'other.png'))


def test_evaluate_prints_bits_per_dim_and_reconstruction_error(run, capsys):
  capsys.readouterr()
  assert cli.main(['evaluate', str(run / 'model.keras'), '--dataset', 'digits']) == 0
  result = json.loads(capsys.readouterr().out)
  metrics = json.loads((run / 'metrics.json').read_text())
  assert result['num_examples'] == glow_data.DIGITS_TEST_SIZE
  assert abs(result['test_bits_per_dim'] - metrics['test_bits_per_dim']) < 0.02
  assert 0 <= result['reconstruction_max_abs_error'] < 1e-3


def test_evaluate_rejects_data_of_another_shape(run, capsys):
  assert cli.main(['evaluate', str(run), '--image-size', '16']) == 2
  assert 'expects (8, 8, 1)' in capsys.readouterr().err


def test_interpolate_between_test_images(run, tmp_path):
  out = tmp_path / 'row.png'
  assert (
    cli.main(['interpolate', str(run), 'test:0', 'test:1', '--steps', '5', '--zoom', '1', '--out', str(out)])
    == 0
  )
  row = _png(out)
  assert row.shape == (8, 5 * 8 + 4, 1)
  # The ends reproduce the two test images (encode/decode is invertible).
  np.testing.assert_array_equal(row[:, :8], _digit_pixels(0))
  np.testing.assert_array_equal(row[:, -8:], _digit_pixels(1))


def test_interpolate_between_image_files(run, tmp_path, capsys):
  digit = _digit_pixels(5)
  save_png(str(tmp_path / 'gray.png'), digit)
  save_png(str(tmp_path / 'rgb.png'), np.repeat(digit, 3, axis=-1))
  out = tmp_path / 'row.png'
  assert (
    cli.main(
      [
        'interpolate',
        str(run),
        str(tmp_path / 'gray.png'),
        str(tmp_path / 'rgb.png'),
        '--steps',
        '3',
        '--zoom',
        '1',
        '--out',
        str(out),
      ]
    )
    == 0
  )
  row = _png(out)
  for i in range(3):  # the same image at both ends (RGB converted to gray): every step is that image
    np.testing.assert_array_equal(row[:, i * 9 : i * 9 + 8], digit)
  (tmp_path / 'bad.png').write_bytes(b'not an image')
  for bad in ('nope.png', 'bad.png'):
    assert cli.main(['interpolate', str(run), str(tmp_path / bad), 'test:0', '--out', str(out)]) == 2
    assert bad in capsys.readouterr().err
  for bad in ('test:100000', 'test:-1'):
    assert cli.main(['interpolate', str(run), bad, 'test:0', '--out', str(out)]) == 2
    assert bad in capsys.readouterr().err


# ---- callbacks ------------------------------------------------------------------------------------


def test_image_grid_layout_and_separators():
  images = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1)
  grid = image_grid(images, columns=3, pad_value=200)
  assert grid.shape == (2 * 2 + 1, 3 * 3 + 2, 1) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[0:2, 0:3], images[0])
  np.testing.assert_array_equal(grid[0:2, 4:7], images[1])
  np.testing.assert_array_equal(grid[3:5, 4:7], images[4])
  assert (grid[2] == 200).all() and (grid[:, 3] == 200).all()
  assert (grid[3:5, 8:11] == 200).all()  # the unused sixth cell
  rgb = image_grid(np.zeros((4, 2, 2, 3), np.uint8), zoom=3)
  assert rgb.shape == (2 * 6 + 1, 2 * 6 + 1, 3)
  with pytest.raises(ValueError):
    image_grid(np.zeros((4, 2, 2, 1), np.float32))


def _tiny_model(num_classes=None) -> GlowModel:
  model = GlowModel((8, 8, 1), levels=1, steps=1, width=8, num_classes=num_classes, n_bins=17, seed=0)
  ds, _ = glow_data.load_dataset('digits', 'train', batch_size=64, with_labels=bool(num_classes), seed=0)
  batch = next(iter(ds))
  model.initialize(*(batch if num_classes else (batch,)))
  return model


def test_sample_grid_writes_pngs_every_n_epochs_and_at_the_end(tmp_path):
  callback = SampleGrid(str(tmp_path / 'samples'), every_n_epochs=2, n=4, log_dir=str(tmp_path / 'logs'))
  callback.set_model(_tiny_model())
  callback.on_train_begin()
  for epoch in range(3):
    callback.on_epoch_end(epoch)
  callback.on_train_end()
  assert sorted(p.name for p in (tmp_path / 'samples').iterdir()) == [
    f'samples_epoch{e:03d}_t{t}.png' for e in (2, 3) for t in ('0.5', '0.7', '1')
  ]
  grids = {t: _png(tmp_path / 'samples' / f'samples_epoch002_t{t}.png') for t in ('0.5', '1')}
  assert grids['0.5'].shape == (17, 17, 1)
  assert not np.array_equal(grids['0.5'], grids['1'])  # the temperature matters
  # TensorBoard: one image summary per temperature and sampled epoch, holding [width, height, png].
  logged = {}
  for event_file in (tmp_path / 'logs').iterdir():
    for event in tf.compat.v1.train.summary_iterator(str(event_file)):
      for value in event.summary.value:
        assert value.metadata.plugin_data.plugin_name == 'images'
        logged[(value.tag, event.step)] = tf.make_ndarray(value.tensor)
  assert sorted(logged) == [(f'samples/T={t}', e) for t in ('0.5', '0.7', '1') for e in (2, 3)]
  width, height, png = logged[('samples/T=0.5', 2)]
  assert (int(width), int(height)) == (17, 17)
  np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), grids['0.5'])


def test_sample_grid_cycles_labels_of_a_conditional_model(tmp_path, monkeypatch):
  model = _tiny_model(num_classes=10)
  seen = []
  original = GlowModel.sample

  def recording_sample(self, n, temperature=1.0, labels=None, **kwargs):
    seen.append(np.asarray(labels))
    return original(self, n, temperature=temperature, labels=labels, **kwargs)

  monkeypatch.setattr(GlowModel, 'sample', recording_sample)
  callback = SampleGrid(str(tmp_path), n=12, temperatures=(0.7,))
  callback.set_model(model)
  callback.on_epoch_end(0)
  np.testing.assert_array_equal(seen[0], np.arange(12) % 10)
  assert _png(tmp_path / 'samples_epoch001_t0.7.png').shape == (3 * 8 + 2, 4 * 8 + 3, 1)  # 12 in 4 columns


# ---- diverged models, unreadable backups, files in the way -----------------------------------------


def test_evaluate_and_sample_refuse_a_nan_model_with_strict_json(tmp_path, capsys):
  path = _nan_model_file(tmp_path / 'nan.keras')
  capsys.readouterr()
  assert cli.main(['evaluate', str(path), '--dataset', 'digits']) == 1
  captured = capsys.readouterr()
  result = json.loads(captured.out, parse_constant=lambda c: pytest.fail(f'not strict JSON: {c}'))
  assert result['test_bits_per_dim'] is None and result['reconstruction_max_abs_error'] is None
  assert 'not a finite model' in captured.err
  assert cli.main(['sample', str(path), '--out', str(tmp_path / 's.png')]) == 1
  assert 'NaN or Inf' in capsys.readouterr().err and not (tmp_path / 's.png').exists()


@pytest.mark.slow
def test_unreadable_backup_gets_one_line_naming_it(tmp_path, monkeypatch, capsys):
  out = tmp_path / 'killed'

  def die_in_third_epoch(self, epoch, logs=None):
    if epoch == 2:
      raise KeyboardInterrupt('killed')

  monkeypatch.setattr(SampleGrid, 'on_epoch_begin', die_in_third_epoch, raising=False)
  assert cli.main(['train', *TINY, '--epochs', '3', '--out', str(out)]) == 130
  monkeypatch.undo()
  latest, previous = out / 'backup' / 'latest.weights.h5', out / 'backup' / 'latest.weights.h5.bkp'
  assert latest.is_file() and previous.is_file()
  assert not list(out.rglob('.tmp*'))
  good = {path: path.read_bytes() for path in (latest, previous)}
  for path in (latest, previous):
    path.write_bytes(b'garbage')
  capsys.readouterr()
  assert cli.main(['train', *TINY, '--epochs', '3', '--out', str(out)]) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and str(latest) in err and 'delete' in err, err

  # Half-written (as a kill during a non-atomic write leaves it): resumes from the previous backup.
  latest.write_bytes(good[latest][:1000])
  previous.write_bytes(good[previous])
  assert cli.main(['train', *TINY, '--epochs', '3', '--out', str(out)]) == 0
  assert 'resuming' in capsys.readouterr().out
  assert _history_epochs(out)[-2:] == [1, 2]  # epoch 2 (counted from 1) again, from the older backup


def test_outputs_in_the_way_get_one_error_line_and_nothing_half_written(run, tmp_path, capsys):
  file = tmp_path / 'a_file'
  file.write_text('mine')
  capsys.readouterr()
  assert cli.main(['train', *TINY, '--out', str(file)]) == 2
  assert 'is a file' in capsys.readouterr().err and file.read_text() == 'mine'
  assert cli.main(['sample', str(run), '--out', str(tmp_path)]) == 2
  assert 'is a directory' in capsys.readouterr().err
  assert cli.main(['interpolate', str(run), 'test:0', 'test:1', '--out', str(tmp_path)]) == 2
  assert 'is a directory' in capsys.readouterr().err
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file']


# ---- sample at any size: batches, .npy, a folder of PNGs ---------------------------------------------


def test_sample_rejects_n_below_1(run, tmp_path, capsys):
  for n in ('0', '-5'):
    assert cli.main(['sample', str(run), '--n', n, '--out', str(tmp_path / 's.png')]) == 2
    err = capsys.readouterr().err
    assert f'--n must be >= 1, got {n}' in err and len(err.strip().splitlines()) == 1
  assert not list(tmp_path.iterdir())


def test_sample_generates_in_bounded_batches_into_npy_and_png_dir(run, tmp_path, monkeypatch):
  sizes = []
  original = GlowModel.sample

  def recording_sample(self, n, *args, **kwargs):
    sizes.append(n)
    return original(self, n, *args, **kwargs)

  monkeypatch.setattr(GlowModel, 'sample', recording_sample)
  npy = tmp_path / 'samples.npy'
  common = ['--batch-size', '16', '--seed', '4']
  assert cli.main(['sample', str(run), '--n', '50', *common, '--out', str(npy)]) == 0
  assert sizes == [16, 16, 16, 2]  # never more than --batch-size at a time
  images = np.load(npy)
  assert images.shape == (50, 8, 8, 1) and images.dtype == np.uint8
  assert len({images[i].tobytes() for i in range(50)}) > 40  # 50 samples, not one batch repeated
  sizes.clear()
  folder = tmp_path / 'pngs'
  assert (
    cli.main(['sample', str(run), '--n', '20', *common, '--format', 'png-dir', '--out', str(folder)]) == 0
  )
  assert sizes == [16, 4]
  names = sorted(p.name for p in folder.iterdir())
  assert names == [f'{i:06d}.png' for i in range(20)]
  np.testing.assert_array_equal(_png(folder / '000017.png'), images[17])  # same seed, same samples
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.tmp')]


def test_sample_switches_from_a_grid_to_npy_above_the_grid_limit(run, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(cli.sample_output, 'MAX_GRID_SAMPLES', 8)
  assert cli.main(['sample', str(run), '--n', '9', '--out', str(tmp_path / 'big.png')]) == 0
  assert 'too many for one grid' in capsys.readouterr().out
  assert np.load(tmp_path / 'big.npy').shape == (9, 8, 8, 1) and not (tmp_path / 'big.png').exists()
  assert cli.main(['sample', str(run), '--n', '9', '--format', 'png', '--out', str(tmp_path / 'x.png')]) == 2
  assert '--format npy or png-dir' in capsys.readouterr().err
