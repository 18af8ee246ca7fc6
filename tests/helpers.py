"""Shared helpers of the test modules: the tiny model and the digits pipeline many tests train on."""

from tfp_glow import data
from tfp_glow.training import optim
from tfp_glow.training.model import GlowModel


def tiny_model(optimizer=None, warmup_steps: int = 1, **kwargs) -> GlowModel:
  """A compiled GlowModel on 8x8x1 digits (L=2, K=1, width 8, 17 bins, seed 0); `kwargs` override."""
  args = dict(image_shape=(8, 8, 1), levels=2, steps=1, width=8, n_bins=17, seed=0)
  model = GlowModel(**{**args, **kwargs})
  model.compile(optimizer=optimizer or optim.default_optimizer(1e-2, warmup_steps=warmup_steps))
  return model


def digits(split='train', batch_size=64, with_labels=False, shuffle=True, take=None):
  """The offline digits as batches (seed 0); `take`: only the first batches."""
  ds, _ = data.load_dataset(
    'digits', split, batch_size=batch_size, with_labels=with_labels, shuffle=shuffle, seed=0
  )
  return ds if take is None else ds.take(take)
