"""A run's settings: one flat dict, `tfp_glow.specs.RunSpec`'s, that `tfp-glow train` builds from its flags and
writes to out/config.json (and metrics.json['config']).

Every setting's default and check is the specs' (tfp_glow.specs): a run from Python and one from the command
line with the same settings are the same run (and resume each other). Order: the specs' defaults, the data
set's (`specs.DATASET_DEFAULTS`), a named --config's (tfp_glow.configs), then the settings given.
"""

from __future__ import annotations

import warnings
from typing import Any

from tfp_glow import configs, specs
from tfp_glow.runs.errors import RunError

# Older or shorter spellings a run still takes, folded into the spec's own fields: a conditioner by name beside
# the coupling's transform, each part's settings, and the deprecated memory_saving ('off', 'inverse', ...).
SHORTCUTS = ('conditioner', 'conditioner_settings', 'transform_settings', 'split', 'memory_saving')


def run_config(**settings: Any) -> dict:
  """The complete settings of a run: `settings` (e.g. dataset='digits', epochs=20, config='cifar10' for a
  paper experiment's; a setting given as None takes its default), the rest as `tfp-glow train` defaults them.
  Unknown names and refused values raise RunError (one line, naming the setting)."""
  from tfp_glow import data as glow_data  # here: the data package loads TensorFlow
  from tfp_glow.flow import choices

  known = set(specs.run_keys()) | set(SHORTCUTS)
  unknown = sorted(set(settings) - known)
  if unknown:
    raise RunError(f'unknown run settings {", ".join(unknown)}; accepted: {", ".join(sorted(known))}')
  given = {k: v for k, v in settings.items() if v is not None}
  name = given.get('config')
  try:
    preset = configs.get_config(name).train_flags() if name else {}
  except ValueError as e:
    raise RunError(str(e)) from e
  dataset = given.get('dataset') or preset.pop('dataset', None) or ('digits' if not name else None)
  preset.pop('dataset', None)
  if dataset is None:
    hint = configs.get_config(name).data_hint or f'{glow_data.FOLDER_PREFIX}PATH (a folder of its images)'
    raise RunError(f'--config {name} names no data set we can download: give --dataset {hint}')
  if dataset not in specs.DATASET_DEFAULTS and not glow_data.is_path_source(dataset):
    raise RunError(
      f'unknown data set {dataset!r}; accepted: {", ".join(glow_data.DATASETS)}, or {glow_data.SOURCES_HELP}'
    )
  if given.get('memory_saving') not in (None, False, 'off'):
    warnings.warn(
      f'run setting memory_saving={given["memory_saving"]!r} is deprecated; use gradient=',
      DeprecationWarning,
      2,
    )
  values = {**specs.run_defaults(dataset), **preset}
  values.update({k: v for k, v in given.items() if k not in SHORTCUTS and k != 'coupling'}, dataset=dataset)
  try:
    base = specs.coupling_spec(values['coupling'], who='run')
    values['coupling'] = specs.coupling_spec(
      given.get('coupling'),
      given.get('conditioner'),
      given.get('conditioner_settings'),
      given.get('transform_settings'),
      given.get('split'),
      base=base,
      who='run',
    ).to_dict()
    values['gradient'] = (
      specs.gradient_of(given.get('gradient'), given.get('memory_saving'), 'run') or values['gradient']
    )
    spec = specs.RunSpec.from_dict(values)
    # The coupling's settings are checked by its transform and conditioner (here, before any data loads), and
    # written out in full: a saved run keeps its shapes if a default changes later.
    spec = dataclass_replace_coupling(spec, choices.complete(spec.model.coupling))
  except ValueError as e:
    raise RunError(str(e)) from e
  config = spec.to_dict()
  config['sample_every'] = config['sample_every'] or max(1, config['epochs'] // 10)
  return config


def dataclass_replace_coupling(spec: specs.RunSpec, coupling: specs.CouplingSpec) -> specs.RunSpec:
  return specs.RunSpec(spec.model.replace(coupling=coupling), spec.training)


def upgrade_saved(saved: dict) -> dict:
  """A run's config.json as today's run_config writes it: an older one's keys renamed (`specs.upgrade`) and its
  coupling's settings written out, so that resuming compares like with like. Keys it lacks stay absent."""
  from tfp_glow.flow import choices  # here: it loads TensorFlow

  saved = specs.upgrade(saved, 'config.json')
  if isinstance(saved.get('coupling'), dict):
    saved['coupling'] = choices.complete(
      specs.CouplingSpec.from_dict(saved['coupling'], 'config.json')
    ).to_dict()
  return saved
