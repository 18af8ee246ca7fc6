"""Each tutorial is a pair: notebooks/NAME.py (the source) and NAME.ipynb (run by CI, read on the web).

The notebook must hold exactly the source's cells, so what CI executes is the code that is linted and
reviewed. After editing a source:  jupytext --sync notebooks/NAME.py  (see notebooks/README.md).
"""

import pathlib

import jupytext
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / 'notebooks'
SOURCES = sorted(NOTEBOOKS.glob('[0-9]*.py'))


def cells(nb):
  return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def test_every_notebook_has_a_source_and_back():
  notebooks = {p.stem for p in NOTEBOOKS.glob('*.ipynb')}
  assert notebooks and notebooks == {p.stem for p in SOURCES}


@pytest.mark.parametrize('source', SOURCES, ids=lambda p: p.stem)
def test_notebook_matches_its_source(source):
  notebook = nbformat.read(source.with_suffix('.ipynb'), as_version=4)
  expected, actual = cells(jupytext.read(source)), cells(notebook)
  assert actual == expected, (
    f'{source.with_suffix(".ipynb").name} differs from {source.name}: run  jupytext --sync {source}  '
    '(and re-execute it in full mode, see notebooks/README.md)'
  )
