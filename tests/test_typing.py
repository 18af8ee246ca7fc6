"""The public API is typed: every public function and method of tfp_glow is fully annotated, and mypy (setup.cfg
[mypy]) finds no error in the package.

Public: a function or method whose name has no leading underscore (dunders such as `__init__` and `__call__`
included), at module level or in a class whose name has no leading underscore; functions nested in others are
not API. Fully annotated: every parameter but `self` / `cls`, and the return (as mypy, an `__init__` with
annotated parameters may leave out `-> None`).

Every module is checked; PARTLY_CHECKED modules (the same list as setup.cfg's, checked below) for all but the
error codes that bijectors/base.py's interface causes in its users (its Optional `layer` and
`current_parameters()`, `**kwargs` in `*_and_log_det`, overrides that add `context` / `labels`: setup.cfg says
which). No module is left out (no `ignore_errors`). Take a module off the list once it is clean.
"""

from __future__ import annotations

import ast
import configparser
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'tfp_glow'

PARTLY_CHECKED = (
  'tfp_glow.bijectors.actnorm',
  'tfp_glow.bijectors.base',
  'tfp_glow.bijectors.conditioners',
  'tfp_glow.bijectors.coupling',
  'tfp_glow.bijectors.invertible_conv',
  'tfp_glow.bijectors.permutation',
  'tfp_glow.bijectors.squeeze',
  'tfp_glow.bijectors.top_prior',
  'tfp_glow.flow.glow',
  'tfp_glow.flow.gradients',
  'tfp_glow.flow.kernels',
  'tfp_glow.flow.level',
  'tfp_glow.flow.stack',
  'tfp_glow.runs.config',
  'tfp_glow.training.model',
)


def _is_public(name: str) -> bool:
  return not name.startswith('_') or (name.startswith('__') and name.endswith('__'))


def _missing_annotations(fn: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> list[str]:
  """The names of `fn`'s parameters without an annotation, and 'return' if it has no return annotation."""
  args = fn.args
  params = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, [args.vararg, args.kwarg])]
  static = any(isinstance(d, ast.Name) and d.id == 'staticmethod' for d in fn.decorator_list)
  if in_class and not static and params:
    params = params[1:]  # self / cls
  missing = [p.arg for p in params if p.annotation is None]
  if fn.returns is None and not (fn.name == '__init__' and params and not missing):
    missing.append('return')
  return missing


def unannotated(modules: list[pathlib.Path], root: pathlib.Path = ROOT) -> list[str]:
  """'path:line name (missing: ...)' for each public function or method of `modules` not fully annotated
  (paths relative to `root`)."""
  found: list[str] = []
  for path in modules:
    _visit(ast.parse(path.read_text()), f'{path.relative_to(root)}:', '', False, found)
  return found


def _visit(node: ast.AST, where: str, prefix: str, in_class: bool, found: list[str]) -> None:
  for child in ast.iter_child_nodes(node):
    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(child.name):
      missing = _missing_annotations(child, in_class)
      if missing:
        found.append(f'{where}{child.lineno} {prefix}{child.name} (missing: {", ".join(missing)})')
    elif isinstance(child, ast.ClassDef) and not child.name.startswith('_'):
      _visit(child, where, f'{prefix}{child.name}.', True, found)


def _checked_modules() -> list[pathlib.Path]:
  return sorted(PACKAGE.rglob('*.py'))


def test_every_public_function_and_method_is_annotated():
  offenders = unannotated(_checked_modules())
  assert not offenders, f'{len(offenders)} public functions lack annotations:\n' + '\n'.join(offenders)


def test_the_annotation_check_sees_what_is_missing(tmp_path):
  source = (
    'def typed(a: int, *args: int, b: str = "", **kw: float) -> None: ...\n'
    'def no_return(a: int): ...\n'
    'def _private(a): ...\n'
    'class Public:\n'
    '  def __init__(self, a: int): ...\n'
    '  def method(self, a, b: int) -> int: ...\n'
    '  @staticmethod\n'
    '  def static(a) -> int: ...\n'
    '  def __call__(self, **kwargs) -> int: ...\n'
    '  def _helper(self, a): ...\n'
    'class _Private:\n'
    '  def method(self, a): ...\n'
  )
  (tmp_path / 'm.py').write_text(source)
  found = unannotated([tmp_path / 'm.py'], root=tmp_path)
  assert [f.split(' ', 1)[1] for f in found] == [
    'no_return (missing: return)',
    'Public.method (missing: a)',
    'Public.static (missing: a)',
    'Public.__call__ (missing: kwargs)',
  ]


def _mypy_sections(option: str) -> list[str]:
  """The package modules of setup.cfg's [mypy-...] sections that set `option`."""
  config = configparser.ConfigParser()
  config.read(ROOT / 'setup.cfg')
  return sorted(
    module.strip()
    for section in config.sections()
    if section.startswith('mypy-tfp_glow') and config.has_option(section, option)
    for module in section[len('mypy-') :].split(',')
  )


def test_setup_cfg_relaxes_mypy_in_exactly_the_modules_listed_here():
  assert _mypy_sections('ignore_errors') == []  # every module is checked
  assert _mypy_sections('disable_error_code') == sorted(PARTLY_CHECKED)


@pytest.mark.slow
def test_mypy_finds_no_error_in_the_package():
  pytest.importorskip('mypy', reason='mypy is in the test extra: pip install -e .[test]')
  result = subprocess.run(
    [sys.executable, '-m', 'mypy', 'tfp_glow'], cwd=ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, f'mypy (setup.cfg [mypy]) found errors:\n{result.stdout}{result.stderr}'
