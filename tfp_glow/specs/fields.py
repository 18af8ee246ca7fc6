"""How a spec declares a setting: its default and its check, written once, in the field itself.

  levels: int = setting(3, POSITIVE_INT)

A check is (predicate, text): a value the predicate refuses raises
  SpecError('WHO: levels must be a positive integer, got 0.')
where WHO is the object being built ('GlowModel', 'Glow', 'ModelSpec', ...). `Spec` gives every spec the
same JSON round trip: `to_dict()` (tuples as lists, nested specs as dicts) and `from_dict()` (unknown keys
refused in one line). No TensorFlow here: the CLI reads these before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, TypeVar

Check = tuple[Callable[[Any], bool], str]
S = TypeVar('S', bound='Spec')


class SpecError(ValueError):
  """A setting refused by its check: names the setting, what it must be, and the value given."""

  def __init__(self, who: str, field: str, text: str, value: Any) -> None:
    self.who, self.field, self.text, self.value = who, field, text, value
    super().__init__(f'{who}: {field} must be {text}, got {value!r}.')

  def named(self, who: str) -> SpecError:
    """The same error, as raised by `who` (e.g. GlowModel, for a ModelSpec it builds)."""
    return SpecError(who, self.field, self.text, self.value)


def setting(default: Any = dataclasses.MISSING, check: Check | None = None, *, factory: Any = None) -> Any:
  """A spec field with its default (or `factory` for a mutable one) and its check."""
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata={'check': check})
  return dataclasses.field(default=default, metadata={'check': check})


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def int_at_least(low: int, text: str | None = None) -> Check:
  return (lambda x: _is_int(x) and x >= low), text or f'an integer >= {low}'


def one_of(choices: tuple) -> Check:
  return (lambda x: isinstance(x, str) and x in choices), f'one of {choices}'


def optional(check: Check) -> Check:
  return (lambda x: x is None or check[0](x)), f'None or {check[1]}'


POSITIVE_INT = int_at_least(1, 'a positive integer')
BOOL: Check = (lambda x: isinstance(x, bool), 'True or False')
POSITIVE_FLOAT: Check = (lambda x: _is_real(x) and x > 0, 'a finite number > 0')
NON_NEGATIVE_FLOAT: Check = (lambda x: _is_real(x) and x >= 0, 'a finite number >= 0')
FRACTION: Check = (lambda x: _is_real(x) and 0 <= x <= 1, 'a fraction in [0, 1]')
TEXT: Check = (lambda x: isinstance(x, str) and bool(x), 'a non-empty string')
SETTINGS: Check = (
  lambda x: isinstance(x, dict) and all(isinstance(k, str) for k in x),
  'a dict of named settings',
)


def field_defaults(cls: type) -> dict[str, Any]:
  """{name: default} of a spec class (a factory's value for mutable defaults): what signatures take."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
  return out


def check_setting(cls: type, name: str, value: Any, who: str) -> None:
  """Runs the check of `cls`'s field `name` on `value` (for an object that takes the setting as an argument)."""
  check = {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get('check')
  if check is not None and not check[0](value):
    raise SpecError(who, name, check[1], value)


def _jsonable(value: Any) -> Any:
  if isinstance(value, Spec):
    return value.to_dict()
  if isinstance(value, tuple):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  return value


def _dataclass(spec: Any) -> Any:
  """`spec` as it is: every Spec subclass is a dataclass, which type checkers cannot see on the base."""
  return spec


class Spec:
  """The shared behaviour of the frozen spec dataclasses: checks on construction, JSON round trip."""

  def __post_init__(self) -> None:
    self._normalize()
    for f in dataclasses.fields(_dataclass(self)):
      check_setting(type(self), f.name, getattr(self, f.name), type(self).__name__)
    self._check_together(type(self).__name__)

  def _normalize(self) -> None:
    """Converts JSON forms to the field's type (lists to tuples, dicts to nested specs)."""

  def _check_together(self, who: str) -> None:
    """Checks that involve several fields."""

  @classmethod
  def create(cls: type[S], who: str, **values: Any) -> S:
    """cls(**values), its errors raised as `who`'s (the object that builds the spec from its arguments)."""
    try:
      return cls(**values)
    except SpecError as e:
      raise e.named(who) from None
    except ValueError as e:  # a check of several fields, or of a nested spec: said as `who`'s
      prefix = f'{cls.__name__}: '
      if not str(e).startswith(prefix) or who == cls.__name__:
        raise
      raise ValueError(f'{who}: {str(e)[len(prefix) :]}') from None

  def replace(self: S, **changes: Any) -> S:
    return dataclasses.replace(_dataclass(self), **changes)

  def to_dict(self) -> dict[str, Any]:
    """Every setting, JSON-ready (`from_dict` reads it back)."""
    return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(_dataclass(self))}

  @classmethod
  def keys(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(_dataclass(cls)))

  @classmethod
  def from_dict(cls: type[S], values: dict[str, Any], who: str | None = None) -> S:
    """The spec of `to_dict`'s output; a key that is no setting is refused in one line."""
    who = who or cls.__name__
    if not isinstance(values, dict):
      raise ValueError(f'{who}: expected a dict of settings, got {values!r}.')
    unknown = sorted(set(values) - set(cls.keys()))
    if unknown:
      raise ValueError(f'{who}: unknown setting(s) {", ".join(unknown)}; accepted: {", ".join(cls.keys())}.')
    return cls.create(who, **values)
