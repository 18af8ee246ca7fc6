"""The model's spec: `ModelSpec` (a GlowModel's every setting) with its nested `CouplingSpec`.

`Glow`, `GlowModel`, `GlowModel.get_config`, a run's config.json, the named --configs and the CLI's defaults
all read these fields, so a model setting is declared once, here (its default and its check). No TensorFlow.

A coupling is split -> conditioner -> transform (`tfp_glow.bijectors.coupling`); `CouplingSpec` names the
transform and the conditioner and holds each one's own settings, e.g.
  CouplingSpec('spline', {'bins': 8}, 'transformer', {'depth': 4, 'patch_size': 2})
The settings' defaults and checks are the transform's and the conditioner's own dataclass fields
(`tfp_glow.bijectors.transforms.Spline`, `tfp_glow.bijectors.conditioners.Transformer`): a new setting of a
transform is one field there, and reaches Glow, GlowModel, config.json and `--coupling-option` unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tfp_glow.names import CONDITIONERS, COUPLINGS, DEQUANTIZATIONS, GRADIENTS, PERMUTATIONS, SPLITS
from tfp_glow.specs.fields import (
  BOOL,
  NON_NEGATIVE_FLOAT,
  POSITIVE_INT,
  SETTINGS,
  Spec,
  SpecError,
  int_at_least,
  one_of,
  optional,
  setting,
)

FLOW_DTYPES = ('float32', 'float64')
IMAGE_SHAPE = (
  lambda s: isinstance(s, tuple) and len(s) == 3 and all(isinstance(d, int) and d > 0 for d in s),
  '(H, W, C) positive integers',
)


@dataclasses.dataclass(frozen=True)
class CouplingSpec(Spec):
  """A coupling: its elementwise transform and its conditioner network, each by registry name with its
  settings (the transform's / conditioner's dataclass fields; {}: their defaults), and its split."""

  transform: str = setting('affine', one_of(COUPLINGS))
  transform_settings: dict = setting(check=SETTINGS, factory=dict)
  conditioner: str = setting('conv', one_of(CONDITIONERS))
  conditioner_settings: dict = setting(check=SETTINGS, factory=dict)
  split: str = setting('channel', one_of(SPLITS))

  def _normalize(self) -> None:
    for name in ('transform_settings', 'conditioner_settings'):  # None (older configs): no settings
      object.__setattr__(self, name, dict(getattr(self, name) or {}))
    layer = self.conditioner_settings.get('layer')
    if self.conditioner == 'keras' and layer is not None and not isinstance(layer, dict):
      # a user's Keras layer object: kept as its serialized config, so the spec stays JSON (loads Keras only here)
      from tfp_glow.bijectors.conditioners.keras_layer import serialized  # noqa: PLC0415

      self.conditioner_settings['layer'] = serialized(layer)


def _named(part: Any, settings: dict | None, what: str, who: str) -> tuple[Any, dict | None]:
  """(name, settings) of a registry name or of a transform / conditioner instance (a dataclass with `name`)."""
  if (
    dataclasses.is_dataclass(part)
    and not isinstance(part, type)
    and isinstance(getattr(part, 'name', 0), str)
  ):
    if settings:
      raise ValueError(
        f'{who}: {what}_settings={settings!r} given with a {what} instance {part!r}: give one.'
      )
    return part.name, dataclasses.asdict(part)  # type: ignore[attr-defined]
  return part, settings


def coupling_spec(
  coupling: Any = None,
  conditioner: Any = None,
  conditioner_settings: dict | None = None,
  transform_settings: dict | None = None,
  split: str | None = None,
  *,
  base: CouplingSpec | None = None,
  who: str = 'CouplingSpec',
) -> CouplingSpec:
  """A CouplingSpec from the ways a user names a coupling, applied over `base` (default: CouplingSpec()):

  coupling: a CouplingSpec or its dict (the whole coupling), a transform name ('spline'), or a transform
    instance (`transforms.Spline(bins=8)`). conditioner: a name or an instance. *_settings: the named part's
    settings, merged over the base's (a part whose name changes starts from {}). split: a split's name
    ('channel', 'checkerboard', 'stripes'; `tfp_glow.bijectors.splits`).
  """
  spec = base or CouplingSpec()
  if isinstance(coupling, dict):
    coupling = CouplingSpec.from_dict(coupling, who)
  if isinstance(coupling, CouplingSpec):
    spec = coupling
  elif coupling is not None:
    name, settings = _named(coupling, transform_settings, 'transform', who)
    if not (isinstance(name, str) and name in COUPLINGS):
      raise ValueError(
        f'{who}: coupling must be one of {COUPLINGS}, a transform instance (tfp_glow.bijectors.transforms) or a '
        f'CouplingSpec, got {coupling!r}.'
      )
    kept = spec.transform_settings if name == spec.transform else {}
    spec, transform_settings = spec.replace(transform=name, transform_settings=kept), settings
  if conditioner is not None:
    name, settings = _named(conditioner, conditioner_settings, 'conditioner', who)
    if not (isinstance(name, str) and name in CONDITIONERS):
      raise ValueError(
        f'{who}: conditioner must be one of {CONDITIONERS} or an instance of one, got {conditioner!r}.'
      )
    kept = spec.conditioner_settings if name == spec.conditioner else {}
    spec, conditioner_settings = spec.replace(conditioner=name, conditioner_settings=kept), settings
  for key, extra in (
    ('transform_settings', transform_settings),
    ('conditioner_settings', conditioner_settings),
  ):
    if extra is not None:
      if not isinstance(extra, dict):
        raise SpecError(who, key, 'a dict of named settings', extra)
      spec = spec.replace(**{key: {**getattr(spec, key), **extra}})
  if split is not None:
    spec = spec.replace(split=split)
  return CouplingSpec.create(who, **dataclasses.asdict(spec))


def check_class_context(class_context: int | None, num_classes: int | None, who: str) -> None:
  """A class embedding as the conditioners' context (`class_context`, its size E) needs classes to embed."""
  if class_context is not None and not num_classes:
    raise ValueError(
      f'{who}: class_context={class_context!r} feeds a learned class embedding to the conditioners and needs '
      'num_classes; set num_classes, or leave class_context None.'
    )


def check_shape_and_levels(image_shape: tuple[int, int, int], levels: int, who: str) -> None:
  """H and W divisible by 2**levels: one 2x2 squeeze per level."""
  f = 2**levels
  if image_shape[0] % f or image_shape[1] % f:
    raise ValueError(
      f'{who}: image height and width must be divisible by 2**levels = {f} '
      f'(one 2x2 squeeze per level), got {image_shape[0]}x{image_shape[1]} with levels={levels}.'
    )


@dataclasses.dataclass(frozen=True)
class ModelSpec(Spec):
  """Every setting of a GlowModel (the Glow bijector's and the training step's); see GlowModel for each.

  image_shape: (H, W, C), or None where the data decides (a run's config). gradient: how the training step
  differentiates each level (`tfp_glow.flow.gradients`; the bijector's own calls keep 'autodiff').
  class_context: E, the size of a learned class embedding [num_classes, E] that a class-conditional model feeds
  to every coupling's conditioner as its context (`tfp_glow.flow.context`); None: the top prior alone is
  conditioned on the class.
  """

  image_shape: tuple | None = setting(None, optional(IMAGE_SHAPE))
  levels: int = setting(3, POSITIVE_INT)
  steps: int = setting(32, POSITIVE_INT)
  width: int = setting(512, POSITIVE_INT)
  coupling: CouplingSpec = setting(
    check=(lambda c: isinstance(c, CouplingSpec), 'a CouplingSpec'), factory=CouplingSpec
  )
  permutation: str = setting('conv_lu', one_of(PERMUTATIONS))
  learn_top: bool = setting(True, BOOL)
  num_classes: int | None = setting(None, optional(int_at_least(2)))
  class_context: int | None = setting(None, optional(int_at_least(1)))
  n_bins: int = setting(256, int_at_least(2))
  class_loss_weight: float = setting(0.01, NON_NEGATIVE_FLOAT)
  init_batch_size: int = setting(256, POSITIVE_INT)
  validate_inputs: bool = setting(True, BOOL)
  max_consecutive_skips: int = setting(10, int_at_least(1))
  seed: int | None = setting(None, optional(int_at_least(0)))
  flow_dtype: str = setting('float32', one_of(FLOW_DTYPES))
  gradient: str = setting('stored', one_of(GRADIENTS))
  dequantization: str = setting('uniform', one_of(DEQUANTIZATIONS))

  def _normalize(self) -> None:
    if isinstance(self.image_shape, list):  # from JSON
      object.__setattr__(self, 'image_shape', tuple(self.image_shape))
    if isinstance(self.image_shape, tuple):
      object.__setattr__(
        self, 'image_shape', tuple(int(d) if _is_integral(d) else d for d in self.image_shape)
      )
    if isinstance(self.coupling, (str, dict)):
      object.__setattr__(self, 'coupling', coupling_spec(self.coupling, who=type(self).__name__))

  def _check_together(self, who: str) -> None:
    if self.image_shape is not None:  # a model's spec (a run's leaves the shape and classes to its data)
      check_shape_and_levels(self.image_shape, self.levels, who)
      check_class_context(self.class_context, self.num_classes, who)

  @classmethod
  def from_dict(cls, values: dict[str, Any], who: str | None = None) -> ModelSpec:
    """Also reads the flat configs written before the spec (`upgrade`)."""
    return super().from_dict(upgrade(values), who)


def _is_integral(d: Any) -> bool:
  return hasattr(d, '__index__') and not isinstance(d, bool)


def gradient_of(gradient: str | None, memory_saving: bool | str | None, who: str) -> str | None:
  """`gradient`, or what the deprecated `memory_saving` (True / 'inverse' / 'checkpoint'; False, None, 'off':
  not given) spells; refuses the two when they disagree. Does not warn (the caller does, where a user typed it)."""
  if memory_saving in (None, False, 'off'):
    return gradient
  alias = 'inverse' if memory_saving is True else memory_saving
  if alias not in ('inverse', 'checkpoint'):
    raise ValueError(
      f"{who}: memory_saving must be False, True, 'inverse' or 'checkpoint', got {memory_saving!r}."
    )
  if gradient not in (None, alias):
    raise ValueError(f'{who}: gradient={gradient!r} and memory_saving={memory_saving!r} disagree; give one.')
  return alias


# Keys of the flat configs written before the spec (GlowModel.get_config, a run's config.json), mapped by upgrade.
LEGACY_KEYS = ('memory_saving', 'conditioner', 'conditioner_settings')


def upgrade(values: dict[str, Any], who: str = 'config') -> dict[str, Any]:
  """A config written before the spec -> today's keys: memory_saving -> gradient; a coupling by name with
  `conditioner` / `conditioner_settings` beside it -> the nested coupling. Today's configs pass unchanged."""
  if not isinstance(values, dict):
    return values
  values = dict(values)
  legacy = {k: values.pop(k) for k in LEGACY_KEYS if k in values}
  if 'memory_saving' in legacy:
    values['gradient'] = gradient_of(values.get('gradient'), legacy['memory_saving'], who)
  if values.get('gradient', 0) is None:  # older GlowModel configs: None meant the default
    del values['gradient']
  if 'conditioner' in legacy or 'conditioner_settings' in legacy or isinstance(values.get('coupling'), str):
    values['coupling'] = coupling_spec(
      values.get('coupling'), legacy.get('conditioner'), legacy.get('conditioner_settings'), who=who
    ).to_dict()
  return values
