"""Root conftest: the notebooks under notebooks/ run in quick mode under pytest (--nbmake).

nbmake starts each notebook's kernel as a subprocess of pytest, so it inherits this environment.
"""

import os

os.environ['TFP_GLOW_NOTEBOOK_QUICK'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def pytest_addoption(parser):
  parser.addoption(
    '--slow', action='store_true', help='also run the tests marked slow and the notebooks (CI and README do)'
  )


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: full-size builds, long trainings, traced autodiff matrices')


def pytest_collection_modifyitems(config, items):
  """Without --slow, the tests marked slow are deselected (and listed as such)."""
  if config.getoption('--slow'):
    return
  # The notebooks (nbmake) train models: they count as slow.
  slow = [item for item in items if item.get_closest_marker('slow') or item.path.suffix == '.ipynb']
  if slow:
    config.hook.pytest_deselected(items=slow)
    items[:] = [item for item in items if item not in slow]
