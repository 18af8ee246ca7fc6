"""What TensorFlow's autodiff is recording right now: the two questions a hand-built gradient must ask.

A custom gradient (`tf.custom_gradient`) gives TensorFlow a first-order VJP. It is plain autodiff's answer
only where nothing asks more of it: no second tape differentiating the gradient (second order, Hessian-vector
products), no `tf.autodiff.ForwardAccumulator` (forward mode). `tfp_glow.flow.gradients` asks:

  higher_order_possible(tensors)   at the forward pass: may a tape nested in another, or a forward
                                   accumulator, differentiate through `tensors`? Then step aside.
  recording()                      in the backward pass: is a tape recording the gradient computation
                                   itself (a gradient of a gradient)? Then step aside.

Neither is in TensorFlow's public API. They are the helpers TensorFlow's own `tf.function` uses to decide
whether to build higher-order gradient functions (`TFE_Py_TapeSetPossibleGradientTypes`: 2 for two tapes or a
tape and an accumulator, but 1 for a forward accumulator alone), which tangents forward accumulators carry
(`TFE_Py_PackJVPs`), and whether an op is recorded (`could_possibly_record`). If a TensorFlow release moves them, both answer "yes": every custom
gradient steps aside to TensorFlow's own, which is always right, only slower or larger (a warning says so).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import tensorflow as tf

try:  # private: see the module docstring
  from tensorflow.python import pywrap_tfe as _pywrap_tfe
  from tensorflow.python.eager import record as _record

  _POSSIBLE_GRADIENT_TYPES = _pywrap_tfe.TFE_Py_TapeSetPossibleGradientTypes
  _PACK_JVPS = _pywrap_tfe.TFE_Py_PackJVPs
  _COULD_POSSIBLY_RECORD = _record.could_possibly_record
except (ImportError, AttributeError):  # pragma: no cover - depends on the TensorFlow release
  _POSSIBLE_GRADIENT_TYPES = _PACK_JVPS = _COULD_POSSIBLY_RECORD = None

_warned = False


def available() -> bool:
  """True if this TensorFlow has the private helpers (else every question answers True)."""
  return None not in (_POSSIBLE_GRADIENT_TYPES, _PACK_JVPS, _COULD_POSSIBLY_RECORD)


def _missing() -> bool:
  global _warned
  if not _warned:
    _warned = True
    warnings.warn(
      'tfp_glow: this TensorFlow lacks the private helpers that tell a first-order gradient from a higher '
      "order one (see tfp_glow.flow.tape_state); the memory-saving gradients ('stored', 'inverse', "
      "'checkpoint') step aside to TensorFlow's own gradient outside GlowModel's training step.",
      RuntimeWarning,
      stacklevel=3,
    )
  return True


def higher_order_possible(tensors: Sequence[tf.Tensor]) -> bool:
  """True if a gradient of order > 1 or a forward-mode derivative may be taken through `tensors` (two tapes,
  or a tape and a forward accumulator, or an accumulator watch them)."""
  if _POSSIBLE_GRADIENT_TYPES is None:
    return _missing()
  tensors = list(tensors)
  return _POSSIBLE_GRADIENT_TYPES(tensors) > 1 or bool(_PACK_JVPS(tensors)[1])


def recording() -> bool:
  """True if a gradient tape (or forward accumulator) is active, so that what runs now may be differentiated."""
  if _COULD_POSSIBLY_RECORD is None:
    return _missing()
  return bool(_COULD_POSSIBLY_RECORD())
