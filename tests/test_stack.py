"""A level's steps as a StepStack (one tf.while_loop over stacked parameters) or a StepList (unrolled):
the values, log-dets and gradients of the steps one by one, a graph that does not grow with K, and a new
layer that follows the protocol running as a loop."""

import collections
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.bijectors import nets
from tfp_glow.bijectors.base import GlowBijector, ParameterLayer
from tfp_glow.flow import StepList, StepStack
from tfp_glow.testing import check_bijector, perturb


def perturbed_glow(**kwargs):
  glow = tg.Glow(
    **{**dict(image_shape=(8, 8, 2), levels=2, steps=3, width=8, seed=0, dtype=tf.float64), **kwargs}
  )
  perturb(glow, 0.1)
  return glow


def one_by_one(steps, x):
  """Image -> latent through each step's own TFP views (each reads its slice), in Python: the reference."""
  log_det = tf.zeros(tf.shape(x)[:1], x.dtype)
  for step in steps:
    for b in step.bijectors():
      x, ld = b.inverse_and_log_det(x)
      log_det += ld
  return x, log_det


# Traced (graph), the default run takes the default permutation (conv_lu); the others with --slow.
@pytest.mark.parametrize(
  'graph, coupling, permutation',
  [
    pytest.param(
      graph,
      coupling,
      permutation,
      id=f'{"graph" if graph else "eager"}-{coupling}-{permutation}',
      marks=[pytest.mark.slow] if graph and permutation != 'conv_lu' else [],
    )
    for graph in (False, True)
    for coupling, permutation in (
      ('affine', 'conv_lu'),
      ('affine', 'conv'),
      ('additive', 'shuffle'),
      ('affine', 'reverse'),
    )
  ],
)
def test_the_loop_equals_the_steps_one_by_one(coupling, permutation, graph):
  stack = perturbed_glow(coupling=coupling, permutation=permutation).levels[0].steps
  assert isinstance(stack, StepStack) and len(stack) == 3
  x = tf.random.stateless_normal([3, 4, 4, 8], (1, 2), dtype=tf.float64)

  def run(fn, x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y, log_det = fn(x)
      loss = tf.reduce_sum(tf.sin(3 * y)) + tf.reduce_sum(log_det**2)
    return y, log_det, tape.gradient(loss, [x, *stack.variables])

  wrap = tf.function if graph else (lambda f: f)
  y, log_det, grads = wrap(lambda x: run(stack.encode, x))(x)
  y0, log_det0, grads0 = run(lambda x: one_by_one(stack, x), x)
  np.testing.assert_allclose(y, y0, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(log_det, log_det0, rtol=1e-10, atol=1e-12)
  assert np.std(log_det0) > 0 or coupling == 'additive'  # perturbed: a real, per-image log-det
  for g, g0, v in zip(grads, grads0, ['x', *stack.variables]):
    name = getattr(v, 'name', v)
    if g0 is None:  # what no output depends on: a permutation's indices, the LU form's fixed signs
      assert g is None and not getattr(v, 'trainable', True), name
      continue
    assert np.any(np.abs(g0) > 1e-8), name
    np.testing.assert_allclose(g, g0, rtol=1e-9, atol=1e-12, err_msg=name)
  x_back, inverse_log_det = stack.decode(y)  # latent -> image: the exact inverse, last step first
  np.testing.assert_allclose(x_back, x, rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(inverse_log_det, -log_det0, rtol=1e-9, atol=1e-10)


def test_under_xla_the_steps_are_one_loop_and_give_the_same_values():
  glow = perturbed_glow(num_classes=3)
  x = tf.random.stateless_uniform([2, 8, 8, 2], (3, 4), dtype=tf.float64) - 0.5
  labels = tf.constant([2, 0])
  stack = glow.levels[0].steps
  assert not tf.function(lambda: tf.constant(stack.unrolled()))()
  assert not tf.function(lambda: tf.constant(stack.unrolled()), jit_compile=True)()
  eager = glow.inverse_and_log_det(x, labels=labels)
  encode = tf.function(lambda x: glow.inverse_and_log_det(x, labels=labels), jit_compile=True)
  ops = collections.Counter(op.type for op in encode.get_concrete_function(x).graph.get_operations())
  assert ops['While'] + ops['StatelessWhile'] == len(glow.levels)  # one XLA loop per level, not K bodies
  for a, b in zip(encode(x), eager):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
  back = tf.function(lambda z: glow.forward(z, labels=labels), jit_compile=True)(eager[0])
  np.testing.assert_allclose(back, x, atol=1e-9)


def test_a_custom_network_makes_a_step_list():
  def custom(in_channels, out_channels):
    return keras.Sequential(
      [keras.Input((None, None, in_channels)), keras.layers.Conv2D(out_channels, 3, padding='same')]
    )

  glow = tg.Glow((8, 8, 2), levels=1, steps=2, width=8, coupling_network=custom)
  assert isinstance(glow.levels[0].steps, StepList)
  assert glow.levels[0].steps[1].coupling.network is not glow.levels[0].steps[0].coupling.network
  x = tf.random.stateless_uniform([2, 8, 8, 2], (3, 4)) - 0.5
  np.testing.assert_allclose(glow.forward(glow.inverse(x)), x, atol=1e-5)


@pytest.mark.parametrize('policy', ['float32', 'mixed_bfloat16'])
def test_the_default_network_with_weights_as_arguments_is_the_keras_network(policy):
  dtype = nets.network_policy('float32') if policy == 'float32' else policy
  network = nets.coupling_network(3, 6, width=8, dtype=dtype)
  for i, w in enumerate(network.weights):  # zero-initialized last layer: perturb every weight
    w.assign(tf.random.stateless_normal(w.shape, (i, 7)) * 0.3)
  x = tf.random.stateless_normal([2, 5, 5, 3], (1, 1))
  weights = [tf.convert_to_tensor(w) for w in nets.coupling_network_weights(network)]
  assert len(weights) == len(network.weights)
  compute = network.get_layer('conv_in').compute_dtype
  got, want = nets.apply_coupling_network(weights, x, compute), network(x)
  assert got.dtype == want.dtype == tf.as_dtype(compute)
  tol = 1e-5 if policy == 'float32' else 3e-2
  np.testing.assert_allclose(tf.cast(got, tf.float32), tf.cast(want, tf.float32), rtol=tol, atol=tol)


def op_counts(steps: int, gradient: str) -> collections.Counter:
  """Op types of a traced loss-and-gradient step, ignoring reads/captures (one per variable) and dead ops
  (TensorFlow's gradient code leaves some unused zeros, pruned before running)."""
  glow = tg.Glow((8, 8, 2), levels=2, steps=steps, width=8, seed=0, gradient=gradient)
  x = tf.random.stateless_uniform([2, 8, 8, 2], (3, 4)) - 0.5

  def step(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(glow.inverse_and_log_det(x)[1])
    return tape.gradient(loss, glow.trainable_variables)

  graph = tf.function(step).get_concrete_function(x).graph
  per_variable = ('ReadVariableOp', 'Placeholder', 'Identity', 'Const')
  live = [op for op in graph.get_operations() if not op.outputs or any(o.consumers() for o in op.outputs)]
  return collections.Counter(op.type for op in live if op.type not in per_variable)


# The default run: TensorFlow's gradient and the training default ('stored'); the others with --slow.
@pytest.mark.parametrize(
  'gradient',
  [
    pytest.param(g, marks=pytest.mark.slow) if g in ('checkpoint', 'inverse') else g
    for g in tg.flow.GRADIENTS
  ],
)
def test_the_traced_graph_does_not_grow_with_the_number_of_steps(gradient):
  counts = op_counts(2, gradient)
  assert counts['StatelessWhile'] + counts['While'] >= 4  # a loop per level, and one for its gradient
  assert counts == op_counts(5, gradient)


# ---- a new layer, added here as a user would (docs/design.md, "Adding a layer") -------------------------


class ToyCoupling(GlowBijector):
  """z = concat(x_a, x_b * exp(a) + b * mean(x_a)), a, b per channel of x_b: a coupling in one screen."""

  def __init__(self, channels, width=None, dtype=tf.float32, name='toy_coupling', stack=None):
    self._half = channels // 2
    layer, index = stack or (self._parameters(channels, None, dtype, name), None)
    super().__init__(layer=layer, channels=channels, dtype=dtype, index=index, name=name)

  @staticmethod
  def _parameters(channels, steps, dtype, name):
    layer = ParameterLayer(dtype, name)
    lead = () if steps is None else (steps,)
    layer.a = layer.add_weight(shape=(*lead, channels - channels // 2), initializer='zeros', name='a')
    layer.b = layer.add_weight(shape=(*lead, channels - channels // 2), initializer='zeros', name='b')
    return layer

  @classmethod
  def stacked(cls, channels, steps, width=None, dtype=tf.float32, name='toy_coupling'):
    layer = cls._parameters(channels, steps, dtype, name)
    return [cls(channels, dtype=dtype, name=f'{name}_{k}', stack=(layer, k)) for k in range(steps)]

  def parameter_variables(self):
    return [self.layer.a, self.layer.b]

  def inverse_and_log_det_with(self, parameters, x):
    a, b = parameters
    x_a, x_b = tf.split(x, [self._half, x.shape[-1] - self._half], axis=-1)
    z_b = x_b * tf.exp(a) + b * tf.reduce_mean(x_a, axis=-1, keepdims=True)
    return tf.concat([x_a, z_b], -1), tf.cast(x.shape[1] * x.shape[2], x.dtype) * tf.reduce_sum(a)

  def forward_and_log_det_with(self, parameters, z):
    a, b = parameters
    z_a, z_b = tf.split(z, [self._half, z.shape[-1] - self._half], axis=-1)
    x_b = (z_b - b * tf.reduce_mean(z_a, axis=-1, keepdims=True)) * tf.exp(-a)
    return tf.concat([z_a, x_b], -1), -tf.cast(z.shape[1] * z.shape[2], z.dtype) * tf.reduce_sum(a)


@pytest.mark.parametrize(
  'gradient',
  [
    'stored',
    pytest.param('autodiff', marks=pytest.mark.slow),
    pytest.param('inverse', marks=pytest.mark.slow),
  ],
)
def test_a_new_coupling_that_follows_the_protocol_runs_as_one_loop(gradient):
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no "runs unrolled" warning
    glow = tg.Glow(
      (4, 4, 2), levels=1, steps=3, width=8, coupling=ToyCoupling, gradient=gradient, seed=0, dtype=tf.float64
    )
  assert all(isinstance(level.steps, StepStack) for level in glow.levels)
  assert isinstance(glow.levels[0].steps[2].coupling, ToyCoupling)
  perturb(glow)
  x = tf.random.stateless_normal([3, 4, 4, 2], (5, 6), dtype=tf.float64) * 0.5
  assert np.all(np.abs(check_bijector(glow, x)) > 1e-3)
  graph = tf.function(lambda x: glow.inverse_log_det_jacobian(x, 3)).get_concrete_function(x).graph
  assert {'While', 'StatelessWhile'} & {op.type for op in graph.get_operations()}


class DeclaredCoupling(GlowBijector):
  """ToyCoupling written with the stacking protocol alone: its parameters declared once (`_parameter_layer`),
  no `stacked` of its own (the base class's builds a level's K views)."""

  def __init__(self, channels, width=None, dtype=tf.float32, name='declared_coupling', stack=None):
    parameters = dict(locals())  # for TFP's copy()
    self._half, self._settings = channels // 2, (channels, dtype)
    super().__init__(stack=stack, channels=channels, dtype=dtype, parameters=parameters, name=name)

  def _parameter_layer(self, steps, name):
    return ToyCoupling._parameters(*self._settings[:1], steps, self._settings[1], name)

  parameter_variables = ToyCoupling.parameter_variables
  inverse_and_log_det_with = ToyCoupling.inverse_and_log_det_with
  forward_and_log_det_with = ToyCoupling.forward_and_log_det_with


def test_a_layer_that_declares_its_parameters_once_is_stacked_by_the_base_class():
  steps = DeclaredCoupling.stacked(4, 3, dtype=tf.float64, name='c')
  assert [s.name for s in steps] == ['c_0', 'c_1', 'c_2'] and [s.index for s in steps] == [0, 1, 2]
  assert all(s.layer is steps[0].layer for s in steps) and steps[0].layer.a.shape == (3, 2)
  assert (
    steps[1].copy().layer is steps[0].layer and steps[1].copy().index == 1
  )  # TFP's copy() shares the stack
  actnorms = tg.bijectors.ActNorm.stacked(2, 2)
  assert actnorms[0].copy().layer is actnorms[0].layer
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no "runs unrolled" warning
    glow = tg.Glow((4, 4, 2), levels=1, steps=3, coupling=DeclaredCoupling, seed=0, dtype=tf.float64)
  assert isinstance(glow.levels[0].steps, StepStack)
  assert [type(s.coupling) for s in glow.levels[0].steps] == [DeclaredCoupling] * 3
  perturb(glow)
  x = tf.random.stateless_normal([3, 4, 4, 2], (5, 6), dtype=tf.float64) * 0.5
  assert np.all(np.abs(check_bijector(glow, x)) > 1e-3)


def test_step_lives_with_the_stacks_and_a_level_iterates_over_its_steps():
  from tfp_glow.flow import level, stack

  assert level.Step is stack.Step and 'level' not in vars(stack)
  glow = tg.Glow((4, 4, 2), levels=1, steps=2, width=8, seed=0)
  assert [type(s) for s in glow.levels[0].steps] == [stack.Step] * 2


class PerStepOnly(ToyCoupling):
  """The same coupling without a `stacked` classmethod: it can only be built step by step."""

  stacked = None


def test_a_layer_that_cannot_be_stacked_runs_unrolled_and_says_why():
  with pytest.warns(UserWarning, match=r'level 0: its 2 steps run unrolled.*coupling cannot be stacked'):
    glow = tg.Glow((4, 4, 2), levels=1, steps=2, coupling=PerStepOnly, seed=0, dtype=tf.float64)
  assert isinstance(glow.levels[0].steps, StepList)
  perturb(glow)
  x = tf.random.stateless_normal([3, 4, 4, 2], (5, 6), dtype=tf.float64) * 0.5
  check_bijector(glow, x)
