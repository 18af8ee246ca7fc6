"""A training run's spec: `TrainingSpec` (data and optimization) and `RunSpec` (it and the model's spec), with
the defaults of `tfp-glow train` per data set as overrides of the specs' own defaults. No TensorFlow.

A run's settings are one flat dict (`RunSpec.to_dict`, written to out/config.json): the TrainingSpec's fields
and the ModelSpec's, less those the data decides (FROM_DATA), the coupling nested as its CouplingSpec dict.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tfp_glow.names import BAD_FILES, PRECISIONS
from tfp_glow.specs.fields import (
  BOOL,
  FRACTION,
  NON_NEGATIVE_FLOAT,
  POSITIVE_FLOAT,
  POSITIVE_INT,
  TEXT,
  Spec,
  field_defaults,
  int_at_least,
  one_of,
  optional,
  setting,
)
from tfp_glow.specs.model import ModelSpec, upgrade

# A run's model takes these from its data set (shape, classes when `conditional`, bins from `n_bits`).
FROM_DATA = ('image_shape', 'num_classes', 'n_bins')


@dataclasses.dataclass(frozen=True)
class TrainingSpec(Spec):
  """How a run trains: its data, batches, optimizer schedule and outputs (`tfp-glow train`'s flags).

  dataset: a name of tfp_glow.names.DATASETS or a path source (folder:PATH, ...). n_bits: quantization
  (n_bins = 2**n_bits). conditional: class-conditional model (labeled data). lr: Adamax's peak learning
  rate, reached linearly over warmup_epochs. ema: Polyak-averaged weights kept and used after training.
  sample_every: sample grids every N epochs (None: epochs // 10). config: the named --config it started from.
  """

  dataset: str = setting('digits', TEXT)
  n_bits: int = setting(
    8, (lambda x: isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 8, 'in 1..8')
  )
  image_size: int | None = setting(None, optional(POSITIVE_INT))
  pad_to_32: bool = setting(False, BOOL)
  conditional: bool = setting(False, BOOL)
  batch_size: int = setting(64, POSITIVE_INT)
  epochs: int = setting(10, POSITIVE_INT)
  lr: float = setting(1e-3, POSITIVE_FLOAT)
  warmup_epochs: float = setting(1.0, NON_NEGATIVE_FLOAT)
  ema: bool = setting(False, BOOL)
  clipnorm: float | None = setting(None, optional(POSITIVE_FLOAT))
  precision: str = setting('float32', one_of(PRECISIONS))
  background_noise: float = setting(0.0, FRACTION)
  cache: str | None = setting(None, optional(TEXT))
  bad_files: str = setting('skip', one_of(BAD_FILES))
  sample_every: int | None = setting(None, optional(int_at_least(1)))
  config: str | None = setting(None, optional(TEXT))


# `tfp-glow train`'s model defaults where they differ from ModelSpec's (the paper's): a model that trains in
# hours on one GPU, and a fixed seed (a rerun is the same run).
RUN_MODEL_DEFAULTS: dict[str, Any] = dict(steps=16, width=256, seed=0)
# Per data set, over RUN_MODEL_DEFAULTS and TrainingSpec's defaults (other data sets and folder:PATH: none).
# Only digits trains in minutes on a CPU; 28x28 data allows levels <= 2 (28 = 4 * 7).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
  'digits': dict(levels=2, steps=8, width=64, epochs=80, lr=2e-3, warmup_epochs=2.0, ema=True),
  'mnist': dict(levels=2),
  'fashion_mnist': dict(levels=2),
  'cifar10': {},
  'downsampled_imagenet/32x32': {},
  'downsampled_imagenet/64x64': dict(levels=4),
  'celeb_a': dict(levels=4, n_bits=5),
}


def run_keys() -> tuple[str, ...]:
  """The settings of a run, in config.json's order."""
  return TrainingSpec.keys() + tuple(k for k in ModelSpec.keys() if k not in FROM_DATA)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A run: its model (without the FROM_DATA fields, which the data fills in) and its training."""

  model: ModelSpec = dataclasses.field(default_factory=lambda: ModelSpec(**RUN_MODEL_DEFAULTS))
  training: TrainingSpec = dataclasses.field(default_factory=TrainingSpec)

  def to_dict(self) -> dict[str, Any]:
    model = {k: v for k, v in self.model.to_dict().items() if k not in FROM_DATA}
    return {**self.training.to_dict(), **model}

  @classmethod
  def from_dict(cls, values: dict[str, Any], who: str = 'run') -> RunSpec:
    """The run of `to_dict`'s flat dict (or an older config.json); unknown keys are refused in one line."""
    values = upgrade(values, who)
    unknown = sorted(set(values) - set(run_keys()))
    if unknown:
      raise ValueError(
        f'unknown run settings {", ".join(unknown)}; accepted: {", ".join(sorted(run_keys()))}'
      )
    model = {k: v for k, v in values.items() if k in ModelSpec.keys()}
    training = {k: v for k, v in values.items() if k in TrainingSpec.keys()}
    return cls(ModelSpec.from_dict(model, who), TrainingSpec.from_dict(training, who))

  def model_spec(self, image_shape: tuple, num_classes: int | None, n_bins: int) -> ModelSpec:
    """The model's full spec, once the data gave its shape, classes and bins."""
    return self.model.replace(image_shape=tuple(image_shape), num_classes=num_classes, n_bins=n_bins)


# A user's own images (folder:, npz:, npy:, tfrecord:PATH): lr 4e-3, better than 2e-3 (itself better than the
# paper's 1e-3) on natural-image patches (BENCHMARKS.md, "Defaults on natural images"); the paper's schedule is
# `--lr 1e-3` away. The tfds data sets above keep the paper's lr.
USER_DATA_DEFAULTS: dict[str, Any] = dict(lr=4e-3)


def run_defaults(dataset: str | None) -> dict[str, Any]:
  """Every run setting's default for `dataset` (an unnamed one, e.g. folder:PATH: the large defaults with
  USER_DATA_DEFAULTS)."""
  model = {k: v for k, v in field_defaults(ModelSpec).items() if k not in FROM_DATA}
  defaults = {
    **field_defaults(TrainingSpec),
    **model,
    **RUN_MODEL_DEFAULTS,
    **DATASET_DEFAULTS.get(dataset or '', USER_DATA_DEFAULTS),
  }
  defaults['coupling'] = defaults['coupling'].to_dict()
  if dataset is not None:
    defaults['dataset'] = dataset
  return defaults
