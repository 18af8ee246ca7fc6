"""Value checks on tensors, with one error for every entry point: InvalidArgumentError naming the problem.

  check(x, ok, message, *values) -> x        ok: a boolean scalar (tensor); values: shown after the message
  all_finite(x, message) -> x                 no NaN, no Inf
  in_range(x, low, high, message) -> x        low <= x <= high (an empty x passes)

Eagerly (a Python call on concrete tensors) the check runs now and the error is our message alone, e.g.
  "GlowModel: image values must be in [-0.5, 0.5) (...); got values from 0 to 255".
In a graph (a tf.function, Keras' compiled steps, a SavedModel) the check is a `tf.debugging.Assert` op
that the returned tensor depends on (so use the returned tensor), and TensorFlow's error reads
  "assertion failed: [<message>] [<value>] ..."
inside lines of its own that name the graph node; TensorFlow's Python runtime writes those for every error
raised in a graph (`clean_message` takes our text back out).

Which entry point checks what: docs/troubleshooting.md, "What each entry point checks".
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf


def check(x: tf.Tensor, ok: tf.Tensor | bool, message: str, *values: tf.Tensor) -> tf.Tensor:
  """`x` unchanged if `ok` (a boolean scalar) holds, else InvalidArgumentError: `message`, then `values`."""
  if tf.executing_eagerly():
    if not bool(ok):
      shown = ' '.join(_format(v) for v in values)
      raise tf.errors.InvalidArgumentError(None, None, f'{message} {shown}'.strip())
    return x
  with tf.control_dependencies([tf.debugging.Assert(ok, [message, *values])]):
    return tf.identity(x)


def all_finite(x: tf.Tensor, message: str) -> tf.Tensor:
  """`x` unchanged if it holds no NaN and no Inf, else InvalidArgumentError(`message`)."""
  x = tf.convert_to_tensor(x)
  return check(x, tf.reduce_all(tf.math.is_finite(x)), message)


def in_range(x: tf.Tensor, low: float | tf.Tensor, high: float | tf.Tensor, message: str) -> tf.Tensor:
  """`x` unchanged if low <= x <= high everywhere (check finiteness first: NaN compares false), else
  InvalidArgumentError(`message`; got values from min(x) to max(x))."""
  x = tf.convert_to_tensor(x)
  smallest, largest = tf.reduce_min(x), tf.reduce_max(x)  # +max / -max of the dtype for an empty x
  ok = tf.logical_and(smallest >= tf.cast(low, x.dtype), largest <= tf.cast(high, x.dtype))
  return check(x, ok, f'{message.rstrip(".")}; got values from', smallest, 'to', largest)


def clean_message(error: tf.errors.OpError) -> str:
  """Our text of an error raised by `check` in a graph, without TensorFlow's lines around it:
  'Graph execution error: ... assertion failed: [msg] [v] ... [[{{node ...}}]]' -> 'msg v'.
  Any other error's message is returned as it is."""
  # TensorFlow prints an Assert's data on one line: 'assertion failed: [msg] [v] [...]'.
  found = re.search(r'assertion failed: \[(.*)\]\s*$', error.message, re.MULTILINE)
  if not found:
    return error.message
  return ' '.join(part.strip() for part in found.group(1).split('] [') if part.strip())


def _format(value) -> str:
  if isinstance(value, str):
    return value
  value = np.asarray(value)
  return f'{value.item():g}' if value.size == 1 and value.dtype.kind == 'f' else str(value.tolist())
