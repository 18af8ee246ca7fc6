"""GlowModel under tf.distribute.MirroredStrategy on two logical CPU devices.

Logical devices must be configured before TensorFlow starts, so the check runs in a fresh process.
"""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfp_glow import GlowModel, data, optim

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
    # README's example under the strategy: a validation batch of 297 does not split in two.
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


def test_mirrored_strategy_two_replicas_trains_every_variable(result):
  assert result['replicas'] == 2
  assert result['initialized'] and result['replicas_equal']
  assert result['mirrored'] >= result['total']  # every weight is mirrored, not only the trainable ones
  assert result['changed'] == result['total']
  assert 0 < result['bits_per_dim'] < 10


def test_a_bad_batch_on_one_replica_is_skipped_on_all(result):
  assert result['bad_skipped'] == [1.0]
  assert result['untouched']


def test_a_batch_that_does_not_split_evenly_is_cut_to_one_that_does(result):
  assert 0 < result['uneven'] < 10
