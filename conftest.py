"""Root conftest: the notebooks under notebooks/ run in quick mode under pytest (--nbmake).

nbmake starts each notebook's kernel as a subprocess of pytest, so it inherits this environment.
"""

import os

os.environ['TFP_GLOW_NOTEBOOK_QUICK'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
