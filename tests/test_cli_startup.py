"""The command line answers at once: `--help`, each command's `--help` and argument errors import no
TensorFlow (tfp_glow.names holds the flags' choice lists, tfp_glow.cli imports a command's module when it
runs); TensorFlow's C++ log lines stay off stderr unless the user sets TF_CPP_MIN_LOG_LEVEL; `import tfp_glow`
still loads (and Keras-registers) every public name."""

import os
import subprocess
import sys

import keras
import pytest

import tfp_glow
from tfp_glow import names
from tfp_glow.bijectors.transforms import TRANSFORMS
from tfp_glow.cli import COMMANDS

# Runs as the `tfp-glow` console script does: argv[0] names the script while the package imports.
AS_SCRIPT = "import sys; sys.argv[0] = 'tfp-glow'\n"


def _python(code: str, env: dict | None = None, args: tuple = ('-c',)) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, *args, code], capture_output=True, text=True, check=False, env=env or dict(os.environ)
  )


def _last_line(code: str, env: dict | None = None) -> str:
  """Runs `code` in a fresh Python, checks it exited 0 and returns the last line it printed."""
  result = _python(code, env)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.splitlines()[-1]


def test_help_imports_no_tensorflow():
  """`python -m tfp_glow.cli --help` (as the issue checks it, every import listed) and the console script's
  `main(['--help'])` load no TensorFlow, Keras, TFP or tensorflow_datasets."""
  result = subprocess.run(
    [sys.executable, '-X', 'importtime', '-m', 'tfp_glow.cli', '--help'], capture_output=True, text=True
  )
  assert result.returncode == 0 and 'usage: tfp-glow' in result.stdout, result.stderr[-2000:]
  heavy = [line for line in result.stderr.splitlines() if 'tensorflow' in line or 'keras' in line]
  assert heavy == [], heavy[:5]
  code = AS_SCRIPT + (
    'from tfp_glow.cli import main\n'
    'assert main(["--help"]) == 0\n'
    'print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tensorflow_probability")))'
  )
  assert _last_line(code) == '[]'


def test_every_command_help_and_argument_error_imports_no_tensorflow():
  """Each command's --help exits 0 and an unknown flag or a number out of range exits 2 with one
  `error:` line, all before TensorFlow loads."""
  code = AS_SCRIPT + (
    'from tfp_glow.cli import COMMANDS, main\n'
    'for command in COMMANDS:\n'
    '  assert main([command, "--help"]) == 0, command\n'
    '  assert main([command, "--no-such-flag"]) == 2, command\n'
    'assert main(["train", "--levels", "0"]) == 2\n'
    'assert main(["sample", "m.keras", "--temperature", "nan"]) == 2\n'
    'print("tensorflow" in sys.modules, "keras" in sys.modules)'
  )
  result = _python(code)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[-1] == 'False False'
  for command in COMMANDS:
    assert f'usage: tfp-glow {command}' in result.stdout
  assert 'tfp-glow train: error: --levels must be >= 1, got 0' in result.stderr
  assert 'tfp-glow sample: error: --temperature must be > 0 and finite, got nan' in result.stderr


@pytest.mark.parametrize('explicit', [None, '0', '3'])
def test_tf_log_level_defaults_to_errors_and_an_explicit_one_wins(explicit):
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  if explicit is not None:
    env['TF_CPP_MIN_LOG_LEVEL'] = explicit
  code = AS_SCRIPT + (
    'import os\nfrom tfp_glow.cli import main\n'
    'assert main(["train", "--help"]) == 0\n'
    'print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"))'
  )
  assert _last_line(code, env) == (explicit or '2')


@pytest.mark.slow
def test_a_command_that_loads_tensorflow_prints_only_its_own_lines(tmp_path):
  """No absl preamble, CUDA stub or CPU-feature lines around the command's one error line, also when an
  earlier `main` call of the same process (here --help) set the log level."""
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  missing = str(tmp_path / 'missing.keras')
  code = AS_SCRIPT + (
    'import contextlib, io\nfrom tfp_glow.cli import main\n'
    'with contextlib.redirect_stdout(io.StringIO()):\n'
    '  assert main(["--help"]) == 0\n'
    f'assert main(["sample", {missing!r}]) == 2'
  )
  result = _python(code, env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr.splitlines() == [f'tfp-glow sample: error: model file {missing!r} does not exist']


@pytest.mark.slow
def test_the_command_line_loads_the_package_names_on_use():
  """Started as the script, `tfp_glow`'s names load lazily and all resolve; `dir` lists them."""
  code = AS_SCRIPT + (
    'import tfp_glow\n'
    'assert "tensorflow" not in sys.modules and "GlowModel" in dir(tfp_glow)\n'
    'from tfp_glow import GlowModel\n'
    'assert GlowModel.__name__ == "GlowModel" and "tensorflow" in sys.modules\n'
    'print(all(getattr(tfp_glow, name) is not None for name in tfp_glow.__all__))'
  )
  assert _last_line(code) == 'True'


def test_import_tfp_glow_loads_every_public_name_and_registers_the_keras_classes():
  assert set(tfp_glow.__all__) <= set(dir(tfp_glow))
  for name in tfp_glow.__all__:
    assert name in vars(tfp_glow), name  # loaded by `import tfp_glow`, not on first use
  assert tfp_glow.GlowModel.__name__ == 'GlowModel' and tfp_glow.data.load_dataset
  assert keras.saving.get_registered_object('tfp_glow>GlowModel') is tfp_glow.GlowModel
  with pytest.raises(AttributeError, match='no attribute'):
    tfp_glow.NoSuchName  # noqa: B018


def test_the_choice_lists_match_what_the_library_accepts():
  """tfp_glow.names lists each choice once for the CLI; the implementing modules read it from there."""
  from tfp_glow import data, dequantization, ood  # noqa: PLC0415
  from tfp_glow.bijectors.conditioners import CONDITIONERS  # noqa: PLC0415
  from tfp_glow.flow import gradients  # noqa: PLC0415
  from tfp_glow.specs import model as spec  # noqa: PLC0415 (Glow's and GlowModel's checks)
  from tfp_glow.training import distribute, precision  # noqa: PLC0415

  assert tuple(TRANSFORMS) == names.COUPLINGS == spec.COUPLINGS
  assert tuple(CONDITIONERS) == names.CONDITIONERS
  assert spec.PERMUTATIONS is names.PERMUTATIONS and gradients.GRADIENTS is names.GRADIENTS
  assert precision.PRECISIONS is names.PRECISIONS and dequantization.DEQUANTIZATIONS is names.DEQUANTIZATIONS
  assert distribute.STRATEGIES is names.STRATEGIES and data.DATASETS is names.DATASETS
  assert (
    data.BAD_FILES is names.BAD_FILES and ood.SCORES is names.OOD_SCORES and ood.SHIFTS is names.OOD_SHIFTS
  )
