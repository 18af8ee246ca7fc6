"""A conditioner context through the whole flow (tfp_glow.flow.context): a tensor c [N, E] that reaches every
coupling of every level and step, in the StepStack loop, a StepList and the hand-built gradients.

Float64, 8x8x3 images, levels=2, steps=2, width 8, perturbed parameters (a fresh flow is the identity in its
couplings). Checked: the log-dets against autodiff Jacobians and inverse(forward) with a context, for the conv
and the transformer conditioner; the gradients with respect to x, the context and every parameter equal between
gradient='autodiff' and the hand-built 'stored', 'checkpoint' and 'inverse' (eagerly, in a graph, under XLA; a
StepStack and a StepList); the distribution's context (TFP's bijector_kwargs, batch broadcasting); a
class-conditional GlowModel whose learned class embedding is the context (fit, .keras); the refusals.
"""

import functools
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.bijectors import conditioners
from tfp_glow.bijectors.base import GlowBijector, ParameterLayer
from tfp_glow.flow import StepList, StepStack, gradients
from tfp_glow.testing import assert_bijective, assert_log_det_matches_jacobian, perturb

SHAPE = (8, 8, 3)
E = 3
RNG = np.random.default_rng(17)
X = RNG.uniform(-0.5, 0.5, (2, *SHAPE))
C = RNG.standard_normal((2, E))
# The transformer at this Glow's levels (4x4 and 2x2): one-pixel patches.
SETTINGS = {
  'conv': {'context_size': E},
  'transformer': {'depth': 1, 'width': 8, 'heads': 2, 'patch_size': 1, 'context_size': E},
}


class OwnScale(GlowBijector):
  """A per-channel scale that owns its parameter and cannot be stacked: a level with it runs as a StepList."""

  def __init__(self, channels, seed=0, dtype=tf.float32, name='own_scale'):
    layer = ParameterLayer(dtype, name)
    layer.log_scale = layer.add_weight(shape=(channels,), initializer='zeros', name='log_scale')
    super().__init__(layer=layer, channels=channels, dtype=dtype, name=name)

  def inverse_and_log_det(self, y, **kwargs):
    s = tf.convert_to_tensor(self.layer.log_scale)
    return y * tf.exp(s), tf.cast(y.shape[1] * y.shape[2], y.dtype) * tf.reduce_sum(s)

  def forward_and_log_det(self, x, **kwargs):
    s = tf.convert_to_tensor(self.layer.log_scale)
    return x * tf.exp(-s), -tf.cast(x.shape[1] * x.shape[2], x.dtype) * tf.reduce_sum(s)


def build(conditioner, gradient='autodiff', steps='stack'):
  """A Glow whose every coupling takes a context: StepStacks (no "runs unrolled" warning), or with steps='list'
  StepLists (a permutation that cannot be stacked)."""
  with warnings.catch_warnings():
    warnings.simplefilter('error' if steps == 'stack' else 'ignore')
    return tg.Glow(
      SHAPE,
      levels=2,
      steps=2,
      width=8,
      seed=0,
      dtype=tf.float64,
      gradient=gradient,
      conditioner=conditioner,
      conditioner_settings=SETTINGS[conditioner],
      permutation=OwnScale if steps == 'list' else 'conv_lu',
    )


@functools.cache
def flows(conditioner, gradient, steps='stack'):
  """(reference, flow): equal values, the reference differentiated by TensorFlow alone."""
  reference, flow = build(conditioner, 'autodiff', steps), build(conditioner, gradient, steps)
  reference.initialize(tf.constant(X), context=tf.constant(C))
  perturb(reference, 0.1)
  for a, b in zip(flow.variables, reference.variables):
    a.assign(b)
  kind = StepStack if steps == 'stack' else StepList
  assert all(isinstance(level.steps, kind) for level in flow.levels)
  return reference, flow


def objective(glow, x, c):
  z = glow.inverse(x, context=c)
  ildj = glow.inverse_log_det_jacobian(x, 3, context=c)
  return tf.reduce_sum(tf.sin(2 * z)) + tf.reduce_sum(ildj**2) / 100


def grad(glow):
  x, c = tf.constant(X), tf.constant(C)
  with tf.GradientTape() as tape:
    tape.watch([x, c])
    loss = objective(glow, x, c)
  return tape.gradient(loss, [x, c, *glow.trainable_variables])


def assert_equal_gradients(got, expected, variables):
  assert len(got) == len(expected)
  for g, e, name in zip(got, expected, ['x', 'context', *[v.name for v in variables]]):
    assert g is not None and e is not None, f'no gradient for {name}'
    e = np.asarray(e)
    np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-10 * max(1.0, np.max(np.abs(e))), err_msg=name)
  assert np.max(np.abs(expected[1])) > 1e-4, 'the context has no gradient: the test would not see a wrong one'
  kernels = [e for e, v in zip(expected[2:], variables) if 'context' in v.name]
  assert len(kernels) == 2, 'one context kernel per level'  # [K, E, width]: every step of every level
  assert all(np.min(np.max(np.abs(k), axis=(1, 2))) > 1e-6 for k in kernels), 'a step whose context is unused'


def spy_on_the_hand_built_loops(monkeypatch):
  calls = []
  for name in ('_stack_gradient', '_list_gradient'):
    original = getattr(gradients, name)

    def spy(*args, original=original, **kwargs):
      calls.append(kwargs.get('context') is not None)
      return original(*args, **kwargs)

    monkeypatch.setattr(gradients, name, spy)
  return calls


# ---- exactness ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('conditioner', ['conv', pytest.param('transformer', marks=pytest.mark.slow)])
def test_a_context_reaches_the_couplings_and_the_flow_stays_exact(conditioner):
  glow, _ = flows(conditioner, 'stored')  # the reference: its Jacobians through TensorFlow's own gradient
  x, c = tf.constant(X), tf.constant(C)
  kwargs = {'context': c}
  z = assert_bijective(glow, x, kwargs, rtol=1e-10, atol=1e-10)
  inverse, _ = assert_log_det_matches_jacobian(glow, x, kwargs, rtol=1e-9, atol=1e-9)
  assert np.all(np.abs(inverse) > 1e-3)
  other = glow.inverse(tf.identity(x), context=tf.constant(C[::-1]))
  assert np.max(np.abs(other - z)) > 1e-4, 'the context changed nothing'
  # per level: the same latents from encode/decode, the Glow's own API
  latents = glow.encode(x, context=c)
  np.testing.assert_allclose(glow.decode(latents, context=c), x, rtol=1e-10, atol=1e-10)


# ---- the hand-built gradients carry the context ------------------------------------------------------------

# The default run: the conv's hand-built kernels under every gradient, the transformer's generic VJP once.
GRADIENT_CASES = [
  ('conv', 'stored'),
  ('conv', 'inverse'),
  ('conv', 'checkpoint'),
  ('transformer', 'stored'),
  pytest.param('transformer', 'inverse', marks=pytest.mark.slow),
]


@pytest.mark.parametrize('conditioner, gradient', GRADIENT_CASES)
def test_gradients_for_the_context_and_every_parameter_equal_autodiff(conditioner, gradient, monkeypatch):
  reference, flow = flows(conditioner, gradient)
  expected = grad(reference)
  calls = spy_on_the_hand_built_loops(monkeypatch)
  got = grad(flow)
  assert calls == [True, True], 'the hand-built loop of each level, with the context'
  assert_equal_gradients(got, expected, flow.trainable_variables)


@pytest.mark.parametrize(
  'gradient, jit',
  [('stored', False), pytest.param('inverse', True, marks=pytest.mark.slow)],
  ids=['graph', 'xla'],
)
def test_the_hand_built_gradients_with_a_context_in_a_graph_and_under_xla(gradient, jit):
  reference, flow = flows('conv', gradient)
  expected = grad(reference)
  got = tf.function(functools.partial(grad, flow), jit_compile=jit)()
  assert_equal_gradients(got, expected, flow.trainable_variables)


@pytest.mark.parametrize('gradient', ['inverse', 'checkpoint'])
def test_a_step_list_carries_the_context_and_its_gradient(gradient, monkeypatch):
  reference, flow = flows('conv', gradient, 'list')
  x, c = tf.constant(X), tf.constant(C)
  np.testing.assert_allclose(flow.forward(flow.inverse(x, context=c), context=c), x, rtol=1e-10, atol=1e-10)
  expected = grad(reference)
  calls = spy_on_the_hand_built_loops(monkeypatch)
  got = grad(flow)
  assert calls == [True, True]
  assert_equal_gradients(got, expected, flow.trainable_variables)


def test_a_step_list_of_stacked_layers_sums_each_stack_s_gradient_over_its_steps():
  """Without a context too: a StepList whose actnorms and couplings are views of stacks ([K, ...], read by every
  step) gets each stack's gradient from every step, not from the last step that reads it alone."""
  kwargs = dict(levels=2, steps=2, width=8, seed=0, dtype=tf.float64, permutation=OwnScale)
  with pytest.warns(UserWarning, match='run unrolled'):
    reference, flow = (
      tg.Glow(SHAPE, gradient='autodiff', **kwargs),
      tg.Glow(SHAPE, gradient='inverse', **kwargs),
    )
  reference.initialize(tf.constant(X))
  perturb(reference, 0.1)
  for a, b in zip(flow.variables, reference.variables):
    a.assign(b)

  def gradient(glow):
    x = tf.constant(X)
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.sin(2 * glow.inverse(x))) + tf.reduce_sum(glow.inverse_log_det_jacobian(x, 3))
    return tape.gradient(loss, [x, *glow.trainable_variables])

  for g, e in zip(gradient(flow), gradient(reference)):
    np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-12)


# ---- the distribution ----------------------------------------------------------------------------------


def test_the_distribution_takes_a_context_as_tfp_users_pass_bijector_kwargs():
  _, glow = flows('conv', 'stored')
  dist = tg.GlowDistribution(glow)
  x, c = tf.constant(X), tf.constant(C)
  z, ildj = glow.inverse_and_log_det(x, context=c)
  expected = tf.reduce_sum(-0.5 * z**2 - 0.5 * np.log(2 * np.pi), axis=[1, 2, 3]) + ildj  # N(0, I) base
  np.testing.assert_allclose(dist.log_prob(x, context=c), expected, rtol=1e-10)
  np.testing.assert_allclose(dist.log_prob(x, bijector_kwargs={'context': c}), expected, rtol=1e-10)
  with pytest.raises(
    ValueError, match=r'built with context_size=3 and read a context \[N, 3\]; pass context='
  ):
    dist.log_prob(x)  # no context: refused, not the density of another model
  # batch broadcasting: images [2, 2, ...] with one context [E] for all, or one per image [2, 2, E]
  xx = tf.stack([x, x[::-1]])
  one = dist.log_prob(xx, context=c[0])
  flat = dist.log_prob(tf.reshape(xx, [4, *SHAPE]), context=tf.tile(c[:1], [4, 1]))
  assert one.shape == (2, 2)
  np.testing.assert_allclose(tf.reshape(one, [4]), flat, rtol=1e-10)
  per_image = dist.log_prob(xx, context=tf.stack([c, c[::-1]]))
  np.testing.assert_allclose(per_image, [expected.numpy(), expected.numpy()[::-1]], rtol=1e-10)
  samples = dist.sample(3, seed=(1, 2), context=c[0], temperature=0.5)  # one context for the 3 images
  eps = dist.distribution.sample(3, seed=(1, 2)) * 0.5
  np.testing.assert_allclose(samples, glow.forward(eps, context=tf.tile(c[:1], [3, 1])), rtol=1e-10)
  other = dist.sample(3, seed=(1, 2), context=-c[0], temperature=0.5)
  assert np.max(np.abs(samples - other)) > 1e-4  # the context changes the samples
  with pytest.raises(ValueError, match='pass context='):
    dist.sample(3, seed=(1, 2), temperature=0.5)
  latents = dist.encode(xx, context=c[1])
  np.testing.assert_allclose(dist.decode(latents, context=c[1]), xx, rtol=1e-9, atol=1e-10)
  with pytest.raises(ValueError, match=r'context must be \[E\] \(one for all images\) or of the batch shape'):
    dist.log_prob(xx, context=c)


# ---- a class embedding as the context --------------------------------------------------------------------


@pytest.mark.slow
def test_a_class_embedding_is_the_context_trains_with_fit_and_round_trips_through_keras(tmp_path):
  model = tg.GlowModel(
    SHAPE, levels=2, steps=2, width=8, n_bins=16, num_classes=3, class_context=4, seed=1, gradient='inverse'
  )
  assert model.spec.class_context == 4 and model.get_config()['class_context'] == 4
  embedding = [v for v in model.trainable_variables if 'class_embedding' in v.path]
  kernels = [v for v in model.trainable_variables if 'context' in v.name]
  assert len(embedding) == 1 and embedding[0].shape == (3, 4) and len(kernels) == 2
  before = [v.numpy() for v in (*embedding, *kernels)]
  images = tf.constant(RNG.uniform(-0.5, 0.5, (8, *SHAPE)), tf.float32)
  labels = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.fit(images, labels, batch_size=4, epochs=2, verbose=0)
  after = [v.numpy() for v in (*embedding, *kernels)]
  assert all(np.max(np.abs(a - b)) > 1e-6 for a, b in zip(after, before)), (
    'the embedding or a kernel is not trained'
  )
  log_p = model.log_prob(images, labels)
  assert np.max(np.abs(log_p - model.log_prob(images, (labels + 1) % 3))) > 1e-4  # the class matters
  path = str(tmp_path / 'class_context.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert loaded.spec.class_context == 4
  np.testing.assert_allclose(loaded.log_prob(images, labels), log_p, rtol=1e-5, atol=1e-4)


def test_a_class_embedding_feeds_every_coupling_and_its_gradient_is_exact():
  kwargs = dict(levels=2, steps=2, width=8, seed=0, dtype=tf.float64, num_classes=3, class_context=E)
  reference = tg.Glow(SHAPE, gradient='autodiff', **kwargs)
  flow = tg.Glow(SHAPE, gradient='inverse', **kwargs)
  assert flow.conditioner == conditioners.Conv(context_size=E)
  labels = tf.constant([2, 0])
  reference.initialize(tf.constant(X), labels)
  perturb(reference, 0.1)
  for a, b in zip(flow.variables, reference.variables):
    a.assign(b)
  table = [i for i, v in enumerate(flow.trainable_variables) if 'class_embedding' in v.name]
  assert len(table) == 1 and flow.trainable_variables[table[0]].shape == (3, E)

  def gradient(glow):
    x = tf.constant(X)
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.sin(glow.inverse(x, labels=labels))) + tf.reduce_sum(
        glow.inverse_log_det_jacobian(x, 3, labels=labels)
      )
    return tape.gradient(loss, [x, *glow.trainable_variables])

  expected, got = gradient(reference), gradient(flow)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(tf.convert_to_tensor(g), tf.convert_to_tensor(e), rtol=1e-8, atol=1e-12)
  rows = tf.convert_to_tensor(expected[1 + table[0]]).numpy()
  assert np.all(np.abs(rows[[0, 2]]) > 1e-8) and np.all(rows[1] == 0)  # the rows of the labels given
  z = flow.inverse(tf.constant(X), labels=labels)
  np.testing.assert_allclose(flow.forward(z, labels=labels), X, rtol=1e-10, atol=1e-10)


# ---- refusals ----------------------------------------------------------------------------------------------


def test_what_cannot_work_is_refused_in_one_line():
  small = dict(levels=2, steps=1, width=4)
  with pytest.raises(
    ValueError, match='class_context=4 feeds a learned class embedding .* needs num_classes'
  ):
    tg.Glow(SHAPE, class_context=4, **small)
  with pytest.raises(ValueError, match='class_context=4 .* needs num_classes'):
    tg.GlowModel(SHAPE, class_context=4, **small)
  plain = tg.Glow(SHAPE, **small)
  x = tf.constant(X, tf.float32)
  with pytest.raises(ValueError, match='conditioners were built without context_size'):
    plain.inverse(x, context=tf.constant(C, tf.float32))
  glow = tg.Glow(SHAPE, conditioner_settings={'context_size': E}, **small)
  with pytest.raises(ValueError, match=r'context must be \[N, 3\]'):
    glow.inverse(x, context=tf.zeros([2, E + 1]))
  with pytest.raises(ValueError, match=r'context must be \[N, 3\]'):
    glow.inverse(x, context=tf.zeros([3, E]))  # 2 images
  with pytest.raises(TypeError, match='context must be a float tensor'):
    glow.inverse(x, context=tf.zeros([2, E], tf.int32))
  with pytest.raises(
    ValueError, match='GlowModel: context_size=3: fit and the model.s calls pass no context'
  ):
    tg.GlowModel(SHAPE, conditioner_settings={'context_size': E}, **small)
  conditional = tg.Glow(SHAPE, num_classes=3, class_context=2, **small)
  with pytest.raises(ValueError, match='pass labels=, not context='):
    conditional.inverse(x, labels=tf.constant([0, 1]), context=tf.zeros([2, 2]))
  with pytest.raises(ValueError, match='disagree'):
    tg.Glow(SHAPE, num_classes=3, class_context=2, conditioner_settings={'context_size': 5}, **small)
  with pytest.raises(ValueError, match='coupling_network= or a coupling class cannot take one'):
    tg.Glow(SHAPE, conditioner_settings={'context_size': E}, coupling_network=lambda i, o: None, **small)
  with pytest.raises(ValueError, match='context_size must be None or an integer >= 1'):
    conditioners.Conv(context_size=0)
  # the default network is today's: no context kernel, its settings {} in a config
  assert not [v for v in plain.variables if 'context' in v.name]
  assert tg.GlowModel(SHAPE, n_bins=16, **small).get_config()['coupling']['conditioner_settings'] == {}


@pytest.mark.parametrize('gradient', ['autodiff', 'stored', 'inverse', 'checkpoint'])
def test_a_missing_context_or_label_is_refused_in_every_gradient_mode(gradient):
  """Conditioners that read a context get one, or the call is refused in one line (not a density of the
  network without its context term, not an IndexError inside a hand-built gradient)."""
  small = dict(levels=2, steps=2, width=4, gradient=gradient)
  x = tf.constant(X, tf.float32)
  cases = [
    (tg.Glow(SHAPE, conditioner_settings={'context_size': E}, **small), 'pass context='),
    (tg.Glow(SHAPE, num_classes=3, class_context=2, **small), 'class-conditional .* pass labels='),
  ]
  for glow, message in cases:
    for call in (glow.initialize, glow.inverse, lambda x, glow=glow: glow.forward(tf.zeros_like(x))):
      with pytest.raises(ValueError, match=message), tf.GradientTape():
        call(tf.identity(x))


@pytest.mark.slow  # nested tapes through two Glows
@pytest.mark.parametrize('gradient', ['stored', 'inverse'])
def test_second_order_and_forward_mode_through_the_context_equal_autodiff(gradient):
  """A Hessian-vector product (the context's gradient differentiated again, with respect to the context) and a
  forward-mode JVP along the context: the hand-built gradients step aside or agree with TensorFlow's own."""
  reference, flow = flows('conv', gradient)
  x, c = tf.constant(X), tf.constant(C)
  v = tf.constant(np.random.RandomState(3).normal(size=C.shape))

  def hvp_and_jvp(glow):
    with tf.GradientTape() as outer:
      outer.watch(c)
      with tf.GradientTape() as inner:
        inner.watch(c)
        loss = objective(glow, x, c)
      directional = tf.reduce_sum(inner.gradient(loss, c) * v)
    fresh = tf.identity(c)  # new tensors: TFP's bijector cache would return the z computed above, untraced
    with tf.autodiff.ForwardAccumulator(fresh, v) as accumulator:
      z = glow.inverse(tf.identity(x), context=fresh)
    return outer.gradient(directional, c), accumulator.jvp(z)

  for got, expected in zip(hvp_and_jvp(flow), hvp_and_jvp(reference)):
    assert got is not None and np.max(np.abs(expected)) > 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-10 * max(1.0, np.max(np.abs(expected))))
