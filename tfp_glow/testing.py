"""The bijector contract: checks every tfp_glow bijector passes, for anyone writing a layer (and notebook 02).

After TFP's `bijector_test_util`, written for images [N, H, W, C]:

  assert_bijective(b, x)                    inverse(forward(z)) = z, forward(inverse(x)) = x, and
                                            fldj(z) = -ildj(x)
  assert_log_det_matches_jacobian(b, x)     both log-dets equal log|det J| of the autodiff Jacobian of the
                                            flattened map: the forward map at z = inverse(x) and the
                                            inverse map at x (a wrong inverse log-det or a gradient that
                                            breaks under batch_jacobian shows here)
  assert_event_shapes(b, x, z)              the event-shape hooks agree with real outputs
  assert_graph_and_xla(b, x)                tf.function with an unknown batch size, and XLA, agree with eager
  check_bijector(b, x)                      all of the above

Every check passes fresh tensors (`tf.identity`), so TFP's cache (which returns the cached x for
inverse(forward(x))) cannot answer for the math. A freshly built Glow layer is often the identity
(zero-initialized couplings): `perturb` it first, or every check passes trivially.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_probability import bijectors as tfb


def perturb(bijector: tf.Module, scale: float = 0.1, seed: int = 0) -> None:
  """Moves every trainable parameter of `bijector` by scale * N(0, 1) away from its initial value."""
  rng = np.random.default_rng(seed)
  for v in bijector.trainable_variables:
    v.assign(v + scale * rng.standard_normal(v.shape))


def fresh(x: tf.Tensor) -> tf.Tensor:
  """A new tensor equal to x: TFP's bijector cache does not know it."""
  return tf.identity(x)


def assert_bijective(
  bijector: tfb.Bijector,
  x: tf.Tensor,
  kwargs: dict[str, Any] | None = None,
  rtol: float = 1e-6,
  atol: float = 1e-8,
) -> tf.Tensor:
  """inverse(forward(z)) = z, forward(inverse(x)) = x, fldj(z) = -ildj(x). Returns z = inverse(x)."""
  kwargs = kwargs or {}
  z = bijector.inverse(fresh(x), **kwargs)
  x_back = bijector.forward(fresh(z), **kwargs)
  np.testing.assert_allclose(x_back, x, rtol=rtol, atol=atol, err_msg='forward(inverse(x)) != x')
  z_back = bijector.inverse(fresh(x_back), **kwargs)
  np.testing.assert_allclose(z_back, z, rtol=rtol, atol=atol, err_msg='inverse(forward(z)) != z')
  ildj = bijector.inverse_log_det_jacobian(fresh(x), event_ndims=3, **kwargs)
  fldj = bijector.forward_log_det_jacobian(fresh(z), event_ndims=3, **kwargs)
  np.testing.assert_allclose(fldj, -ildj * np.ones_like(fldj), rtol=rtol, atol=atol, err_msg='fldj != -ildj')
  return z


def _jacobian_log_det(fn, t: tf.Tensor) -> tf.Tensor:
  """log|det d fn(t) / dt| per batch member, from `tape.batch_jacobian` of the flattened map."""
  flat = tf.reshape(t, [t.shape[0], -1])
  with tf.GradientTape() as tape:
    tape.watch(flat)
    out = fn(tf.reshape(flat, [-1, *t.shape[1:]]))
    out_flat = tf.reshape(out, [out.shape[0], -1])
  return tf.linalg.slogdet(tape.batch_jacobian(out_flat, flat))[1]


def assert_log_det_matches_jacobian(
  bijector: tfb.Bijector,
  x: tf.Tensor,
  kwargs: dict[str, Any] | None = None,
  rtol: float = 1e-6,
  atol: float = 1e-6,
) -> tuple[tf.Tensor, tf.Tensor]:
  """The inverse log-det at x and the forward log-det at z = inverse(x) equal log|det| of the autodiff
  Jacobians of the flattened inverse and forward maps. Returns (inverse, forward) Jacobian log-dets."""
  kwargs = kwargs or {}
  z = bijector.inverse(fresh(x), **kwargs)
  ones = np.ones(x.shape[0])
  inverse = _jacobian_log_det(lambda t: bijector.inverse(t, **kwargs), fresh(x))
  ildj = bijector.inverse_log_det_jacobian(fresh(x), event_ndims=3, **kwargs) * ones
  np.testing.assert_allclose(ildj, inverse, rtol=rtol, atol=atol, err_msg='inverse log-det != Jacobian')
  forward = _jacobian_log_det(lambda t: bijector.forward(t, **kwargs), fresh(z))
  fldj = bijector.forward_log_det_jacobian(fresh(z), event_ndims=3, **kwargs) * ones
  np.testing.assert_allclose(fldj, forward, rtol=rtol, atol=atol, err_msg='forward log-det != Jacobian')
  return inverse, forward


def assert_event_shapes(bijector: tfb.Bijector, x: tf.Tensor, z: tf.Tensor) -> None:
  """The event-shape hooks agree with the shapes of real outputs (x an input image batch, z = inverse(x))."""
  assert tuple(bijector.inverse_event_shape(x.shape)) == tuple(z.shape)
  assert tuple(bijector.forward_event_shape(z.shape)) == tuple(x.shape)
  np.testing.assert_array_equal(bijector.inverse_event_shape_tensor(tf.shape(x)), z.shape)
  np.testing.assert_array_equal(bijector.forward_event_shape_tensor(tf.shape(z)), x.shape)


def assert_graph_and_xla(
  bijector: tfb.Bijector,
  x: tf.Tensor,
  kwargs: dict[str, Any] | None = None,
  rtol: float = 1e-6,
  atol: float = 1e-8,
) -> None:
  """tf.function with an unknown batch size, and XLA, agree with eager (values and log-dets). `kwargs`: at
  most `labels` (int [N])."""
  kwargs = kwargs or {}
  z_eager = bijector.inverse(fresh(x), **kwargs)
  ildj_eager = bijector.inverse_log_det_jacobian(fresh(x), event_ndims=3, **kwargs) * np.ones(x.shape[0])
  x_eager = bijector.forward(fresh(z_eager), **kwargs)
  labels_spec = [tf.TensorSpec([None], tf.int32)] if kwargs else []
  image_spec = tf.TensorSpec([None, *x.shape[1:]], x.dtype)
  latent_spec = tf.TensorSpec([None, *z_eager.shape[1:]], x.dtype)

  def inverse(x, *labels):
    kw = {'labels': labels[0]} if labels else {}
    return bijector.inverse(x, **kw), bijector.inverse_log_det_jacobian(x, 3, **kw)

  def forward(z, *labels):
    return bijector.forward(z, **({'labels': labels[0]} if labels else {}))

  args = list(kwargs.values())
  for jit in (False, True):
    inv = tf.function(inverse, input_signature=[image_spec, *labels_spec], jit_compile=jit)
    fwd = tf.function(forward, input_signature=[latent_spec, *labels_spec], jit_compile=jit)
    z, ildj = inv(fresh(x), *args)
    assert z.shape.as_list() == z_eager.shape.as_list()
    np.testing.assert_allclose(z, z_eager, rtol=rtol, atol=atol, err_msg=f'inverse, jit_compile={jit}')
    np.testing.assert_allclose(ildj * np.ones(x.shape[0]), ildj_eager, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(fwd(fresh(z_eager), *args), x_eager, rtol=rtol, atol=atol)


def check_bijector(
  bijector: tfb.Bijector,
  x: tf.Tensor,
  kwargs: dict[str, Any] | None = None,
  rtol: float = 1e-6,
  atol: float = 1e-6,
) -> tf.Tensor:
  """Every check above on images x [N, H, W, C] (use float64 for tight tolerances). Returns the inverse
  map's Jacobian log-dets (a test can assert that they are not all zero)."""
  z = assert_bijective(bijector, x, kwargs, rtol=rtol, atol=min(atol, 1e-6))
  inverse, _ = assert_log_det_matches_jacobian(bijector, x, kwargs, rtol=rtol, atol=atol)
  assert_event_shapes(bijector, x, z)
  assert_graph_and_xla(bijector, x, kwargs, rtol=rtol, atol=min(atol, 1e-6))
  return inverse
