"""Distributed training: MirroredStrategy on two logical CPU devices, and two multi-worker processes
(MultiWorkerMirroredStrategy over TF_CONFIG on 127.0.0.1) through `tfp-glow train --strategy multi-worker`.

Logical devices and TF_CONFIG must be set before TensorFlow starts, so every check runs in fresh processes.
"""

import csv
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfp_glow import GlowModel, data
    from tfp_glow.training import optim

    train, info = data.load_dataset("digits", "train", batch_size=64, seed=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = GlowModel(info.image_shape, levels=2, steps=1, width=8, n_bins=17, seed=0)
        model.compile(optimizer=optim.default_optimizer(1e-2, warmup_steps=1))
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(train.take(4), epochs=1, verbose=0)
    # Every replica holds the same values (actnorm init ran once, for all replicas).
    mirrored = [v for v in model.weights if hasattr(v.value, "values")]
    same = all(np.array_equal(*[t.numpy() for t in v.value.values]) for v in mirrored)
    changed = sum(not np.allclose(v.numpy(), b) for v, b in zip(model.trainable_variables, before))
    # A bad batch (one NaN pixel, on one replica's half) is skipped on both replicas.
    state = lambda: [v.numpy().copy() for v in [*model.weights, *model.optimizer.variables]]
    kept = state()
    images = next(iter(train)).numpy()
    images[40, 0, 0, 0] = np.nan
    bad = model.fit(images, batch_size=64, epochs=1, verbose=0).history
    untouched = all(np.array_equal(a, b) for a, b in zip(kept, state()))
    # README's example under the strategy: a validation batch of 297 does not split in two (padded).
    test, _ = data.load_dataset("digits", "test", batch_size=297, shuffle=False)
    uneven = model.fit(train.take(2), validation_data=test, epochs=1, verbose=0).history["val_bits_per_dim"][-1]
    print(json.dumps(dict(replicas=strategy.num_replicas_in_sync, initialized=model.is_initialized,
                          bits_per_dim=history.history["bits_per_dim"][-1], replicas_equal=same, mirrored=len(mirrored),
                          changed=changed, total=len(before), bad_skipped=bad["skipped_steps"], untouched=untouched,
                          uneven=uneven)))
""")


@pytest.fixture(scope='module')
def result():
  out = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mirrored_strategy_two_replicas_trains_every_variable(result):
  assert result['replicas'] == 2
  assert result['initialized'] and result['replicas_equal']
  assert result['mirrored'] >= result['total']  # every weight is mirrored, not only the trainable ones
  assert result['changed'] == result['total']
  assert 0 < result['bits_per_dim'] < 10


@pytest.mark.slow
def test_a_bad_batch_on_one_replica_is_skipped_on_all(result):
  assert result['bad_skipped'] == [1.0]
  assert result['untouched']


@pytest.mark.slow  # the module's mirrored-strategy run costs about 20 s
def test_a_batch_that_does_not_split_evenly_is_padded(result):
  assert 0 < result['uneven'] < 10


# ---- multi-worker training through the CLI -----------------------------------------------------------

TINY_RUN = [
  '--levels',
  '1',
  '--steps',
  '1',
  '--width',
  '8',
  '--batch-size',
  '250',
  '--epochs',
  '4',
  '--lr',
  '3e-2',
]
TINY_RUN += ['--warmup-epochs', '0.2', '--no-ema']  # beats the uniform model in 4 epochs, or train fails


def _free_ports(n: int) -> list[int]:
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(out, ports) -> list[subprocess.Popen]:
  """Two `tfp-glow train --strategy multi-worker` processes, one TF_CONFIG each, on 127.0.0.1."""
  workers = [f'127.0.0.1:{p}' for p in ports]
  procs = []
  for index in range(len(workers)):
    tf_config = {'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}}
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL='3')
    cmd = [sys.executable, '-m', 'tfp_glow.cli', 'train', '--strategy', 'multi-worker', *TINY_RUN]
    procs.append(
      subprocess.Popen(
        [*cmd, '--out', str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
      )
    )
  return procs


def _finish(procs, timeout=240) -> list[str]:
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, output in zip(procs, outputs):
    assert p.returncode == 0, output[-3000:]
  return outputs


@pytest.mark.slow
def test_multi_worker_run_resumes_after_a_worker_is_killed_and_ends_bit_identical(tmp_path):
  """Two workers train; worker 1 is killed after the chief's first backup; both are restarted with the
  same command, resume from that backup, finish, and hold bit-identical weights."""
  out = tmp_path / 'run'
  ports = _free_ports(2)
  procs = _start_workers(out, ports)
  metadata, history = out / 'backup' / 'training_metadata.json', out / 'history.csv'

  def first_epoch_logged():  # the backup, then the CSV row: the callbacks' order at an epoch's end
    return metadata.exists() and history.exists() and len(history.read_text().splitlines()) >= 2

  deadline = time.time() + 240
  while not first_epoch_logged() and time.time() < deadline and all(p.poll() is None for p in procs):
    time.sleep(0.1)
  procs[1].kill()  # worker 1 dies in epoch 2; the chief then blocks in the next collective: stop it too
  procs[0].kill()
  for p in procs:
    p.communicate()
  assert metadata.exists(), 'no backup was written'
  assert json.loads(metadata.read_text())['epoch'] < 4 and not (out / 'metrics.json').exists()

  outputs = _finish(_start_workers(out, _free_ports(2)))
  for output in outputs:
    assert 'resuming the interrupted run' in output
  digests = [re.search(r'weights sha256 ([0-9a-f]{64}) \(2 replicas\)', o).group(1) for o in outputs]
  assert digests[0] == digests[1]  # bit-identical weights on both workers
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['weights_sha256'] == digests[0] and metrics['replicas'] == 2
  assert 1 <= metrics['epochs_this_run'] < 4 and metrics['epochs'] == 4
  assert 0 < metrics['test_bits_per_dim'] < 10
  with open(out / 'history.csv') as f:  # the chief's log: epoch 0 from the first run, then the rest
    assert [int(row['epoch']) for row in csv.DictReader(f)] == [0, 1, 2, 3]
  assert not (out / 'backup').exists()  # the chief removes it after a finished run
  assert not list(out.glob('.worker_*'))  # the other worker's temporary files are gone


# ---- MirroredStrategy against one device ---------------------------------------------------------------

TRAJECTORY = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfp_glow import GlowModel, data
    from tfp_glow.training import optim

    class Losses(keras.callbacks.Callback):
      def on_train_begin(self, logs=None):
        self.values = []
      def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(logs["bits_per_dim"]))

    def losses(strategy, weights):
      # the same images for both, noise included (a distributed dataset draws its noise anew):
      # 1500 = 6 global batches of 250
      train = tf.data.Dataset.from_tensor_slices(images).batch(250)
      with strategy.scope():
        model = GlowModel(info.image_shape, levels=2, steps=2, width=16, n_bins=17, seed=0)
        if weights is not None:
          model.set_weights(weights)
        model.compile(optimizer=optim.default_optimizer(2e-3, warmup_steps=3))
      initial = [w.copy() for w in model.get_weights()]
      record = Losses()
      model.fit(train, epochs=2, verbose=0, callbacks=[record])
      return record.values, initial

    def sgd_update(strategy, weights):
      # Plain SGD is not invariant to the gradient's scale (Adamax nearly is): one step's update
      # shows whether the replicas' gradients add up to the global batch's mean gradient.
      with strategy.scope():
        model = GlowModel(info.image_shape, levels=2, steps=2, width=16, n_bins=17, seed=0)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(1e-2))
      model.fit(tf.data.Dataset.from_tensor_slices(images[:250]).batch(250), epochs=1, verbose=0)
      before = model.get_weights()
      model.fit(tf.data.Dataset.from_tensor_slices(images[250:500]).batch(250), epochs=1, verbose=0)
      pairs = [(a, b) for a, b in zip(model.get_weights(), before) if a.dtype.kind == "f"]
      return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in pairs)))

    ds, info = data.load_dataset("digits", "train", batch_size=1500, shuffle=False, seed=0)
    images = next(iter(ds)).numpy()
    single, initial = losses(tf.distribute.get_strategy(), None)
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored, _ = losses(mirrored_strategy, initial)
    updates = [sgd_update(s, initial) for s in (tf.distribute.get_strategy(), mirrored_strategy)]
    print(json.dumps(dict(single=single, mirrored=mirrored, sgd_updates=updates)))
""")


@pytest.mark.slow
def test_mirrored_strategy_follows_the_single_device_loss_trajectory():
  """Same global batch (250 = 2 x 125), same initial weights and data: the per-step training loss
  (Keras' running mean over the epoch, bits/dim) of 2 replicas stays within 1e-4 bits/dim of one
  device's over 12 steps (measured: at most 5e-6). The difference is float32 summation order
  (per-replica means, then the all-reduce) and Adamax's epsilon."""
  out = subprocess.run([sys.executable, '-c', TRAJECTORY], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  single, mirrored = np.array(result['single']), np.array(result['mirrored'])
  assert len(single) == len(mirrored) == 12
  assert single[-1] < single[0] - 0.05  # it trained: the comparison is not between two constants
  np.testing.assert_allclose(mirrored, single, atol=1e-4, rtol=0)
  # The size of one SGD update is the same on 2 replicas as on one device (it was 2x when each
  # replica's mean-loss gradient was summed over replicas).
  single_update, mirrored_update = result['sgd_updates']
  assert single_update > 0
  np.testing.assert_allclose(mirrored_update, single_update, rtol=1e-3)
