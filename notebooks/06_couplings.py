# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Couplings side by side: affine, rational-quadratic spline, transformer conditioner
#
# Every step of Glow ends with a *coupling*: it keeps half the channels `x_a`, feeds them to a network, and moves
# the other half `x_b` elementwise by numbers `h` that the network predicts. In `tfp_glow` a coupling is three
# choices made independently:
#
#     x_a, x_b = split(x)                  # channel halves
#     h = NN(x_a)                          # the conditioner:  conditioner='conv' | 'transformer'
#     z_b, log|det| = transform(x_b, h)    # the transform:    coupling='affine' | 'additive' | 'spline'
#     z = concat(x_a, z_b)
#
# Inverting it needs only `x_a` (which passed unchanged) and the transform's inverse, so the network itself never
# has to be inverted, and the Jacobian is triangular: its log-determinant is the sum of the transform's elementwise
# log-derivatives.
#
# This notebook trains three Glows that differ only in their coupling, with plain Keras `compile`/`fit` on
# scikit-learn's 8x8 digits (offline), and compares learning curves, samples, parameter counts and time per
# training step. The natural-image measurements (32x32 photographs, paired seeds, equal parameters and equal
# training time) are in [BENCHMARKS.md](../BENCHMARKS.md), made by `benchmarks/couplings.py`: tiny digits say
# little about which coupling wins at scale.

# %%
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: quieter logs

# Quick mode (set by the test suite): tiny settings, only checks that every cell runs.
QUICK = os.environ.get('TFP_GLOW_NOTEBOOK_QUICK') == '1'

# The same flow for every coupling: L levels, K steps per level, `WIDTH` hidden channels in the conv conditioner.
# Full mode trains three models, about 5-10 minutes in all on 2 CPU cores.
LEVELS, STEPS, WIDTH = (2, 1, 8) if QUICK else (2, 8, 64)
EPOCHS = 2 if QUICK else 30
BATCH_SIZE = 128
LEARNING_RATE, WARMUP_STEPS = 3e-3, 20
# The transformer conditioner's settings (tfp_glow.bijectors.conditioners.Transformer). The digits' levels are
# 4x4 and 2x2, so 1x1 patches (16 and 4 tokens); a small token size keeps the parameters near the affine model's.
TRANSFORMER = dict(depth=1, width=8 if QUICK else 32, heads=2, patch_size=1)

# %%
import math
import time

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

import tfp_glow
from tfp_glow.bijectors import transforms
from tfp_glow.data import load_dataset
from tfp_glow.images import image_grid
from tfp_glow.training.model import GlowModel
from tfp_glow.training.optim import default_optimizer

print('tfp_glow', tfp_glow.__version__, '| TensorFlow', tf.__version__, '| Keras', keras.__version__)


def show(images, columns, title=None, ax=None):
  """Shows uint8 images [N, H, W, 1] as one grid (tfp_glow.images.image_grid)."""
  grid = image_grid(np.asarray(images), columns=columns, pad=1, pad_value=128)
  ax = ax or plt.gca()
  ax.imshow(grid[..., 0], cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  ax.set_axis_off()
  if title:
    ax.set_title(title)


# %% [markdown]
# ## 1. The three couplings
#
# **Affine** (the paper's, `coupling='affine'`). The conditioner predicts 2 numbers per transformed element, a
# shift `t` and a raw scale `h`:
#
#     z_b = (x_b + t) * s,   s = sigmoid(h + 2)   in (0, 1)        log|det| = sum log s
#
# `sigmoid(h + 2)` rather than `exp(h)` keeps the scale bounded (training is stable at any depth) and is about
# 0.88 where the network's zero-initialized last layer gives `h = 0`. Each element moves along a straight line: a
# coupling can shift and shrink, never bend.
#
# **Rational-quadratic spline** (Durkan et al. 2019, "Neural Spline Flows", `coupling='spline'`). The conditioner
# predicts `3K - 1` numbers per element: K bin widths and K bin heights (through a softmax, so the K bins tile
# `[-B, B]` in both x and y) and `K - 1` derivatives at the inner knots (through a softplus, so they are
# positive). Inside each bin the map is a ratio of two quadratics,
#
#     y = y_k + t_k (S xi^2 + d_k xi (1 - xi)) / (S + (d_k + d_{k+1} - 2 S) xi (1 - xi)),
#     S = t_k / w_k,   xi = (x - x_k) / w_k   in [0, 1]
#
# monotone by construction, so it is invertible (the inverse solves a quadratic per element) and its
# log-derivative is the log-det. Outside `[-B, B]` the map is the identity (linear tails; the end derivatives are
# 1, so the pieces join smoothly). Defaults (`transforms.Spline()`): K = 4 bins, B = 3, Durkan et al.'s CIFAR-10
# recipe. With `h = 0` the bins are equal and every derivative 1: a fresh spline coupling is exactly the identity.
#
# **Transformer conditioner** (Jet, Kolesnikov et al. 2025, `conditioner='transformer'`). It replaces the
# network, not the transform: `x_a` is cut into `p x p` patches, each patch becomes a token, a small pre-LN ViT
# (`depth` blocks of self-attention and MLP, `width` D, `heads`) mixes the tokens, and a zero-initialized linear
# head maps each token back to its patch's `h`. Every coupling then sees the whole conditioning half at once,
# where the paper's 3x3 conv network sees a 5x5 neighbourhood. Here it feeds the affine transform; it feeds the
# spline just as well (`coupling='spline', conditioner='transformer'`).
#
# Below: one spline with random `h` (what a trained conditioner might predict for one element) against an affine
# map, both computed by the library's own `transforms.Spline` / `transforms.Affine`.

# %%
spline, affine = transforms.Spline(), transforms.Affine()
x = tf.reshape(tf.linspace(-4.0, 4.0, 801), [1, 1, 801, 1])  # 801 elements of one channel, [N, H, W, C]
rng = np.random.default_rng(0)
h_spline = tf.broadcast_to(
  tf.constant(rng.normal(size=spline.params_per_channel), tf.float32), [1, 1, 801, spline.params_per_channel]
)
h_affine = tf.broadcast_to(tf.constant([0.5, -1.0]), [1, 1, 801, 2])  # shift 0.5, scale sigmoid(1)
y_spline, _ = spline.couple(x, h_spline)
y_affine, _ = affine.couple(x, h_affine)
# The spline's derivative, from autodiff: its log is what each element adds to the log-det.
with tf.GradientTape() as tape:
  tape.watch(x)
  y = spline.couple(x, h_spline)[0]
slope = tape.gradient(y, x)
x_back, _ = spline.uncouple(y_spline, h_spline)
print(f'spline: max |uncouple(couple(x)) - x| = {float(tf.reduce_max(tf.abs(x_back - x))):.1e}')


def knots(logits, minimum, bound):
  """The K + 1 knots from K logits: bin sizes minimum + (1 - K minimum) softmax(logits), tiling [-B, B]."""
  sizes = minimum + (1 - minimum * len(logits)) * np.exp(logits) / np.exp(logits).sum()
  return bound * (2 * np.concatenate([[0.0], np.cumsum(sizes)]) - 1)


K, h_one = spline.bins, h_spline.numpy()[0, 0, 0]
x_knots = knots(h_one[:K], spline.min_bin_width, spline.bound)
y_knots = knots(h_one[K : 2 * K], spline.min_bin_height, spline.bound)

xs = x.numpy().ravel()
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
ax1.plot(xs, y_spline.numpy().ravel(), label=f'spline, K = {spline.bins} bins')
ax1.plot(xs, y_affine.numpy().ravel(), label='affine')
ax1.plot(xs, xs, color='gray', lw=0.8, ls=':', label='identity')
ax1.plot(x_knots, y_knots, 'o', color='C0', ms=4, label='knots (x_k, y_k)')
for b in (-spline.bound, spline.bound):
  ax1.axvline(b, color='gray', lw=0.8, ls='--')
ax1.set(
  xlabel='x_b', ylabel='z_b', title=f'one element; linear tails outside [-{spline.bound:g}, {spline.bound:g}]'
)
ax1.legend()
ax2.plot(xs, slope.numpy().ravel())
ax2.set(xlabel='x_b', ylabel='dz_b / dx_b', title="the spline's derivative (> 0: invertible)")
for ax in (ax1, ax2):
  ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Data
#
# The 8x8 digits (pixels 0..16, so 17 levels), dequantized with uniform noise, 1500 training and 297 held-out
# images (a fixed split). The loss is bits/dim, `(-log p(x) + D log 17) / (D ln 2)`; a uniform model scores
# `log2(17) = 4.09`.

# %%
train_ds, info = load_dataset('digits', 'train', batch_size=BATCH_SIZE, seed=0)
test_ds, _ = load_dataset('digits', 'test', batch_size=BATCH_SIZE, shuffle=False, seed=1)
UNIFORM_BPD = math.log2(info.n_bins)
print(info)

# %% [markdown]
# ## 3. Training the three models
#
# The three models share everything but the coupling: the same levels, steps, actnorm and 1x1 convolutions, the
# same seeds, optimizer, data and epochs. A small callback times each training step (`on_train_batch_begin` to
# `on_train_batch_end`); the first epoch, which includes TensorFlow's tracing, is left out of the median.

# %%
COUPLINGS = {
  'affine': dict(coupling='affine'),
  'spline': dict(coupling='spline'),
  'transformer (affine)': dict(
    coupling='affine', conditioner='transformer', conditioner_settings=TRANSFORMER
  ),
}


class StepTimer(keras.callbacks.Callback):
  """Wall time of each training step, in seconds, with its epoch."""

  def __init__(self):
    super().__init__()
    self.times, self.epoch = [], 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_begin(self, batch, logs=None):
    self.start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.times.append((self.epoch, time.perf_counter() - self.start))


models, histories, step_ms = {}, {}, {}
for name, settings in COUPLINGS.items():
  keras.utils.set_random_seed(0)
  model = GlowModel(
    info.image_shape, levels=LEVELS, steps=STEPS, width=WIDTH, n_bins=info.n_bins, seed=0, **settings
  )
  model.compile(optimizer=default_optimizer(LEARNING_RATE, warmup_steps=WARMUP_STEPS))
  timer = StepTimer()
  start = time.time()
  history = model.fit(train_ds, validation_data=test_ds, epochs=EPOCHS, verbose=0, callbacks=[timer])
  models[name], histories[name] = model, history.history
  step_ms[name] = 1e3 * float(np.median([t for epoch, t in timer.times if epoch > 0]))
  print(
    f'{name:22s} {EPOCHS} epochs in {time.time() - start:4.0f} s; '
    f'held-out {histories[name]["val_bits_per_dim"][-1]:.3f} bits/dim'
  )

# %% [markdown]
# ## 4. Bits/dim per epoch
#
# Solid: the training loss (the mean over each epoch's batches, while the weights move). Dashed: the held-out
# split, measured at each epoch's end.

# %%
epochs = np.arange(1, EPOCHS + 1)
plt.figure(figsize=(7, 4))
for (name, h), color in zip(histories.items(), ('C0', 'C1', 'C2')):
  plt.plot(epochs, h['bits_per_dim'], color=color, label=f'{name}, train')
  plt.plot(epochs, h['val_bits_per_dim'], color=color, ls='--', label=f'{name}, held-out')
plt.axhline(UNIFORM_BPD, color='gray', ls=':', label=f'uniform, log2(17) = {UNIFORM_BPD:.2f}')
plt.xlabel('epoch')
plt.ylabel('bits / dim')
plt.title(f'Glow on 8x8 digits, L = {LEVELS}, K = {STEPS}: three couplings')
plt.ylim(top=UNIFORM_BPD + 0.5)
plt.legend(fontsize=8)
plt.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## 5. Samples
#
# 32 samples of each model at temperature 0.7 (the latent `eps ~ N(0, I)` scaled by 0.7), the same latent for
# all three, so differences come from the models.

# %%
seed = tf.constant([0, 0], tf.int32)
fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 2.4))
for ax, (name, model) in zip(axes, models.items()):
  show(model.sample(32, temperature=0.7, seed=seed), columns=8, ax=ax, title=name)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Parameters and time per step
#
# Held-out bits/dim from `evaluate` (fresh dequantization noise), the trainable parameters, and the median time of
# one training step (batch 128) on this notebook's machine. Times are from one run on a shared machine: read the
# ratios, not the absolute numbers.

# %%
affine_ms = step_ms['affine']
print(f'{"coupling":22s} {"parameters":>10s} {"ms/step":>8s} {"x affine":>8s} {"held-out bits/dim":>18s}')
for name, model in models.items():
  parameters = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  held_out = model.evaluate(test_ds, verbose=0, return_dict=True)['bits_per_dim']
  print(
    f'{name:22s} {parameters:10,d} {step_ms[name]:8.0f} {step_ms[name] / affine_ms:8.2f} {held_out:18.3f}'
  )

# %% [markdown]
# The spline model here also has more parameters than the affine one (the table), so part of any lead it shows
# is size; BENCHMARKS.md compares them at equal parameter counts and equal training time.
#
# Where the parameters go: every coupling has the same actnorms, 1x1 convolutions and priors. The spline's
# conditioner ends in `3K - 1 = 11` outputs per transformed channel where the affine's has 2, so at the same
# `WIDTH` its last layer is several times larger. The transformer's are its embedding, `depth` blocks of about
# `12 D^2` weights each, and the head, per step, independent of the conv `WIDTH` (which it does not use).
#
# ## 7. Which one to pick
#
# * **Affine** is the default and the cheapest step; it has the hand-built gradient kernels (`gradient='stored'`,
#   `'inverse'`), and sampling inverts it with one division. Start here, and keep it when speed per step matters
#   most.
# * **Spline** bends each element's map, so one coupling does more than an affine one: for a fixed budget of
#   parameters or steps it can reach a lower bits/dim. Its step costs more (the bin search and the rational
#   function, forward and inverse), its inverse solves a quadratic per element (a little float32 drift, bounded
#   and tested), and its conditioner's output is `3K - 1` numbers per channel. Pick it when parameters or depth
#   are the constraint; raise `bins` for 8-bit data at higher resolution.
# * **Transformer conditioner** gives every coupling a global view of the conditioning half, the Jet recipe for
#   large images and large budgets. Its cost grows with the number of tokens (attention is quadratic in them),
#   it has no hand-built gradient kernel (the generic per-step gradient is used, still exact), and every level's
#   size must be divisible by `patch_size`. On 8x8 digits, where a 3x3 conv already sees most of a 4x4 level, it
#   has little to add; it is meant for natural images.
#
# The measured comparison on natural 32x32 images (equal parameters, equal training time, paired seeds, with
# `tfb.Glow` and a `RationalQuadraticSpline` as the TensorFlow peer) is in [BENCHMARKS.md](../BENCHMARKS.md). From
# the command line the same choices are `tfp-glow train --coupling spline` and `--conditioner transformer`.
