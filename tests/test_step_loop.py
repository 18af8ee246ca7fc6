"""A level's steps as one tf.while_loop (tfp_glow.step_loop): the unrolled steps' values, log-dets and
gradients, and a graph that does not grow with K."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf
from bijector_checks import perturb

import tfp_glow as tg
from tfp_glow import reversible, step_loop
from tfp_glow.bijectors import nets


def perturbed_glow(**kwargs):
  args = dict(image_shape=(8, 8, 2), levels=2, steps=3, width=8, seed=0, dtype=tf.float64)
  glow = tg.Glow(**{**args, **kwargs})
  perturb(glow, 0.1)
  return glow


def level_steps(glow, level=0):
  return [s.bijectors() for s in glow.levels[level].steps]


@pytest.mark.parametrize(
  'coupling, permutation',
  [('affine', 'conv_lu'), ('affine', 'conv'), ('additive', 'shuffle'), ('affine', 'reverse')],
)
@pytest.mark.parametrize('graph', [False, True], ids=['eager', 'graph'])
def test_loop_equals_unrolled_steps_values_log_dets_and_gradients(coupling, permutation, graph):
  glow = perturbed_glow(coupling=coupling, permutation=permutation)
  steps = level_steps(glow)
  assert step_loop.can_loop(steps)
  variables = [v for step in steps for b in step for v in b.trainable_variables]
  x = tf.random.stateless_normal([3, 4, 4, 8], (1, 2), dtype=tf.float64)

  def run(fn, x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y, log_det = fn(steps, x)
      loss = tf.reduce_sum(tf.sin(3 * y)) + tf.reduce_sum(log_det**2)
    return y, log_det, tape.gradient(loss, [x, *variables])

  wrap = tf.function if graph else (lambda f: f)
  y, log_det, grads = wrap(lambda x: run(step_loop.apply_steps_looped, x))(x)
  y0, log_det0, grads0 = run(reversible.apply_steps, x)
  np.testing.assert_allclose(y, y0, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(log_det, log_det0, rtol=1e-10, atol=1e-12)
  assert np.std(log_det0) > 0 or coupling == 'additive'  # perturbed: a real, per-image log-det
  for g, g0, name in zip(grads, grads0, ['x'] + [v.name for v in variables]):
    assert g is not None and np.any(np.abs(g0) > 1e-8), name
    np.testing.assert_allclose(g, g0, rtol=1e-9, atol=1e-12, err_msg=name)
  # latent -> image: the exact inverse, last step first
  x_back, inverse_log_det = step_loop.invert_steps_looped(steps, y)
  np.testing.assert_allclose(x_back, x, rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(inverse_log_det, -log_det0, rtol=1e-9, atol=1e-10)


def test_under_xla_the_steps_are_unrolled_and_give_the_same_values():
  glow = perturbed_glow(num_classes=3)
  x = tf.random.stateless_uniform([2, 8, 8, 2], (3, 4), dtype=tf.float64) - 0.5
  labels = tf.constant([2, 0])
  steps = level_steps(glow)
  assert tf.function(lambda: tf.constant(step_loop.can_loop(steps)))()
  assert not tf.function(lambda: tf.constant(step_loop.can_loop(steps)), jit_compile=True)()
  eager = glow.inverse_and_log_det(x, labels=labels)  # loops (eager: TensorFlow runs them step by step)
  encode = tf.function(lambda x: glow.inverse_and_log_det(x, labels=labels), jit_compile=True)
  ops = {op.type for op in encode.get_concrete_function(x).graph.get_operations()}
  assert not {'While', 'StatelessWhile'} & ops
  xla = encode(x)
  for a, b in zip(xla, eager):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
  back = tf.function(lambda z: glow.forward(z, labels=labels), jit_compile=True)(eager[0])
  np.testing.assert_allclose(back, x, atol=1e-9)


def test_steps_that_cannot_share_a_loop_body_run_unrolled():
  def custom(in_channels, out_channels):
    return keras.Sequential(
      [keras.Input((None, None, in_channels)), keras.layers.Conv2D(out_channels, 3, padding='same')]
    )

  glow = tg.Glow((8, 8, 2), levels=1, steps=2, width=8, coupling_network=custom)
  assert not step_loop.can_loop(level_steps(glow))  # a custom network is called as a Keras layer
  assert not step_loop.can_loop(level_steps(perturbed_glow(steps=1)))  # nothing to loop over
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
  got = nets.apply_coupling_network(weights, x, compute)
  want = network(x)
  assert got.dtype == want.dtype == tf.as_dtype(compute)
  tol = 1e-5 if policy == 'float32' else 3e-2
  np.testing.assert_allclose(tf.cast(got, tf.float32), tf.cast(want, tf.float32), rtol=tol, atol=tol)


def op_counts(steps: int, memory_saving=False) -> collections.Counter:
  """Op types of a traced loss-and-gradient step, ignoring reads/captures (one per variable) and
  dead ops (TensorFlow's gradient code leaves some unused zeros, pruned before running)."""
  glow = tg.Glow((8, 8, 2), levels=2, steps=steps, width=8, seed=0, memory_saving=memory_saving)
  x = tf.random.stateless_uniform([2, 8, 8, 2], (3, 4)) - 0.5

  def step(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(glow.inverse_and_log_det(x)[1])
    return tape.gradient(loss, glow.trainable_variables)

  graph = tf.function(step).get_concrete_function(x).graph
  per_variable = ('ReadVariableOp', 'Placeholder', 'Identity', 'Const')
  live = [op for op in graph.get_operations() if not op.outputs or any(o.consumers() for o in op.outputs)]
  return collections.Counter(op.type for op in live if op.type not in per_variable)


@pytest.mark.parametrize('memory_saving', [False, 'inverse', 'checkpoint'])
def test_the_traced_graph_does_not_grow_with_the_number_of_steps(memory_saving):
  counts = op_counts(2, memory_saving)
  assert counts['StatelessWhile'] + counts['While'] >= 2  # a loop per level (and its gradient)
  assert counts == op_counts(5, memory_saving)
