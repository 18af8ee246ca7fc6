"""Shared test fixtures: quiet TensorFlow, fixed seeds."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
  tf.random.set_seed(1)
  np.random.seed(1)


def pytest_collection_modifyitems(items):
  """The style checks run first: a style slip fails in seconds, not after the whole suite."""
  items.sort(key=lambda item: 0 if item.fspath.basename == 'test_style.py' else 1)
