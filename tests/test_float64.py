"""flow_dtype='float64' through every path that dequantizes: evaluate_bits_per_dim (single-sample and
importance-weighted), the tfp_glow.ood scores, `tfp-glow evaluate --importance-samples` and variational
training. The float64 model starts from the same weights as the float32 one (same seed, same init data), so
its figures must equal the float32 model's to float32 precision."""

import json

import numpy as np
import pytest

from tests.helpers import digits, tiny_model
from tfp_glow import cli, ood

N_BINS = 17


def _pair(**kwargs):
  """The same tiny model in float32 and float64, initialized on the same images."""
  x = next(iter(digits('test', batch_size=64, shuffle=False)))
  models = [tiny_model(flow_dtype=dtype, **kwargs) for dtype in ('float32', 'float64')]
  for m in models:
    m.initialize(x)
  return models, x


def _evaluate(models, x):
  return [m.evaluate_bits_per_dim(x, seed=1) for m in models]


def _importance_weighted(models, x):
  return [m.evaluate_bits_per_dim(x, samples=4, seed=1) for m in models]


def _ood_scores(models, x):
  backgrounds = [tiny_model(flow_dtype=m.glow.dtype.name, seed=1) for m in models]
  for b in backgrounds:
    b.initialize(x[::-1])
  noise = ood.shifted(x[:16], 'noise', N_BINS)
  figures = []
  for model, background in zip(models, backgrounds):
    rows = ood.score_table(
      model, x[:32], {'noise': noise}, scores=ood.SCORES, background=background, train_images=x[32:]
    )
    assert len(rows) == len(ood.SCORES) and all(np.isfinite(r['auroc']) for r in rows)
    figures.append(
      np.concatenate(
        [
          ood.bits_per_dim(model, x, samples=2),
          ood.complexity_corrected(model, x),
          ood.likelihood_ratio(model, background, x),
          [ood.training_entropy(model, x)[0]],
        ]
      )
    )
  return figures


def _cli_evaluate_importance(models, x, tmp_path, capsys):
  figures = []
  for m in models:
    path = tmp_path / f'{m.glow.dtype.name}.keras'
    m.save(path)
    capsys.readouterr()
    assert cli.main(['evaluate', str(path), '--importance-samples', '3']) == 0
    result = json.loads(capsys.readouterr().out)
    figures.append([result['test_bits_per_dim_importance_weighted'], result['test_bits_per_dim']])
  return figures


def _variational_training(models, x):
  """Trains the float64 model with q (no float32 twin: the training steps differ in rounding)."""
  model = tiny_model(flow_dtype='float64', dequantization='variational')
  model.initialize(x)
  history = model.fit(digits(batch_size=16, take=2), epochs=1, verbose=0)
  assert np.isfinite(history.history['loss'][-1])
  assert all(v.dtype == 'float64' for v in model.flow.trainable_variables)
  # q learned: its zero-initialized last layers moved (the gradient reached it through the float64 flow)
  last = [w.numpy() for first_last in model.dequantizer.coupling_nets for w in first_last[1].weights]
  assert any(np.any(w != 0) for w in last)
  bpd = model.evaluate_bits_per_dim(x[:16], samples=2, seed=0)
  return [bpd, bpd]  # checked finite below


PATHS = dict(
  evaluate=_evaluate,
  importance_weighted=_importance_weighted,
  ood_scores=_ood_scores,
  variational_training=_variational_training,
)


@pytest.fixture(scope='module')
def pair():
  """One float32 / float64 pair for every path (none of them changes the models)."""
  return _pair()


# The default run: evaluate and importance weighting; ood's scores, variational training (new models
# each) and the CLI with --slow.
SLOW_PATHS = ('ood_scores', 'variational_training', 'cli_evaluate_importance')


@pytest.mark.parametrize(
  'path',
  [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PATHS else p for p in [*PATHS, *SLOW_PATHS[2:]]],
)
def test_float64_flow_works_and_gives_the_float32_figures_through_every_path(path, pair, tmp_path, capsys):
  models, x = pair
  if path == 'cli_evaluate_importance':
    got32, got64 = _cli_evaluate_importance(models, x, tmp_path, capsys)
  else:
    got32, got64 = PATHS[path](models, x)
  assert np.all(np.isfinite(got64))
  np.testing.assert_allclose(got64, got32, atol=1e-4)
