"""The house style (pyproject.toml [tool.ruff]) holds for every Python file, notebook sources included.

conftest.py runs these first, so a style slip fails fast. Fix with:  ruff check --fix . && ruff format .
"""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = 'run  ruff check --fix . && ruff format .  from the repository root and commit the result'


@pytest.mark.parametrize('command', [['check', '.'], ['format', '--check', '.']], ids=['lint', 'format'])
def test_ruff(command):
  result = subprocess.run(
    [sys.executable, '-m', 'ruff', *command], cwd=ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, f'ruff {" ".join(command)} failed ({FIX}):\n{result.stdout}{result.stderr}'


def test_no_protected_access_in_the_package():
  offenders = [
    str(p.relative_to(ROOT)) for p in (ROOT / 'tfp_glow').rglob('*.py') if 'protected-access' in p.read_text()
  ]
  assert not offenders, f'the flow calls protected members (use the public protocol): {offenders}'
