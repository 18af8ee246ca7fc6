"""What each entry point checks: the table in docs/troubleshooting.md, row by row.

The rows are read from the markdown, so the doc and the behaviour cannot drift apart: a row without a
call here, or a call without a row there, fails `test_the_table_and_the_calls_list_the_same_cases`.
"""

import contextlib
import functools
import io
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import Glow, GlowDistribution, GlowModel, cli

DOC = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'troubleshooting.md'
SECTION = '## What each entry point checks'
SHAPE = (8, 8, 1)
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(-0.5, 0.5, [3, *SHAPE]).astype(np.float32)
LABELS = np.array([0, 1, 2], np.int32)


def table_rows() -> list[tuple[str, str, str]]:
  """(entry point, bad input, outcome) for every row of the doc's table (backticks of the entry dropped)."""
  section = DOC.read_text().split(SECTION, 1)[1]
  rows = []
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if line.startswith('| `') and len(cells) == 3:
      rows.append((cells[0].strip('`'), cells[1], cells[2]))
  return rows


def with_bad(images, value, at=(0, 0, 0, 0)):
  bad = np.array(images, np.float32)
  bad[at] = value
  return bad


NAN, INF = with_bad(IMAGES, np.nan), with_bad(IMAGES, np.inf)
RAW = RNG.uniform(0, 255, [3, *SHAPE]).astype(np.float32)  # 0..255 floats: raw pixels by mistake
UINT8 = RAW.astype(np.uint8)


@functools.cache
def glow(validate_args=False):
  g = fresh_glow(validate_args)
  g.initialize(IMAGES)
  return g


def fresh_glow(validate_args=False):
  return Glow(SHAPE, levels=2, steps=1, width=8, seed=0, validate_args=validate_args)


def dist(validate_args=False):
  return GlowDistribution(glow(), validate_args=validate_args)


def sample_in_a_function(m, temperature):
  """m.sample inside a user's tf.function (the model built before, eagerly, as a user's is)."""
  return tf.function(lambda t: m.sample(2, temperature=t, labels=LABELS[:2]))(tf.constant(temperature))


@functools.cache
def model():
  """A class-conditional GlowModel (3 classes): its rows and its SavedModel's."""
  m = GlowModel(SHAPE, levels=2, steps=1, width=8, n_bins=17, seed=0, num_classes=3)
  m.compile()
  m.initialize(IMAGES, LABELS)
  return m


def bad_latents(value):
  """Per-level latents of IMAGES with one bad value in the first level."""
  latents = [z.numpy() for z in glow().encode(IMAGES)]
  latents[0] = with_bad(latents[0], value)
  return latents


def latent(value):
  """A latent [3, H, W, C] (as `Glow.forward` takes it) with one bad value."""
  return with_bad(np.zeros([3, *SHAPE], np.float32), value)


PRINTED = {}  # what `export` printed, by path


@functools.cache
def exported(tmp: pathlib.Path) -> str:
  """`model()`'s SavedModel."""
  path = str(tmp / 'saved_model')
  with contextlib.redirect_stdout(io.StringIO()) as out:
    model().export(path)
  PRINTED[path] = out.getvalue()
  return path


@functools.cache
def load_saved_model(path):
  from tfp_glow.training.export import load_saved_model  # pylint: disable=import-outside-toplevel

  return load_saved_model(path)


@functools.cache
def saved(tmp):
  return tf.saved_model.load(exported(tmp))  # kept: a loaded function needs its object alive


def labels_for(n):
  return tf.constant(LABELS[:n])


# (entry point, bad input) -> call(tmp); a CLI call returns its argv (run by `cli.main`).
CALLS = {
  ('Glow.inverse', 'NaN pixel'): lambda tmp: glow().inverse(NAN),
  ('Glow.inverse', '0..255 floats'): lambda tmp: glow().inverse(RAW),
  ('Glow.forward', 'NaN latent'): lambda tmp: glow().forward(latent(np.nan)),
  ('Glow(validate_args=True).inverse', 'NaN pixel'): lambda tmp: glow(True).inverse(NAN),
  ('Glow(validate_args=True).inverse', '0..255 floats'): lambda tmp: glow(True).inverse(RAW),
  ('Glow(validate_args=True).forward', 'Inf latent'): lambda tmp: glow(True).forward(latent(np.inf)),
  ('Glow(validate_args=True).encode', 'Inf pixel'): lambda tmp: glow(True).encode(INF),
  ('Glow(validate_args=True).decode', 'NaN latent'): lambda tmp: glow(True).decode(bad_latents(np.nan)),
  ('Glow(validate_args=True).initialize', 'NaN pixel'): lambda tmp: fresh_glow(True).initialize(NAN),
  ('Glow(validate_args=True).initialize', '0..255 floats'): lambda tmp: fresh_glow(True).initialize(RAW),
  ('GlowDistribution.log_prob', 'NaN pixel'): lambda tmp: dist().log_prob(NAN),
  ('GlowDistribution.log_prob', '0..255 floats'): lambda tmp: dist().log_prob(RAW),
  ('GlowDistribution.sample', 'temperature 0'): lambda tmp: dist().sample(2, temperature=0.0),
  ('GlowDistribution.sample', 'temperature tensor 0'): lambda tmp: dist().sample(
    2, temperature=tf.constant(0.0)
  ),
  ('GlowDistribution(validate_args=True).log_prob', 'NaN pixel'): lambda tmp: dist(True).log_prob(NAN),
  ('GlowDistribution(validate_args=True).log_prob', '0..255 floats'): lambda tmp: dist(True).log_prob(RAW),
  ('GlowDistribution(validate_args=True).encode', 'Inf pixel'): lambda tmp: dist(True).encode(INF),
  ('GlowDistribution(validate_args=True).decode', 'NaN latent'): lambda tmp: dist(True).decode(
    bad_latents(np.nan)
  ),
  ('GlowDistribution(validate_args=True).sample', 'temperature tensor 0'): lambda tmp: dist(True).sample(
    2, temperature=tf.constant(0.0)
  ),
  ('GlowModel.log_prob', 'NaN pixel'): lambda tmp: model().log_prob(NAN, LABELS),
  ('GlowModel.log_prob', '0..255 floats'): lambda tmp: model().log_prob(RAW, LABELS),
  ('GlowModel.log_prob', 'uint8 pixels'): lambda tmp: model().log_prob(UINT8, LABELS),
  ('GlowModel.log_prob', 'label >= num_classes'): lambda tmp: model().log_prob(IMAGES, [0, 1, 3]),
  ('GlowModel.initialize', '0..255 floats'): lambda tmp: model().initialize(RAW, LABELS),
  ('GlowModel.encode', 'Inf pixel'): lambda tmp: model().encode(INF, LABELS),
  ('GlowModel.decode', 'NaN latent'): lambda tmp: model().decode(bad_latents(np.nan), LABELS),
  ('GlowModel.sample', 'temperature 0'): lambda tmp: model().sample(2, temperature=0.0, labels=LABELS[:2]),
  ('GlowModel.sample in a tf.function', 'temperature tensor 0'): lambda tmp: sample_in_a_function(
    model(), 0.0
  ),
  ('tf.saved_model.load(...).log_prob', 'NaN pixel'): lambda tmp: saved(tmp).log_prob(NAN, labels_for(3)),
  ('tf.saved_model.load(...).log_prob', '0..255 floats'): lambda tmp: saved(tmp).log_prob(RAW, labels_for(3)),
  ('tf.saved_model.load(...).log_prob', 'uint8 pixels'): lambda tmp: saved(tmp).log_prob(
    tf.constant(UINT8), labels_for(3)
  ),
  ('tf.saved_model.load(...).log_prob', 'label >= num_classes'): lambda tmp: saved(tmp).log_prob(
    IMAGES, tf.constant([0, 1, 3])
  ),
  ('tf.saved_model.load(...).sample', 'temperature 0'): lambda tmp: saved(tmp).sample(
    tf.constant(2), tf.constant(0.0), labels_for(2)
  ),
  ('tf.saved_model.load(...).sample', 'n < 0'): lambda tmp: saved(tmp).sample(
    tf.constant(-1), tf.constant(0.7), labels_for(0)
  ),
  ('load_saved_model(...).log_prob', '0..255 floats'): lambda tmp: load_saved_model(exported(tmp)).log_prob(
    RAW, LABELS
  ),
  ('load_saved_model(...).log_prob', 'uint8 pixels'): lambda tmp: load_saved_model(exported(tmp)).log_prob(
    UINT8, LABELS
  ),
  ('load_saved_model(...).sample', 'temperature 0'): lambda tmp: load_saved_model(exported(tmp)).sample(
    2, 0.0, LABELS[:2]
  ),
  ('tfp-glow interpolate', 'a missing image file'): lambda tmp: [
    'interpolate',
    model_file(tmp),
    str(tmp / 'missing.png'),
    'test:0',
    '--out',
    str(tmp / 'out.png'),
  ],
  ('tfp-glow evaluate', 'a corrupt model file'): lambda tmp: ['evaluate', corrupt_file(tmp)],
}


def model_file(tmp) -> str:
  path = tmp / 'model.keras'
  if not path.exists():
    model().save(path)
  return str(path)


def corrupt_file(tmp) -> str:
  path = tmp / 'corrupt.keras'
  path.write_bytes(b'not a zip archive')
  return str(path)


ERRORS = {
  'InvalidArgumentError': tf.errors.InvalidArgumentError,
  'ValueError': ValueError,
  'TypeError': TypeError,
}


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp('entry_checks')


def test_the_table_and_the_calls_list_the_same_cases():
  rows = [row[:2] for row in table_rows()]
  assert len(rows) == len(set(rows)), 'a row appears twice in the table'
  assert sorted(rows) == sorted(CALLS), (
    f'in the doc only: {sorted(set(rows) - set(CALLS))}; here only: {sorted(set(CALLS) - set(rows))}'
  )


@pytest.mark.parametrize('entry, bad, outcome', table_rows(), ids=[f'{r[0]} | {r[1]}' for r in table_rows()])
def test_each_entry_point_checks_what_the_doc_says(entry, bad, outcome, tmp, capsys):
  call = functools.partial(CALLS[(entry, bad)], tmp)
  if outcome.startswith('no error'):
    result = call()
    values = np.concatenate([np.ravel(v) for v in tf.nest.flatten(result)]) if result is not None else None
    if outcome == 'no error, NaN':
      assert np.isnan(values).any(), values
    else:
      assert outcome == 'no error', outcome
    return
  if outcome.startswith('exit'):
    code, text = re.fullmatch(r'exit (\d+): "(.*)"', outcome).groups()
    assert cli.main(call()) == int(code)
    err = capsys.readouterr().err
    assert text in err and len(err.strip().splitlines()) == 1, err
    return
  name, how, text = re.fullmatch(r'`(\w+)`(:| containing) "(.*)"', outcome).groups()
  with pytest.raises(ERRORS[name]) as raised:
    call()
  message = raised.value.message if isinstance(raised.value, tf.errors.OpError) else str(raised.value)
  if how == ':':  # our message alone, from its start
    assert message.startswith(text), message
  else:
    assert text in message, message


def test_the_saved_model_returns_what_the_model_returns_and_says_so_in_a_few_lines(tmp):
  path = exported(tmp)
  assert PRINTED[path].splitlines() == [
    f'wrote a SavedModel to {path} (load with tf.saved_model.load); endpoints:',
    '  log_prob(images: float32 [None, 8, 8, 1], labels: int32 [None]) -> float32 [None]',
    '  sample(n: int32 [], temperature: float32 [], labels: int32 [None]) -> uint8 [n, 8, 8, 1]',
    '  sample_floats(n: int32 [], temperature: float32 [], labels: int32 [None]) -> float32 [n, 8, 8, 1]',
  ]
  loaded = saved(tmp)
  np.testing.assert_allclose(
    loaded.log_prob(IMAGES, labels_for(3)), model().log_prob(IMAGES, LABELS), rtol=1e-5, atol=1e-4
  )
  images = loaded.sample(tf.constant(3), tf.constant(0.7), labels_for(3))
  expected = model().sample(3, temperature=0.7, labels=LABELS)
  assert images.dtype == expected.dtype == tf.uint8 and images.shape == expected.shape == (3, *SHAPE)
  levels = {round(b * 255 / 16) for b in range(17)}  # n_bins = 17: the values GlowModel.sample gives
  assert set(np.unique(images.numpy())) <= levels
  floats = loaded.sample_floats(tf.constant(3), tf.constant(0.7), labels_for(3))
  assert floats.dtype == tf.float32 and floats.shape == (3, *SHAPE) and np.all(np.isfinite(floats))
  assert loaded.sample(tf.constant(0), tf.constant(0.7), labels_for(0)).shape == (0, *SHAPE)
