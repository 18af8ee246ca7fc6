"""One spec (tfp_glow.specs): each setting's default and check written once, and every reader (Glow, GlowModel,
get_config, a run's config.json, the CLI's defaults and flags) taking it from there; older configs still read."""

import dataclasses
import inspect
import json
import pathlib
import warnings

import pytest

import tfp_glow
from tfp_glow import cli, configs, runs, specs
from tfp_glow.bijectors import transforms
from tfp_glow.cli import train_command
from tfp_glow.runs.config import upgrade_saved
from tfp_glow.specs import CouplingSpec, ModelSpec, RunSpec, TrainingSpec

DATA = pathlib.Path(__file__).resolve().parent / 'data'
TINY = dict(image_shape=(4, 4, 1), levels=1, steps=1, width=4, n_bins=16)


def _train_config(*argv):
  return train_command._train_config(cli._build_parser().parse_args(['train', *argv]))


def test_every_model_and_training_setting_reaches_every_reader():
  """A field added to ModelSpec or TrainingSpec is in GlowModel's config, a run's config (config.json) and
  the CLI's defaults, and `--set` takes it, with no other edit."""
  model = tfp_glow.GlowModel(**TINY)
  run = runs.run_config(dataset='digits')
  for key in ModelSpec.keys():
    assert key in model.get_config()
  for key in specs.run_keys():
    assert key in run and key in cli.DEFAULTS['digits'] and key in cli.LARGE_DEFAULTS
  assert _train_config('--set', 'learn_top=false', '--set', 'class_loss_weight=0.5')['learn_top'] is False
  assert set(specs.run_keys()) == set(TrainingSpec.keys()) | set(ModelSpec.keys()) - set(specs.FROM_DATA)


def test_a_new_model_setting_is_written_once(monkeypatch):
  """A field added to ModelSpec (here by a subclass standing in for the edit) is, with no other edit, an argument
  of GlowModel, in its config, a run's setting with its default (config.json, the CLI's DEFAULTS) and --set."""
  from tfp_glow.specs import fields  # noqa: PLC0415

  @dataclasses.dataclass(frozen=True)
  class Extended(ModelSpec):
    foo: int = fields.setting(7, fields.POSITIVE_INT)

  for module in ('tfp_glow.specs.run', 'tfp_glow.specs.model', 'tfp_glow.training.model'):
    monkeypatch.setattr(f'{module}.ModelSpec', Extended)
  model = tfp_glow.GlowModel(**TINY, foo=3)
  assert model.spec.foo == 3 and model.get_config()['foo'] == 3
  assert tfp_glow.GlowModel.from_config(model.get_config()).spec.foo == 3
  assert specs.run_defaults('digits')['foo'] == 7  # what cli.DEFAULTS is built from
  assert runs.run_config(dataset='digits')['foo'] == 7  # config.json
  assert _train_config('--set', 'foo=4')['foo'] == 4
  with pytest.raises(ValueError, match='GlowModel: foo must be a positive integer, got 0.'):
    tfp_glow.GlowModel(**TINY, foo=0)


def test_signature_defaults_are_the_specs():
  """Glow's and GlowModel's defaults are ModelSpec's (no second copy to drift)."""
  defaults = specs.field_defaults(ModelSpec)
  for cls in (tfp_glow.Glow, tfp_glow.GlowModel):
    for name, p in inspect.signature(cls.__init__).parameters.items():
      if name in defaults and name not in ('coupling', 'gradient', 'image_shape'):
        assert p.default == defaults[name], (cls.__name__, name)
  assert tfp_glow.GlowModel(**TINY).spec.gradient == defaults['gradient'] == 'stored'
  assert (
    cli.DEFAULTS['digits']['epochs'] == 80 and cli.LARGE_DEFAULTS['batch_size'] == TrainingSpec().batch_size
  )


def test_a_new_transform_setting_needs_only_its_dataclass_field(monkeypatch):
  """A transform's new setting is one field of its dataclass: Glow, GlowModel's config, config.json and
  --coupling-option carry it unchanged."""

  @dataclasses.dataclass(frozen=True)
  class Spline(transforms.Spline):
    foo: int = 1

  monkeypatch.setitem(transforms.TRANSFORMS, 'spline', Spline)
  model = tfp_glow.GlowModel(**TINY, coupling=CouplingSpec('spline', {'foo': 3}))
  assert model.get_config()['coupling']['transform_settings']['foo'] == 3
  assert tfp_glow.GlowModel.from_config(model.get_config()).spec == model.spec
  config = _train_config('--coupling', 'spline', '--coupling-option', 'foo=7', '--coupling-option', 'bins=8')
  assert (
    config['coupling']['transform_settings']['foo'] == 7
    and config['coupling']['transform_settings']['bins'] == 8
  )
  assert (
    config['coupling']['transform_settings']['bound'] == 3.0
  )  # written out in full: the run keeps its shapes


def test_spec_dict_config_round_trips():
  spec = ModelSpec(
    image_shape=(8, 8, 1),
    levels=2,
    steps=2,
    width=8,
    coupling=CouplingSpec('spline', {'bins': 5}, 'transformer', {'depth': 1, 'width': 8, 'heads': 2}),
    n_bins=16,
    gradient='inverse',
    seed=1,
  )
  assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
  model = tfp_glow.GlowModel.from_spec(spec)
  assert model.glow.coupling_spec.transform_settings['bins'] == 5 and model.training_gradient == 'inverse'
  again = tfp_glow.GlowModel.from_config(json.loads(json.dumps(model.get_config())))
  assert again.spec == model.spec and again.glow.conditioner == model.glow.conditioner
  run = runs.run_config(dataset='digits', gradient='checkpoint', coupling=spec.coupling.to_dict())
  assert RunSpec.from_dict(run).to_dict() == run and run['gradient'] == 'checkpoint'
  assert tfp_glow.Glow.from_spec(spec).gradient == 'inverse'


def test_the_gradient_flag_and_the_deprecated_memory_saving(capsys):
  assert _train_config('--gradient', 'inverse')['gradient'] == 'inverse'
  assert _train_config()['gradient'] == 'stored'
  assert _train_config('--memory-saving', 'checkpoint')['gradient'] == 'checkpoint'
  assert 'deprecated; use --gradient checkpoint' in capsys.readouterr().err
  with pytest.raises(cli.UsageError, match="gradient='inverse' and memory_saving='checkpoint' disagree"):
    _train_config('--gradient', 'inverse', '--memory-saving', 'checkpoint')
  assert cli.main(['train', '--gradient', 'fast']) == 2
  assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_memory_saving_warns_and_maps_to_gradient():
  with pytest.warns(DeprecationWarning, match="memory_saving=True is deprecated; use gradient='inverse'"):
    model = tfp_glow.GlowModel(**TINY, memory_saving=True)
  assert model.training_gradient == 'inverse' and model.get_config()['gradient'] == 'inverse'
  assert 'memory_saving' not in model.get_config()
  with pytest.warns(DeprecationWarning, match='memory_saving'):
    assert tfp_glow.Glow((4, 4, 1), 1, 1, 4, memory_saving='checkpoint').gradient == 'checkpoint'
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # a config saved with it loads silently: the user typed nothing
    old = json.loads((DATA / 'golden_model_config_flat.json').read_text())
    assert tfp_glow.GlowModel.from_config(old).training_gradient == 'checkpoint'


@pytest.mark.parametrize(
  'build, message',
  [
    (lambda: ModelSpec(levels=0), 'ModelSpec: levels must be a positive integer, got 0.'),
    (
      lambda: ModelSpec.from_dict({'levls': 2}),
      'ModelSpec: unknown setting(s) levls; accepted: image_shape,',
    ),
    (
      lambda: CouplingSpec(split='diagonal'),
      "split must be one of ('channel', 'checkerboard', 'stripes'), got 'diagonal'",
    ),
    (lambda: TrainingSpec(lr=-1.0), 'TrainingSpec: lr must be a finite number > 0, got -1.0.'),
    (lambda: tfp_glow.GlowModel(**dict(TINY, n_bins=1)), 'GlowModel: n_bins must be an integer >= 2, got 1.'),
    (
      lambda: tfp_glow.GlowModel(**TINY, coupling=CouplingSpec('spline', {'bnis': 8})),
      "coupling 'spline': unknown setting(s) bnis; it takes bins, bound,",
    ),
    (
      lambda: tfp_glow.Glow((4, 4, 1), 1, 1, 4, coupling=transforms.Spline(bins=2), conditioner='conv'),
      None,
    ),
    (lambda: runs.run_config(levels=0), 'run: levels must be a positive integer, got 0.'),
    (lambda: runs.run_config(bogus=1), 'unknown run settings bogus;'),
  ],
)
def test_refusals_name_the_setting_and_the_value(build, message):
  if message is None:  # an instance with a conditioner by name: fine
    assert build().coupling_spec.transform_settings['bins'] == 2
    return
  with pytest.raises((ValueError, runs.RunError)) as e:
    build()
  assert message in str(e.value) and '\n' not in str(e.value)


def test_the_named_configs_are_overrides_of_the_spec():
  c = configs.get_config('cifar10_conditional')
  spec = c.model_spec()
  assert spec.coupling.transform == 'additive' and spec.num_classes == 10
  assert spec.gradient == ModelSpec().gradient  # what the config leaves out: the spec's default
  assert set(c.train_flags()) <= set(specs.run_keys())
  assert (
    _train_config('--config', 'cifar10', '--conditioner-option', 'depth=3', '--conditioner', 'transformer')[
      'coupling'
    ]['conditioner_settings']['depth']
    == 3
  )


def test_a_config_json_written_before_the_spec_still_reads_and_resumes():
  """tests/data/golden_run_config.json: a run's config.json written at 201e447 (flat coupling and conditioner,
  memory_saving)."""
  old = json.loads((DATA / 'golden_run_config.json').read_text())
  assert 'memory_saving' in old and isinstance(old['coupling'], str)  # the file is from before
  spec = RunSpec.from_dict(old)
  assert spec.model.gradient == 'inverse' and spec.model.coupling.conditioner == 'transformer'
  today = runs.run_config(
    dataset='digits', epochs=3, coupling='spline', conditioner='transformer', gradient='inverse', seed=5
  )
  saved = upgrade_saved(old)
  assert {k: v for k, v in saved.items() if today[k] != v} == {}  # resuming compares equal: no refusal


def test_the_coupling_split_is_a_spec_setting_from_python_the_cli_and_a_keras_file(tmp_path):
  """`CouplingSpec(split=...)` builds spatial-split couplings in every level, survives get_config and a
  .keras round trip, and `tfp-glow train --split` / `run_config(split=...)` write it into config.json's
  coupling; an unknown split is refused by name."""
  import keras
  import numpy as np

  model = tfp_glow.GlowModel(
    image_shape=(8, 8, 3),
    levels=2,
    steps=2,
    width=8,
    coupling=CouplingSpec(transform='additive', split='stripes'),
  )
  splits = {s.coupling.split_spec.name for level in model.glow.levels for s in level.steps}
  assert splits == {'stripes'}
  x = (np.random.default_rng(0).random((4, 8, 8, 3)) - 0.5).astype('float32')
  model.save(tmp_path / 'm.keras')
  loaded = keras.saving.load_model(tmp_path / 'm.keras')
  assert loaded.spec.coupling.split == 'stripes'
  np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x), rtol=1e-6)
  assert _train_config('--split', 'checkerboard')['coupling']['split'] == 'checkerboard'
  assert runs.run_config(split='stripes')['coupling']['split'] == 'stripes'
  with pytest.raises(runs.RunError, match="split must be one of .*got 'diagonal'"):
    runs.run_config(split='diagonal')


def test_a_users_own_images_train_at_the_measured_lr_and_the_paper_data_sets_keep_theirs():
  """BENCHMARKS "Defaults on natural images": lr 4e-3 beat 2e-3 (and that 1e-3); the tfds sets keep the paper's."""
  from tfp_glow.training.optim import default_optimizer

  for source in ('folder:/data/photos', 'npz:/data/patches', 'tfrecord:/data/shards'):
    assert specs.run_defaults(source)['lr'] == 4e-3, source
  for dataset in ('cifar10', 'downsampled_imagenet/64x64', 'celeb_a'):
    assert specs.run_defaults(dataset)['lr'] == 1e-3, dataset
  assert float(default_optimizer().learning_rate) == pytest.approx(4e-3)
  model = tfp_glow.GlowModel(**TINY)
  model.compile()
  assert float(model.optimizer.learning_rate) == pytest.approx(4e-3)
