"""Whether TensorFlow is tracing a function for XLA (`jit_compile=True`).

Some graph shapes that are fast for TensorFlow's executor are slow to compile or to run under XLA, as
measured on this project's CPU (BENCHMARKS.md): the fused optimizer kernels (`tfp_glow.training.optim`) took the
first step from 21 to 87 s, and TensorFlow's convolution gradients inside a loop ran as naive loop nests
(`tfp_glow.bijectors.xla_conv`). Those code paths ask this module and take another route under XLA.
"""

from __future__ import annotations

import tensorflow as tf


def tracing_for_xla() -> bool:
  """True inside a function being traced for XLA compilation (`tf.function(jit_compile=True)`, Keras
  `compile(jit_compile=True)`); False eagerly and in plain `tf.function`s."""
  try:  # TensorFlow's own helper, not part of its public API: if it moves, assume no XLA
    from tensorflow.python.ops import control_flow_util
  except ImportError:
    return False
  return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
