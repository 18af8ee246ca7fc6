"""tfp_glow.ood: the metrics against brute force, the complexity term, the typicality test's error rates,
the background data's perturbation, the shifted sets, and `tfp-glow ood`."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import digits, tiny_model
from tfp_glow import cli, ood
from tfp_glow.dequantization import bins_of

N_BINS = 17


def _test_images(n=64):
  return next(iter(digits('test', batch_size=n, shuffle=False)))


def test_metrics_match_brute_force_definitions():
  rng = np.random.default_rng(0)
  inside, outside = rng.normal(0, 1, 200), rng.normal(1, 1, 150)
  got = ood.metrics(inside, outside)
  # AUROC: P(score_out > score_in) (Mann-Whitney)
  assert got['auroc'] == pytest.approx(np.mean(outside[:, None] > inside[None, :]), abs=1e-9)
  # FPR at the largest threshold that still flags >= 95% of the OOD inputs
  thresholds = np.sort(outside)[::-1]
  t = thresholds[int(np.ceil(0.95 * outside.size)) - 1]
  assert got['fpr_at_95_tpr'] == pytest.approx(np.mean(inside >= t), abs=1e-9)
  assert 0.5 < got['aupr'] <= 1.0
  separated = ood.metrics([0.0, 0.1, 0.2], [1.0, 2.0])
  assert separated == dict(auroc=1.0, aupr=1.0, fpr_at_95_tpr=0.0)
  assert ood.metrics([1.0, 2.0], [0.0, 0.1])['auroc'] == 0.0
  with pytest.raises(ood.NonFiniteError, match='NaN or Inf'):  # a ValueError; `tfp-glow ood` exits 1
    ood.metrics([0.0, np.nan], [1.0])


def test_complexity_orders_constant_digits_noise_and_is_a_png_length():
  images = _test_images(16)
  constant, noise = ood.shifted(images, 'constant', N_BINS), ood.shifted(images, 'noise', N_BINS)
  lengths = [ood.complexity(x, N_BINS) for x in (constant, images, noise)]
  assert lengths[0].max() < lengths[1].min() and lengths[1].max() < lengths[2].min()
  png = tf.io.encode_png(tf.zeros([8, 8, 1], tf.uint8), compression=9)
  assert ood.complexity(tf.fill([1, 8, 8, 1], -0.49), N_BINS)[0] == 8 * len(png.numpy()) / 64


def test_typicality_test_rejects_shifted_batches_either_way_and_keeps_its_false_alarm_rate():
  rng = np.random.default_rng(1)
  train, heldout, fresh = (rng.normal(3.0, 0.5, 2000) for _ in range(3))
  test = ood.TypicalityTest.fit(train, heldout, batch_size=8, alpha=0.05)
  assert test.entropy == pytest.approx(3.0, abs=0.05)
  false_alarms = np.mean(test.scores(fresh, batches=2000) > test.threshold)
  assert false_alarms < 0.1
  for shift in (-0.6, 0.6):  # too unlikely and too likely are both atypical
    assert np.mean(test.scores(fresh + shift, batches=500) > test.threshold) > 0.9
    assert test.is_ood(fresh[:8] + shift)
  with pytest.raises(ValueError, match='batch_size'):
    ood.TypicalityTest.fit(train, heldout, batch_size=0)


def test_perturb_replaces_the_requested_fraction_of_pixels_by_random_bins():
  images = _test_images(64)
  bins = bins_of(images, N_BINS).numpy()
  for fraction in (0.0, 0.3, 1.0):
    x = ood.perturb(images, fraction, N_BINS, seed=(0, 1)).numpy()
    assert x.shape == images.shape and x.min() >= -0.5 and x.max() < 0.5
    changed = np.mean(bins_of(x, N_BINS).numpy() != bins)
    # a replaced pixel keeps its bin with probability 1 / n_bins
    assert changed == pytest.approx(fraction * (1 - 1 / N_BINS), abs=0.03)
  with pytest.raises(ValueError, match='fraction must be in'):
    ood.perturb(images, 1.5, N_BINS)


def test_shifted_sets():
  images = _test_images(8)
  bins = bins_of(images, N_BINS).numpy()
  back = ood.shifted(ood.shifted(images, 'inverted', N_BINS), 'inverted', N_BINS)
  np.testing.assert_array_equal(bins_of(back, N_BINS).numpy(), bins)
  flipped = bins_of(ood.shifted(images, 'upside_down', N_BINS), N_BINS).numpy()
  np.testing.assert_array_equal(flipped, bins[:, ::-1])
  half = bins_of(ood.shifted(images, 'half_contrast', N_BINS), N_BINS).numpy()
  np.testing.assert_array_equal(half, bins // 2)
  constant = bins_of(ood.shifted(images, 'constant', N_BINS), N_BINS).numpy()
  assert np.all(constant == constant[:, :1, :1])
  with pytest.raises(ValueError, match='unknown shift'):
    ood.shifted(images, 'rotated', N_BINS)


def test_score_table_checks_what_each_score_needs():
  model = tiny_model()
  images = _test_images(16)
  with pytest.raises(ValueError, match='needs a background model'):
    ood.score_table(model, images, {'noise': images}, scores=['likelihood_ratio'])
  with pytest.raises(ValueError, match='needs train_images'):
    ood.score_table(model, images, {'noise': images}, scores=['typicality'])
  with pytest.raises(ValueError, match='unknown score'):
    ood.score_table(model, images, {'noise': images}, scores=['energy'])


def test_cli_ood_prints_the_table_and_writes_json(tmp_path, capsys):
  model = tiny_model()
  model.initialize(_test_images(64))
  model.save(tmp_path / 'm.keras')
  argv = ['ood', str(tmp_path / 'm.keras'), '--out', 'noise', 'constant', '--json', str(tmp_path / 'o.json')]
  assert cli.main([*argv, '--score', 'bits_per_dim', 'complexity_corrected']) == 0
  table = capsys.readouterr().out
  assert 'complexity_corrected' in table and 'AUROC' in table
  rows = json.loads((tmp_path / 'o.json').read_text())['rows']
  assert [(r['score'], r['out']) for r in rows] == [
    ('bits_per_dim', 'noise'),
    ('bits_per_dim', 'constant'),
    ('complexity_corrected', 'noise'),
    ('complexity_corrected', 'constant'),
  ]
  assert all(0.0 <= r['auroc'] <= 1.0 for r in rows)
  assert cli.main([*argv, '--score', 'likelihood_ratio']) == 2
  assert 'needs --background MODEL' in capsys.readouterr().err
  assert cli.main([*argv, '--typicality-images', '0']) == 2
  assert '--typicality-images must be >= 1, got 0' in capsys.readouterr().err


@pytest.mark.slow
def test_likelihood_ratio_and_typicality_through_the_cli_with_a_trained_background(tmp_path, capsys):
  tiny = ['--levels', '2', '--steps', '1', '--width', '8', '--batch-size', '128', '--no-ema', '--lr', '3e-2']
  common = ['train', *tiny, '--warmup-epochs', '0.2', '--epochs', '3']
  assert cli.main([*common, '--out', str(tmp_path / 'model')]) == 0
  assert cli.main([*common, '--background-noise', '0.2', '--out', str(tmp_path / 'background')]) == 0
  config = json.loads((tmp_path / 'background' / 'config.json').read_text())
  assert config['background_noise'] == 0.2
  assert cli.main(['train', '--background-noise', '2', '--out', str(tmp_path / 'x')]) == 2
  capsys.readouterr()
  json_path = tmp_path / 'ood.json'
  argv = ['ood', str(tmp_path / 'model'), '--background', str(tmp_path / 'background')]
  assert cli.main([*argv, '--out', 'noise', 'inverted', '--json', str(json_path)]) == 0
  rows = json.loads(json_path.read_text())['rows']
  scores = {r['score'] for r in rows}
  assert scores == {'bits_per_dim', 'complexity_corrected', 'likelihood_ratio', 'typicality'}
  by = {(r['score'], r['out']): r['auroc'] for r in rows}
  assert by['bits_per_dim', 'noise'] > 0.9  # uniform noise is far from digits for any trained model


def _conditional_model(num_classes=3):
  """A tiny class-conditional model whose classes give different densities (random class weights)."""
  model = tiny_model(num_classes=num_classes)
  images = _test_images(64)
  model.initialize(images, np.arange(64, dtype=np.int32) % num_classes)
  (weights,) = [v for v in model.weights if 'class_weights' in v.path]
  weights.assign(np.random.default_rng(3).normal(0, 0.3, weights.shape).astype(np.float32))
  return model


def _marginal_by_hand(model, images, seed):
  """-log2 P(b) / D of the marginal sum_y P(b|y) / K, from log_prob on the same dequantized images
  (evaluate_bits_per_dim's single draw for the chunk seeded `seed`: u ~ U[0, 1) from fold_in([seed, 0], 0))."""
  bins = bins_of(images, N_BINS)
  u = tf.random.stateless_uniform(
    tf.shape(bins), tf.random.experimental.stateless_fold_in(tf.constant([seed, 0]), 0)
  )
  x = (bins + u) / N_BINS - 0.5
  n, k, d = int(images.shape[0]), model.num_classes, model.num_dims
  log_p = np.stack([model.log_prob(x, np.full([n], y, np.int32)).numpy() for y in range(k)]).astype(
    np.float64
  )
  marginal = np.logaddexp.reduce(log_p - np.log(k), axis=0)  # log sum_y p(x|y) pi(y), pi = 1/K
  return (-marginal + d * np.log(N_BINS)) / (d * np.log(2.0)), log_p


def test_conditional_model_is_scored_through_the_marginal_over_labels():
  model = _conditional_model()
  images = _test_images(24)
  got = ood.bits_per_dim(model, images, seed=5)
  expected, log_p = _marginal_by_hand(model, images, seed=5)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, expected, atol=1e-4)
  # the classes differ, so the marginal is none of the conditionals (it lies between them)
  per_class = (-log_p + model.num_dims * np.log(N_BINS)) / (model.num_dims * np.log(2.0))
  assert np.min(np.ptp(per_class, axis=0)) > 1e-3
  assert np.all(got > per_class.min(axis=0)) and np.all(got < per_class.max(axis=0))
  # every score goes through it
  lr = ood.likelihood_ratio(model, model, images, seed=5)
  np.testing.assert_allclose(lr, 0.0, atol=1e-9)
  cc = ood.complexity_corrected(model, images, seed=5)
  np.testing.assert_allclose(cc, expected - ood.complexity(images, N_BINS), atol=1e-4)


@pytest.mark.slow  # the default run: the library's marginal (above) and the CLI's table of a plain model
def test_cli_ood_scores_a_conditional_model_through_the_marginal(tmp_path, capsys):
  model = _conditional_model(num_classes=10)
  model.save(tmp_path / 'm.keras')
  json_path = tmp_path / 'o.json'
  argv = ['ood', str(tmp_path / 'm.keras'), '--out', 'noise', '--json', str(json_path)]
  assert cli.main([*argv, '--score', 'bits_per_dim', 'typicality', '--typicality-images', '100']) == 0
  result = json.loads(json_path.read_text())
  assert result['marginal_over_classes'] == 10 and result['typicality_images'] == 100
  rows = {r['score']: r for r in result['rows']}
  assert all(np.isfinite(v) for r in rows.values() for v in (r['auroc'], r['aupr'], r['fpr_at_95_tpr']))
  # the CLI's AUROC is that of the library's marginal scores of the same images
  in_images = tf.concat(list(digits('test', batch_size=256, shuffle=False)), 0)
  noise = ood.shifted(in_images, 'noise', N_BINS)
  expected = ood.metrics(ood.bits_per_dim(model, in_images), ood.bits_per_dim(model, noise))
  assert rows['bits_per_dim']['auroc'] == pytest.approx(expected['auroc'], abs=1e-9)


def _counted(batches, pulled):
  for batch in batches:
    pulled.append(1)
    yield batch


def test_training_entropy_streams_a_bounded_sample_of_a_larger_split():
  model = tiny_model()
  images = _test_images(100)
  model.initialize(images)
  batches = [images[i : i + 16] for i in range(0, 100, 16)]
  full = np.mean(ood.bits_per_dim(model, images, seed=2, batch_size=16))
  pulled = []
  entropy, count = ood.training_entropy(
    model, _counted(batches, pulled), max_images=1000, seed=2, batch_size=16
  )
  assert count == 100 and entropy == pytest.approx(full, rel=1e-6)  # the bound covers the split: its mean
  pulled = []
  entropy, count = ood.training_entropy(
    model, _counted(batches, pulled), max_images=40, seed=2, batch_size=16
  )
  assert count == 40 and len(pulled) == 3  # read only the batches it needed, the third in part
  assert entropy == pytest.approx(
    np.mean(ood.bits_per_dim(model, images[:40], seed=2, batch_size=16)), rel=1e-6
  )
  # labeled batches (labels unused) and a tf.data.Dataset stream alike
  ds = tf.data.Dataset.from_tensor_slices((images, tf.zeros([100], tf.int32))).batch(16)
  assert ood.training_entropy(model, ds, max_images=1000, seed=2, batch_size=16) == (
    pytest.approx(full, rel=1e-6),
    100,
  )
  # an array larger than the bound: a random subset of that many images
  assert ood.training_entropy(model, images, max_images=30)[1] == 30
  with pytest.raises(ValueError, match='max_images must be'):
    ood.training_entropy(model, images, max_images=0)


def test_score_table_takes_a_stream_of_training_batches_for_typicality():
  model = tiny_model()
  images = _test_images(64)
  model.initialize(images)
  train = digits('train', batch_size=32, shuffle=False)  # more images than the bound
  rows = ood.score_table(
    model,
    images,
    {'noise': ood.shifted(images, 'noise', N_BINS)},
    scores=['typicality'],
    train_images=train,
    typicality_images=50,
  )
  assert rows[0]['score'] == 'typicality' and 0.0 <= rows[0]['auroc'] <= 1.0


def _bins_per_epoch(dataset, epochs=2):
  return [np.concatenate([bins_of(b, N_BINS).numpy() for b in dataset]) for _ in range(epochs)]


def test_background_perturbation_is_fresh_every_epoch():
  images = _test_images(64)
  keras.utils.set_random_seed(0)  # as `tfp-glow train` does before it builds its data: a global seed
  # one batch an epoch: a parallel map may hand stateful draws to the batches in another order each epoch
  batches = tf.data.Dataset.from_tensor_slices(images).batch(64)
  first, second = _bins_per_epoch(ood.perturbed_dataset(batches, 0.5, N_BINS))
  original = bins_of(images, N_BINS).numpy()
  for epoch in (first, second):
    assert np.mean(epoch != original) == pytest.approx(0.5 * (1 - 1 / N_BINS), abs=0.05)
  assert np.mean(first != second) > 0.3  # not the same perturbation replayed


def test_background_perturbation_is_reproducible_with_a_seed():
  batches = tf.data.Dataset.from_tensor_slices((_test_images(64), tf.range(64))).batch(16)
  runs = [
    _bins_per_epoch(ood.perturbed_dataset(batches, 0.5, N_BINS, seed=3).map(lambda x, y: x)) for _ in range(2)
  ]
  np.testing.assert_array_equal(runs[0][0], runs[1][0])
  np.testing.assert_array_equal(runs[0][1], runs[1][1])
  assert np.mean(runs[0][0] != runs[0][1]) > 0.3
