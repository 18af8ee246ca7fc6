"""A user's own Keras layer as a coupling's conditioner (tfp_glow.bijectors.conditioners.KerasLayer).

Against the bijector contract in float64 with perturbed parameters; a fresh flow exactly the identity in its
couplings whatever the layer computes; the level one StepStack loop (no 'unrolled' warning) whose step k applies
step k's weights (against the layer itself with those weights set); gradients equal to plain autodiff under
'stored', 'checkpoint' and 'inverse'; GlowModel training every weight of it and a .keras round trip; the spec and
its JSON; and the refusals, each in one line.
"""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.bijectors import conditioners, transforms
from tfp_glow.flow import kernels
from tfp_glow.flow.stack import StepStack
from tfp_glow.specs import CouplingSpec
from tfp_glow.testing import assert_bijective, assert_log_det_matches_jacobian, check_bijector, perturb

RNG = np.random.default_rng(5)
SHAPE = (8, 8, 3)
X = RNG.uniform(-0.5, 0.5, (2, *SHAPE))


@keras.saving.register_keras_serializable(package='tfp_glow_tests')
class TinyNet(keras.layers.Layer):
  """conv3x3 (tanh) -> conv1x1 to `features` channels: [N, h, w, C_a] -> [N, h, w, features]."""

  def __init__(self, features: int = 5, **kwargs):
    super().__init__(**kwargs)
    self.features = features
    self.conv_in = keras.layers.Conv2D(4, 3, padding='same', activation='tanh')
    self.conv_out = keras.layers.Conv2D(features, 1)

  def call(self, x):
    return self.conv_out(self.conv_in(x))

  def get_config(self):
    return {**super().get_config(), 'features': self.features}


class Unregistered(TinyNet):
  pass


def tiny(features=5):
  return conditioners.KerasLayer(TinyNet(features))


def glow(gradient='autodiff', coupling='affine', **kwargs):
  kwargs = dict(levels=2, steps=2, width=8, dtype=tf.float64, coupling=coupling) | {'seed': 0, **kwargs}
  return tg.Glow(SHAPE, gradient=gradient, conditioner=kwargs.pop('conditioner', tiny()), **kwargs)


@pytest.mark.parametrize(
  'transform',
  ['affine', pytest.param(transforms.Spline(bins=3, bound=2.0), marks=pytest.mark.slow)],
  ids=['affine', 'spline'],
)
def test_a_keras_layer_coupling_passes_the_contract(transform):
  """inverse(forward), log-det against the autodiff Jacobian, event shapes, graph and XLA (check_bijector)."""
  coupling = tg.Coupling(6, transform=transform, conditioner=tiny(), spatial=(4, 4), dtype=tf.float64)
  x = tf.constant(RNG.uniform(-1.5, 1.5, (2, 4, 4, 6)))
  fresh = coupling.inverse(x)
  perturb(coupling, 0.3)
  log_dets = check_bijector(coupling, x)
  assert np.all(np.abs(log_dets.numpy()) > 1e-3)
  assert not np.allclose(fresh, coupling.inverse(tf.identity(x))), 'the perturbed layer changed nothing'


@pytest.mark.slow
def test_a_perturbed_keras_layer_glow_passes_the_contract():
  flow = glow(coupling='spline')
  x = tf.constant(X)
  flow.initialize(x)
  perturb(flow, 0.1)
  check_bijector(flow, x)


def test_the_level_is_one_loop_whose_step_k_applies_the_layer_with_step_ks_weights():
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    flow = glow()
  assert not [w for w in caught if 'unrolled' in str(w.message)]  # Glow warns where a level cannot be a loop
  first = flow.levels[0].steps[0].coupling.parameter_variables()[0].numpy()  # TinyNet's first kernel [K, ...]
  assert not np.allclose(first[0], first[1]), 'each step should draw its own initial weights'
  perturb(flow, 0.2)
  for level in flow.levels:
    assert isinstance(level.steps, StepStack) and not level.steps.unrolled()
  coupling = flow.levels[1].steps[1].coupling  # level 1 (2x2x24, C_a = 12), step 1
  assert isinstance(coupling.conditioner, conditioners.KerasLayer) and not kernels.has_kernels(coupling)
  variables = coupling.parameter_variables()
  assert all(v.shape[0] == 2 for v in variables)  # [K, ...]: every weight of the level's two steps
  x_a = tf.constant(RNG.standard_normal((3, 2, 2, 12)))
  got = coupling.conditioner.apply([v[1] for v in variables], x_a, 'float64')
  # The layer itself, built on its own, with step 1's weights set: its features, then the 1x1 projection.
  keras.mixed_precision.set_global_policy('float64')
  try:
    net = TinyNet(5)
    net(x_a)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  *theta, kernel, bias = [v.numpy()[1] for v in variables]
  net.set_weights(theta)
  expected = net(x_a).numpy() @ kernel + bias
  assert np.abs(expected).max() > 1e-2
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
  other = coupling.conditioner.apply([v[0] for v in variables], x_a, 'float64')
  assert not np.allclose(other, got), 'steps 0 and 1 should start and stay different'


def test_a_seeded_glow_gives_a_users_layer_the_same_initial_weights_every_time():
  first, second, other = ([np.asarray(v) for v in glow(seed=s).variables] for s in (0, 0, 1))
  assert all(np.array_equal(a, b) for a, b in zip(first, second))
  assert any(not np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.slow
def test_with_a_spatial_split_the_layer_sees_the_masked_image_and_the_flow_stays_exact():
  spec = CouplingSpec(transform='spline', conditioner='keras', split='checkerboard')
  spec = spec.replace(conditioner_settings={'layer': TinyNet(4)})
  flow = tg.Glow((4, 4, 3), levels=1, steps=2, width=8, coupling=spec, dtype=tf.float64)
  assert isinstance(flow.levels[0].steps, StepStack)
  kernel = flow.levels[0].steps[0].coupling.network.weights_in_order()[0]
  assert kernel.shape[3] == 12  # [K, 3, 3, C, 4]: the layer sees all C channels of the masked image
  x = tf.constant(X[:, :4, :4])
  flow.initialize(x)
  perturb(flow, 0.1)
  assert_bijective(flow, x, rtol=1e-9, atol=1e-9)
  assert_log_det_matches_jacobian(flow, x, rtol=1e-8, atol=1e-8)


def test_a_fresh_flow_is_exactly_the_identity_in_its_couplings_whatever_the_layer_computes():
  flow = glow(coupling='additive')
  for v in flow.trainable_variables:  # every weight of the user's layer may be anything; the projection is 0
    if 'coupling' in v.name and 'projection' not in v.name:
      v.assign(v + 0.5)
  for level in flow.levels:
    y = tf.constant(RNG.standard_normal((2, *level.shape)))
    for step in level.steps:
      np.testing.assert_array_equal(step.coupling.inverse(y), y)
      np.testing.assert_array_equal(step.coupling.forward(tf.identity(y)), y)


def objective(flow, x):
  z = flow.inverse(x)
  return tf.reduce_sum(tf.sin(2 * z)) + tf.reduce_sum(flow.inverse_log_det_jacobian(x, 3) ** 2) / 100


def gradient_of(flow):
  x = tf.constant(X)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = objective(flow, x)
  return tape.gradient(loss, [x, *flow.trainable_variables])


@pytest.mark.parametrize(
  'gradient', ['stored', pytest.param('checkpoint', marks=pytest.mark.slow), 'inverse']
)
def test_the_hand_built_gradients_equal_plain_autodiff(gradient):
  """The generic per-step VJP (no kernels): each step recomputed, or rebuilt through its inverse, under a tape."""
  reference, flow = glow('autodiff', 'spline'), glow(gradient, 'spline')
  reference.initialize(tf.constant(X))
  perturb(reference, 0.1)
  for a, b in zip(flow.variables, reference.variables):
    a.assign(b)
  expected, got = gradient_of(reference), gradient_of(flow)
  names = ['x', *(v.name for v in reference.trainable_variables)]
  user = [i for i, n in enumerate(names) if 'coupling_nn/w' in n]
  assert user and all(np.abs(expected[i]).max() > 1e-6 for i in user), 'the user weights got no gradient'
  for name, g, e in zip(names, got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-10 * max(1.0, np.abs(e).max()), err_msg=name)


@pytest.mark.slow
def test_glow_model_trains_every_weight_and_round_trips_through_keras(tmp_path):
  images = RNG.uniform(-0.5, 0.5, (32, *SHAPE)).astype('float32')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    model = tg.GlowModel(SHAPE, levels=2, steps=2, width=8, n_bins=16, seed=0, conditioner=tiny())
  assert not [w for w in caught if 'unrolled' in str(w.message)]
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  mine = [v for v in model.trainable_variables if 'coupling_nn/' in v.path]
  assert len(mine) == 2 * 6  # per level: TinyNet's 4 weights and the projection's 2, each [K, ...]
  before = [v.numpy() for v in mine]
  history = model.fit(images, batch_size=16, epochs=2, verbose=0)
  assert np.all(np.isfinite(history.history['bits_per_dim']))
  unchanged = [v.path for v, b in zip(mine, before) if np.array_equal(v.numpy(), b)]
  assert not unchanged, f'not trained: {unchanged}'
  config = model.get_config()
  layer = config['coupling']['conditioner_settings']['layer']
  assert config['coupling']['conditioner'] == 'keras' and layer['class_name'] == 'TinyNet'
  again = tg.GlowModel.from_config(json.loads(json.dumps(config)))
  assert again.spec == model.spec
  path = str(tmp_path / 'keras_layer.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert loaded.glow.conditioner == model.glow.conditioner
  for a, b in zip(loaded.weights, model.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)
  np.testing.assert_allclose(loaded.log_prob(images[:4]), model.log_prob(images[:4]), rtol=1e-6)


def test_a_saved_model_restores_the_layer_and_its_weights(tmp_path):
  model = tg.GlowModel((4, 4, 3), levels=1, steps=2, width=4, n_bins=16, seed=0, conditioner=tiny(3))
  perturb(model.glow, 0.1)
  images = RNG.uniform(-0.5, 0.5, (2, 4, 4, 3)).astype('float32')
  path = str(tmp_path / 'tiny.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert loaded.glow.conditioner == model.glow.conditioner
  assert len(loaded.weights) == len(model.weights)
  for a, b in zip(loaded.weights, model.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)
  np.testing.assert_allclose(loaded.log_prob(images), model.log_prob(images), rtol=1e-6)


def test_the_spec_holds_the_layer_as_its_json_config():
  spec = CouplingSpec(conditioner='keras', conditioner_settings={'layer': TinyNet(3)})
  layer = spec.conditioner_settings['layer']
  assert isinstance(layer, dict) and layer['config']['features'] == 3
  assert CouplingSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
  flow = tg.Glow(SHAPE, levels=2, steps=2, width=8, coupling=spec)
  assert flow.conditioner == conditioners.KerasLayer(layer) and flow.conditioner.layer == layer
  assert flow.levels[0].steps[0].coupling.network.weights_in_order()[-2].shape == (2, 3, 12)  # P [K, F, out]


@keras.saving.register_keras_serializable(package='tfp_glow_tests')
class Shrinks(keras.layers.Layer):
  def call(self, x):
    return x[:, :1]


def sequential(*layers):
  return keras.Sequential(list(layers))


@pytest.mark.parametrize(
  'layer, message',
  [
    (None, "the 'keras' conditioner needs a layer"),
    (TinyNet, r'layer must be a layer instance, e.g. TinyNet\(...\), got the class'),
    ('conv', "layer must be a Keras layer or its keras.saving.serialize_keras_object dict, got 'conv'"),
    (Unregistered(), r'Unregistered is not registered with Keras.*@keras.saving.register_keras_serializable'),
    (
      sequential(Unregistered()),
      r"cannot rebuild Sequential from its config: Could not locate class 'Unregistered'.*register_keras_serial",
    ),
    (sequential(keras.layers.Conv2D(4, 1), keras.layers.BatchNormalization()), 'moving_mean'),
    (
      sequential(keras.layers.Conv2D(4, 1), keras.layers.Dropout(0.1)),
      'state that is not a trainable weight',
    ),
    (keras.layers.Conv2D(4, 1, kernel_regularizer='l2'), 'adds losses'),
    (Shrinks(), r'must map \[N, h, w, C_a\] to \[N, h, w, features\]'),
  ],
  ids=['none', 'class', 'text', 'unregistered', 'nested', 'batchnorm', 'dropout', 'regularizer', 'shape'],
)
def test_what_cannot_work_is_refused_in_one_line(layer, message):
  with pytest.raises(ValueError, match=message) as error:
    tg.Glow(SHAPE, levels=2, steps=2, width=8, conditioner='keras', conditioner_settings={'layer': layer})
  assert '\n' not in str(error.value)


def test_a_context_is_refused_and_keras_own_layers_need_no_registration():
  layer = sequential(keras.layers.Conv2D(4, 3, padding='same', activation='relu'), keras.layers.Conv2D(4, 1))
  coupling = tg.Coupling(6, conditioner=conditioners.KerasLayer(layer), spatial=(4, 4))
  x = tf.constant(RNG.standard_normal((2, 4, 4, 6)), tf.float32)
  expected = tf.concat([x[..., :3], x[..., 3:] * tf.sigmoid(2.0)], -1)  # fresh: h = 0, the affine scale at 0
  np.testing.assert_allclose(coupling.inverse(x), expected, rtol=1e-6)
  with pytest.raises(ValueError, match='got a context, but the layer is called as layer'):
    coupling.inverse(x, context=tf.zeros([2, 3]))


def test_the_command_line_refuses_keras_without_a_layer():
  from tfp_glow import cli  # noqa: PLC0415
  from tfp_glow.cli import train_command  # noqa: PLC0415
  from tfp_glow.cli.common import UsageError  # noqa: PLC0415

  args = cli._build_parser().parse_args(['train', '--conditioner', 'keras'])
  with pytest.raises(UsageError, match="the 'keras' conditioner needs a layer") as error:
    train_command._train_config(args)
  assert '\n' not in str(error.value)


def test_under_a_mixed_policy_the_layer_computes_in_bfloat16():
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    flow = tg.Glow(SHAPE, levels=2, steps=2, width=8, conditioner=tiny())
  finally:
    keras.mixed_precision.set_global_policy('float32')
  coupling = flow.levels[0].steps[0].coupling
  assert coupling.network.compute_dtype == 'bfloat16' and coupling.network.variable_dtype == 'float32'
  perturb(flow, 0.05)
  x = tf.constant(X, tf.float32)
  seen = []
  original = conditioners.KerasLayer.apply

  def spy(self, weights, x, compute_dtype, context=None):
    h = original(self, weights, x, compute_dtype, context)
    seen.append(h.dtype)
    return h

  conditioners.KerasLayer.apply = spy
  try:
    z, log_det = flow.inverse(x), flow.inverse_log_det_jacobian(x, 3)
  finally:
    conditioners.KerasLayer.apply = original
  assert set(seen) == {tf.bfloat16}
  assert z.dtype == log_det.dtype == tf.float32 and np.all(np.isfinite(log_det))
  # To bfloat16's resolution, not float32's: a rebuilt conditioner input may round to another bfloat16 value
  # (docs/design.md, "Precision").
  np.testing.assert_allclose(flow.forward(tf.identity(z)), x, atol=1e-2)


@pytest.mark.slow  # nested tapes through two Glows
@pytest.mark.parametrize('gradient', ['stored', 'inverse'])
def test_second_order_and_forward_mode_through_a_users_layer_equal_autodiff(gradient):
  """A Hessian-vector product in x and a forward-mode JVP through the generic per-step VJP: it steps aside
  for higher orders, so both equal TensorFlow's own."""
  reference, flow = glow('autodiff', 'spline'), glow(gradient, 'spline')
  reference.initialize(tf.constant(X))
  perturb(reference, 0.1)
  for a, b in zip(flow.variables, reference.variables):
    a.assign(b)
  v = tf.constant(RNG.standard_normal(X.shape))

  def hvp_and_jvp(f):
    x = tf.constant(X)
    with tf.GradientTape() as outer:
      outer.watch(x)
      with tf.GradientTape() as inner:
        inner.watch(x)
        loss = objective(f, x)
      directional = tf.reduce_sum(inner.gradient(loss, x) * v)
    fresh = tf.constant(X)  # a new tensor: TFP's bijector cache would return the z computed above, untraced
    with tf.autodiff.ForwardAccumulator(fresh, v) as accumulator:
      z = f.inverse(fresh)
    return outer.gradient(directional, x), accumulator.jvp(z)

  for got, expected in zip(hvp_and_jvp(flow), hvp_and_jvp(reference)):
    assert got is not None and np.max(np.abs(expected)) > 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-10 * max(1.0, np.max(np.abs(expected))))
