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
# # Glow in five minutes: train a normalizing flow on 8x8 digits
#
# Glow (Kingma & Dhariwal, 2018) is a *normalizing flow*: an invertible network `f` that maps a simple
# latent variable `z ~ N(0, I)` to an image `x = f(z)`. Because `f` is invertible with a tractable
# Jacobian, the exact log-likelihood of an image follows from the change of variables formula:
#
#     log p(x) = log N(f^-1(x); 0, I) + log |det d f^-1(x) / dx|
#
# Training maximizes this directly (no ELBO, no discriminator), and sampling is one pass through `f`.
#
# This notebook trains `tfp_glow.training.model.GlowModel` with plain Keras `fit` on scikit-learn's 8x8
# handwritten digits (bundled offline), plots the learning curves, and samples at several temperatures.

# %%
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: quieter logs

# Quick mode (set by the test suite): tiny settings, only checks that every cell runs.
QUICK = os.environ.get('TFP_GLOW_NOTEBOOK_QUICK') == '1'

# Model and training settings. Full mode trains for about 1-2 minutes on 2 CPU cores.
LEVELS, STEPS, WIDTH = (2, 2, 16) if QUICK else (2, 8, 64)
EPOCHS = 2 if QUICK else 60
BATCH_SIZE = 128
LEARNING_RATE, WARMUP_STEPS = 3e-3, 20

# %%
import math
import time

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

import tfp_glow
from tfp_glow.data import load_dataset, to_uint8
from tfp_glow.images import image_grid
from tfp_glow.training.model import GlowModel
from tfp_glow.training.optim import default_optimizer

keras.utils.set_random_seed(0)
print('tfp_glow', tfp_glow.__version__, '| TensorFlow', tf.__version__, '| Keras', keras.__version__)


def show(images, columns, title=None, ax=None, zoom=1):
  """Shows uint8 images [N, H, W, 1] as one grid (tfp_glow.images.image_grid)."""
  grid = image_grid(np.asarray(images), columns=columns, pad=1, pad_value=128, zoom=zoom)
  ax = ax or plt.gca()
  ax.imshow(grid[..., 0], cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  ax.set_axis_off()
  if title:
    ax.set_title(title)


# %% [markdown]
# ## 1. Data: discrete pixels, continuous density
#
# The digits hold integers 0..16 per pixel, so there are `n_bins = 17` levels (`tfp_glow.data.DIGITS_BINS`).
# A continuous density on discrete values would cheat (it could put infinite density on the 17 points), so
# every pixel is *dequantized*: `x = (bin + u) / n_bins - 0.5` with fresh noise `u ~ U[0, 1)` each epoch,
# giving floats in [-0.5, 0.5). Then `-log p(x) + D log(n_bins)` is an upper bound on the code length of
# the discrete image (D = 8 * 8 * 1 = 64 dimensions). Reported per dimension and in bits:
#
#     bits/dim = (-log p(x) + D log(n_bins)) / (D ln 2)
#
# A model that spreads its mass uniformly over the 17 levels scores **log2(17) = 4.09 bits/dim**: anything
# below that has learned something. `load_dataset` returns a batched, dequantized `tf.data.Dataset`
# (1500 training and 297 test images, a fixed split) and a `DatasetInfo`.

# %%
train_ds, info = load_dataset('digits', 'train', batch_size=BATCH_SIZE, seed=0)
test_ds, _ = load_dataset('digits', 'test', batch_size=BATCH_SIZE, shuffle=False, seed=1)
print(info)
UNIFORM_BPD = math.log2(info.n_bins)
print(f'uniform baseline: log2({info.n_bins}) = {UNIFORM_BPD:.2f} bits/dim')

batch = next(iter(train_ds))
print(
  'a batch:', batch.shape, batch.dtype, f'values in [{batch.numpy().min():.3f}, {batch.numpy().max():.3f}]'
)
plt.figure(figsize=(4, 4))
show(to_uint8(batch[:64], info.n_bins), columns=8, title='training images')
plt.show()

# %% [markdown]
# ## 2. The model
#
# `GlowModel(image_shape, levels=L, steps=K, width=W, n_bins=...)` is a `keras.Model`. In the
# image -> latent direction each of its L levels does:
#
# * **squeeze**: 2x2 space-to-depth, `[h, w, c] -> [h/2, w/2, 4c]`, so the next layers mix neighbouring pixels;
# * **K steps of flow**, each `actnorm -> invertible 1x1 conv -> affine coupling`:
#   actnorm is a per-channel `s * x + b` (initialized from data so activations start at zero mean, unit variance);
#   the 1x1 convolution is a learned `c x c` rotation of the channels (log-det `h * w * log|det W|`);
#   the coupling keeps half the channels `x_a` and transforms the other half `x_b` with a small CNN of `x_a`:
#   `z_b = (x_b + shift(x_a)) * scale(x_a)`, log-det `sum log scale`;
# * **split** (all levels but the last): half the channels leave as a latent with a learned Gaussian prior
#   whose mean and std depend on the half that stays. The last level has a learned top prior.
#
# The loss is the bits/dim above. `compile()` defaults to Adamax with a linear learning-rate warmup
# (the reference code's optimizer); here a larger rate with a short warmup suits the tiny data set.
# `fit` first runs actnorm's data-dependent initialization on the first training images.

# %%
model = GlowModel(info.image_shape, levels=LEVELS, steps=STEPS, width=WIDTH, n_bins=info.n_bins, seed=0)
model.compile(optimizer=default_optimizer(LEARNING_RATE, warmup_steps=WARMUP_STEPS))
print(
  f'L={LEVELS} levels, K={STEPS} steps, width {WIDTH}: '
  f'{sum(int(np.prod(v.shape)) for v in model.trainable_variables):,} parameters'
)
print('latent shapes per level:', model.glow.latent_shapes)

start = time.time()
history = model.fit(train_ds, validation_data=test_ds, epochs=EPOCHS, verbose=0)
print(f'trained {EPOCHS} epochs in {time.time() - start:.0f} s')
h = history.history
for epoch in sorted({0, *range(9, EPOCHS, 10), EPOCHS - 1}):
  print(
    f'epoch {epoch + 1:3d}: train {h["bits_per_dim"][epoch]:.3f}  val {h["val_bits_per_dim"][epoch]:.3f} bits/dim'
  )

# %%
epochs = np.arange(1, EPOCHS + 1)
plt.figure(figsize=(6, 3.5))
plt.plot(epochs, h['bits_per_dim'], label='train')
plt.plot(epochs, h['val_bits_per_dim'], label='validation (test split)')
plt.axhline(UNIFORM_BPD, color='gray', ls='--', label=f'uniform, log2(17) = {UNIFORM_BPD:.2f}')
plt.xlabel('epoch')
plt.ylabel('bits / dim')
plt.title('Glow on 8x8 digits')
plt.legend()
plt.grid(alpha=0.3)
plt.show()

# %% [markdown]
# The training curve is the average over each epoch's batches while the weights move; the validation curve
# is measured at the end of each epoch. A gap that opens late is over-fitting: 1500 images are few.

# %% [markdown]
# ## 3. Sampling at a temperature
#
# Sampling draws `eps ~ N(0, I)`, scales it by a temperature `T`, and runs the flow forward:
# `x = f(T * eps)`. Since every prior (split and top) sits inside the flow, scaling `eps` scales the
# standard deviation of every level's prior by `T`. `T = 1` samples the model as trained; `T < 1`
# trades diversity for more typical-looking images (the paper found `T = 0.7` best).
#
# `T = 0` would be the "mode" (every latent at its prior mean), but the API requires `T > 0`
# (`sample` raises for `T <= 0`), so we use `T = 0.01` instead: for all 16 draws the result is almost the
# same image. The same seed is used for every temperature, so each grid holds the same `eps` scaled differently.

# %%
temperatures = [0.01, 0.5, 0.7, 1.0]
seed = tf.constant([0, 0], tf.int32)
fig, axes = plt.subplots(1, len(temperatures), figsize=(3.2 * len(temperatures), 3.4))
for ax, t in zip(axes, temperatures):
  images = model.sample(16, temperature=t, seed=seed)  # uint8 [16, 8, 8, 1], 17 levels
  show(images, columns=4, ax=ax, title=f'T = {t}')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Evaluation
#
# `model.evaluate` computes the same bits/dim on the test split (new dequantization noise, so it differs
# slightly from the last validation number). `model.log_prob(images)` gives per-image log-densities,
# `model.bits_per_dim(log_prob)` converts them.

# %%
test_bpd = model.evaluate(test_ds, verbose=0, return_dict=True)['bits_per_dim']
print(f'test: {test_bpd:.3f} bits/dim   (uniform baseline {UNIFORM_BPD:.2f})')

images = next(iter(test_ds))[:5]
bpd = model.bits_per_dim(model.log_prob(images))
print('five test images, bits/dim each:', np.round(bpd.numpy(), 2))

# %% [markdown]
# ## 5. A kill-safe run: `tfp_glow.train`
#
# `fit` above is the whole story in a notebook. For a run that must survive a kill (a preempted machine, a
# restarted kernel), `tfp_glow.train(config, out)` does what `tfp-glow train` does, from Python: it takes a
# folder lock, backs up at each epoch's end (and every `backup_every` steps if given), resumes from the last
# backup when called again after a kill, chooses the raw or the EMA weights by held-out bits/dim, and writes
# `out/model.keras` and `out/metrics.json` last. Settings left out take the CLI's defaults for the data set;
# called again on a finished run, it returns the saved metrics without training (`continue_run=True` trains
# on, `fresh=True` starts over, keeping the old files until the new ones are written).

# %%
import tempfile

run_dir = os.path.join(tempfile.mkdtemp(), 'digits-run')
settings = dict(dataset='digits', levels=LEVELS, steps=STEPS, width=WIDTH, epochs=2 if QUICK else 10)
metrics = tfp_glow.train(settings, run_dir)
print(f'test bits/dim {metrics["test_bits_per_dim"]:.3f} ({metrics["weights"]} weights)')
print(sorted(os.listdir(run_dir)))
again = tfp_glow.train(settings, run_dir)  # finished: nothing is trained again
print('second call returned the same metrics:', again['test_bits_per_dim'] == metrics['test_bits_per_dim'])

# %% [markdown]
# Next: `02_bijectors_and_tfp.ipynb` takes the flow apart into its TFP bijectors; `03_latent_space.ipynb`
# explores the latent space; `04_conditional.ipynb` trains a class-conditional model. For real images,
# `load_dataset("mnist" | "cifar10" | ...)` and a larger model (e.g. `levels=3, steps=32, width=512`) work the
# same way, given the data and a GPU. `model.save_weights(...)`, `model.save("glow.keras")` and
# `model.export(...)` (a SavedModel with `log_prob` and `sample`) persist a trained model.
