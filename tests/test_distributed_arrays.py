"""NumPy arrays under a distribution strategy go the padded-and-masked way a Dataset goes.

Keras cannot split an uneven batch across replicas; `GlowModel.fit` / `evaluate` turn arrays into a Dataset
batched as Keras batches arrays (batch_size, shuffle, validation_split, validation_data), which
`pad_batches` then pads. 13 images at batch 4 on 2 logical CPU devices: the last batch (1 image) is uneven.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
  import json, os, sys
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
  import numpy as np
  import tensorflow as tf
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  import keras
  sys.path.insert(0, {tests_dir!r})
  from test_bits_per_dim import bin_centres, perturbed_model, raw_images

  images, init = bin_centres(raw_images(13)), bin_centres(raw_images(40))  # the last of 13: a checkerboard
  labels = (np.arange(13) % 3).astype(np.int32)
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with strategy.scope():
    mirrored = perturbed_model(init)
    cond = perturbed_model(init, num_classes=3, class_loss_weight=1.0)
  single = perturbed_model(init)
  single.set_weights(mirrored.get_weights())  # the same model, on one device
  cond_single = perturbed_model(init, num_classes=3, class_loss_weight=1.0)
  cond_single.set_weights(cond.get_weights())
  per_image = single.bits_per_dim(single.log_prob(images)).numpy().astype(float)
  bpd = lambda logs: logs['bits_per_dim']
  out = dict(replicas=strategy.num_replicas_in_sync, per_image=per_image.tolist())
  out['evaluate'] = dict(
    arrays=bpd(mirrored.evaluate(images, batch_size=4, verbose=0, return_dict=True)),
    positional=bpd(mirrored.evaluate(images, None, 4, 0, return_dict=True)),  # batch_size, verbose
    dataset=bpd(mirrored.evaluate(tf.data.Dataset.from_tensor_slices(images).batch(4), verbose=0,
                                  return_dict=True)),
    one_device=bpd(single.evaluate(images, batch_size=4, verbose=0, return_dict=True)))
  out['conditional'] = dict(
    mirrored=cond.evaluate(images, labels, batch_size=4, verbose=0, return_dict=True),
    one_device=cond_single.evaluate(images, labels, batch_size=4, verbose=0, return_dict=True))
  # Learning rate 0: fit measures. Shuffled, the last 30% (floor(13 * 0.7) = 9: images 9..12) held out
  # and validated at batch 3 (3 + an uneven 1).
  split = mirrored.fit(images, batch_size=4, epochs=1, validation_split=0.3, validation_batch_size=3,
                       verbose=0).history
  given = mirrored.fit(images[:9], batch_size=4, epochs=1, validation_data=(images[9:],), verbose=0).history
  dataset = mirrored.fit(tf.data.Dataset.from_tensor_slices(images[:9]).batch(4), epochs=1, verbose=0,
                         validation_data=(images[9:],), validation_batch_size=3).history
  out['fit'] = dict((name, [h['bits_per_dim'][0], h['val_bits_per_dim'][0]])
                    for name, h in (('split', split), ('given', given), ('dataset', dataset)))
  # Training in order with plain SGD: any image left out, or any padding counted, changes the weights.
  before = [v.numpy() for v in single.trainable_variables]
  for model in (single, mirrored):
    model.compile(optimizer=keras.optimizers.SGD(0.01))  # small: a diverging run would amplify rounding
    model.fit(images, batch_size=4, epochs=1, shuffle=False, verbose=0)
  out['weights_diff'] = max(float(np.max(np.abs(a.numpy() - b.numpy())))
                            for a, b in zip(single.trainable_variables, mirrored.trainable_variables))
  out['moved'] = max(float(np.max(np.abs(a.numpy() - b))) for a, b in zip(single.trainable_variables, before))
  print(json.dumps(out))
""")


@pytest.fixture(scope='module')
def mirrored(request):
  script = SCRIPT.format(tests_dir=str(request.path.parent))
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh process with 2 logical devices
def test_evaluate_on_arrays_under_two_replicas_counts_every_image_once(mirrored):
  assert mirrored['replicas'] == 2
  mean = np.mean(mirrored['per_image'])
  for name, value in mirrored['evaluate'].items():
    np.testing.assert_allclose(value, mean, rtol=1e-5, err_msg=name)


@pytest.mark.slow  # a fresh process with 2 logical devices
def test_evaluate_on_arrays_with_labels_under_two_replicas_is_what_one_device_gives(mirrored):
  for name, value in mirrored['conditional']['one_device'].items():
    np.testing.assert_allclose(mirrored['conditional']['mirrored'][name], value, rtol=1e-5, err_msg=name)


@pytest.mark.slow  # a fresh process with 2 logical devices
def test_fit_on_arrays_under_two_replicas_splits_and_validates_as_keras_does(mirrored):
  per_image = np.array(mirrored['per_image'])
  expected = [per_image[:9].mean(), per_image[9:].mean()]  # shuffling changes no mean over images
  for name, figures in mirrored[
    'fit'
  ].items():  # validation_split; array validation_data with arrays / a Dataset
    np.testing.assert_allclose(figures, expected, rtol=1e-5, err_msg=name)


@pytest.mark.slow  # a fresh process with 2 logical devices
def test_training_on_arrays_under_two_replicas_moves_the_weights_as_one_device_does(mirrored):
  assert 1e-4 < mirrored['moved'] < 10.0  # trained, and not diverged (rounding differences would grow)
  assert mirrored['weights_diff'] < 1e-3 * mirrored['moved'], mirrored['weights_diff']
