"""One spec for a model and a run: each setting's default and check written once (no TensorFlow here).

  ModelSpec     a GlowModel's settings (model.py), with its nested CouplingSpec (transform, conditioner, split)
  TrainingSpec  a run's data and training settings; RunSpec: both, as a run's config.json (run.py)
  fields.py     how a field declares its default and its check; the JSON round trip

`Glow`, `GlowModel` (`GlowModel.from_spec`, `get_config`), `tfp_glow.runs.run_config` / config.json, the named
--configs (tfp_glow.configs) and the CLI's defaults (tfp_glow.cli.DEFAULTS) read these.
"""

from tfp_glow.specs.fields import SpecError, field_defaults
from tfp_glow.specs.model import CouplingSpec, ModelSpec, coupling_spec, gradient_of, upgrade
from tfp_glow.specs.run import DATASET_DEFAULTS, FROM_DATA, RunSpec, TrainingSpec, run_defaults, run_keys

__all__ = [
  'DATASET_DEFAULTS',
  'FROM_DATA',
  'CouplingSpec',
  'ModelSpec',
  'RunSpec',
  'SpecError',
  'TrainingSpec',
  'coupling_spec',
  'field_defaults',
  'gradient_of',
  'run_defaults',
  'run_keys',
  'upgrade',
]
