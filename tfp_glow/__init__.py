"""tfp_glow: Glow (Kingma & Dhariwal 2018) as a TensorFlow Probability extension.

Direction, as in TFP: forward = latent -> image (sampling), inverse = image -> latent (density).

`import tfp_glow` loads every public name below, and with them registers the package's Keras classes (so
`keras.models.load_model` finds them after it). One exception: started as the `tfp-glow` command line
(`tfp-glow ...` or `python -m tfp_glow.cli ...`), the names load on first use (PEP 562 `__getattr__`), so
`--help` and argument errors answer without importing TensorFlow; the CLI loads them all when a command's work
starts (tfp_glow.cli.main).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see (`X as X`: re-exported); at run time `__getattr__`
  from tfp_glow import atomic as atomic
  from tfp_glow import bijectors as bijectors
  from tfp_glow import data as data
  from tfp_glow import dequantization as dequantization
  from tfp_glow.bijectors import ActNorm as ActNorm
  from tfp_glow.bijectors import AffineCoupling as AffineCoupling
  from tfp_glow.bijectors import ChannelPermutation as ChannelPermutation
  from tfp_glow.bijectors import Coupling as Coupling
  from tfp_glow.bijectors import Invertible1x1Conv as Invertible1x1Conv
  from tfp_glow.bijectors import SplitPrior as SplitPrior
  from tfp_glow.bijectors import Squeeze as Squeeze
  from tfp_glow.bijectors import TopPrior as TopPrior
  from tfp_glow.distribution import GlowDistribution as GlowDistribution
  from tfp_glow.flow.glow import Glow as Glow
  from tfp_glow.runs import train as train
  from tfp_glow.training import callbacks as callbacks
  from tfp_glow.training import guard as guard
  from tfp_glow.training import optim as optim
  from tfp_glow.training.model import GlowModel as GlowModel

__version__ = '0.1.0'
# Each public name -> the module that defines it (a name equal to its module's last part is that module).
_HOMES = {
  'ActNorm': 'tfp_glow.bijectors',
  'AffineCoupling': 'tfp_glow.bijectors',
  'ChannelPermutation': 'tfp_glow.bijectors',
  'Coupling': 'tfp_glow.bijectors',
  'Glow': 'tfp_glow.flow.glow',
  'GlowDistribution': 'tfp_glow.distribution',
  'GlowModel': 'tfp_glow.training.model',
  'Invertible1x1Conv': 'tfp_glow.bijectors',
  'SplitPrior': 'tfp_glow.bijectors',
  'Squeeze': 'tfp_glow.bijectors',
  'TopPrior': 'tfp_glow.bijectors',
  'atomic': 'tfp_glow.atomic',
  'bijectors': 'tfp_glow.bijectors',
  'callbacks': 'tfp_glow.training.callbacks',
  'data': 'tfp_glow.data',
  'dequantization': 'tfp_glow.dequantization',
  'guard': 'tfp_glow.training.guard',
  'optim': 'tfp_glow.training.optim',
  'train': 'tfp_glow.runs',
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
  """Imports a public name on first use and keeps it in the package's namespace (then found directly)."""
  home = _HOMES.get(name)
  if home is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module = importlib.import_module(home)
  value = module if home.rsplit('.', 1)[-1] == name else getattr(module, name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))


def _started_as_command_line() -> bool:
  """True while Python starts the `tfp-glow` script, or `python -m tfp_glow.X` (argv[0] is '-m' while the
  package of the module to run imports)."""
  argv = getattr(sys, 'argv', None) or ['']
  return argv[0] == '-m' or os.path.splitext(os.path.basename(argv[0]))[0] in ('tfp-glow', 'tfp-glow-script')


if not _started_as_command_line():
  for _name in __all__:
    __getattr__(_name)
  del _name
