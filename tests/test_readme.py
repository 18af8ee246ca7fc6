"""README's Python examples run as written (with a shorter training), so the docs stay true."""

import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def python_blocks():
  return re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_examples_run(tmp_path, monkeypatch):
  blocks = python_blocks()
  assert len(blocks) >= 2
  monkeypatch.chdir(tmp_path)  # the examples write model files
  namespace = {}
  for block in blocks:
    exec(compile(block.replace('epochs=50', 'epochs=1'), str(README), 'exec'), namespace)  # noqa: S102
  # The examples computed what they say they compute.
  assert namespace['samples'].shape == (16, 16, 16, 3)
  np.testing.assert_allclose(namespace['reconstruction'], namespace['images'], atol=1e-4)
  assert (tmp_path / 'digits.keras').exists() and (tmp_path / 'digits_savedmodel').is_dir()
