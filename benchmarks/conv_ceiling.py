"""How close is a tfp_glow training step to the convolutions it cannot avoid?

Times, in one process and alternating rounds, (a) a full GlowModel training step and (b) only the coupling
networks' convolutions of the same model (the same 3 x K conv stacks at the same shapes, forward + backward,
nothing else): (b) is the floor any TensorFlow implementation of this architecture pays.

  python benchmarks/conv_ceiling.py [--rounds 3] [--steps 10]

Architecture as in train_speed.py: 32x32x3, L=3, K=8, width 128, batch 32.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402

from tfp_glow.model import GlowModel  # noqa: E402
from tfp_glow.nets import coupling_network  # noqa: E402
from tfp_glow.optim import default_optimizer  # noqa: E402

H, W, C, LEVELS, STEPS, WIDTH, BATCH = 32, 32, 3, 3, 8, 128, 32


def conv_stacks():
  """The coupling networks' inputs and networks, level by level, as in Glow."""
  stacks, (h, w, c) = [], (H, W, C)
  for level in range(LEVELS):
    h, w, c = h // 2, w // 2, c * 4
    for _ in range(STEPS):
      net = coupling_network(c // 2, 2 * (c - c // 2), WIDTH)
      stacks.append((net, tf.random.normal([BATCH, h, w, c // 2])))
    if level < LEVELS - 1:
      c //= 2
  return stacks


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=10)
  args = parser.parse_args()

  model = GlowModel((H, W, C), levels=LEVELS, steps=STEPS, width=WIDTH, seed=0)
  model.compile(optimizer=default_optimizer(1e-3, warmup_steps=10))
  x = tf.random.uniform([BATCH, H, W, C]) - 0.5
  model.initialize(x)
  train_step = tf.function(model.train_step)

  stacks = conv_stacks()
  weights = [v for net, _ in stacks for v in net.trainable_variables]

  @tf.function
  def convs_only():
    with tf.GradientTape() as tape:
      inputs = [z for _, z in stacks]
      tape.watch(inputs)
      loss = tf.add_n([tf.reduce_sum(net(z)) for net, z in stacks])
    return tape.gradient(loss, weights + inputs)

  def images_per_s(fn) -> float:
    fn()  # trace / warm up
    t0 = time.perf_counter()
    for _ in range(args.steps):
      out = fn()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, out)
    return args.steps * BATCH / (time.perf_counter() - t0)

  for r in range(args.rounds):
    glow = images_per_s(lambda: train_step(x))
    convs = images_per_s(convs_only)
    print(
      json.dumps(
        dict(
          round=r,
          glow_train_images_per_s=round(glow, 1),
          conv_stacks_only_images_per_s=round(convs, 1),
          glow_fraction_of_conv_ceiling=round(glow / convs, 2),
        )
      ),
      flush=True,
    )


if __name__ == '__main__':
  main()
