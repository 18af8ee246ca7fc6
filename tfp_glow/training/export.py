"""SavedModel export of a GlowModel: `log_prob` and `sample` endpoints, no tfp_glow needed to load."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfp_glow.distribution import check_temperature


def export_saved_model(model, filepath: str, verbose: bool = True) -> None:
  """Writes a SavedModel at `filepath` with two endpoints (any batch size):

    log_prob(images: float32 [None, H, W, C][, labels: int32 [None]]) -> float32 [None]
    sample(n: int32 [], temperature: float32 [][, labels: int32 [None]]) -> float32 [n, H, W, C]

  n = 0 and zero images give empty results (TFP's convention); n < 0 and a temperature that is not
  finite and > 0 raise InvalidArgumentError.

  Load with `tf.saved_model.load(filepath)`; images are in the model's [-0.5, 0.5) scale.
  """
  if not model.is_initialized:
    raise ValueError('export: the model is not initialized (train it, or call model.initialize(images)).')
  dtype = model.glow.dtype
  images = tf.TensorSpec([None, *model.image_shape], dtype, name='images')
  n = tf.TensorSpec([], tf.int32, name='n')
  temperature = tf.TensorSpec([], dtype, name='temperature')
  dist = model.distribution
  # The endpoints always check their arguments (there is no Python left to do it): a temperature
  # that is not finite and > 0, or n < 0, fails with an error naming it.
  checked = lambda t: check_temperature(t, dtype, validate_args=True)  # noqa: E731

  def sample(n, t, labels=None):
    with tf.control_dependencies([tf.debugging.assert_non_negative(n, message='sample: n must be >= 0.')]):
      n = tf.identity(n)
    return dist.sample(n, temperature=checked(t), **({} if labels is None else {'labels': labels}))

  archive = keras.export.ExportArchive()
  archive.track(model)
  if model.num_classes:
    labels = tf.TensorSpec([None], tf.int32, name='labels')
    archive.add_endpoint('log_prob', lambda x, y: dist.log_prob(x, labels=y), [images, labels])
    archive.add_endpoint('sample', sample, [n, temperature, labels])
  else:
    archive.add_endpoint('log_prob', dist.log_prob, [images])
    archive.add_endpoint('sample', lambda n, t: sample(n, t), [n, temperature])
  archive.write_out(filepath, verbose=verbose)
