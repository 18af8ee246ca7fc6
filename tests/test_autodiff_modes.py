"""Every autodiff mode TensorFlow offers, through every gradient path of a level, gives plain autodiff's answer.

Paths: gradient in GRADIENTS x (a StepStack: the default layers; a StepList: a custom coupling network), and
GlowModel's training step. Modes: GradientTape gradients (eager, tf.function, XLA), batch_jacobian (pfor and
while_loop), jacobian with respect to parameters, second order (Hessian-vector products with respect to the
input and to the parameters), forward mode (ForwardAccumulator JVPs with respect to the input and to a
parameter). Reference: the same flow (same values) with gradient='autodiff', TensorFlow's own gradient; and
the second order also against central finite differences of the first-order gradient.
Float64, perturbed parameters, a fresh input tensor for every call (TFP's cache cannot answer).
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.flow import GRADIENTS, gradients
from tfp_glow.specs import CouplingSpec
from tfp_glow.testing import perturb

SHAPE = (4, 4, 2)
X = np.random.default_rng(3).uniform(-0.5, 0.5, (2, *SHAPE))


def custom_network(in_channels, out_channels):
  return keras.Sequential(
    [
      keras.Input((None, None, in_channels), dtype='float64'),
      keras.layers.Conv2D(6, 3, padding='same', activation='tanh', dtype='float64'),
      keras.layers.Conv2D(out_channels, 1, dtype='float64'),
    ]
  )


# The transformer conditioner at SHAPE's levels (2x2 and 1x1): one-pixel patches.
VIT = {'depth': 1, 'width': 8, 'heads': 2, 'patch_size': 1}


@functools.cache
def flows(
  network: str, gradient: str, coupling: str = 'affine', conditioner: str = 'conv', split: str = 'channel'
):
  """(reference, flow): two Glows with equal values, the reference differentiated by TensorFlow alone. A spatial
  `split` (one level: its 2x2 pixels split evenly) is the coupling spec's."""
  spec = CouplingSpec(
    transform=coupling,
    conditioner=conditioner,
    conditioner_settings=VIT if conditioner == 'transformer' else {},
    split=split,
  )
  kwargs = dict(levels=2, steps=2, width=8, seed=0, dtype=tf.float64, num_classes=None, coupling=spec)
  if network == 'list':
    kwargs['coupling_network'] = custom_network
  if split != 'channel':
    kwargs['levels'] = 1
  reference = tg.Glow(SHAPE, gradient='autodiff', **kwargs)
  flow = tg.Glow(SHAPE, gradient=gradient, **kwargs)
  reference.initialize(tf.constant(X))
  perturb(reference, 0.1)
  for a, b in zip(flow.variables, reference.variables):
    a.assign(b)
  return reference, flow


def objective(glow, x):
  z = glow.inverse(x)
  return tf.reduce_sum(tf.sin(2 * z)) + tf.reduce_sum(glow.inverse_log_det_jacobian(x, 3) ** 2) / 100


def x_fresh():
  return tf.constant(X)


def grad(glow):
  x = x_fresh()
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = objective(glow, x)
  return tape.gradient(loss, [x, *glow.trainable_variables])


def batch_jacobian(glow, pfor):
  x = x_fresh()
  with tf.GradientTape(persistent=not pfor) as tape:
    tape.watch(x)
    z = glow.inverse(x)
  return tape.batch_jacobian(z, x, experimental_use_pfor=pfor)


def jacobian_parameters(glow):
  x = x_fresh()
  variables = [v for v in glow.trainable_variables if 'actnorm' in v.name or 'conv_in' in v.name][:2]
  with tf.GradientTape() as tape:
    z = glow.inverse(x)
  return tape.jacobian(z, variables)


def hvp_input(glow, x=None):
  x = x_fresh() if x is None else x
  v = tf.cos(3 * x)
  with tf.GradientTape() as outer:
    outer.watch(x)
    with tf.GradientTape() as inner:
      inner.watch(x)
      loss = objective(glow, x)
    g = inner.gradient(loss, x)
    gv = tf.reduce_sum(g * v)
  return outer.gradient(gv, [x, *glow.trainable_variables])


def hvp_parameters(glow):
  x = x_fresh()
  variables = glow.trainable_variables
  with tf.GradientTape() as outer:
    with tf.GradientTape() as inner:
      loss = objective(glow, x)
    gs = inner.gradient(loss, variables)
    penalty = tf.add_n([tf.reduce_sum(tf.square(g)) for g in gs if g is not None])
  return outer.gradient(penalty, variables)


def jvp_input(glow):
  x = x_fresh()
  with tf.autodiff.ForwardAccumulator(x, tf.cos(3 * x)) as acc:
    z = glow.inverse(x)
    ld = glow.inverse_log_det_jacobian(x, 3)
  return [acc.jvp(z), acc.jvp(ld)]


def jvp_parameter(glow):
  x = x_fresh()
  v = [v for v in glow.trainable_variables if 'actnorm' in v.name][0]
  with tf.autodiff.ForwardAccumulator(v, tf.ones_like(v)) as acc:
    z = glow.inverse(x)
  return [acc.jvp(z)]


MODES = {
  'gradient eager': grad,
  'gradient tf.function': lambda g: tf.function(functools.partial(grad, g))(),
  'gradient xla': lambda g: tf.function(functools.partial(grad, g), jit_compile=True)(),
  'batch_jacobian pfor': lambda g: batch_jacobian(g, True),
  'batch_jacobian while_loop': lambda g: batch_jacobian(g, False),
  'batch_jacobian tf.function': lambda g: tf.function(functools.partial(batch_jacobian, g, True))(),
  'jacobian parameters': jacobian_parameters,
  'hvp input': hvp_input,
  'hvp input tf.function': lambda g: tf.function(functools.partial(hvp_input, g))(),
  'hvp parameters': hvp_parameters,
  'jvp input': jvp_input,
  'jvp input tf.function': lambda g: tf.function(functools.partial(jvp_input, g))(),
  'jvp parameter': jvp_parameter,
}


# Traced modes take seconds each (tracing while-loops, pfor, XLA): in the full run (pytest --slow) only,
# except one traced gradient and one while-loop batch_jacobian through a StepStack; gradient='autodiff'
# (the reference's own gradient, against itself) runs in default in eager mode only, and a StepList (custom
# network) in first-order modes only.
TRACED = {'gradient xla', 'batch_jacobian pfor', 'batch_jacobian tf.function', 'hvp input tf.function'}
TRACED |= {
  'jvp input tf.function',
  'jacobian parameters',
  'gradient tf.function',
  'batch_jacobian while_loop',
}
TRACED_IN_DEFAULT = {
  ('inverse', 'stack', 'gradient tf.function'),
  ('stored', 'stack', 'batch_jacobian while_loop'),
}


def slow(gradient, network, mode):
  if mode in TRACED:
    return (gradient, network, mode) not in TRACED_IN_DEFAULT
  if network == 'list' and mode.startswith(('hvp', 'jvp')):  # higher orders step aside to autodiff there
    return True
  return gradient == 'autodiff' and mode != 'gradient eager'


CASES = [
  pytest.param(gradient, network, mode, marks=[pytest.mark.slow] if slow(gradient, network, mode) else [])
  for gradient in GRADIENTS
  for network in ('stack', 'list')
  for mode in sorted(MODES)
]


# The other couplings join pairwise, not as the full product: every gradient with the stack and the list,
# graph and XLA, first order, second order and forward mode each at least once.
SLOW = [pytest.mark.slow]
OTHER_COUPLINGS = [
  pytest.param(
    coupling,
    gradient,
    network,
    mode,
    # the default run: the two hand-built gradients that invert or reuse the transform; the rest with --slow
    marks=[]
    if (network, mode) == ('stack', 'gradient eager') and gradient in ('stored', 'inverse')
    else SLOW,
  )
  for coupling in ('spline',)
  for gradient in GRADIENTS
  for network, mode in (
    ('stack', 'gradient eager'),
    ('list', 'gradient eager'),
    ('stack', 'gradient tf.function'),
    ('stack', 'gradient xla'),
    ('stack', 'hvp input'),
    ('stack', 'jvp input'),
    ('stack', 'batch_jacobian while_loop'),
  )
]


# The transformer conditioner (no hand-built kernels: the generic per-step VJP) pairwise: every gradient with the
# affine and the spline transform, graph and XLA once each; the default run: 'stored' and 'inverse' eagerly.
TRANSFORMER = [
  pytest.param(
    coupling, gradient, mode, marks=[] if (mode, coupling) == ('gradient eager', 'affine') else SLOW
  )
  for coupling, gradient, mode in (
    ('affine', 'stored', 'gradient eager'),
    ('affine', 'inverse', 'gradient eager'),
    ('spline', 'autodiff', 'gradient eager'),
    ('spline', 'stored', 'gradient tf.function'),
    ('spline', 'inverse', 'gradient xla'),
    ('affine', 'checkpoint', 'hvp input'),
    ('spline', 'inverse', 'jvp input'),
  )
]


# The spatial splits (`tfp_glow.bijectors.splits`; the generic per-step VJP, the conv kernels split channels)
# pairwise: every split with every transform, every gradient, the stack and the list, graph and XLA, first and
# second order and forward mode each at least once; the default run: 'stored' and 'inverse' eagerly.
SPLIT_CASES = [
  pytest.param(*case, marks=[] if case[-1] == 'gradient eager' and case[3] == 'stack' else SLOW)
  for case in (
    ('checkerboard', 'affine', 'stored', 'stack', 'gradient eager'),
    ('stripes', 'spline', 'inverse', 'stack', 'gradient eager'),
    ('checkerboard', 'additive', 'inverse', 'stack', 'gradient tf.function'),
    ('stripes', 'affine', 'checkpoint', 'stack', 'hvp input'),
    ('checkerboard', 'spline', 'autodiff', 'stack', 'jvp input'),
    ('stripes', 'additive', 'stored', 'list', 'gradient eager'),
    ('checkerboard', 'spline', 'checkpoint', 'list', 'gradient eager'),
    ('stripes', 'affine', 'autodiff', 'stack', 'gradient xla'),
    ('checkerboard', 'affine', 'inverse', 'stack', 'batch_jacobian while_loop'),
    ('stripes', 'additive', 'checkpoint', 'stack', 'gradient eager'),
  )
]


@pytest.mark.parametrize('split, coupling, gradient, network, mode', SPLIT_CASES)
def test_spatial_splits_equal_plain_autodiff(split, coupling, gradient, network, mode):
  check_mode(flows(network, gradient, coupling, 'conv', split), mode)


@pytest.mark.parametrize('gradient, network, mode', CASES)
def test_every_mode_through_every_path_equals_plain_autodiff(gradient, network, mode):
  check_mode(flows(network, gradient), mode)


@pytest.mark.parametrize('coupling, gradient, network, mode', OTHER_COUPLINGS)
def test_other_couplings_equal_plain_autodiff(coupling, gradient, network, mode):
  check_mode(flows(network, gradient, coupling), mode)


@pytest.mark.parametrize('coupling, gradient, mode', TRANSFORMER)
def test_the_transformer_conditioner_equals_plain_autodiff(coupling, gradient, mode):
  check_mode(flows('stack', gradient, coupling, 'transformer'), mode)


def check_mode(flows_pair, mode):
  reference, flow = flows_pair
  expected = tf.nest.flatten(MODES[mode](reference))
  got = tf.nest.flatten(MODES[mode](flow))
  assert len(got) == len(expected)
  nonzero = 0
  for g, e in zip(got, expected):
    if e is None:
      assert g is None
      continue
    assert g is not None, 'a gradient that plain autodiff gives came back as None'
    e = np.asarray(e)
    nonzero += np.any(np.abs(e) > 1e-8)
    np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-10 * max(1.0, np.max(np.abs(e))))
  assert nonzero, 'every reference value is zero: the test would not see a wrong answer'


@pytest.mark.parametrize('gradient', GRADIENTS)
def test_second_order_equals_finite_differences_of_the_gradient(gradient):
  """The Hessian-vector product with respect to x against (g(x + h v) - g(x - h v)) / 2h of the exact gradient."""
  _, flow = flows('stack', gradient)
  x = x_fresh()
  v = tf.cos(3 * x)

  def g(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = objective(flow, x)
    return tape.gradient(loss, x)

  h = 1e-6
  fd = (g(tf.identity(x + h * v)) - g(tf.identity(x - h * v))) / (2 * h)
  hvp = hvp_input(flow, x)[0]
  scale = np.max(np.abs(fd))
  assert scale > 1e-3
  np.testing.assert_allclose(hvp, fd, atol=1e-4 * scale)  # the wrong answer this replaced was 3% off


def test_the_hand_built_gradients_run_where_only_a_first_order_gradient_is_taken(monkeypatch):
  """Stepping aside is for higher orders only: a plain gradient tape uses the hand-built loop (else the
  memory-saving modes would silently save nothing), forward mode and nested tapes do not."""
  calls = []
  original = gradients._stack_gradient
  monkeypatch.setattr(gradients, '_stack_gradient', lambda *a, **k: calls.append(a[3]) or original(*a, **k))
  _, flow = flows('stack', 'inverse')
  grad(flow)
  assert calls == ['inverse', 'inverse']  # one per level
  calls.clear()
  jvp_input(flow)
  flow.inverse(x_fresh())  # no tape: nothing to differentiate, nothing stored
  assert calls == []
  hvp_input(flow)  # the inner gradient is hand-built only if no outer tape watches: it does here
  assert calls == []


def test_the_training_step_uses_its_gradient_without_asking(monkeypatch):
  calls = []
  original = gradients._stack_gradient
  monkeypatch.setattr(
    gradients, '_stack_gradient', lambda *a, **k: calls.append((a[3], k['ask'])) or original(*a, **k)
  )
  model = tg.GlowModel((8, 8, 1), levels=2, steps=2, width=4, n_bins=17, seed=0)
  assert model.training_gradient == 'stored' and model.glow.gradient == 'autodiff'
  model.compile()
  images = tf.random.stateless_uniform([8, 8, 8, 1], (1, 2)) - 0.5
  model.fit(images, batch_size=4, epochs=1, verbose=0)
  assert calls == [('stored', False), ('stored', False)]  # one per level, traced once; ask=False
  calls.clear()
  model.evaluate(images, batch_size=4, verbose=0)  # evaluation: plain, nothing stored
  model.log_prob(images)
  assert calls == []


def test_bad_gradient_names_are_refused():
  with pytest.raises(ValueError, match='gradient must be one of'):
    tg.Glow(SHAPE, levels=1, steps=1, width=4, gradient='fast')
  with pytest.raises(ValueError, match='disagree'):
    tg.Glow(SHAPE, levels=1, steps=1, width=4, gradient='stored', memory_saving='inverse')
  assert tg.Glow(SHAPE, levels=1, steps=1, width=4, memory_saving=True).gradient == 'inverse'
