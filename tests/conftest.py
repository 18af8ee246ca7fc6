"""Shared test fixtures: quiet TensorFlow, fixed seeds, a cache folder of the test run's own."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The folder-listing cache (tfp_glow.data.listing_cache) and other XDG caches go to a temporary folder, removed
# at exit, never the user's ~/.cache (subprocesses and notebook kernels inherit it).
os.environ['XDG_CACHE_HOME'] = tempfile.mkdtemp(prefix='tfp_glow_test_cache_')
atexit.register(shutil.rmtree, os.environ['XDG_CACHE_HOME'], True)

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
  # Python's `random` too: Keras draws an unseeded initializer's seed from it, so without this a model built
  # with seed=None (or a plain Keras layer) starts from other weights in every run.
  keras.utils.set_random_seed(1)


def pytest_collection_modifyitems(items):
  """The style checks run first: a style slip fails in seconds, not after the whole suite."""
  items.sort(key=lambda item: 0 if item.fspath.basename == 'test_style.py' else 1)
