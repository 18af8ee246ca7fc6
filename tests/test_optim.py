"""The warmup optimizers' fused updates (one TensorFlow kernel per variable) equal Keras' own."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_glow.training import optim

CASES = [(optim.WarmupAdamax, keras.optimizers.Adamax), (optim.WarmupAdam, keras.optimizers.Adam)]


def run(optimizer, dtype='float32', jit_compile=False, steps=6, finalize=False):
  rng = np.random.default_rng(0)
  init = [rng.normal(size=s) for s in [(3, 4), (5,), ()]]
  grads = [[rng.normal(size=np.shape(w)) for w in init] for _ in range(steps)]
  variables = [keras.Variable(w, dtype=dtype) for w in init]
  optimizer.build(variables)
  apply = tf.function(lambda g: optimizer.apply(g, variables), jit_compile=jit_compile)
  for g in grads:
    apply([tf.constant(x, dtype) for x in g])
  ops = {
    op.type
    for op in apply.get_concrete_function([tf.constant(x, dtype) for x in grads[0]]).graph.get_operations()
  }
  if finalize:  # the EMA of the weights replaces them, as at the end of `fit`
    optimizer.finalize_variable_values(variables)
  return [v.numpy() for v in variables], ops


@pytest.mark.parametrize('fused, keras_class', CASES, ids=['adamax', 'adam'])
@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_fused_update_equals_keras_with_the_same_warmup(fused, keras_class, dtype):
  ours, ops = run(fused(1e-2, warmup_steps=3, clipnorm=1.0), dtype)
  theirs, their_ops = run(keras_class(optim.LinearWarmup(1e-2, 3), clipnorm=1.0), dtype)
  kernel = 'ResourceApplyAdaMax' if fused is optim.WarmupAdamax else 'ResourceApplyAdam'
  assert kernel in ops and kernel not in their_ops  # the fused path ran
  for a, b in zip(ours, theirs):  # Keras computes the (warmed-up) rate in float32 for every dtype
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert not np.allclose(ours[0], run(keras_class(1e-2), dtype)[0][0])  # the warmup matters here


@pytest.mark.parametrize('fused, keras_class', CASES, ids=['adamax', 'adam'])
@pytest.mark.parametrize('finalize', [False, True], ids=['weights', 'ema'])
@pytest.mark.parametrize('jit_compile', [False, True], ids=['graph', 'xla'])
def test_fused_update_with_ema_and_keras_update_under_xla(fused, keras_class, finalize, jit_compile):
  def ours_optimizer():
    return fused(1e-2, warmup_steps=0, use_ema=True, ema_momentum=0.5)

  ours, ops = run(ours_optimizer(), jit_compile=jit_compile, finalize=finalize)
  theirs, _ = run(
    keras_class(1e-2, use_ema=True, ema_momentum=0.5), jit_compile=jit_compile, finalize=finalize
  )
  # The fused kernels run in graphs; under XLA, Keras' own update (it compiles much faster there).
  assert ('ResourceApplyGradientDescent' in ops) == (not jit_compile)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  if finalize:  # the averages differ from the weights
    assert not np.allclose(ours[0], run(ours_optimizer(), jit_compile=jit_compile)[0][0])


def test_amsgrad_uses_keras_update():
  ours, ops = run(optim.WarmupAdam(1e-2, warmup_steps=0, amsgrad=True))
  theirs, _ = run(keras.optimizers.Adam(1e-2, amsgrad=True))
  assert 'ResourceApplyAdam' not in ops
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', ['adamax', 'adam'])
def test_apply_masked_skips_bit_identically_without_a_branch(name, jit_compile=False):
  rng = np.random.default_rng(0)
  init = [rng.normal(size=s).astype('float32') for s in [(3, 4), (5,)]]
  variables = [keras.Variable(w) for w in init]
  masked = optim.default_optimizer(1e-2, warmup_steps=3, use_ema=True, clipnorm=1.0, name=name)
  masked.build(variables)
  assert masked.can_apply_masked(variables)
  step = tf.function(lambda ok, g: masked.apply_masked(ok, g, variables), jit_compile=jit_compile)
  grads = [tf.constant(rng.normal(size=w.shape), tf.float32) for w in init]
  step(tf.constant(True), grads)
  step(tf.constant(True), [-g for g in grads])  # now the EMA differs from the weights
  state = [v.numpy().copy() for v in [*variables, *masked.variables]]
  nan = [tf.fill(w.shape, np.nan) for w in init]
  for g in (nan, grads):  # a skipped step: NaN gradients, or good ones (the batch was bad)
    step(tf.constant(False), g)
    for v, s in zip([*variables, *masked.variables], state):
      np.testing.assert_array_equal(v.numpy(), s, err_msg=v.name)
  assert int(masked.iterations.numpy()) == 2
  graph = step.get_concrete_function(tf.constant(True), grads).graph
  assert not {'If', 'StatelessIf'} & {op.type for op in graph.get_operations()}
  # An applied step equals plain `apply` of the same optimizer state.
  reference_vars = [keras.Variable(v.numpy()) for v in variables]
  reference = optim.default_optimizer(1e-2, warmup_steps=3, use_ema=True, clipnorm=1.0, name=name)
  reference.build(reference_vars)
  for r, m in zip(reference.variables, masked.variables):
    r.assign(m)
  step(tf.constant(True), grads)
  reference.apply(grads, reference_vars)
  for a, b in zip([*variables, *masked.variables], [*reference_vars, *reference.variables]):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.name)


def test_apply_masked_is_refused_where_it_could_not_skip_exactly():
  variables = [keras.Variable(np.ones(3, 'float32'))]
  for optimizer in [
    optim.WarmupAdamax(1e-2, weight_decay=0.1),
    optim.WarmupAdam(1e-2, amsgrad=True),
    optim.WarmupAdam(1e-2, gradient_accumulation_steps=2),
  ]:
    optimizer.build(variables)
    assert not optimizer.can_apply_masked(variables)
  assert not optim.WarmupAdamax(1e-2).can_apply_masked(variables)  # not built yet
  built = optim.WarmupAdamax(1e-2)
  built.build(variables)
  assert built.can_apply_masked(variables)
  assert not tf.function(lambda: tf.constant(built.can_apply_masked(variables)), jit_compile=True)()
