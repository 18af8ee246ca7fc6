"""One definition of bits/dim everywhere: the mean over images, whatever the batching.

The same model on the same 65 images must give the same bits/dim at batch sizes with and without a remainder
(65, 16, 13, 64), through every entry point: `model.evaluate`, `fit`'s training and validation metrics,
`evaluate_bits_per_dim`, the per-image mean of `bits_per_dim(log_prob)`, `tfp_glow.ood.bits_per_dim` and the
CLI's `evaluate` (single-sample and importance-weighted), and under a distribution strategy (2 replicas), where
an uneven batch is padded and its padding weighted 0.

The data makes a mean of batch means visibly wrong: the 65th image (alone in the last batch at batch size 16
or 64) is a checkerboard, far less likely than the 64 smooth ramps before it.
"""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import cli, ood
from tfp_glow.testing import perturb
from tfp_glow.training.model import GlowModel

N_IMAGES = 65
BATCH_SIZES = (65, 16, 13, 64)
N_BINS = 16  # 4 bits: what the CLI derives from an 8-bit array data set
# Entry points that see the images themselves agree to float precision; those that draw their own
# dequantization noise u ~ U[0, 1) within each bin (evaluate_bits_per_dim, ood, the CLI's pipeline) agree to
# the noise's effect on a mean over 65 images (a few 1e-3 here, where a mean of batch means is off by > 0.1).
EXACT = dict(rtol=2e-6, atol=2e-6)
NOISY = 0.015


def raw_images(n: int = N_IMAGES, seed: int = 0) -> np.ndarray:
  """uint8 [n, 8, 8, 1]: horizontal ramps with random offsets, the last image a 0/255 checkerboard."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 255, 8)[None, None, :, None] * np.ones([n, 8, 8, 1])
  raw = np.clip(ramp + rng.integers(-20, 20, size=[n, 1, 1, 1]), 0, 255).astype(np.uint8)
  raw[-1] = (np.indices([8, 8]).sum(0) % 2 * 255)[..., None]
  return raw


def bin_centres(raw: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 bin centres in [-0.5, 0.5) of a 4-bit model."""
  return (((raw >> 4) + 0.5) / N_BINS - 0.5).astype(np.float32)


def perturbed_model(images, **kwargs) -> GlowModel:
  """A tiny model, initialized on the smooth images and moved away from its initial parameters, compiled
  with a learning rate of 0 (so `fit` measures without changing it)."""
  model = GlowModel((8, 8, 1), levels=2, steps=1, width=8, n_bins=N_BINS, seed=0, **kwargs)
  model.compile(optimizer=keras.optimizers.SGD(0.0))
  labels = kwargs.get('num_classes') and np.arange(40, dtype=np.int32) % kwargs['num_classes']
  model.initialize(images[:40], labels if kwargs.get('num_classes') else None)
  perturb(model.glow, 0.05)
  if model.classifier is not None:
    perturb(model.classifier, 0.5)
  return model


@pytest.fixture(scope='module')
def setup():
  images = bin_centres(raw_images())
  model = perturbed_model(images)
  per_image = model.bits_per_dim(model.log_prob(images)).numpy()
  return model, images, per_image


def batches(images, batch_size, labels=None):
  parts = images if labels is None else (images, labels)
  return tf.data.Dataset.from_tensor_slices(parts).batch(batch_size)


def mean_of_batch_means(values, batch_size) -> float:
  return float(np.mean([values[i : i + batch_size].mean() for i in range(0, len(values), batch_size)]))


def test_the_data_tells_a_mean_over_images_from_a_mean_of_batch_means(setup):
  _, _, per_image = setup
  for batch_size in (16, 64):
    assert abs(mean_of_batch_means(per_image, batch_size) - per_image.mean()) > 5 * NOISY


@pytest.mark.parametrize('batch_size', BATCH_SIZES)
def test_evaluate_gives_the_mean_over_images(setup, batch_size):
  model, images, per_image = setup
  logs = model.evaluate(batches(images, batch_size), verbose=0, return_dict=True)
  np.testing.assert_allclose(logs['bits_per_dim'], per_image.mean(), **EXACT)
  np.testing.assert_allclose(logs['loss'], per_image.mean(), **EXACT)  # the same quantity
  arrays = model.evaluate(images, batch_size=batch_size, verbose=0, return_dict=True)
  np.testing.assert_allclose(arrays['bits_per_dim'], per_image.mean(), **EXACT)


@pytest.mark.parametrize('batch_size', BATCH_SIZES)
def test_fit_reports_the_mean_over_images_for_training_and_validation(setup, batch_size):
  model, images, per_image = setup
  history = model.fit(
    batches(images, batch_size), validation_data=batches(images, batch_size), epochs=1, verbose=0
  ).history
  for name in ('bits_per_dim', 'loss', 'val_bits_per_dim', 'val_loss'):
    np.testing.assert_allclose(history[name][-1], per_image.mean(), err_msg=name, **EXACT)


@pytest.mark.parametrize('batch_size', BATCH_SIZES)
def test_importance_weighted_and_ood_bits_per_dim_are_means_over_images(setup, batch_size):
  model, images, per_image = setup
  iw = model.evaluate_bits_per_dim(batches(images, batch_size), seed=0)
  assert abs(iw - per_image.mean()) < NOISY
  scores = ood.bits_per_dim(model, images, batch_size=batch_size)
  assert scores.shape == (N_IMAGES,)
  assert abs(float(np.mean(scores)) - per_image.mean()) < NOISY


def test_a_conditional_model_s_loss_and_accuracy_are_means_over_images():
  """loss = bits/dim + class_loss_weight * cross-entropy / ln 2, per image, then the mean over images."""
  images = bin_centres(raw_images())
  labels = (np.arange(N_IMAGES) % 3).astype(np.int32)
  labels[-1] = 2
  model = perturbed_model(images, num_classes=3, class_loss_weight=1.0)
  logs = {b: model.evaluate(batches(images, b, labels), verbose=0, return_dict=True) for b in BATCH_SIZES}
  bpd = model.bits_per_dim(model.log_prob(images, labels)).numpy().mean()
  for b, figures in logs.items():
    np.testing.assert_allclose(figures['bits_per_dim'], bpd, err_msg=str(b), **EXACT)
    for name in ('loss', 'class_accuracy'):
      np.testing.assert_allclose(figures[name], logs[65][name], err_msg=f'{name} at {b}', **EXACT)
  assert logs[65]['loss'] > bpd + 0.1  # the class term is there, and weighs


# ---- the CLI ----------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def cli_run(setup, tmp_path_factory):
  """The model saved as model.keras, and the 65 images as the test split of an `npz:` data set."""
  model, _, per_image = setup
  root = tmp_path_factory.mktemp('cli_bpd')
  data_dir = root / 'data'
  data_dir.mkdir()
  np.savez(data_dir / 'test.npz', data=raw_images())
  np.savez(data_dir / 'train.npz', data=raw_images(seed=1))
  model.save(root / 'model.keras')
  return root, f'npz:{data_dir}', per_image


# A fresh model load and trace per run: the default run takes 16 (65 = 4 x 16 + 1), the rest with --slow.
@pytest.mark.parametrize('batch_size', [16, *(pytest.param(b, marks=pytest.mark.slow) for b in (13, 65, 64))])
def test_cli_evaluate_single_sample_and_importance_weighted_agree_at_any_batch_size(
  cli_run, capsys, batch_size
):
  root, dataset, per_image = cli_run
  args = ['evaluate', str(root / 'model.keras'), '--dataset', dataset, '--batch-size', str(batch_size)]
  assert cli.main([*args, '--importance-samples', '1']) == 0
  result = json.loads(capsys.readouterr().out)
  assert result['num_examples'] == N_IMAGES
  assert abs(result['test_bits_per_dim'] - per_image.mean()) < NOISY
  assert abs(result['test_bits_per_dim_importance_weighted'] - per_image.mean()) < NOISY


# ---- under a distribution strategy: pad, never cut ---------------------------------------------------

STRATEGY_SCRIPT = textwrap.dedent("""
  import json, os, sys
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
  import numpy as np
  import tensorflow as tf
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  import keras
  sys.path.insert(0, os.path.dirname(os.path.abspath({test_file!r})))
  from test_bits_per_dim import bin_centres, perturbed_model, raw_images
  from tfp_glow.training import inputs

  images = bin_centres(raw_images())
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with strategy.scope():
    mirrored = perturbed_model(images)
  single = perturbed_model(images)
  single.set_weights(mirrored.get_weights())  # the same model, on one device
  reference = float(np.mean(single.bits_per_dim(single.log_prob(images)).numpy()))
  evaluated = {{b: mirrored.evaluate(tf.data.Dataset.from_tensor_slices(images).batch(b), verbose=0,
                                    return_dict=True) for b in (65, 13, 16, 64, 1)}}
  # One training step each on 3 images (2 + a padded 1 per replica), then on a batch of 1 (one replica all
  # padding): plain SGD, so that any image left out, or any padding counted, changes the weights.
  train = tf.data.Dataset.from_tensor_slices(images[60:64]).batch(3)
  before = [v.numpy() for v in mirrored.trainable_variables]
  for model in (single, mirrored):
    model.compile(optimizer=keras.optimizers.SGD(0.5))
  fitted = {{name: m.fit(train, epochs=1, verbose=0).history for name, m in
            (('single', single), ('mirrored', mirrored))}}
  weights_diff = max(float(np.max(np.abs(a.numpy() - b.numpy())))
                     for a, b in zip(single.trainable_variables, mirrored.trainable_variables))
  moved = max(float(np.max(np.abs(a.numpy() - b))) for a, b in zip(single.trainable_variables, before))
  padded = []
  for packed in inputs.pad_batches(tf.data.Dataset.from_tensor_slices(images[:5]).batch(3), 2):
    x, labels, weights = inputs.unpack(packed, (8, 8, 1))
    padded.append(dict(images=int(x.shape[0]), weights=weights.numpy().tolist(), labels=labels is None,
                       same=bool(np.array_equal(x.numpy()[weights.numpy() > 0], images[:5][len(padded) * 3 :][:3]))))
  # A conditional model: its labels travel through the padding too.
  labels = (np.arange(65) % 3).astype(np.int32)
  with strategy.scope():
    cond = perturbed_model(images, num_classes=3, class_loss_weight=1.0)
  cond_single = perturbed_model(images, num_classes=3, class_loss_weight=1.0)
  cond_single.set_weights(cond.get_weights())
  cond_data = lambda b: tf.data.Dataset.from_tensor_slices((images, labels)).batch(b)
  conditional = dict(mirrored=cond.evaluate(cond_data(13), verbose=0, return_dict=True),
                     single=cond_single.evaluate(cond_data(65), verbose=0, return_dict=True))
  print(json.dumps(dict(replicas=strategy.num_replicas_in_sync, reference=reference, conditional=conditional,
                        evaluated={{b: r['bits_per_dim'] for b, r in evaluated.items()}},
                        loss={{b: r['loss'] for b, r in evaluated.items()}},
                        fitted={{n: h['bits_per_dim'][-1] for n, h in fitted.items()}},
                        weights_diff=weights_diff, moved=moved, padded=padded)))
""")


@pytest.fixture(scope='module')
def mirrored():
  script = STRATEGY_SCRIPT.format(test_file=__file__)
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh process with 2 logical devices (about 20 s)
def test_two_replicas_evaluate_every_image_once_at_any_batch_size(mirrored):
  assert mirrored['replicas'] == 2
  for batch_size, value in mirrored['evaluated'].items():
    np.testing.assert_allclose(value, mirrored['reference'], err_msg=batch_size, rtol=1e-5)
    np.testing.assert_allclose(mirrored['loss'][batch_size], mirrored['reference'], rtol=1e-5)


@pytest.mark.slow  # a fresh process with 2 logical devices (about 20 s)
def test_two_replicas_evaluate_a_conditional_model_as_one_device_does(mirrored):
  for name, value in mirrored['conditional']['single'].items():
    np.testing.assert_allclose(mirrored['conditional']['mirrored'][name], value, rtol=1e-5, err_msg=name)


@pytest.mark.slow  # a fresh process with 2 logical devices (about 20 s)
def test_two_replicas_train_on_the_mean_over_real_images_and_padding_moves_nothing(mirrored):
  assert mirrored['moved'] > 1e-3  # the steps did move the weights
  assert mirrored['weights_diff'] < 1e-5 * max(1.0, mirrored['moved'])
  np.testing.assert_allclose(mirrored['fitted']['mirrored'], mirrored['fitted']['single'], rtol=1e-5)


@pytest.mark.slow  # a fresh process with 2 logical devices (about 20 s)
def test_pad_batches_pads_to_a_multiple_of_the_replicas_with_zero_weights(mirrored):
  # 5 images at batch 3 on 2 replicas: 3 -> 4 images, the padding weighted 0; 2 stays 2.
  assert [(b['images'], b['weights']) for b in mirrored['padded']] == [(4, [1, 1, 1, 0]), (2, [1, 1])]
  assert all(b['labels'] and b['same'] for b in mirrored['padded'])  # the images come back unchanged


def test_sample_weights_in_the_data_are_refused_as_fit_refuses_sample_weight(setup):
  """Every image counts once: a weight in the data would change what bits/dim means (before: ignored)."""
  model, images, _ = setup
  weighted = tf.data.Dataset.from_tensor_slices((images, np.zeros([N_IMAGES], np.int32), np.ones([N_IMAGES])))
  with pytest.raises(ValueError, match='sample weights'):
    model.evaluate(weighted.batch(16), verbose=0)
  with pytest.raises(ValueError, match='sample_weight cannot be honoured'):
    model.evaluate(images, sample_weight=np.ones([N_IMAGES]), batch_size=16, verbose=0)
