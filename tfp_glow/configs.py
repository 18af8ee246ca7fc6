"""Named configurations of the paper's experiments: `tfp-glow train --config NAME` (flags still override).

Each `GlowConfig` holds the architecture and training settings of one experiment of Kingma & Dhariwal
(2018), taken from the paper, the reference code's train.py defaults and its README commands (openai/glow):

  name                 data (ours)                    L   K   width coupling  n_bits batch  published bits/dim
  cifar10              cifar10                        3   32  512   affine    8      512    3.35
  cifar10_conditional  cifar10, class-conditional     3   32  512   additive  5      512    (qualitative)
  imagenet32           npz:DIR of ImageNet 32x32 (1)  3   48  512   affine    8      512    4.09
  imagenet64           npz:DIR of ImageNet 64x64 (1)  4   48  512   affine    8      128    3.81
  celeba_hq256         folder:PATH of CelebA-HQ 256   6   32  512   additive  5      40     (qualitative)
  mnist                mnist, padded to 32x32x1       3   32  512   affine    8      512    (see below)
  ablation_P_C         cifar10, permutation P in reverse/shuffle/conv, coupling C in additive/affine

(1) The paper used van den Oord et al.'s downsampled ImageNet (tfds `downsampled_imagenet`, which tfds marks
deprecated: its download is gone). What image-net.org still distributes is Chrabaszcz et al.'s (2017) .npz
version (box-resized, the same 1.28M / 50k images): bits/dim on it are close to, not the same as, the paper's.

All use the LU 1x1 convolution ("flow_permutation 2") unless an ablation says otherwise, a learned top prior
("--learntop"), Adamax at lr 1e-3 with linear warmup and no decay. Batch sizes are totals over all devices:
the reference runs 64 images of 32x32 per GPU (fewer for larger images: 64 * 32^2 / size^2) on 8 GPUs,
40 for CelebA-HQ. Its warmup is 10 "epochs" of 50,000 images at 32x32, i.e. 10 * 50000 / (64 * GPUs)
steps (977 steps on 8 GPUs, 195 on 40); `warmup_epochs` below is that many steps in our data sets' epochs.

Not reproduced: the reference's Adamax uses beta_2 = 1 - 1 / (steps per epoch) (about 0.99), Keras' default
is 0.999; its MNIST is 28x28 padded to 32x32 and tiled to 3 channels: we pad and keep 1 channel, so our
MNIST bits/dim are per 32x32x1 dimension (the padding is easy to model: not comparable with 28x28 figures).
"""

from __future__ import annotations

import dataclasses
import math

from tfp_glow import specs

_MODEL = specs.field_defaults(specs.ModelSpec)  # the settings a config leaves out: the specs' defaults
_TRAINING = specs.field_defaults(specs.TrainingSpec)

_CIFAR10_TRAIN = 50_000
_IMAGENET_TRAIN = 1_281_167  # downsampled ImageNet's train split
_CELEBA_HQ_TRAIN = 27_000  # the reference's CelebA-HQ: 30,000 images, 3,000 held out


@dataclasses.dataclass(frozen=True)
class GlowConfig:
  """One experiment's settings: overrides of the specs' (tfp_glow.specs). The fields named like run settings
  (`tfp_glow.specs.run_keys()`: levels, batch_size, ...) are what --config sets; a field added here with a
  run setting's name is set by --config with no other edit.

  image_shape: (H, W, C) the model sees (after resizing and padding), used to size the model and the
    memory estimates without loading data.
  published_bits_per_dim: the paper's test bits/dim (None where the paper shows samples only).
  gpus, gpu_days: the reference's hardware (README commands) and training time where published.
  """

  name: str
  description: str
  dataset: str | None  # None: the user must give --dataset (data we cannot name, e.g. CelebA-HQ)
  image_shape: tuple[int, int, int]
  levels: int
  steps: int
  width: int = _MODEL['width']
  coupling: str | specs.CouplingSpec = _MODEL['coupling'].transform
  permutation: str = _MODEL['permutation']
  n_bits: int = _TRAINING['n_bits']
  batch_size: int = 512  # the paper's (the CLI's own default is smaller)
  lr: float = _TRAINING['lr']
  warmup_epochs: float = 10.0
  epochs: int = 1000
  ema: bool = False  # the reference keeps Polyak averages but evaluates the raw weights
  conditional: bool = _TRAINING['conditional']
  image_size: int | None = _TRAINING['image_size']
  pad_to_32: bool = _TRAINING['pad_to_32']
  published_bits_per_dim: float | None = None
  gpus: int = 8
  gpu_days: float | None = None
  data_hint: str | None = None  # what to give as --dataset when `dataset` is None

  def train_flags(self) -> dict:
    """The run settings this configuration sets (keys of `tfp_glow.specs.run_keys()`, as in config.json)."""
    fields = {f.name for f in dataclasses.fields(self)}
    return {k: getattr(self, k) for k in specs.run_keys() if k in fields}

  def model_spec(self) -> specs.ModelSpec:
    """The model's spec (`tfp_glow.specs.ModelSpec`) of this configuration."""
    settings = {
      k: getattr(self, k) for k in ('image_shape', 'levels', 'steps', 'width', 'coupling', 'permutation')
    }
    return specs.ModelSpec.create(self.name, **settings, num_classes=10 if self.conditional else None)

  def model_args(self) -> dict:
    """Arguments of `tfp_glow.flow.glow.Glow` (and GlowModel) for this configuration."""
    spec = self.model_spec()
    keys = ('image_shape', 'levels', 'steps', 'width', 'coupling', 'permutation', 'num_classes')
    return {k: getattr(spec, k) for k in keys}


def _imagenet_hint(size: int) -> str:
  return (
    f'npz:DIR, DIR holding Downsampled ImageNet {size}x{size} (image-net.org, "Downsampled ImageNet": '
    f'Imagenet{size}_train_npz and Imagenet{size}_val_npz unzipped; see README "Data")'
  )


def _warmup_epochs(train_images: int, batch_size: int, gpus: int = 8) -> float:
  """The reference's warmup steps (10 * 50000 / (64 * gpus)) in epochs of `train_images`."""
  steps = 10 * 50_000 / (64 * gpus)
  return round(steps * batch_size / train_images, 4)


def _cifar10(name: str, description: str, **kwargs) -> GlowConfig:
  settings = dict(
    dataset='cifar10',
    image_shape=(32, 32, 3),
    levels=3,
    steps=32,
    warmup_epochs=_warmup_epochs(_CIFAR10_TRAIN, 512),
    epochs=2000,
  )
  return GlowConfig(name, description, **{**settings, **kwargs})


def _ablations() -> list[GlowConfig]:
  """The paper's figure 3: CIFAR-10, L=3, K=32, every permutation with both couplings, 3 seeds."""
  kinds = {'reverse': 'reverse', 'shuffle': 'shuffle', 'conv': 'conv_lu'}
  return [
    _cifar10(
      f'ablation_{short}_{coupling}',
      f"the paper's ablation (figure 3): {short} permutation, {coupling} coupling, CIFAR-10 (run seeds 0, 1, 2)",
      permutation=permutation,
      coupling=coupling,
    )
    for short, permutation in kinds.items()
    for coupling in ('additive', 'affine')  # the paper's two couplings
  ]


CONFIGS: dict[str, GlowConfig] = {
  c.name: c
  for c in [
    _cifar10(
      'cifar10', "CIFAR-10, the paper's quantitative result", published_bits_per_dim=3.35, gpu_days=56.0
    ),
    _cifar10(
      'cifar10_conditional',
      'class-conditional CIFAR-10 (reference README: additive, 5 bits, ycond, weight_y 0.01)',
      coupling='additive',
      n_bits=5,
      conditional=True,
    ),
    GlowConfig(
      'imagenet32',
      "ImageNet 32x32 (van den Oord et al.), the paper's quantitative result",
      dataset=None,
      data_hint=_imagenet_hint(32),
      image_shape=(32, 32, 3),
      levels=3,
      steps=48,
      warmup_epochs=_warmup_epochs(_IMAGENET_TRAIN, 512),
      epochs=100,
      published_bits_per_dim=4.09,
    ),
    GlowConfig(
      'imagenet64',
      "ImageNet 64x64 (van den Oord et al.), the paper's quantitative result",
      dataset=None,
      data_hint=_imagenet_hint(64),
      image_shape=(64, 64, 3),
      levels=4,
      steps=48,
      batch_size=128,  # 16 per GPU on 8 GPUs
      warmup_epochs=_warmup_epochs(_IMAGENET_TRAIN, 128),
      epochs=50,
      published_bits_per_dim=3.81,
    ),
    GlowConfig(
      'celeba_hq256',
      "CelebA-HQ 256x256, 5 bits (the paper's face samples); give --dataset folder:PATH of the images",
      dataset=None,
      image_shape=(256, 256, 3),
      levels=6,
      steps=32,
      coupling='additive',
      n_bits=5,
      batch_size=40,  # 1 per GPU on 40 GPUs
      warmup_epochs=_warmup_epochs(_CELEBA_HQ_TRAIN, 40, gpus=40),
      epochs=1000,
      image_size=256,
      gpus=40,
    ),
    GlowConfig(
      'mnist',
      "MNIST padded to 32x32 (1 channel; the reference also tiles it to 3): the reference's defaults",
      dataset='mnist',
      image_shape=(32, 32, 1),
      levels=3,
      steps=32,
      warmup_epochs=_warmup_epochs(60_000, 512),
      epochs=1000,
      pad_to_32=True,
    ),
    *_ablations(),
  ]
}


def get_config(name: str) -> GlowConfig:
  """The configuration called `name`; a ValueError listing the names otherwise."""
  if name not in CONFIGS:
    raise ValueError(f'unknown configuration {name!r}; accepted: {", ".join(CONFIGS)}')
  return CONFIGS[name]


# ---- estimates -------------------------------------------------------------------------------------


def activation_floats_per_image(config: GlowConfig, stored_per_step: bool = True) -> int:
  """An ESTIMATE of the float activations kept for the backward pass, per image.

  Per step at a level of shape [h, w, c]: the coupling network keeps its two hidden convolutions'
  outputs and their ReLUs (4 * h * w * width) and the step keeps about 6 tensors of the step's size
  (actnorm and 1x1 conv outputs, the coupling's halves, shift and scale): 6 * h * w * c.
  stored_per_step=True: every step's activations are kept (plain backprop).
  stored_per_step=False: memory-saving gradients that keep only each step's input (h * w * c) and
    recompute one step at a time: the inputs plus the largest single step.
  Ignores the priors, the squeezes and TensorFlow's temporary buffers; weights and optimizer state
  are separate (see `parameter_bytes`).
  """
  h, w, c = config.image_shape
  per_step, inputs = [], []
  for level in range(config.levels):
    h, w, c = h // 2, w // 2, c * 4
    per_step += [4 * h * w * config.width + 6 * h * w * c] * config.steps
    inputs += [h * w * c] * config.steps
    if level < config.levels - 1:
      c //= 2
  if stored_per_step:
    return sum(per_step)
  return sum(inputs) + max(per_step)


def memory_per_gpu_gib(config: GlowConfig, num_parameters: int, stored_per_step: bool = True) -> float:
  """An ESTIMATE of float32 GPU memory at the published batch split over `config.gpus` GPUs: activations
  (see `activation_floats_per_image`) plus weights, gradients and Adamax's two moments (4 copies)."""
  per_gpu = math.ceil(config.batch_size / config.gpus)
  floats = per_gpu * activation_floats_per_image(config, stored_per_step) + 4 * num_parameters
  return floats * 4 / 2**30
