"""Checks every tfp_glow bijector must pass (after TFP's bijector_test_util, written for images).

All checks avoid TFP's cache (which would return the cached x for inverse(forward(x))) by passing
fresh tensors (`tf.identity`), so they test the math, not the cache.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def perturb(bijector, scale: float = 0.1, seed: int = 0) -> None:
  """Moves every trainable parameter away from its (often identity-making) initial value."""
  rng = np.random.default_rng(seed)
  for v in bijector.trainable_variables:
    v.assign(v + scale * rng.standard_normal(v.shape))


def fresh(x):
  return tf.identity(x)


def assert_bijective(bijector, x, kwargs, rtol=1e-6, atol=1e-8):
  """inverse(forward(z)) = z, forward(inverse(x)) = x, fldj(z) = -ildj(forward(z))."""
  z = bijector.inverse(x, **kwargs)
  x_back = bijector.forward(fresh(z), **kwargs)
  np.testing.assert_allclose(x_back, x, rtol=rtol, atol=atol)
  z_back = bijector.inverse(fresh(x_back), **kwargs)
  np.testing.assert_allclose(z_back, z, rtol=rtol, atol=atol)
  ildj = bijector.inverse_log_det_jacobian(fresh(x), event_ndims=3, **kwargs)
  fldj = bijector.forward_log_det_jacobian(fresh(z), event_ndims=3, **kwargs)
  np.testing.assert_allclose(fldj, -ildj * np.ones_like(fldj), rtol=rtol, atol=atol)
  return z


def assert_log_det_matches_jacobian(bijector, z, kwargs, rtol=1e-6, atol=1e-6):
  """forward log-det = log|det| of the autodiff Jacobian of the flattened forward map."""
  latent_shape = z.shape[1:]
  flat = tf.reshape(z, [z.shape[0], -1])
  with tf.GradientTape() as tape:
    tape.watch(flat)
    x = bijector.forward(tf.reshape(flat, [-1, *latent_shape]), **kwargs)
    x_flat = tf.reshape(x, [x.shape[0], -1])
  jacobian = tape.batch_jacobian(x_flat, flat)
  _, log_abs_det = tf.linalg.slogdet(jacobian)
  fldj = bijector.forward_log_det_jacobian(fresh(z), event_ndims=3, **kwargs)
  fldj = fldj * np.ones(z.shape[0])
  np.testing.assert_allclose(fldj, log_abs_det, rtol=rtol, atol=atol)
  # The log-det is not trivially zero: perturbed parameters must move it (except volume-preserving maps).
  return log_abs_det


def assert_event_shapes(bijector, x, z):
  """The event-shape hooks agree with the shapes of real outputs."""
  assert tuple(bijector.inverse_event_shape(x.shape)) == tuple(z.shape)
  assert tuple(bijector.forward_event_shape(z.shape)) == tuple(x.shape)
  np.testing.assert_array_equal(bijector.inverse_event_shape_tensor(tf.shape(x)), z.shape)
  np.testing.assert_array_equal(bijector.forward_event_shape_tensor(tf.shape(z)), x.shape)


def assert_graph_and_xla(bijector, x, kwargs, rtol=1e-6, atol=1e-8):
  """tf.function with an unknown batch size, and XLA, agree with eager."""
  z_eager = bijector.inverse(x, **kwargs)
  ildj_eager = bijector.inverse_log_det_jacobian(x, event_ndims=3, **kwargs) * np.ones(x.shape[0])
  x_eager = bijector.forward(fresh(z_eager), **kwargs)
  labels_spec = [tf.TensorSpec([None], tf.int32)] if kwargs else []
  image_spec = tf.TensorSpec([None, *x.shape[1:]], x.dtype)
  latent_spec = tf.TensorSpec([None, *z_eager.shape[1:]], x.dtype)

  def inverse(x, *labels):
    kw = {'labels': labels[0]} if labels else {}
    return bijector.inverse(x, **kw), bijector.inverse_log_det_jacobian(x, 3, **kw)

  def forward(z, *labels):
    kw = {'labels': labels[0]} if labels else {}
    return bijector.forward(z, **kw)

  args = list(kwargs.values())
  for jit in (False, True):
    inv = tf.function(inverse, input_signature=[image_spec, *labels_spec], jit_compile=jit)
    fwd = tf.function(forward, input_signature=[latent_spec, *labels_spec], jit_compile=jit)
    z, ildj = inv(x, *args)
    assert z.shape.as_list() == z_eager.shape.as_list()
    np.testing.assert_allclose(z, z_eager, rtol=rtol, atol=atol)
    np.testing.assert_allclose(ildj * np.ones(x.shape[0]), ildj_eager, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(fwd(fresh(z_eager), *args), x_eager, rtol=rtol, atol=atol)
