"""Two source trees compared through GlowModel's training step: the traced `train_step`'s op count (five
configurations) or `fit` speed, each measured in a fresh process with that tree on its PYTHONPATH, the trees
alternating round by round (the order flips each round); medians and paired ratios at the end.

  python benchmarks/train_step_ab.py BASE_TREE THIS_TREE ops
  python benchmarks/train_step_ab.py BASE_TREE THIS_TREE speed [ROUNDS]

e.g. BASE_TREE from `git archive COMMIT | tar -x -C /tmp/base`. Small config: 16x16x3, L=2, K=4, width 32,
batch 16, 40 timed steps.
"""

import json
import os
import statistics
import subprocess
import sys
import time

TREES = {}


def child(what):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import keras
  import tensorflow as tf

  import tfp_glow

  assert tfp_glow.__file__.startswith(os.environ['PYTHONPATH']), tfp_glow.__file__
  shape = (16, 16, 3)
  if what == 'ops':
    out = {}
    for name, kw in (
      ('affine', {}),
      ('conditional', dict(num_classes=3)),
      ('variational', dict(dequantization='variational')),
      ('inverse', dict(gradient='inverse')),
      ('autodiff', dict(gradient='autodiff')),
    ):
      model = tfp_glow.GlowModel(shape, levels=2, steps=4, width=32, seed=0, **kw)
      model.compile()
      model.initialize(
        tf.random.uniform([16, *shape], -0.5, 0.5), tf.zeros([16], tf.int32) if 'num_classes' in kw else None
      )
      spec = tf.TensorSpec([None, *shape])
      if 'num_classes' in kw:
        spec = (spec, tf.TensorSpec([None], tf.int32))
      g = tf.function(model.train_step).get_concrete_function(spec).graph
      out[name] = len(g.get_operations())
    return out
  batch, steps = 16, 40
  model = tfp_glow.GlowModel(shape, levels=2, steps=4, width=32, seed=0)
  model.compile()
  x = tf.random.stateless_uniform([batch * (steps + 1), *shape], (0, 1)) - 0.5
  model.initialize(x[:batch])
  model.fit(tf.data.Dataset.from_tensor_slices(x[:batch]).batch(batch), epochs=1, verbose=0)
  ends = []
  clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
  model.fit(
    tf.data.Dataset.from_tensor_slices(x[batch:]).batch(batch).cache(), epochs=1, verbose=0, callbacks=[clock]
  )
  return {'images_per_s': (len(ends) - 1) * batch / (ends[-1] - ends[0])}


def run(tree, what):
  env = {**os.environ, 'PYTHONPATH': tree, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  out = subprocess.run([sys.executable, __file__, '--child', what], capture_output=True, text=True, env=env)
  if out.returncode:
    raise SystemExit(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == '__main__':
  if sys.argv[1] == '--child':
    print(json.dumps(child(sys.argv[2])))
    raise SystemExit
  TREES.update(base=sys.argv[1], tree=sys.argv[2])
  what, rounds = sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1
  rows = {k: [] for k in TREES}
  for r in range(rounds):
    order = list(TREES) if r % 2 == 0 else list(TREES)[::-1]
    for name in order:
      rows[name].append(run(TREES[name], what))
      print(r, name, rows[name][-1], 'load', os.getloadavg()[0], flush=True)
  for name, rs in rows.items():
    print(name, {k: statistics.median(row[k] for row in rs) for k in rs[0]})
  if what == 'speed':
    ratios = [t['images_per_s'] / b['images_per_s'] for t, b in zip(rows['tree'], rows['base'])]
    print(
      'paired ratios tree/base', [round(x, 3) for x in ratios], 'median', round(statistics.median(ratios), 3)
    )
