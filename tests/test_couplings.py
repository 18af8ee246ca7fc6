"""Couplings composed of split, conditioner and elementwise transform (tfp_glow.bijectors.transforms).

The transforms' math against autodiff and finite differences in float64, exact identity at h = 0, exact
inverses, finite gradients far outside the spline's bound; the composed coupling in Glow (stacked and with a
custom network) against the bijector contract; the combinations that cannot work refused in one line; and
the fast gradient kernels chosen by what a layer says it can do, never by its class.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_glow as tg
from tfp_glow.bijectors import transforms
from tfp_glow.flow import kernels
from tfp_glow.testing import check_bijector, perturb

RNG = np.random.default_rng(7)
TRANSFORMS = [
  transforms.Affine(),
  transforms.Additive(),
  transforms.Spline(),
  transforms.Spline(bins=7, bound=1.5),
]
IDS = ['affine', 'additive', 'spline', 'spline7']


def h_for(transform, x, scale=1.0):
  shape = [*x.shape[:-1], x.shape[-1] * transform.params_per_channel]
  return tf.constant(scale * RNG.standard_normal(shape))


def inputs(bound=3.0):
  """x [2, 3, 3, 2]: values inside the bound, outside it (the identity tails) and exactly on the knots' ends."""
  x = RNG.uniform(-1.2 * bound, 1.2 * bound, (2, 3, 3, 2))
  x[0, 0, 0] = [bound, -bound]
  return tf.constant(x)


@pytest.mark.parametrize('transform', TRANSFORMS, ids=IDS)
def test_log_det_is_the_log_derivative_and_uncouple_inverts_couple(transform):
  x = inputs(getattr(transform, 'bound', 3.0))
  h = h_for(transform, x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    z, log_det = transform.couple(x, h)
  derivative = tape.gradient(z, x)  # elementwise: d z_i / d x_i
  expected = tf.reduce_sum(tf.math.log(tf.abs(derivative)), axis=[1, 2, 3])
  np.testing.assert_allclose(tf.broadcast_to(log_det, [2]), expected, rtol=1e-10, atol=1e-10)
  x_back, inverse_log_det = transform.uncouple(z, h)
  np.testing.assert_allclose(x_back, x, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(inverse_log_det + log_det, tf.zeros_like(inverse_log_det), atol=1e-10)
  if transform.name != 'additive':
    assert np.all(np.abs(log_det.numpy()) > 1e-3), 'a log-det that is ~0 would not show a wrong formula'


@pytest.mark.parametrize('transform', TRANSFORMS[1:], ids=IDS[1:])
def test_additive_and_spline_are_the_identity_at_h_zero(transform):
  x = inputs()
  h = tf.zeros([*x.shape[:-1], x.shape[-1] * transform.params_per_channel], tf.float64)
  for direction in (transform.couple, transform.uncouple):
    y, log_det = direction(x, h)
    np.testing.assert_allclose(y, x, atol=1e-14)
    np.testing.assert_allclose(log_det, tf.zeros_like(log_det), atol=1e-13)


def test_the_spline_is_monotone_and_continuous_across_its_knots_and_tails():
  """On a fine grid over [-1.5 B, 1.5 B]: increasing, no step larger than the largest derivative on either side
  allows (a jump at a knot would be), and the identity outside [-B, B]."""
  spline, n, dx = transforms.Spline(bins=5, bound=2.0), 6001, 6.0 / 6000
  x = tf.constant(
    np.linspace(-3.0, 3.0, n).reshape(n, 1, 1, 1)
  )  # one element per "image": per-element log-dets
  h = tf.broadcast_to(tf.constant(RNG.standard_normal(spline.params_per_channel) * 2), [n, 1, 1, 14])
  z, log_det = spline.couple(x, h)
  z, derivative, x = z.numpy().ravel(), np.exp(log_det.numpy()), x.numpy().ravel()
  steps = np.diff(z)
  assert np.all(steps > 0), 'not monotone'
  allowed = np.maximum(derivative[:-1], derivative[1:]) * dx
  assert np.all(steps <= 1.05 * allowed + 1e-12), 'a jump: the spline is not continuous'
  assert derivative.max() > 1.5 and derivative.min() < 0.7, 'a nearly linear spline would not show a jump'
  outside = np.abs(x) >= 2.0
  np.testing.assert_allclose(z[outside], x[outside])


def test_spline_gradients_stay_finite_far_outside_the_bound_and_for_large_logits():
  spline = transforms.Spline()
  x = tf.constant([[[[1e4, -1e4, 2.9999, 0.0]]]], tf.float32)
  h = tf.constant(RNG.standard_normal([1, 1, 1, 4 * 11]) * 30, tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, h])
    z, log_det = spline.couple(x, h)
    x_back, inverse_log_det = spline.uncouple(z, h)
    total = tf.reduce_sum(z) + tf.reduce_sum(log_det) + tf.reduce_sum(x_back) + tf.reduce_sum(inverse_log_det)
  for g in tape.gradient(total, [x, h]):
    assert np.all(np.isfinite(g.numpy()))
  np.testing.assert_allclose(z[..., :2], x[..., :2])  # the identity tails
  np.testing.assert_allclose(x_back[..., :2], x[..., :2])


@pytest.mark.parametrize(
  'spline', [transforms.Spline(), transforms.Spline(bins=7, bound=1.5)], ids=['K4', 'K7']
)
def test_the_spline_matches_tfp_rational_quadratic_spline_in_value_inverse_log_det_and_gradient(spline):
  """An independent reference: TFP's `RationalQuadraticSpline` built from the same bin widths, heights and
  interior derivatives (its tails are the identity too), in float64."""
  import tensorflow_probability as tfp

  k, bound = spline.bins, spline.bound
  x = tf.constant(RNG.uniform(-1.3 * bound, 1.3 * bound, (2, 4, 4, 3)))
  h = h_for(spline, x, scale=2.0)

  def reference(h):
    u, v, s = tf.split(tf.reshape(h, [*x.shape, 3 * k - 1]), [k, k, k - 1], axis=-1)
    sizes = lambda logits, m: 2 * bound * (m + (1 - k * m) * tf.nn.softmax(logits, axis=-1))  # noqa: E731
    offset = np.log(np.expm1(1 - spline.min_derivative))
    return tfp.bijectors.RationalQuadraticSpline(
      sizes(u, spline.min_bin_width),
      sizes(v, spline.min_bin_height),
      spline.min_derivative + tf.nn.softplus(s + offset),
      range_min=-bound,
    )

  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, h])
    z, log_det = spline.couple(x, h)
    ours = tf.reduce_sum(z**2) + tf.reduce_sum(log_det)
    rqs = reference(h)
    z_ref = rqs.forward(x)
    log_det_ref = tf.reduce_sum(rqs.forward_log_det_jacobian(x, event_ndims=0), axis=[1, 2, 3])
    theirs = tf.reduce_sum(z_ref**2) + tf.reduce_sum(log_det_ref)
  np.testing.assert_allclose(z, z_ref, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(log_det, log_det_ref, rtol=1e-10, atol=1e-10)
  for g, g_ref in zip(tape.gradient(ours, [x, h]), tape.gradient(theirs, [x, h])):
    np.testing.assert_allclose(g, g_ref, rtol=1e-8, atol=1e-8)
  assert (
    np.any(np.abs(x.numpy()) > bound) and np.abs(log_det.numpy()).min() > 1e-3
  )  # tails and bins both seen
  x_back, inverse_log_det = spline.uncouple(z_ref, h)
  np.testing.assert_allclose(x_back, rqs.inverse(z_ref), rtol=1e-10, atol=1e-10)
  expected = tf.reduce_sum(rqs.inverse_log_det_jacobian(z_ref, event_ndims=0), axis=[1, 2, 3])
  np.testing.assert_allclose(inverse_log_det, expected, rtol=1e-10, atol=1e-10)


SPLINES = [
  transforms.Spline(),
  transforms.Spline(bins=7, bound=1.5),
  transforms.Spline(bins=2, min_bin_width=0.2, min_derivative=0.1),
  transforms.Spline(bins=1),
]


@pytest.mark.parametrize('spline', SPLINES, ids=['K4', 'K7', 'K2', 'K1'])
def test_the_splines_hand_written_vjp_equals_tensorflows_gradient_in_float64(spline):
  """`couple_vjp` (what the training step's kernels call instead of a tape) against TensorFlow's own gradient
  of `couple`, for random cotangents of the value and the per-image log-det, with elements inside the bins,
  in the identity tails and exactly on the bound."""
  x = inputs(spline.bound)
  h = h_for(spline, x, scale=2.0)
  dz, dlog_det = tf.constant(RNG.standard_normal(x.shape)), tf.constant(RNG.standard_normal([2]))
  with tf.GradientTape() as tape:
    tape.watch([x, h])
    z, log_det = spline.couple_value(x, h)  # `couple` without its custom gradient
  dh_tf, dx_tf = tape.gradient(
    [z, log_det], [h, x], output_gradients=[dz, dlog_det], unconnected_gradients=tf.UnconnectedGradients.ZERO
  )  # (one bin: h does not move the spline)
  dh, dx = spline.couple_vjp(x, h, dz, dlog_det)
  assert dh.shape == h.shape and dx.shape == x.shape
  np.testing.assert_allclose(dx, dx_tf, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(dh, dh_tf, rtol=1e-10, atol=1e-12)
  assert np.abs(dx_tf.numpy()).max() > 1e-2 and (spline.bins == 1 or np.abs(dh_tf.numpy()).max() > 1e-2)


@pytest.mark.parametrize('spline', SPLINES[:2], ids=['K4', 'K7'])
def test_the_splines_custom_gradient_is_exact_at_second_order_and_in_forward_mode(spline):
  """`couple`'s gradient is `couple_vjp` (made of differentiable ops of x_b and h): Hessian-vector products
  and forward-mode derivatives through it equal TensorFlow's own of the plain ops (`couple_value`)."""
  x = inputs(spline.bound)
  h = h_for(spline, x, scale=2.0)
  weights = tf.constant(RNG.standard_normal(x.shape))
  vx, vh = tf.constant(RNG.standard_normal(x.shape)), tf.constant(RNG.standard_normal(h.shape))

  def hvp_and_jvp(fn):
    with tf.GradientTape(persistent=True) as outer:
      outer.watch([x, h])
      with tf.GradientTape() as inner:
        inner.watch([x, h])
        z, log_det = fn(x, h)
        loss = tf.reduce_sum(weights * z**3) + tf.reduce_sum(log_det**2)
      gx, gh = inner.gradient(loss, [x, h])
      along = tf.reduce_sum(gx * vx) + tf.reduce_sum(gh * vh)
    with tf.autodiff.ForwardAccumulator([x, h], [vx, vh]) as accumulator:
      z, log_det = fn(x, h)
    return [gx, gh, *outer.gradient(along, [x, h]), accumulator.jvp(z), accumulator.jvp(log_det)]

  for ours, theirs in zip(hvp_and_jvp(spline.couple), hvp_and_jvp(spline.couple_value)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-10)
    assert np.abs(theirs.numpy()).max() > 1e-2


def test_the_stored_gradient_does_not_trace_the_spline_again_in_its_backward_pass(monkeypatch):
  """The 'stored' gradient (GlowModel's default) evaluates each step's spline once, in its forward loop; its
  backward takes the spline's VJP by hand (`couple_vjp`) instead of recording `couple` again under a tape.
  Its gradients equal TensorFlow's own."""
  calls = []
  couple = transforms.Spline.couple
  monkeypatch.setattr(transforms.Spline, 'couple', lambda self, *a: calls.append(1) or couple(self, *a))
  x = tf.constant(RNG.uniform(-0.5, 0.5, (4, 4, 4, 2)))
  kwargs = dict(levels=1, steps=3, width=8, coupling='spline', dtype=tf.float64, seed=2)
  stored, plain = (tg.Glow((4, 4, 2), gradient=g, **kwargs) for g in ('stored', 'autodiff'))
  stored.initialize(x)
  perturb(stored, 0.1, seed=5)
  for a, b in zip(plain.variables, stored.variables):
    a.assign(b)
  grads = []
  for glow in (stored, plain):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(glow.inverse_log_det_jacobian(x, 3)) + tf.reduce_sum(glow.inverse(x) ** 2)
    forward_calls = len(calls)
    grads.append(tape.gradient(loss, glow.trainable_variables))
    if glow is stored:
      assert forward_calls >= 3 and len(calls) == forward_calls, (forward_calls, len(calls))
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
  'settings, message',
  [
    (dict(bins=0), 'bins must be an integer >= 1'),
    (dict(bound=-1.0), 'bound must be a finite number > 0'),
    (dict(bins=4, min_bin_width=0.3), 'min_bin_width must be in [0, 1/bins)'),
    (dict(min_derivative=1.0), 'min_derivative must be in [0, 1)'),
  ],
)
def test_bad_spline_settings_are_refused(settings, message):
  with pytest.raises(ValueError, match=message.replace('[', r'\[').replace('(', r'\(').replace(')', r'\)')):
    transforms.Spline(**settings)


@pytest.mark.parametrize(
  'coupling',
  [
    pytest.param(
      'spline', marks=pytest.mark.slow
    ),  # the default run: the spline's math above, its autodiff modes
    pytest.param(transforms.Spline(bins=3, bound=2.0), marks=pytest.mark.slow),
    pytest.param('additive', marks=pytest.mark.slow),
  ],
)
def test_glow_with_a_composed_coupling_passes_the_contract(coupling):
  glow = tg.Glow((4, 4, 2), levels=2, steps=2, width=8, coupling=coupling, dtype=tf.float64, seed=1)
  assert type(glow.levels[0].steps).__name__ == 'StepStack'
  x = tf.constant(RNG.uniform(-0.5, 0.5, (2, 4, 4, 2)))
  glow.initialize(x)
  perturb(glow, 0.1)
  log_dets = check_bijector(glow, x)
  assert np.all(np.abs(log_dets.numpy()) > 1e-6)


def test_a_fresh_spline_glow_is_exactly_the_identity_in_its_steps():
  """Zero last layers: every spline coupling passes x_b through, so the flow's log-det is actnorm's, 1x1's
  and the priors' alone, as for the additive coupling with the same seed."""
  x = tf.constant(RNG.uniform(-0.5, 0.5, (2, 4, 4, 2)))
  kwargs = dict(levels=2, steps=2, width=8, dtype=tf.float64, seed=3)
  spline, additive = (
    tg.Glow((4, 4, 2), coupling='spline', **kwargs),
    tg.Glow((4, 4, 2), coupling='additive', **kwargs),
  )
  for a, b in zip(spline.trainable_variables, additive.trainable_variables):
    if a.shape == b.shape and 'coupling' not in a.name:
      a.assign(b)
  np.testing.assert_allclose(spline.inverse(x), additive.inverse(x), atol=1e-12)
  np.testing.assert_allclose(
    spline.inverse_log_det_jacobian(x, 3), additive.inverse_log_det_jacobian(x, 3), atol=1e-10
  )


def custom_network(in_channels, out_channels):
  return keras.Sequential(
    [
      keras.Input((None, None, in_channels), dtype='float64'),
      keras.layers.Conv2D(5, 3, padding='same', activation='tanh', dtype='float64'),
      keras.layers.Conv2D(out_channels, 1, dtype='float64', kernel_initializer='zeros'),
    ]
  )


@pytest.mark.slow
def test_a_custom_network_feeds_the_chosen_transform():
  glow = tg.Glow(
    (4, 4, 2),
    levels=1,
    steps=2,
    width=8,
    coupling='spline',
    coupling_network=custom_network,
    dtype=tf.float64,
  )
  coupling = glow.levels[0].steps[0].coupling
  assert isinstance(coupling.transform, transforms.Spline)
  transformed = glow.levels[0].shape[-1] - glow.levels[0].shape[-1] // 2
  assert coupling.network.output_shape[-1] == transformed * transforms.Spline().params_per_channel
  perturb(glow, 0.1)
  check_bijector(glow, tf.constant(RNG.uniform(-0.5, 0.5, (2, 4, 4, 2))))


class MyCoupling(tg.AffineCoupling):
  pass


def test_combinations_that_cannot_work_are_refused_in_one_line():
  with pytest.raises(ValueError, match='coupling_network= replaces the network of the built-in coupling'):
    tg.Glow((4, 4, 2), levels=1, steps=1, width=4, coupling=MyCoupling, coupling_network=custom_network)
  with pytest.raises(ValueError, match='with coupling_network=, permutation must be a name'):
    tg.Glow(
      (4, 4, 2),
      levels=1,
      steps=1,
      width=4,
      permutation=tg.ChannelPermutation,
      coupling_network=custom_network,
    )
  with pytest.raises(ValueError, match="coupling must be one of \\('affine', 'additive', 'spline'\\)"):
    tg.Glow((4, 4, 2), levels=1, steps=1, width=4, coupling='splin')


def test_the_fast_kernels_are_chosen_by_capability_not_class():
  glow = tg.Glow((4, 4, 2), levels=1, steps=2, width=4, coupling='spline')
  stacked = glow.levels[0].steps[0].coupling
  assert not isinstance(stacked, tg.AffineCoupling) and kernels.has_kernels(stacked)
  own = tg.Glow((4, 4, 2), levels=1, steps=1, width=4, coupling_network=custom_network, dtype=tf.float64)
  assert not kernels.has_kernels(own.levels[0].steps[0].coupling)

  class Claims(tg.Coupling):
    has_network_kernels = False

  assert not kernels.has_kernels(Claims(2, width=4))


@pytest.mark.slow
def test_spline_reconstruction_drift_through_a_deep_flow_under_the_inverse_gradient():
  """gradient='inverse' rebuilds each step's input from its output (a quadratic solve per element for the
  spline): through L = 3, K = 32 in float32, with splines as far from the identity as a short training makes
  them, the parameter gradients stay within 1e-2 of the stored ones (relative L2 norm), and the image
  rebuilt from the latent within 1e-4 of the input. (The inverse loses ulp(z) / derivative per step: where a
  spline is nearly flat, float32 drift grows without bound; docs/design.md, "Couplings".)"""
  kwargs = dict(levels=3, steps=32, width=8, coupling='spline', seed=0)
  # 64 images: actnorm's init sees 64 values per channel even at the 1x1 top level (4 would give it extreme scales)
  x = tf.constant(np.random.default_rng(7).uniform(-0.5, 0.5, (64, 8, 8, 3)), tf.float32)
  stored, inverse = (tg.Glow((8, 8, 3), gradient=g, **kwargs) for g in ('stored', 'inverse'))
  stored.initialize(x)
  rng = np.random.default_rng(0)
  for v in stored.trainable_variables:  # splines away from the identity; actnorm and 1x1s as initialized
    if 'coupling' in v.name:
      v.assign(v + 0.02 * rng.standard_normal(v.shape))
  for a, b in zip(inverse.variables, stored.variables):
    a.assign(b)
  grads = []
  for glow in (stored, inverse):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(glow.inverse_log_det_jacobian(x, 3)) + tf.reduce_mean(glow.inverse(x) ** 2)
    grads.append(tape.gradient(loss, glow.trainable_variables))
  z = tf.identity(inverse.inverse(tf.identity(x)))  # fresh tensors: TFP's cache would hand x back
  drift = np.max(np.abs(inverse.forward(z).numpy() - x.numpy()))
  assert drift < 1e-4, drift
  # In norm, not per element: the log-det's parameter gradient jumps where an input crosses a knot (the
  # spline's second derivative does), and a rebuilt input 1e-5 away may sit across one: that one element's
  # term moves (up to a few % of a variable's largest entry; docs/design.md, "Couplings").
  flat = [tf.concat([tf.reshape(g, [-1]) for g in gs], 0) for gs in grads]
  assert float(tf.norm(flat[1] - flat[0]) / tf.norm(flat[0])) < 1e-2
  for v, a, b in zip(inverse.trainable_variables, grads[1], grads[0]):  # and each variable's is its own
    assert float(tf.norm(a - b) / tf.maximum(tf.norm(b), 1e-6)) < 0.1, v.name


def test_glow_model_trains_a_spline_coupling_and_saves_it(tmp_path):
  images = np.random.default_rng(0).uniform(-0.5, 0.5, (32, 4, 4, 3)).astype('float32')
  model = tg.GlowModel((4, 4, 3), levels=1, steps=2, width=8, n_bins=16, coupling='spline', seed=0)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  history = model.fit(images, batch_size=16, epochs=2, verbose=0)
  assert np.all(np.isfinite(history.history['bits_per_dim']))
  assert history.history['bits_per_dim'][-1] < history.history['bits_per_dim'][0]
  path = str(tmp_path / 'spline.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded.glow.levels[0].steps[0].coupling.transform, transforms.Spline)
  np.testing.assert_allclose(loaded.log_prob(images[:4]), model.log_prob(images[:4]), rtol=1e-5)
