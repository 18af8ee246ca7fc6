"""The flow: the multi-scale Glow bijector, its levels, their step stacks, and how they are differentiated.

glow.py        Glow: squeeze -> K steps -> split, level by level, as one TFP bijector
level.py       Level, and `build_steps` (a StepStack or a StepList, decided once)
stack.py       Step; StepStack (stacked parameters, one loop) and StepList (steps owning their layers); why_not_stacked
gradients.py   the gradient switch: 'autodiff', 'stored', 'checkpoint', 'inverse'; one backward loop
kernels.py     the per-step gradient kernels of the default coupling network
context.py     the conditioners' context: a caller's tensor, or a class embedding (class_context)
tape_state.py  what TensorFlow's autodiff records now (private TF helpers, with fallbacks)
xla.py         whether a function is being traced for XLA
"""

from tfp_glow.flow.glow import Encoding, Glow
from tfp_glow.flow.gradients import GRADIENTS
from tfp_glow.flow.stack import StepList, StepStack

__all__ = ['GRADIENTS', 'Encoding', 'Glow', 'StepList', 'StepStack']
