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
# # The bijectors, and Glow as a citizen of TensorFlow Probability
#
# Every layer of `tfp_glow` is a `tfp.bijectors.Bijector` on images `[..., H, W, C]`, and the
# whole flow `tfp_glow.Glow` is one too. Direction, as everywhere in TFP:
#
# * `forward`: latent -> image (sampling);
# * `inverse`: image -> latent (density; the direction in which the paper writes each layer).
#
# This notebook (1) checks each bijector's analytic log-determinant against the Jacobian computed by
# autodiff, (2) composes our bijectors with TFP's own (`tfb.Chain`, `tfb.Invert`), (3) swaps the base
# distribution, (4) puts a `GlowDistribution` inside a `tfd.Mixture`, and (5) trains one distribution
# with a `GradientTape` loop, `tfp.math.minimize` and Keras `fit`, one after the other.

# %%
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: quieter logs

# Quick mode (set by the test suite): tiny settings, only checks that every cell runs.
QUICK = os.environ.get('TFP_GLOW_NOTEBOOK_QUICK') == '1'

# Training steps of section 5 (each of three stages). Full mode: about a minute in all.
TAPE_STEPS, MINIMIZE_STEPS, KERAS_EPOCHS = (5, 5, 1) if QUICK else (300, 300, 20)
LEVELS, STEPS, WIDTH = (2, 1, 8) if QUICK else (2, 4, 32)

# %%
import math

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_glow
from tfp_glow.data import DIGITS_BINS, dequantize, load_dataset, load_digits, to_uint8
from tfp_glow.images import image_grid
from tfp_glow.training.optim import default_optimizer

tfb, tfd = tfp.bijectors, tfp.distributions
# batch_jacobian below builds a new tf.function per bijector, on purpose; hide TF's "retracing" warnings.
tf.get_logger().setLevel('ERROR')
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
F64 = tf.float64
print('TensorFlow', tf.__version__, '| TFP', tfp.__version__)


def show(images, columns, title=None, ax=None, zoom=1):
  """Shows uint8 images [N, H, W, 1] as one grid (tfp_glow.images.image_grid)."""
  grid = image_grid(np.asarray(images), columns=columns, pad=1, pad_value=128, zoom=zoom)
  ax = ax or plt.gca()
  ax.imshow(grid[..., 0], cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  ax.set_axis_off()
  if title:
    ax.set_title(title)


# %% [markdown]
# ## 1. Each bijector against autodiff
#
# For a bijector `x = f(z)` on images with D = H * W * C values, flatten both sides: the Jacobian
# `J = dx/dz` is a D x D matrix, and `forward_log_det_jacobian(z, event_ndims=3)` must equal
# `log|det J|`. We compute `J` with `tf.GradientTape.batch_jacobian` and `log|det J|` with
# `tf.linalg.slogdet`, in float64 on tiny shapes (D = 16), and also check `inverse(forward(z)) = z`.
#
# Most layers *start* as something trivial (the coupling's last convolution is zero-initialized, so it starts
# as the identity; the priors start as N(0, 1)), and a check at the identity proves little. So every
# trainable parameter is first moved by random noise (`perturb`). Parameters are ordinary `tf.Variable`s,
# listed by `bijector.trainable_variables`.
#
# | bijector | forward (latent -> image) | forward log-det |
# |---|---|---|
# | `ActNorm(C)` | `x = (z - b) / s`, per channel | `-H W sum log s` |
# | `Invertible1x1Conv(C)` | `x[i,j] = W^-1 z[i,j]`, W in LU form (or full, `lu_decomposed=False`) | `-H W log|det W|` |
# | `AffineCoupling(C, width)` | `x_b = z_b / scale(z_a) - shift(z_a)`, `x_a = z_a` | `-sum log scale` |
# | `ChannelPermutation` | fixed channel shuffle / reversal | 0 |
# | `Squeeze()` | depth-to-space `[h, w, 4c] -> [2h, 2w, c]` | 0 |
# | `SplitPrior(C)` | `z_b = mean(z_a) + exp(log_std(z_a)) * eps_b` | `sum log_std` |
# | `TopPrior(C, num_classes)` | `h = mean[y] + exp(log_std[y]) * eps` | `H W sum log_std[y]` |


# %%
# The contract every tfp_glow bijector passes (`tfp_glow.testing`, public: use it for your own layers):
# inverse(forward(z)) = z and back, both log-dets against the autodiff Jacobians of the inverse AND the
# forward map (`tape.batch_jacobian`), event shapes, tf.function with an unknown batch size, and XLA.
from tfp_glow.testing import check_bijector, perturb  # noqa: E402

cases = [
  ('ActNorm(4)', tfp_glow.ActNorm(4, dtype=F64), (3, 2, 2, 4), {}),
  ('Invertible1x1Conv(4), LU', tfp_glow.Invertible1x1Conv(4, seed=0, dtype=F64), (3, 2, 2, 4), {}),
  (
    'Invertible1x1Conv(4), full W',
    tfp_glow.Invertible1x1Conv(4, lu_decomposed=False, seed=0, dtype=F64),
    (3, 2, 2, 4),
    {},
  ),
  ('AffineCoupling(4, width=8)', tfp_glow.AffineCoupling(4, width=8, dtype=F64), (3, 2, 2, 4), {}),
  (
    'AffineCoupling, additive',
    tfp_glow.AffineCoupling(4, width=8, additive=True, dtype=F64),
    (3, 2, 2, 4),
    {},
  ),
  (
    'ChannelPermutation.shuffle(4)',
    tfp_glow.ChannelPermutation.shuffle(4, seed=0, dtype=F64),
    (3, 2, 2, 4),
    {},
  ),
  ('Squeeze()', tfp_glow.Squeeze(dtype=F64), (3, 2, 2, 4), {}),
  ('SplitPrior(4)', tfp_glow.SplitPrior(4, dtype=F64), (3, 2, 2, 4), {}),
  ('TopPrior(4)', tfp_glow.TopPrior(4, dtype=F64), (3, 2, 2, 4), {}),
  (
    'TopPrior(4, num_classes=3)',
    tfp_glow.TopPrior(4, num_classes=3, dtype=F64),
    (3, 2, 2, 4),
    {'labels': tf.constant([0, 1, 2])},
  ),
]
print(f'{"bijector":32s} {"#vars":>5s}   inverse log-det per image (checked against autodiff)')
for name, bijector, shape, kwargs in cases:
  perturb(bijector, 0.3)
  x = tf.constant(rng.standard_normal(shape), F64)
  log_dets = check_bijector(bijector, x, kwargs, rtol=1e-9, atol=1e-9)  # raises if any check fails
  print(f'{name:32s} {len(bijector.trainable_variables):5d}   {np.round(log_dets.numpy(), 4)}')

# %% [markdown]
# The additive coupling, the permutation and the squeeze are volume preserving (log-det exactly 0);
# the others have non-zero log-dets that match autodiff to float64 round-off. The conditional `TopPrior`
# takes the class labels as a keyword (`labels=`), as TFP's conditional bijectors do, and its log-det differs
# per image because each image's label selects its own prior.
#
# The whole multi-scale flow passes the same check (a tiny one: 4x4x1 images, 2 levels, 2 steps each).
# Before use, a Glow's actnorm layers need their data-dependent initialization, `glow.initialize(images)`.

# %%
tiny_glow = tfp_glow.Glow((4, 4, 1), levels=2, steps=2, width=8, seed=0, dtype=F64)
tiny_glow.initialize(tf.constant(rng.uniform(-0.5, 0.5, (64, 4, 4, 1)), F64))
perturb(tiny_glow, 0.1)
x_tiny = tf.constant(rng.uniform(-0.5, 0.5, (3, 4, 4, 1)), F64)
log_dets = check_bijector(tiny_glow, x_tiny, rtol=1e-9, atol=1e-9)
print(
  f'Glow (4x4x1, L=2, K=2): {len(tiny_glow.trainable_variables)} variables, log-dets {np.round(log_dets.numpy(), 3)}'
)

# %% [markdown]
# Inside a Glow, each level keeps ONE variable per parameter of a step, stacked over its K steps
# (`[K, ...]`), so that the level runs as one loop and the optimizer updates a handful of variables
# whatever K is. Each step's actnorm, 1x1 convolution and coupling is still a TFP bijector of its own
# class: `index` says which slice of the stack it computes with.

# %%
print(type(tiny_glow.levels[0].steps).__name__, len(tiny_glow.levels[0].steps), 'steps')
step = tiny_glow.levels[0].steps[1]
for b in step.bijectors():
  shapes = [tuple(v.shape) for v in b.parameter_variables()][:2]
  print(f'{b.name:32s} {type(b).__name__:18s} index {b.index}   first stacked variables {shapes}')

# %% [markdown]
# ## 2. Composing with TFP's bijectors
#
# Our bijectors mix freely with TFP's. `tfb.Chain([b1, b2, b3])` applies `b3` first in the forward
# direction; its log-det is the sum of the parts. Below, a one-step flow on a 4x4x1 image is built by hand,
# with a TFP `Scale` and `Shift` at the image end:
#
#     forward:  z [2,2,4] -> coupling -> 1x1 conv -> actnorm -> unsqueeze [4,4,1] -> * 0.5 -> + 0.25 = x
#
# The `Squeeze` changes the event shape, and the chain knows it (`forward_event_shape`).
# `tfb.Scale(0.5)` on D = 16 values adds `16 * log(0.5)` to the log-det.

# %%
actnorm = tfp_glow.ActNorm(4, dtype=F64)
conv = tfp_glow.Invertible1x1Conv(4, seed=1, dtype=F64)
coupling = tfp_glow.AffineCoupling(4, width=8, dtype=F64)
for b in (actnorm, conv, coupling):
  perturb(b, 0.3)
chain = tfb.Chain(
  [
    tfb.Shift(tf.constant(0.25, F64)),
    tfb.Scale(tf.constant(0.5, F64)),
    tfp_glow.Squeeze(dtype=F64),
    actnorm,
    conv,
    coupling,
  ]
)
print(
  'event shape: latent',
  chain.inverse_event_shape([4, 4, 1]),
  '-> image',
  chain.forward_event_shape([2, 2, 4]),
)
print('trainable variables found through the chain:', len(chain.trainable_variables))

x_chain = chain.forward(tf.constant(rng.standard_normal((3, 2, 2, 4)), F64))  # images [3, 4, 4, 1]
log_dets = check_bijector(chain, x_chain, rtol=1e-9, atol=1e-9)  # the chain passes the same contract
print('chain: inverse log-dets, checked against autodiff:', np.round(log_dets.numpy(), 4))

z = tf.constant(rng.standard_normal((3, 2, 2, 4)), F64)
parts = (
  coupling.forward_log_det_jacobian(z, 3)
  + conv.forward_log_det_jacobian(coupling.forward(z), 3)
  + actnorm.forward_log_det_jacobian(conv.forward(coupling.forward(z)), 3)
  + 16 * math.log(0.5)
)
print("sum of the parts' log-dets:", np.round(parts.numpy(), 6))
print("the chain's log-det:       ", np.round(chain.forward_log_det_jacobian(z, 3).numpy(), 6))

# %% [markdown]
# `tfb.Invert(b)` swaps the directions: its `forward` is `b.inverse`. Inverting a whole `Glow` gives
# an image -> latent bijector, e.g. to push data *into* latent space inside another TFP construct.

# %%
image = tf.constant(rng.uniform(-0.5, 0.5, (2, 4, 4, 1)), F64)
to_latent = tfb.Invert(tiny_glow)
print(
  'Invert(glow).forward == glow.inverse:',
  np.allclose(to_latent.forward(image), tiny_glow.inverse(tf.identity(image))),
)
print(
  'Invert(glow).forward_log_det_jacobian == glow.inverse_log_det_jacobian:',
  np.allclose(
    to_latent.forward_log_det_jacobian(image, 3), tiny_glow.inverse_log_det_jacobian(tf.identity(image), 3)
  ),
)

squeeze = tfp_glow.Squeeze(dtype=F64)
ramp = tf.reshape(tf.range(16, dtype=F64), [1, 4, 4, 1])
print('Invert(Squeeze()) maps a 4x4x1 ramp to 2x2x4 (space-to-depth):')
print(tfb.Invert(squeeze).forward(ramp)[0].numpy().transpose(2, 0, 1))

# %% [markdown]
# The squeeze puts each 2x2 block of pixels into the 4 channels of one position: channel k of position
# (i, j) holds pixel (2i + k // 2, 2j + k % 2).
#
# ## 3. A different base distribution
#
# `GlowDistribution(glow)` is a `tfd.TransformedDistribution` of a standard normal; any distribution with
# event shape `[H, W, C]` can replace it:
#
#     log p(x) = log p_base(glow.inverse(x)) + glow.inverse_log_det_jacobian(x)
#
# Here a Student-t base with a *learned* number of degrees of freedom (heavier tails than a Gaussian),
# on a small float32 Glow for the 8x8 digits. `tfp.util.TransformedVariable` keeps `df` positive;
# its variable appears in the distribution's `trainable_variables` next to the flow's.

# %%
train_bins, _ = load_digits('train')
test_bins, _ = load_digits('test')
x_train = dequantize(train_bins, DIGITS_BINS, seed=[0, 0])  # float32 [1500, 8, 8, 1] in [-0.5, 0.5)
x_test = dequantize(test_bins, DIGITS_BINS, seed=[0, 1])
D = 64


def bits_per_dim(log_prob):
  """(-log p(x) + D log(n_bins)) / (D ln 2), per image."""
  return (-log_prob + D * math.log(DIGITS_BINS)) / (D * math.log(2.0))


glow_t = tfp_glow.Glow((8, 8, 1), levels=2, steps=2, width=16, seed=1)
glow_t.initialize(x_train[:256])  # actnorm's data-dependent init
df = tfp.util.TransformedVariable(5.0, tfb.Softplus(), name='df')
student_base = tfd.Sample(tfd.StudentT(df=df, loc=0.0, scale=1.0), sample_shape=(8, 8, 1))
dist_t = tfp_glow.GlowDistribution(glow_t, base_distribution=student_base)
print(dist_t)
print(
  'trainable variables:',
  len(dist_t.trainable_variables),
  '(flow:',
  len(glow_t.trainable_variables),
  '+ df: 1)',
)

x = x_test[:4]
by_hand = student_base.log_prob(glow_t.inverse(x)) + glow_t.inverse_log_det_jacobian(x, event_ndims=3)
print('log_prob:        ', np.round(dist_t.log_prob(x).numpy(), 4))
print('by the formula:  ', np.round(by_hand.numpy(), 4))
samples = dist_t.sample(5, temperature=0.7, seed=[1, 2])
print('samples:', samples.shape, '(temperature scales the Student-t draws, as it scales Gaussian ones)')

# %% [markdown]
# ## 4. A `GlowDistribution` inside `tfd.Mixture`
#
# A mixture of two flows, `p(x) = pi_1 p_1(x) + pi_2 p_2(x)`, with `tfd.Mixture` and a learnable
# `tfd.Categorical`. We check its `log_prob` against `logsumexp(log pi_k + log p_k(x))` and that
# gradients reach both flows and the mixture weights. `mixture.trainable_variables` lists the mixture
# weights and both flows' parameters: a `GlowDistribution` is a plain (non-composite) TFP distribution,
# so `tf.Module`'s variable walk reaches the Keras-owned variables of its bijectors.

# %%
glow_1 = tfp_glow.Glow((8, 8, 1), levels=2, steps=1, width=16, seed=2)
glow_2 = tfp_glow.Glow((8, 8, 1), levels=2, steps=1, width=16, seed=3)
for g in (glow_1, glow_2):
  g.initialize(x_train[:256])
mixture_logits = tf.Variable([0.0, 0.0], name='mixture_logits')
mixture = tfd.Mixture(
  cat=tfd.Categorical(logits=mixture_logits),
  components=[tfp_glow.GlowDistribution(glow_1), tfp_glow.GlowDistribution(glow_2)],
)

x = x_test[:4]
log_w = tf.math.log_softmax(mixture_logits)
by_hand = tf.reduce_logsumexp(
  tf.stack([log_w[k] + c.log_prob(x) for k, c in enumerate(mixture.components)]), axis=0
)
print('Mixture.log_prob:     ', np.round(mixture.log_prob(x).numpy(), 4))
print('logsumexp by hand:    ', np.round(by_hand.numpy(), 4))
print('samples:', mixture.sample(6, seed=[3, 4]).shape)

mixture_variables = mixture.trainable_variables
from_parts = [mixture_logits, *glow_1.trainable_variables, *glow_2.trainable_variables]
print(
  'mixture.trainable_variables:',
  len(mixture_variables),
  '| mixture logits + both flows:',
  len(from_parts),
  '| the same set:',
  {id(v) for v in mixture_variables} == {id(v) for v in from_parts},
)
with tf.GradientTape() as tape:
  loss = -tf.reduce_mean(mixture.log_prob(x_train[:64]))
grads = tape.gradient(loss, mixture_variables)
print(
  'variables the gradient reaches:',
  sum(g is not None for g in grads),
  'of',
  len(grads),
  '| with a non-zero gradient right now:',
  sum(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads),
)

# %% [markdown]
# Every variable is reached. Some gradients are still exactly zero: each coupling network ends in a
# zero-initialized convolution, so at the start nothing flows back into the layers before it. One step of
# training changes that.
#
# ## 5. Training: `GradientTape`, `tfp.math.minimize`, Keras
#
# The parameters are ordinary `tf.Variable`s (owned by Keras layers), so every TensorFlow training style works.
# We train one `GlowDistribution` on the digits in three stages, each continuing from the previous one:
#
# 1. a hand-written `GradientTape` loop over `dist.trainable_variables`;
# 2. `tfp.math.minimize(loss_fn, num_steps, optimizer, trainable_variables=...)`, which runs the whole loop
#    in one `tf.function` (the loss function pulls the next batch from a `tf.data` iterator);
# 3. Keras `fit`: `glow.layer` is a single Keras layer that owns every parameter of the flow; a small
#    `keras.Model` holding it trains the same variables. (`GlowModel` of the quickstart is the full-featured
#    version of this.)
#
# The loss is the mean bits/dim of the batch, i.e. the negative log-likelihood rescaled.
# Each stage has its own optimizer (Adamax with a 20-step warmup), so its moment estimates restart.

# %%
glow = tfp_glow.Glow((8, 8, 1), levels=LEVELS, steps=STEPS, width=WIDTH, seed=0)
dist = tfp_glow.GlowDistribution(glow)
glow.initialize(x_train[:256])
variables = dist.trainable_variables
print(f'{len(variables)} variables, {sum(int(np.prod(v.shape)) for v in variables):,} parameters')

train_ds, _ = load_dataset('digits', 'train', batch_size=128, seed=0)
batches = iter(train_ds.repeat())


def test_bpd():
  return float(tf.reduce_mean(bits_per_dim(dist.log_prob(x_test))))


curves = {}
print(f'before training: test {test_bpd():.3f} bits/dim')

# --- stage 1: a GradientTape loop ---
optimizer = default_optimizer(3e-3, warmup_steps=20)


@tf.function
def train_step(images):
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(bits_per_dim(dist.log_prob(images)))
  optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  return loss


curves['GradientTape loop'] = [float(train_step(next(batches))) for _ in range(TAPE_STEPS)]
print(f'after {TAPE_STEPS} GradientTape steps: test {test_bpd():.3f} bits/dim')

# --- stage 2: tfp.math.minimize ---
trace = tfp.math.minimize(
  lambda: tf.reduce_mean(bits_per_dim(dist.log_prob(next(batches)))),
  num_steps=MINIMIZE_STEPS,
  optimizer=default_optimizer(3e-3, warmup_steps=20),
  trainable_variables=variables,
)
curves['tfp.math.minimize'] = trace.numpy().tolist()
print(f'after {MINIMIZE_STEPS} tfp.math.minimize steps: test {test_bpd():.3f} bits/dim')


# %%
# --- stage 3: Keras ---
class FlowTrainer(keras.Model):
  """A minimal Keras model around a TFP distribution: `flow` (a Keras layer) owns the variables."""

  def __init__(self, flow_layer, log_prob_fn):
    super().__init__()
    self.flow = flow_layer  # Keras tracks (and saves) every flow parameter through this layer
    self.log_prob_fn = log_prob_fn  # a plain function, not tracked
    self.built = True

  def train_step(self, images):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(bits_per_dim(self.log_prob_fn(images)))
    grads = tape.gradient(loss, self.trainable_variables)
    self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
    return {'bits_per_dim': loss}


trainer = FlowTrainer(glow.layer, dist.log_prob)
same = {id(v.value) for v in trainer.trainable_variables} == {id(v) for v in variables}
print('Keras sees the same variables as TFP:', same)
trainer.compile(optimizer=default_optimizer(3e-3, warmup_steps=20))
keras_history = trainer.fit(train_ds, epochs=KERAS_EPOCHS, shuffle=False, verbose=0)
curves['Keras fit (per-epoch mean)'] = keras_history.history['bits_per_dim']
print(f'after {KERAS_EPOCHS} Keras epoch(s) ({KERAS_EPOCHS * 12} steps): test {test_bpd():.3f} bits/dim')

# %%
plt.figure(figsize=(7, 3.5))
start = 0
for label, values in curves.items():
  steps_per_point = 12 if label.startswith('Keras') else 1  # an epoch is 12 batches of 128
  xs = start + steps_per_point * np.arange(1, len(values) + 1)
  plt.plot(xs, values, 'o-' if steps_per_point > 1 else '-', ms=3, label=label)
  start = xs[-1]
plt.axhline(math.log2(DIGITS_BINS), color='gray', ls='--', label='uniform, log2(17)')
plt.ylim(top=max(5.0, math.log2(DIGITS_BINS) + 0.5))
plt.xlabel('training step')
plt.ylabel('train bits / dim')
plt.title('one GlowDistribution, three training loops')
plt.legend()
plt.grid(alpha=0.3)
plt.show()

samples = dist.sample(16, temperature=0.7, seed=[5, 6])  # floats in the model's [-0.5, 0.5) scale
plt.figure(figsize=(5, 1.8))
show(
  to_uint8(samples, DIGITS_BINS), columns=8, title='samples at T = 0.7 from the distribution trained above'
)
plt.show()

# %% [markdown]
# The three loops hand the same variables to each other, so the loss continues where the previous stage
# left off. The Keras curve is the mean over each epoch's batches, plotted at the epoch's last step.
# This small flow (K = 4 steps per level, width 32) is weaker than the quickstart's, and so are its samples.
