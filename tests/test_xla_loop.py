"""Under XLA (`GlowModel.compile(jit_compile=True)`) a level's K steps stay ONE loop over the stacked
parameters (tfp_glow.flow.stack): the whole training step compiles in every gradient mode and equals the plain
graph's, and its traced graph does not grow with K (so neither does its compile time).

No host round trip inside the step: the step is compiled with `jit_compile=True`, which (unlike Keras'
'auto' or TensorFlow's auto-clustering) must turn the WHOLE function into one XLA computation and raises for
any op that has no XLA kernel (a `py_function`, a host callback, a TensorArray or loop XLA cannot type).
A step that compiles therefore runs as one XLA program, its loops as XLA `while`s on the device, never
returning to TensorFlow's executor between iterations. The tests below compile and run that step; the
traced graph holding a `While` (not K copies of a step) is checked separately.
"""

import collections
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_glow.testing import perturb
from tfp_glow.training.model import GlowModel

MODES = ('autodiff', 'stored', 'inverse')
LR = 0.1


def images(n=8, size=8):
  return tf.random.stateless_uniform([n, size, size, 3], (3, 4)) - 0.5


def model_for(gradient, steps, jit_compile, weights=None, size=8):
  model = GlowModel((size, size, 3), levels=2, steps=steps, width=8, seed=0, gradient=gradient)
  model.initialize(images(size=size))
  perturb(model.glow, 0.05)  # zero-initialized couplings: a fresh Glow's gradients would be too special
  if weights is not None:  # the same starting point (the networks' initializers draw from Keras' RNG)
    model.set_weights(weights)
  # Plain SGD: a step moves each weight by -LR * gradient, so the weights after it give the gradients.
  model.compile(optimizer=keras.optimizers.SGD(LR), jit_compile=jit_compile)
  return model


def loss_and_gradients(gradient, jit_compile, weights=None):
  """(loss, gradients, names, starting weights) of one `fit` step."""
  model = model_for(gradient, steps=3, jit_compile=jit_compile, weights=weights)
  start = model.get_weights()
  before = [v.numpy() for v in model.trainable_variables]
  history = model.fit(images(), batch_size=8, epochs=1, shuffle=False, verbose=0)
  grads = [(b - v.numpy()) / LR for b, v in zip(before, model.trainable_variables)]
  return history.history['loss'][0], grads, [v.path for v in model.trainable_variables], start


@pytest.mark.slow  # compiles a whole training step with XLA (tens of seconds on a loaded CPU)
@pytest.mark.parametrize('gradient', MODES)
def test_the_training_step_compiles_under_xla_and_equals_the_graph_step(gradient):
  loss0, grads0, names, start = loss_and_gradients(gradient, jit_compile=False)
  loss, grads, _, _ = loss_and_gradients(gradient, jit_compile=True, weights=start)
  assert np.isfinite(loss)
  np.testing.assert_allclose(loss, loss0, rtol=1e-4)
  moved = 0
  for g, g0, name in zip(grads, grads0, names):
    scale = max(np.max(np.abs(g0)), 1e-3)
    np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
    moved += bool(np.any(g0 != 0))
  assert moved > len(names) // 2  # a real step: most parameters have a gradient


def traced_train_step_ops(gradient, steps):
  """Op types of the training step traced for XLA (`tf.function(jit_compile=True)`), top-level graph,
  without constants and dead ops (TensorFlow's gradient code leaves some unused zeros, pruned before XLA)."""
  model = model_for(gradient, steps, jit_compile=True)
  graph = tf.function(model.train_step, jit_compile=True).get_concrete_function(images()).graph
  live = [op for op in graph.get_operations() if not op.outputs or any(o.consumers() for o in op.outputs)]
  return collections.Counter(op.type for op in live if op.type != 'Const')


@pytest.mark.parametrize('gradient', MODES)
def test_the_xla_training_step_is_one_loop_per_level_whatever_k(gradient):
  counts = traced_train_step_ops(gradient, 2)
  assert counts['While'] + counts['StatelessWhile'] >= 4  # each level's loop and its backward loop
  assert counts == traced_train_step_ops(gradient, 6)


def optimized_hlo(gradient, steps=2, size=16):
  """The XLA:CPU program of the training step after XLA's optimizations (what runs), as text. 16x16 images:
  the last level 4x4, not smaller than the 3x3 kernels (XLA swaps a convolution's operands where the kernel
  is the larger, which only a tiny image meets)."""
  model = model_for(gradient, steps, jit_compile=True, size=size)
  step = tf.function(model.train_step, jit_compile=True)
  return step.experimental_get_compiler_ir(images(size=size))(stage='optimized_hlo')


@pytest.mark.slow  # compiles a whole training step with XLA
@pytest.mark.parametrize('gradient', MODES)
def test_every_convolution_in_the_xla_loop_is_one_eigen_runs(gradient):
  """XLA:CPU runs a convolution through Eigen only in the canonical layout (dim labels b01f_01io->b01f), and
  canonicalizes the others only outside loops: a non-canonical one inside the level's `while` becomes a naive
  loop nest (the 66x slower step of the first XLA loop). tfp_glow.bijectors.xla_conv writes every
  convolution of the network and its gradients canonically. Also: nothing leaves the device mid-step."""
  hlo = optimized_hlo(gradient)
  assert re.search(r'\bwhile\(', hlo)  # the steps are a loop
  labels = re.findall(r' convolution\(.*?dim_labels=([\w>-]+)', hlo)
  assert labels and set(labels) == {'b01f_01io->b01f'}, collections.Counter(labels)
  for host in ('send(', 'recv(', 'outfeed(', 'infeed(', 'host', 'custom-call('):
    assert host not in hlo.lower(), host
