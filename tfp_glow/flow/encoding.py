"""What encoding an image gives: the per-level latents, the log-det and the top activations (`Glow.encode_with_log_det`)."""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Encoding:
  """Image -> latent, level by level (see `Glow.encode_with_log_det`).

  latents: per level, standardized latents eps_i [N, h_i, w_i, c_i] (the last one is the top).
  log_det: log|det d(latent)/d(image)| [N].
  top: the top level's activations before its prior, [N, h_L, w_L, c_L] (for a class predictor).
  """

  latents: list[tf.Tensor]
  log_det: tf.Tensor
  top: tf.Tensor
