"""The conditioner context of a Glow: what reaches every coupling's conditioner besides the half it conditions on.

A conditioner built with `context_size=E` (`tfp_glow.bijectors.conditioners`) also reads a per-image vector
c [N, E]. A Glow takes it one of two ways, never both:

  context=c         a float tensor [N, E] the caller passes (`Glow.inverse_and_log_det(x, context=c)`, encode,
                    decode, initialize; TFP users: `bijector_kwargs={'context': c}` or `log_prob(x, context=c)`)
  class_context=E   a class-conditional Glow's learned class embedding: c = embedding[labels], the embedding
                    [num_classes, E] one Keras-tracked variable (in `glow.layer`, saved with a model)

and hands the same c to every level's steps, where it is a loop-invariant input of the StepStack loop and of the
hand-built gradients, which return its gradient summed over the steps and levels (`tfp_glow.flow.gradients`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from tfp_glow.bijectors.base import ParameterLayer
from tfp_glow.specs.model import check_class_context


class ClassEmbedding(ParameterLayer):
  """The class embedding [num_classes, E] of a Glow built with `class_context=E`: row y is the context of the
  images of class y. Drawn as Keras' `Embedding` draws its rows (uniform in [-0.05, 0.05]); the conditioners'
  context kernels start Glorot-uniform, and their last layers at zero, so a fresh flow is the identity still."""

  def __init__(self, num_classes: int, size: int, dtype: tf.DType, name: str = 'class_embedding'):
    super().__init__(dtype, name)
    self.embedding = self.add_weight(
      shape=(num_classes, size), initializer=keras.initializers.RandomUniform(-0.05, 0.05), name='embedding'
    )

  def lookup(self, labels: tf.Tensor) -> tf.Tensor:
    """Integer labels [N] -> contexts [N, E]."""
    return tf.gather(tf.convert_to_tensor(self.embedding), labels)


class Conditioning:
  """What conditions a Glow besides its input: the labels (its class-conditional top prior's, and the class
  embedding's where `class_context` is set) and the conditioners' context. `layers`: its Keras layers (the class
  embedding, or none), for the Glow's one layer of parameters."""

  def __init__(
    self, num_classes: int | None, class_context: int | None, conditioner: Any, dtype: tf.DType, name: str
  ):
    self.num_classes, self.name = num_classes, name
    self.embedding: ClassEmbedding | None = None
    if class_context is not None and num_classes:  # else refused by `conditioner_for`
      self.embedding = ClassEmbedding(num_classes, class_context, dtype)
    self.context_size = getattr(conditioner, 'context_size', None)
    self.dtype = dtype
    self.layers = [] if self.embedding is None else [self.embedding]

  def context_of(self, x: tf.Tensor, labels: Any, context: Any) -> tf.Tensor | None:
    """The conditioners' context [N, E] for images (or latents) x [N, ...]: the class embedding's rows at
    `labels`, or the caller's `context` (checked), or None (conditioners without a context). Refused here: labels
    without classes, and a missing context (or labels) where the conditioners read one."""
    if labels is not None and not self.num_classes:
      raise ValueError(
        f'{self.name}: labels were given, but this Glow is not class-conditional (num_classes=None).'
      )
    if self.embedding is None:
      if context is None and self.context_size is not None:  # no silent density of another model
        raise ValueError(
          f'{self.name}: its conditioners were built with context_size={self.context_size} and read a '
          f"context [N, {self.context_size}]; pass context= (a distribution: bijector_kwargs={{'context': c}})."
        )
      return check_context(context, self.context_size, self.dtype, x, self.name)
    if context is not None:
      raise ValueError(
        f'{self.name}: its class embedding (class_context) is the context; pass labels=, not context=.'
      )
    if labels is None:
      raise ValueError(
        f'{self.name}: this Glow is class-conditional (num_classes={self.num_classes}, class_context); '
        'pass labels=... (integer class ids).'
      )
    return self.embedding.lookup(labels)


def conditioner_for(
  conditioner: Any,
  class_context: int | None,
  num_classes: int | None,
  takes_context: bool,
  who: str = 'Glow',
) -> Any:
  """The conditioner the levels build: `conditioner`, given `context_size=class_context` where a class embedding
  is its context. `takes_context`: False where the couplings are not the built-in coupling's conditioner (a
  `coupling_network=` or a coupling class). Refuses what cannot work, in one line each."""
  check_class_context(class_context, num_classes, who)
  size = getattr(conditioner, 'context_size', None)
  if class_context is not None:
    if size not in (None, class_context):
      raise ValueError(
        f"{who}: class_context={class_context} and the conditioner's context_size={size} disagree; give one."
      )
    if not hasattr(conditioner, 'context_size'):
      raise ValueError(f'{who}: class_context: the conditioner {conditioner!r} takes no context.')
    conditioner = dataclasses.replace(conditioner, context_size=class_context)
  if getattr(conditioner, 'context_size', None) is not None and not takes_context:
    raise ValueError(
      f'{who}: a context (context_size / class_context) reaches the built-in conditioner only; coupling_network= '
      'or a coupling class cannot take one.'
    )
  return conditioner


def check_context(
  context: Any, size: int | None, dtype: tf.DType, images: tf.Tensor, who: str
) -> tf.Tensor | None:
  """A caller's context as a tensor of the flow's `dtype`, [N, size] with N the images' (where both are known):
  refused in one line if the conditioners were built without a context (`size` None), if it is not float, or
  if its shape is not that."""
  if context is None:
    return None
  if size is None:
    raise ValueError(
      f"{who}: a context was given, but this Glow's conditioners were built without context_size; build it "
      "with conditioner_settings={'context_size': E} to take one."
    )
  context = tf.convert_to_tensor(context)
  if not context.dtype.is_floating:
    raise TypeError(f'{who}: context must be a float tensor [N, {size}], got dtype {context.dtype.name}.')
  n = images.shape[0]
  if context.shape.rank != 2 or context.shape[-1] != size or _differ(context.shape[0], n):
    raise ValueError(
      f"{who}: context must be [N, {size}] (N images, the conditioners' context_size {size}), got shape "
      f'{context.shape.as_list() if context.shape.rank is not None else None} for {n} images.'
    )
  return tf.cast(context, dtype)


def _differ(a: int | None, b: int | None) -> bool:
  return a is not None and b is not None and a != b
