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
# # A class-conditional Glow
#
# With `num_classes=K`, the prior of the top latent depends on the label `y`, as in the reference code's
# "ycond" option:
#
#     (mean, log_std) = (learned mean, learned log_std) + one_hot(y) @ W      (W zero-initialized)
#
# so `p(x | y)` is a flow whose top-level Gaussian moves with the class. Training also adds a small
# classification loss: a linear classifier on the spatial mean of the top activations predicts `y`, and
# `0.01 * cross-entropy` (in bits) is added to the bits/dim (the reference's `weight_y = 0.01`). Keras reports
# its accuracy as `class_accuracy`. Data come as `(images, labels)` pairs, and sampling takes `labels=`.

# %%
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: quieter logs

# Quick mode (set by the test suite): tiny settings, only checks that every cell runs.
QUICK = os.environ.get('TFP_GLOW_NOTEBOOK_QUICK') == '1'

LEVELS, STEPS, WIDTH = (2, 2, 16) if QUICK else (2, 8, 64)
EPOCHS = 2 if QUICK else 120  # the class-dependent part learns more slowly than the rest: ~2 minutes

# %%
import math
import time

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from tfp_glow.data import dequantize, load_dataset, load_digits
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


# %%
train_ds, info = load_dataset('digits', 'train', batch_size=128, with_labels=True, seed=0)
test_ds, _ = load_dataset('digits', 'test', batch_size=128, with_labels=True, shuffle=False, seed=1)
images, labels = next(iter(train_ds))
print(info)
print('a batch:', images.shape, images.dtype, 'labels', labels.shape, labels.dtype, labels[:10].numpy())

model = GlowModel(
  info.image_shape,
  levels=LEVELS,
  steps=STEPS,
  width=WIDTH,
  n_bins=info.n_bins,
  num_classes=info.num_classes,
  seed=0,
)
model.compile(optimizer=default_optimizer(3e-3, warmup_steps=20))
start = time.time()
history = model.fit(train_ds, validation_data=test_ds, epochs=EPOCHS, verbose=0)
h = history.history
print(f'{EPOCHS} epochs in {time.time() - start:.0f} s; metrics: {sorted(h)}')
print(
  f'final: train {h["bits_per_dim"][-1]:.3f} / test {h["val_bits_per_dim"][-1]:.3f} bits/dim, '
  f'class accuracy train {h["class_accuracy"][-1]:.3f} / test {h["val_class_accuracy"][-1]:.3f}'
)

# %%
epochs = np.arange(1, EPOCHS + 1)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.plot(epochs, h['bits_per_dim'], label='train')
ax1.plot(epochs, h['val_bits_per_dim'], label='test')
ax1.axhline(math.log2(info.n_bins), color='gray', ls='--', label='uniform, log2(17)')
ax1.set(xlabel='epoch', ylabel='bits / dim', title='likelihood (bits/dim)')
ax1.legend()
ax2.plot(epochs, h['class_accuracy'], label='train')
ax2.plot(epochs, h['val_class_accuracy'], label='test')
ax2.axhline(0.1, color='gray', ls='--', label='chance')
ax2.set(xlabel='epoch', ylabel='accuracy', title='class_accuracy of the auxiliary classifier', ylim=(0, 1))
ax2.legend()
for ax in (ax1, ax2):
  ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Samples per class
#
# Each row asks for one class: `model.sample(n, temperature=T, labels=[y] * n)`. The columns of a row are
# different draws; the same seed in every row means column j uses the same `eps` for every class, so what
# changes down a column is the label alone.
#
# Only the *top* prior sees the label (as in the reference code); the latent split off at level 1 has a prior
# that depends on the top half of the activations, not on `y` directly. The label therefore steers the coarse
# layout most, and lower temperatures make the class clearer.

# %%
temperatures = (0.5, 0.7, 1.0)
fig, axes = plt.subplots(1, len(temperatures), figsize=(4.6 * len(temperatures), 4.9))
for ax, t in zip(axes, temperatures):
  rows = [
    model.sample(10, temperature=t, labels=np.full(10, y, np.int32), seed=tf.constant([3, 0], tf.int32))
    for y in range(10)
  ]
  show(tf.concat(rows, 0), columns=10, ax=ax, title=f'rows: classes 0-9, T = {t}')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The conditional flow as a classifier
#
# The auxiliary classifier above is a linear read-out with a tiny loss weight. The flow itself also classifies,
# by Bayes' rule with uniform class priors: `argmax_y log p(x | y)`. This costs one `log_prob` pass per class.

# %%
test_bins, test_labels = load_digits('test')
x_test = dequantize(test_bins, info.n_bins, seed=[0, 1])
log_px_given_y = np.stack(
  [model.log_prob(x_test, labels=np.full(len(x_test), y, np.int32)).numpy() for y in range(10)], axis=1
)  # [N, 10]
predicted = log_px_given_y.argmax(axis=1)
print(
  f'Bayes-rule accuracy on {len(x_test)} test images: {np.mean(predicted == test_labels):.3f} '
  f'(auxiliary classifier, last epoch: {h["val_class_accuracy"][-1]:.3f})'
)
confusion = np.zeros((10, 10), int)
np.add.at(confusion, (test_labels, predicted), 1)
print('confusion matrix (rows: true class, columns: predicted):')
print(confusion)
