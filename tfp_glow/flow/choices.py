"""Glow's constructor arguments -> what the levels are built from: the coupling (a CouplingSpec -> a transform
and a conditioner, `tfp_glow.bijectors`), the deprecated `memory_saving`, and the checks of every argument
(each check written once, in `tfp_glow.specs.ModelSpec`'s fields)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import tensorflow as tf

from tfp_glow import specs
from tfp_glow.bijectors import conditioners, transforms
from tfp_glow.bijectors.base import GlowBijector
from tfp_glow.names import PERMUTATIONS
from tfp_glow.specs import CouplingSpec, ModelSpec
from tfp_glow.specs.fields import check_setting
from tfp_glow.specs.model import IMAGE_SHAPE, check_shape_and_levels


def is_layer_class(kind: Any) -> bool:
  return isinstance(kind, type) and issubclass(kind, GlowBijector)


def coupling_parts(spec: CouplingSpec, who: str = 'Glow') -> tuple[Any, conditioners.Conditioner]:
  """(transform, conditioner) of a CouplingSpec: a transform without settings by its name (the paper's
  'affine' / 'additive' keep their own classes, `tfp_glow.flow.level`), else its instance."""
  transform: Any = spec.transform
  if spec.transform_settings:
    cls = transforms.TRANSFORMS[spec.transform]
    fields = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(spec.transform_settings) - set(fields))
    if unknown:
      raise ValueError(
        f'{who}: coupling {spec.transform!r}: unknown setting(s) {", ".join(unknown)}; it takes '
        f'{", ".join(fields) or "none"}.'
      )
    transform = cls(**spec.transform_settings)
  conditioner = conditioners.conditioner_from(spec.conditioner, spec.conditioner_settings or None)
  return transform, conditioner


def resolve_coupling(
  coupling: Any, conditioner: Any, conditioner_settings: dict | None, who: str = 'Glow'
) -> tuple[Any, conditioners.Conditioner, CouplingSpec | None]:
  """(what the levels build as coupling, the conditioner, the CouplingSpec; None for a GlowBijector class)."""
  if is_layer_class(coupling):
    return coupling, conditioners.conditioner_from(conditioner or 'conv', conditioner_settings), None
  spec = specs.coupling_spec(coupling, conditioner, conditioner_settings, who=who)
  transform, conditioner = coupling_parts(spec, who)
  return transform, conditioner, complete(spec, transform, conditioner)


def complete(spec: CouplingSpec, transform: Any = None, conditioner: Any = None) -> CouplingSpec:
  """`spec` with every setting of its transform and conditioner written out (their defaults included), so
  that a saved model keeps its shapes if a default changes later; but a conditioner's None (an optional part
  left out, e.g. `context_size`) is not written, so the default conv's settings stay {} as before it had one."""
  if transform is None:
    transform, conditioner = coupling_parts(spec)
  transform_settings = {} if isinstance(transform, str) else dataclasses.asdict(transform)
  settings = {k: v for k, v in dataclasses.asdict(conditioner).items() if v is not None}
  return spec.replace(transform_settings=transform_settings, conditioner_settings=settings)


def deprecated_memory_saving(gradient: str | None, memory_saving: bool | str, who: str) -> str | None:
  """`gradient`, or the deprecated `memory_saving`'s spelling of it, with a DeprecationWarning when given."""
  if memory_saving not in (None, False, 'off'):
    warnings.warn(
      f"{who}: memory_saving={memory_saving!r} is deprecated; use gradient='inverse' or 'checkpoint'.",
      DeprecationWarning,
      stacklevel=4,
    )
  return specs.gradient_of(gradient, memory_saving, who)


def check_config(
  image_shape: Any,
  levels: int,
  steps: int,
  width: int,
  permutation: Any,
  num_classes: int | None,
  dtype: Any,
  who: str = 'Glow',
) -> tuple[int, int, int]:
  """Validates Glow's arguments (the checks of ModelSpec's fields, said as `who`'s); returns (H, W, C)."""
  shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else image_shape
  if isinstance(shape, tuple) and all(isinstance(d, np.integer) for d in shape):
    shape = tuple(int(d) for d in shape)
  values = dict(levels=levels, steps=steps, width=width, num_classes=num_classes)
  if not IMAGE_SHAPE[0](shape):  # Glow needs one: not ModelSpec's None (a run's: from the data)
    raise specs.SpecError(who, 'image_shape', IMAGE_SHAPE[1], image_shape)
  for name, value in values.items():
    check_setting(ModelSpec, name, value, who)
  check_shape_and_levels(shape, levels, who)
  if not (is_layer_class(permutation) or isinstance(permutation, str)):
    raise ValueError(
      f'{who}: permutation must be one of {PERMUTATIONS} or a GlowBijector subclass, got {permutation!r}.'
    )
  if isinstance(permutation, str):
    check_setting(ModelSpec, 'permutation', permutation, who)
  if dtype not in (tf.float32, tf.float64):
    raise TypeError(f'{who}: dtype must be float32 or float64, got {dtype.name}.')
  return shape
