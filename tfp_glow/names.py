"""The names a user can choose (couplings, permutations, data sets, precisions, ...), without TensorFlow.

`tfp-glow --help` and the CLI's argument checks list these choices before TensorFlow loads (importing it
takes seconds); the modules that implement each choice import their list from here, so a name is written
once. Nothing here may import TensorFlow, Keras, TFP or tensorflow_datasets (tests/test_cli_startup.py).
"""

from __future__ import annotations

# The coupling's transform (tfp_glow.bijectors.transforms.TRANSFORMS, keyed by each class's `name`).
COUPLINGS = ('affine', 'additive', 'spline')
# The coupling's conditioner network (tfp_glow.bijectors.conditioners.CONDITIONERS, keyed by each class's `name`).
CONDITIONERS = ('conv', 'transformer', 'keras')
# Which elements of a coupling condition and which are transformed (tfp_glow.bijectors.splits.SPLITS).
SPLITS = ('channel', 'checkerboard', 'stripes')
# The channel mixing between steps (tfp_glow.flow.glow.Glow's `permutation`).
PERMUTATIONS = ('conv_lu', 'conv', 'shuffle', 'reverse')
# How each level is differentiated (tfp_glow.flow.gradients).
GRADIENTS = ('autodiff', 'stored', 'checkpoint', 'inverse')
# Keras dtype policies the coupling networks may compute in (tfp_glow.bijectors.nets).
MIXED_POLICIES = ('mixed_bfloat16', 'mixed_float16')
PRECISIONS = ('float32', *MIXED_POLICIES)  # tfp_glow.training.precision
DEQUANTIZATIONS = ('uniform', 'variational')  # tfp_glow.dequantization
STRATEGIES = ('default', 'mirrored', 'multi-worker', 'tpu')  # tfp_glow.training.distribute

# Data sets by name (tfp_glow.data): digits (offline) and the tensorflow-datasets ones.
TFDS_DATASETS = (
  'mnist',
  'fashion_mnist',
  'cifar10',
  'celeb_a',
  'downsampled_imagenet/32x32',  # deprecated by tfds (its source is gone); works with prepared data only
  'downsampled_imagenet/64x64',
)
DATASETS = ('digits',) + TFDS_DATASETS  # plus the path sources of SOURCES_HELP
SOURCES_HELP = 'folder:PATH (PNG/JPEG files, class subfolders), tfrecord:PATH (tfp-glow prepare), npz:PATH'
BAD_FILES = ('skip', 'error')  # what a folder does with images it cannot decode (tfp_glow.data.folder)

# Out-of-distribution scores and shifted test sets (tfp_glow.ood).
OOD_SCORES = ('bits_per_dim', 'complexity_corrected', 'likelihood_ratio', 'typicality')
OOD_SHIFTS = ('noise', 'constant', 'inverted', 'upside_down', 'half_contrast')
# How many training images estimate typicality's H (tfp_glow.ood.training_entropy).
TYPICALITY_IMAGES = 10_000
