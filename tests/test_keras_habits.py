"""What a Keras / TFP user tries first: `predict` on fit's data, string labels, class names on the command line,
batched `encode`, no "ran out of data" warning from finite data sets, and remote `--out` paths (TF's `ram://`
file system stands in for gs://)."""

import io
import math
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
from helpers import digits, tiny_model  # noqa: E402

import tfp_glow as tg
from tfp_glow import cli
from tfp_glow import data as glow_data
from tfp_glow.testing import perturb

# ---- predict ---------------------------------------------------------------------------------------------


def _conditional_model():
  model = tiny_model(num_classes=10)
  model.initialize(*next(iter(digits(with_labels=True))))
  perturb(model.glow)  # the class prior starts at zero, where every label gives the same density
  return model


def test_predict_of_a_conditional_model_on_fits_data_is_log_p_of_x_given_y():
  model = _conditional_model()
  images, labels = next(iter(digits('test', batch_size=80, with_labels=True, shuffle=False)))
  ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(40)  # fit's kind of data, fixed noise
  predicted = model.predict(ds, verbose=0)
  assert predicted.shape == (80,)
  np.testing.assert_allclose(predicted, model.log_prob(images, labels), rtol=1e-5)
  other = (labels + 1) % 10  # the labels are used: other labels, another density
  assert np.max(np.abs(model.predict((images, other), batch_size=7, verbose=0) - predicted)) > 1e-3
  np.testing.assert_allclose(
    model.predict((images, other), batch_size=7, verbose=0), model.log_prob(images, other), rtol=1e-5
  )
  # Bits/dim per image, as the docstring says.
  bpd = model.bits_per_dim(predicted)
  expected = (-predicted + 64 * math.log(17)) / (64 * math.log(2))
  np.testing.assert_allclose(bpd, expected, rtol=1e-6)


def test_predict_of_an_unconditional_model_on_images():
  model = tiny_model()
  model.initialize(next(iter(digits())))
  images = next(iter(digits('test', batch_size=60, shuffle=False)))
  ds = tf.data.Dataset.from_tensor_slices(images).batch(30)
  np.testing.assert_allclose(model.predict(ds, verbose=0), model.log_prob(images), rtol=1e-5)


def test_predict_of_a_conditional_model_without_labels_is_refused_in_one_line():
  model = _conditional_model()
  with pytest.raises(ValueError) as error:
    model.predict(digits('test', batch_size=16, shuffle=False).take(1), verbose=0)
  message = str(error.value)
  assert 'pass labels' in message and 'predict' in message and '\n' not in message.strip()
  assert 'Exception encountered' not in message


# ---- labels that are not class ids ----------------------------------------------------------------------


def _string_label_data():
  images = next(iter(digits(batch_size=12, shuffle=False)))
  names = np.array(['zero', 'one', 'two'] * 4)
  return images, names


@pytest.mark.parametrize('form', ['arrays', 'tuple', 'list', 'dataset'])
def test_string_labels_in_fit_are_refused_naming_labels_and_how_to_map_them(form):
  model = _conditional_model()
  images, names = _string_label_data()
  args = {
    'arrays': (images, names),
    'tuple': ((images, names),),
    'list': (images, names.tolist()),
    'dataset': (tf.data.Dataset.from_tensor_slices((images, names)).batch(4),),
  }[form]
  with pytest.raises(TypeError) as error:
    model.fit(*args, epochs=1, verbose=0)
  message = str(error.value)
  assert message.startswith('GlowModel.fit: labels must be integer class ids 0..9, got strings')
  assert 'StringLookup' in message and 'Invalid dtype' not in message


def test_string_labels_in_evaluate_are_refused_as_in_fit():
  model = _conditional_model()
  images, names = _string_label_data()
  with pytest.raises(
    TypeError, match='^GlowModel.evaluate: labels must be integer class ids 0..9, got strings'
  ):
    model.evaluate(images, names, verbose=0)


def test_float_labels_and_labels_for_an_unconditional_model_are_refused():
  model = _conditional_model()
  images, _ = _string_label_data()
  with pytest.raises(TypeError, match='labels must be integer class ids 0..9, got float32.*argmax'):
    model.fit(images, np.zeros([12, 10], np.float32), epochs=1, verbose=0)
  with pytest.raises(
    ValueError, match='GlowModel.fit: labels were given, but the model is not class-conditional'
  ):
    tiny_model().fit(*_string_label_data(), epochs=1, verbose=0)


# ---- GlowDistribution.encode / decode with any batch shape -------------------------------------------------


def _distribution(num_classes=None):
  glow = tg.Glow((8, 8, 1), levels=2, steps=2, width=8, num_classes=num_classes, seed=0)
  perturb(glow)
  return tg.GlowDistribution(glow)


def test_encode_and_decode_take_the_batch_shapes_that_log_prob_and_sample_take():
  dist = _distribution()
  x = dist.sample([2, 3], seed=(1, 2))
  assert x.shape == (2, 3, 8, 8, 1) and dist.log_prob(x).shape == (2, 3)
  latents = dist.encode(x)
  assert [tuple(z.shape) for z in latents] == [(2, 3, 4, 4, 2), (2, 3, 2, 2, 8)]
  flat = dist.encode(tf.reshape(x, [6, 8, 8, 1]))
  for z, z_flat in zip(latents, flat):
    np.testing.assert_allclose(tf.reshape(z, z_flat.shape), z_flat, atol=1e-6)
  np.testing.assert_allclose(dist.decode(latents), x, atol=1e-4)
  # One image (no batch dimension) and an empty batch, as TFP's conventions have them.
  assert [tuple(z.shape) for z in dist.encode(x[0, 0])] == [(4, 4, 2), (2, 2, 8)]
  assert dist.decode(dist.encode(x[0, 0])).shape == (8, 8, 1)
  assert dist.decode(dist.encode(x[:, :0])).shape == (2, 0, 8, 8, 1)
  with pytest.raises(ValueError, match='one batch shape'):
    dist.decode([latents[0], latents[1][:1]])


def test_batched_encode_of_a_conditional_distribution_takes_labels_of_the_batch_shape():
  dist = _distribution(num_classes=3)
  labels = tf.constant([[0, 1, 2], [2, 1, 0]])
  x = dist.sample([2, 3], labels=labels, seed=(1, 2))
  latents = dist.encode(x, labels)
  flat = dist.encode(tf.reshape(x, [6, 8, 8, 1]), tf.reshape(labels, [6]))
  np.testing.assert_allclose(tf.reshape(latents[-1], flat[-1].shape), flat[-1], atol=1e-6)
  np.testing.assert_allclose(dist.decode(latents, labels), x, atol=1e-4)
  scalar = dist.encode(x, 1)  # a scalar label: one class for every image
  np.testing.assert_allclose(scalar[-1], dist.encode(x, tf.ones([2, 3], tf.int32))[-1], atol=1e-6)


# ---- finite data sets: Keras knows their length -----------------------------------------------------------


def _sources(tmp_path):
  rng = np.random.default_rng(0)
  for c in ('a', 'b'):
    os.makedirs(tmp_path / 'folder' / c)
    for i in range(12):
      pixels = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
      tf.io.write_file(str(tmp_path / 'folder' / c / f'{i}.png'), tf.io.encode_png(pixels))
  np.savez(tmp_path / 'x.npz', data=rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8))
  assert (
    cli.main(['prepare', f'folder:{tmp_path / "folder"}', str(tmp_path / 'shards'), '--shards', '2']) == 0
  )
  return {
    'npz': dict(name=f'npz:{tmp_path / "x.npz"}'),
    'tfrecord': dict(name=f'tfrecord:{tmp_path / "shards"}'),
    'folder': dict(name=f'folder:{tmp_path / "folder"}', bad_files='error'),
  }


def test_streamed_sources_tell_tf_data_their_length(tmp_path):
  for source, kwargs in _sources(tmp_path).items():
    for split in ('train', 'test'):
      ds, info = glow_data.load_dataset(**kwargs, split=split, batch_size=8, n_bits=4, seed=0)
      assert int(ds.cardinality()) == math.ceil(info.num_examples / 8), (source, split)


@pytest.mark.slow  # the default run: the lengths above, and the warning below on data of unknown length
def test_fit_and_evaluate_on_a_streamed_source_do_not_run_out_of_data(tmp_path):
  kwargs = _sources(tmp_path)['tfrecord']
  train, _ = glow_data.load_dataset(**kwargs, batch_size=8, n_bits=4, seed=0)
  test, _ = glow_data.load_dataset(**kwargs, split='test', batch_size=8, n_bits=4, shuffle=False)
  model = tiny_model(n_bins=16)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    model.fit(train, validation_data=test, epochs=1, verbose=0)
    model.evaluate(test, verbose=0)
  assert not [str(w.message) for w in caught if 'ran out of data' in str(w.message)]


def test_data_of_unknown_length_runs_out_quietly_unless_a_step_count_asks_for_more():
  """A Dataset whose length tf.data cannot know (a folder that skips undecodable files; here a filter):
  without a step count Keras only learns the epoch's length, so no warning; with steps_per_epoch larger
  than the data the warning means what it says and is shown."""
  images = np.random.default_rng(0).uniform(-0.5, 0.5, (24, 8, 8, 1)).astype('float32')
  data = tf.data.Dataset.from_tensor_slices(images).batch(8).filter(lambda x: True)
  assert int(data.cardinality()) == tf.data.UNKNOWN_CARDINALITY
  model = tiny_model(n_bins=16)

  def ran_out(**kwargs):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      model.fit(data, validation_data=data, epochs=1, verbose=0, **kwargs)
      if not kwargs:
        model.evaluate(data, verbose=0)
    return [str(w.message) for w in caught if 'ran out of data' in str(w.message)]

  assert not ran_out()
  assert ran_out(steps_per_epoch=10)


# ---- class names on the command line -----------------------------------------------------------------------

NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']


@pytest.fixture(scope='module')
def named_model(tmp_path_factory):
  """A conditional digits-shaped model saved as `train --out` leaves one: model.keras and class_names.txt."""
  out = tmp_path_factory.mktemp('named')
  tf.random.set_seed(1)
  model = _conditional_model()
  model.save(str(out / 'model.keras'))
  (out / 'class_names.txt').write_text(''.join(f'{name}\n' for name in NAMES))
  return out


def _samples(model_dir, tmp_path, name, *flags):
  out = tmp_path / name
  code = cli.main(['sample', str(model_dir), '--n', '4', '--seed', '3', '--out', str(out), *flags])
  return code, (np.load(out) if code == 0 else None)


def test_sample_label_takes_a_class_name_or_an_id(named_model, tmp_path):
  code, by_name = _samples(named_model, tmp_path, 'name.npy', '--label', 'three')
  assert code == 0
  _, by_id = _samples(named_model, tmp_path, 'id.npy', '--label', '3')
  _, other = _samples(named_model, tmp_path, 'other.npy', '--label', '4')
  np.testing.assert_array_equal(by_name, by_id)
  assert np.any(by_name != other)


def test_an_unknown_class_name_is_refused_listing_the_known_ones(named_model, tmp_path, capsys):
  assert _samples(named_model, tmp_path, 'x.npy', '--label', 'flower')[0] == 2
  err = capsys.readouterr().err.strip()
  assert err == (
    "tfp-glow sample: error: --label 'flower': no class of that name; its classes: "
    + ', '.join(f'{i}={n}' for i, n in enumerate(NAMES))
    + ' (a name or an id)'
  )
  assert _samples(named_model, tmp_path, 'x.npy', '--label', '10')[0] == 2
  assert '--label 10: the model has classes 0..9' in capsys.readouterr().err


def test_class_names_from_metrics_json_when_there_is_no_class_names_txt(named_model, tmp_path, capsys):
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  (model_dir / 'model.keras').write_bytes((named_model / 'model.keras').read_bytes())
  (model_dir / 'metrics.json').write_text(
    '{"class_names": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]}'
  )
  assert _samples(model_dir, tmp_path, 'x.npy', '--label', 'c')[0] == 0
  assert _samples(model_dir, tmp_path, 'y.npy', '--label', 'three')[0] == 2
  assert '0=a, 1=b' in capsys.readouterr().err


def test_interpolate_takes_a_class_name(named_model, tmp_path):
  image = tmp_path / 'digit.png'
  tf.io.write_file(str(image), tf.io.encode_png(np.full((8, 8, 1), 128, np.uint8)))
  out = tmp_path / 'row.png'
  assert (
    cli.main(['interpolate', str(named_model), str(image), 'test:0', '--label', 'two', '--out', str(out)])
    == 0
  )
  assert out.exists()


def test_manipulate_takes_class_names(named_model, tmp_path, capsys):
  args = [
    'manipulate',
    str(named_model),
    'test:1',
    '--to-class',
    'seven',
    '--from-class',
    'one',
    '--split',
    'test',
  ]
  assert cli.main([*args, '--alphas', '0', '1', '--out', str(tmp_path / 'm.png')]) == 0
  assert 'toward class 7' in capsys.readouterr().out
  assert cli.main([*args[:4], 'seventy', '--out', str(tmp_path / 'n.png')]) == 2
  assert "--to-class 'seventy': no class of that name" in capsys.readouterr().err


# ---- remote --out ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('out, fmt', [('grid.png', 'png'), ('s.npy', 'npy'), ('pngs', 'png-dir')])
def test_sample_writes_a_remote_out_through_tf_gfile(named_model, tmp_path, monkeypatch, capsys, out, fmt):
  monkeypatch.chdir(tmp_path)  # a local './ram:/...' folder would appear here
  remote = f'ram://habits-{fmt}/samples/{out}'
  assert cli.main(['sample', str(named_model), '--n', '3', '--label', '1', '--out', remote]) == 0
  assert f'wrote {remote}: 3 samples' in capsys.readouterr().out
  assert not os.listdir(tmp_path)
  if fmt == 'png':
    assert tf.io.decode_png(tf.io.read_file(remote)).shape[-1] == 1
  elif fmt == 'npy':
    with tf.io.gfile.GFile(remote, 'rb') as f:
      assert np.load(io.BytesIO(f.read())).shape == (3, 8, 8, 1)
  else:
    assert sorted(tf.io.gfile.listdir(remote)) == ['000000.png', '000001.png', '000002.png']
  leftovers = [n for n in tf.io.gfile.listdir(os.path.dirname(remote)) if n.startswith('.tmp')]
  assert not leftovers
