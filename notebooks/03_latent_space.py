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
# # The latent space: reconstruction, interpolation, temperature, semantic manipulation, and out-of-distribution inputs
#
# A flow gives every image an exact latent code `z = f^-1(x)` and maps every code back, `x = f(z)`, with no
# reconstruction loss: the two are inverses. This notebook trains a Glow on the 8x8 digits and then works in
# its latent space.

# %%
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: quieter logs

# Quick mode (set by the test suite): tiny settings, only checks that every cell runs.
QUICK = os.environ.get('TFP_GLOW_NOTEBOOK_QUICK') == '1'

LEVELS, STEPS, WIDTH = (2, 2, 16) if QUICK else (2, 8, 64)
EPOCHS = 2 if QUICK else 60

# %%
import math
import time

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from tfp_glow.data import DIGITS_BINS, dequantize, load_dataset, load_digits, to_uint8
from tfp_glow.images import image_grid
from tfp_glow.training.model import GlowModel
from tfp_glow.training.optim import default_optimizer

keras.utils.set_random_seed(0)


def show(images, columns, title=None, ax=None, zoom=1):
  """Shows uint8 images [N, H, W, 1] as one grid (tfp_glow.images.image_grid)."""
  grid = image_grid(np.asarray(images), columns=columns, pad=1, pad_value=128, zoom=zoom)
  ax = ax or plt.gca()
  ax.imshow(grid[..., 0], cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  ax.set_axis_off()
  if title:
    ax.set_title(title)


# %% [markdown]
# ## 1. Train a model
#
# The same model as in the quickstart (`01_quickstart.ipynb` explains the pieces).

# %%
train_ds, info = load_dataset('digits', 'train', batch_size=128, seed=0)
test_ds, _ = load_dataset('digits', 'test', batch_size=128, shuffle=False, seed=1)
model = GlowModel(info.image_shape, levels=LEVELS, steps=STEPS, width=WIDTH, n_bins=info.n_bins, seed=0)
model.compile(optimizer=default_optimizer(3e-3, warmup_steps=20))
start = time.time()
history = model.fit(train_ds, validation_data=test_ds, epochs=EPOCHS, verbose=0)
print(
  f'{EPOCHS} epochs in {time.time() - start:.0f} s; final train '
  f'{history.history["bits_per_dim"][-1]:.3f}, test {history.history["val_bits_per_dim"][-1]:.3f} bits/dim '
  f'(uniform: {math.log2(info.n_bins):.2f})'
)

# Fixed test images (fixed dequantization noise) and their labels, for the rest of the notebook.
test_bins, test_labels = load_digits('test')
x_test = dequantize(test_bins, info.n_bins, seed=[0, 1])

# %% [markdown]
# ## 2. Encode and decode
#
# `model.encode(x)` returns one latent per level: the multi-scale architecture splits half of the channels off
# after each level but the last, so an 8x8x1 image with 2 levels becomes a `[4, 4, 2]` latent (split off after
# level 1) and a `[2, 2, 8]` top latent: 32 + 32 = 64 numbers, as many as pixels. Each latent is
# *standardized* by its prior (`eps = (z - mean) / std`), so under the model every latent is N(0, I).
# `model.decode(latents)` inverts exactly; the only error is float32 round-off.

# %%
latents = model.encode(x_test)
for level, z in enumerate(latents, 1):
  print(
    f'level {level}: latent {tuple(z.shape)}, mean {float(tf.reduce_mean(z)):+.3f}, std {float(tf.math.reduce_std(z)):.3f}'
  )
x_back = model.decode(latents)
print(
  f'max |decode(encode(x)) - x| = {float(tf.reduce_max(tf.abs(x_back - x_test))):.2e}  (pixel values span 1.0)'
)
same_bins = np.mean(to_uint8(x_back, info.n_bins).numpy() == to_uint8(x_test, info.n_bins).numpy())
print(f'pixels that land in the same one of 17 bins after the round trip: {100 * same_bins:.3f}%')


# %% [markdown]
# If the model fitted the test images perfectly, their latents would have mean 0 and standard deviation 1.
# A standard deviation somewhat above 1 says the test images are a little less typical for the model than
# its training images: the same train/test gap as in the bits/dim.
#
# ## 3. Interpolation
#
# `model.interpolate(a, b, steps)` encodes two images, walks the straight line
# `z_t = (1 - t) z_a + t z_b` for `t` from 0 to 1 (at every level), and decodes each point.


# %%
def first_of(digit, skip=0):
  return x_test[int(np.flatnonzero(test_labels == digit)[skip])]


pairs = [(0, 1), (3, 8), (4, 7), (2, 6)]
fig, axes = plt.subplots(len(pairs), 1, figsize=(8, 1.1 * len(pairs)))
for ax, (a, b) in zip(axes, pairs):
  row = model.interpolate(first_of(a), first_of(b), steps=10)
  show(to_uint8(row, info.n_bins), columns=10, ax=ax)
  ax.set_title(f'{a} -> {b}', fontsize=9, loc='left')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Temperature sweep
#
# Sampling at temperature `T` decodes `T * eps` with `eps ~ N(0, I)`. With a fixed seed, each column below
# uses one `eps`, scaled by the `T` of its row. (`T` must be > 0; 0.01 stands in for 0, where every column
# would decode the same all-prior-means latent.)

# %%
temperatures = [0.01, 0.3, 0.5, 0.7, 0.85, 1.0]
fig, axes = plt.subplots(len(temperatures), 1, figsize=(8, 0.95 * len(temperatures)))
for ax, t in zip(axes, temperatures):
  show(model.sample(12, temperature=t, seed=tf.constant([7, 0], tf.int32)), columns=12, ax=ax)
  ax.set_title(f'T = {t}', fontsize=9, loc='left')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Semantic manipulation along class directions
#
# The Glow paper (section 5) moves CelebA faces along *attribute directions*: the mean latent of the training
# faces that have an attribute (smiling, blond hair, ...) minus the mean latent of those that do not, and
# decodes a face's latent plus a multiple of it. The digits have no attributes, but they have classes.
# `tfp_glow.manipulation` does exactly the paper's computation, level by level, on any labelled images:
#
#     d = mean eps(x with the attribute) - mean eps(x without)        attribute_direction(model, x, has)
#     x(alpha) = decode(eps(x) + alpha * d)                             manipulate(model, x, d, alphas)
#
# Here the "attribute" is "is a 7" and the images without it are the 1s of the training set, so `d` points
# from the average 1 to the average 7 in latent space; then a test 1 is moved along it. `alpha = 0` is the
# image itself (a flow reconstructs exactly). The same from the command line:
# `tfp-glow manipulate MODEL test:I --from-class 1 --to-class 7 --alphas 0 0.5 1 1.5`.
#
# First the class means themselves, decoded: the latent that every class direction starts and ends at.

# %%
from tfp_glow.manipulation import attribute_direction, encode_in_batches, manipulate

train_bins, train_labels = load_digits('train')
x_train = dequantize(train_bins, info.n_bins, seed=[0, 2])
train_latents = encode_in_batches(model, x_train)
class_means = [[tf.reduce_mean(z[train_labels == c], axis=0) for z in train_latents] for c in range(10)]

plt.figure(figsize=(8, 1.3))
show(
  to_uint8(tf.concat([model.decode([m[None] for m in class_means[c]]) for c in range(10)], 0), info.n_bins),
  columns=10,
  title='decoded class-mean latents of the training images, 0 ... 9',
)
plt.show()

# %%
alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
moves = [(1, 7), (3, 5), (9, 4), (0, 6)]
fig, axes = plt.subplots(len(moves), 1, figsize=(6.5, 1.15 * len(moves)))
for ax, (a, b) in zip(axes, moves):
  pair = np.isin(train_labels, [a, b])
  direction = attribute_direction(model, x_train[pair], train_labels[pair] == b)
  moved = manipulate(model, first_of(a, skip=1), direction, alphas)
  show(to_uint8(moved, info.n_bins), columns=len(alphas), ax=ax)
  ax.set_title(f'a test {a} moved toward {b}: alpha = {alphas}', fontsize=8, loc='left')
plt.tight_layout()
plt.show()

# %% [markdown]
# The direction is a difference of averages over all the images of two classes, not a path between two
# particular digits, so a moved digit keeps some of its own style (slant, thickness) while its shape drifts
# toward the other class; at `alpha = 1` the image has moved by the full distance between the class means.
# Beyond `alpha = 1` it extrapolates, as the paper's larger manipulations do. How convincing the change
# looks depends on the model: the 8x8 digits model here is small; the paper's faces came from a CelebA-HQ
# model with well over a hundred million parameters (`tfp-glow train --config celeba_hq256` builds 175 M).


# %% [markdown]
# ## 6. Likelihood on out-of-distribution inputs
#
# A density model could, in principle, flag unusual inputs by a low likelihood (high bits/dim). Flows are known
# to be unreliable at this on natural images (Nalisnick et al., 2019, "Do deep generative models know what they
# don't know?": a CIFAR-10 Glow gives SVHN *higher* likelihood). We compare the test digits with two kinds of
# inputs the model never saw, all dequantized the same way:
#
# * **uniform noise**: every pixel an independent uniform bin in 0..16;
# * **inverted digits**: `16 - bins` of the test images (dark strokes on a bright background);
# * **upside-down digits**: the test images flipped vertically;
# * **faint digits**: the test images at half contrast, `bins // 2`.
#
# AUROC below is the probability that a random OOD image gets *more* bits/dim than a random test image
# (1.0: bits/dim separates them perfectly, 0.5: not at all).


# %%
def bpd(x):
  return model.bits_per_dim(model.log_prob(x)).numpy()


rng = np.random.default_rng(0)
groups = {
  'test digits': bpd(x_test),
  'uniform noise': bpd(dequantize(rng.integers(0, DIGITS_BINS, test_bins.shape), DIGITS_BINS, seed=[0, 2])),
  'inverted digits': bpd(dequantize(DIGITS_BINS - 1 - test_bins, DIGITS_BINS, seed=[0, 3])),
  'upside-down digits': bpd(dequantize(test_bins[:, ::-1], DIGITS_BINS, seed=[0, 4])),
  'faint digits': bpd(dequantize(test_bins // 2, DIGITS_BINS, seed=[0, 5])),
}
reference = groups['test digits']
for name, values in groups.items():
  auroc = np.mean(values[:, None] > reference[None, :]) + 0.5 * np.mean(values[:, None] == reference[None, :])
  extra = '' if name == 'test digits' else f'   AUROC vs test: {auroc:.3f}'
  print(
    f'{name:19s} bits/dim: median {np.median(values):7.2f}, min {values.min():7.2f}, max {values.max():7.2f}{extra}'
  )

plt.figure(figsize=(8, 3.8))
low = min(v.min() for v in groups.values())
high = max(v.max() for v in groups.values())
bins = np.geomspace(max(low, 0.5), high, 80)  # a log axis: OOD bits/dim can be 10-100 times larger
for name, values in groups.items():
  plt.hist(np.maximum(values, bins[0]), bins=bins, alpha=0.55, label=name)
plt.axvline(math.log2(DIGITS_BINS), color='gray', ls='--', label='uniform model, log2(17)')
plt.xscale('log')
plt.xlabel('bits / dim, log scale (lower = more likely under the model)')
plt.ylabel('images')
plt.legend()
plt.show()

# %% [markdown]
# Bits/dim far above log2(17) = 4.09 are possible: a model that concentrates its mass on digits leaves
# noise far less than the uniform share. In the run saved here, noise and inverted digits are easy cases: no
# test digit comes near them. Upside-down and faint digits are harder: they keep the strokes and the dark
# background the model knows, many digits (0, 1, 8) look alike upside down, and their histograms overlap
# the test digits', so a likelihood threshold would let many of them through.
