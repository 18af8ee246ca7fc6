"""Writes the tutorial notebooks in this folder and, with --execute, runs them and saves their outputs.

    .venv/bin/python notebooks/build_notebooks.py              # write the .ipynb files WITHOUT outputs
    .venv/bin/python notebooks/build_notebooks.py --execute    # write, run in FULL mode, save outputs
    .venv/bin/python notebooks/build_notebooks.py --execute 03 # only the notebooks whose name has "03"

Run it with the virtual environment's Python: the "python3" kernel then runs that same interpreter.
Full mode (TFP_GLOW_NOTEBOOK_QUICK unset) trains real models (1-3 minutes per notebook on 2 CPU cores);
the test run (`pytest --nbmake notebooks`, with the root conftest.py) sets TFP_GLOW_NOTEBOOK_QUICK=1.
The saved notebooks keep their outputs (figures as PNG): those are what readers see on the web, so after
editing a notebook here, re-run it with --execute (the plain command above drops every saved output).
"""

from __future__ import annotations

import os
import sys
import textwrap
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text: str):
  return new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str):
  return new_code_cell(textwrap.dedent(text).strip())


PARAMS_INTRO = """
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported: quieter logs

    # Quick mode (set by the test suite): tiny settings, only checks that every cell runs.
    QUICK = os.environ.get("TFP_GLOW_NOTEBOOK_QUICK") == "1"
"""

SHOW_HELPER = '''
    def show(images, columns, title=None, ax=None, zoom=1):
        """Shows uint8 images [N, H, W, 1] as one grid (tfp_glow.callbacks.image_grid)."""
        grid = image_grid(np.asarray(images), columns=columns, pad=1, pad_value=128, zoom=zoom)
        ax = ax or plt.gca()
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_axis_off()
        if title:
            ax.set_title(title)
'''

# --------------------------------------------------------------------------------------------------
# 01: quickstart
# --------------------------------------------------------------------------------------------------

NB01 = [
  md("""
    # Glow in five minutes: train a normalizing flow on 8x8 digits

    Glow (Kingma & Dhariwal, 2018) is a *normalizing flow*: an invertible network `f` that maps a simple
    latent variable `z ~ N(0, I)` to an image `x = f(z)`. Because `f` is invertible with a tractable
    Jacobian, the exact log-likelihood of an image follows from the change of variables formula:

        log p(x) = log N(f^-1(x); 0, I) + log |det d f^-1(x) / dx|

    Training maximizes this directly (no ELBO, no discriminator), and sampling is one pass through `f`.

    This notebook trains `tfp_glow.model.GlowModel` with plain Keras `fit` on scikit-learn's 8x8
    handwritten digits (bundled offline), plots the learning curves, and samples at several temperatures.
    """),
  code(
    PARAMS_INTRO
    + """
    # Model and training settings. Full mode trains for about 1-2 minutes on 2 CPU cores.
    LEVELS, STEPS, WIDTH = (2, 2, 16) if QUICK else (2, 8, 64)
    EPOCHS = 2 if QUICK else 60
    BATCH_SIZE = 128
    LEARNING_RATE, WARMUP_STEPS = 3e-3, 20
    """
  ),
  code(
    """
    import math
    import time

    import keras
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    import tfp_glow
    from tfp_glow.callbacks import image_grid
    from tfp_glow.data import load_dataset, to_uint8
    from tfp_glow.model import GlowModel
    from tfp_glow.optim import default_optimizer

    keras.utils.set_random_seed(0)
    print("tfp_glow", tfp_glow.__version__, "| TensorFlow", tf.__version__, "| Keras", keras.__version__)
    """
    + SHOW_HELPER
  ),
  md("""
    ## 1. Data: discrete pixels, continuous density

    The digits hold integers 0..16 per pixel, so there are `n_bins = 17` levels (`tfp_glow.data.DIGITS_BINS`).
    A continuous density on discrete values would cheat (it could put infinite density on the 17 points), so
    every pixel is *dequantized*: `x = (bin + u) / n_bins - 0.5` with fresh noise `u ~ U[0, 1)` each epoch,
    giving floats in [-0.5, 0.5). Then `-log p(x) + D log(n_bins)` is an upper bound on the code length of
    the discrete image (D = 8 * 8 * 1 = 64 dimensions). Reported per dimension and in bits:

        bits/dim = (-log p(x) + D log(n_bins)) / (D ln 2)

    A model that spreads its mass uniformly over the 17 levels scores **log2(17) = 4.09 bits/dim**: anything
    below that has learned something. `load_dataset` returns a batched, dequantized `tf.data.Dataset`
    (1500 training and 297 test images, a fixed split) and a `DatasetInfo`.
    """),
  code("""
    train_ds, info = load_dataset("digits", "train", batch_size=BATCH_SIZE, seed=0)
    test_ds, _ = load_dataset("digits", "test", batch_size=BATCH_SIZE, shuffle=False, seed=1)
    print(info)
    UNIFORM_BPD = math.log2(info.n_bins)
    print(f"uniform baseline: log2({info.n_bins}) = {UNIFORM_BPD:.2f} bits/dim")

    batch = next(iter(train_ds))
    print("a batch:", batch.shape, batch.dtype, f"values in [{batch.numpy().min():.3f}, {batch.numpy().max():.3f}]")
    plt.figure(figsize=(4, 4))
    show(to_uint8(batch[:64], info.n_bins), columns=8, title="training images")
    plt.show()
    """),
  md("""
    ## 2. The model

    `GlowModel(image_shape, levels=L, steps=K, width=W, n_bins=...)` is a `keras.Model`. In the
    image -> latent direction each of its L levels does:

    * **squeeze**: 2x2 space-to-depth, `[h, w, c] -> [h/2, w/2, 4c]`, so the next layers mix neighbouring pixels;
    * **K steps of flow**, each `actnorm -> invertible 1x1 conv -> affine coupling`:
      actnorm is a per-channel `s * x + b` (initialized from data so activations start at zero mean, unit variance);
      the 1x1 convolution is a learned `c x c` rotation of the channels (log-det `h * w * log|det W|`);
      the coupling keeps half the channels `x_a` and transforms the other half `x_b` with a small CNN of `x_a`:
      `z_b = (x_b + shift(x_a)) * scale(x_a)`, log-det `sum log scale`;
    * **split** (all levels but the last): half the channels leave as a latent with a learned Gaussian prior
      whose mean and std depend on the half that stays. The last level has a learned top prior.

    The loss is the bits/dim above. `compile()` defaults to Adamax with a linear learning-rate warmup
    (the reference code's optimizer); here a larger rate with a short warmup suits the tiny data set.
    `fit` first runs actnorm's data-dependent initialization on the first training images.
    """),
  code("""
    model = GlowModel(info.image_shape, levels=LEVELS, steps=STEPS, width=WIDTH, n_bins=info.n_bins, seed=0)
    model.compile(optimizer=default_optimizer(LEARNING_RATE, warmup_steps=WARMUP_STEPS))
    print(f"L={LEVELS} levels, K={STEPS} steps, width {WIDTH}: "
          f"{sum(int(np.prod(v.shape)) for v in model.trainable_variables):,} parameters")
    print("latent shapes per level:", model.glow.latent_shapes)

    start = time.time()
    history = model.fit(train_ds, validation_data=test_ds, epochs=EPOCHS, verbose=0)
    print(f"trained {EPOCHS} epochs in {time.time() - start:.0f} s")
    h = history.history
    for epoch in sorted({0, *range(9, EPOCHS, 10), EPOCHS - 1}):
        print(f"epoch {epoch + 1:3d}: train {h['bits_per_dim'][epoch]:.3f}  val {h['val_bits_per_dim'][epoch]:.3f} bits/dim")
    """),
  code("""
    epochs = np.arange(1, EPOCHS + 1)
    plt.figure(figsize=(6, 3.5))
    plt.plot(epochs, h["bits_per_dim"], label="train")
    plt.plot(epochs, h["val_bits_per_dim"], label="validation (test split)")
    plt.axhline(UNIFORM_BPD, color="gray", ls="--", label=f"uniform, log2(17) = {UNIFORM_BPD:.2f}")
    plt.xlabel("epoch")
    plt.ylabel("bits / dim")
    plt.title("Glow on 8x8 digits")
    plt.legend()
    plt.grid(alpha=0.3)
    plt.show()
    """),
  md("""
    The training curve is the average over each epoch's batches while the weights move; the validation curve
    is measured at the end of each epoch. A gap that opens late is over-fitting: 1500 images are few.
    """),
  md("""
    ## 3. Sampling at a temperature

    Sampling draws `eps ~ N(0, I)`, scales it by a temperature `T`, and runs the flow forward:
    `x = f(T * eps)`. Since every prior (split and top) sits inside the flow, scaling `eps` scales the
    standard deviation of every level's prior by `T`. `T = 1` samples the model as trained; `T < 1`
    trades diversity for more typical-looking images (the paper found `T = 0.7` best).

    `T = 0` would be the "mode" (every latent at its prior mean), but the API requires `T > 0`
    (`sample` raises for `T <= 0`), so we use `T = 0.01` instead: for all 16 draws the result is almost the
    same image. The same seed is used for every temperature, so each grid holds the same `eps` scaled differently.
    """),
  code("""
    temperatures = [0.01, 0.5, 0.7, 1.0]
    seed = tf.constant([0, 0], tf.int32)
    fig, axes = plt.subplots(1, len(temperatures), figsize=(3.2 * len(temperatures), 3.4))
    for ax, t in zip(axes, temperatures):
        images = model.sample(16, temperature=t, seed=seed)  # uint8 [16, 8, 8, 1], 17 levels
        show(images, columns=4, ax=ax, title=f"T = {t}")
    plt.tight_layout()
    plt.show()
    """),
  md("""
    ## 4. Evaluation

    `model.evaluate` computes the same bits/dim on the test split (new dequantization noise, so it differs
    slightly from the last validation number). `model.log_prob(images)` gives per-image log-densities,
    `model.bits_per_dim(log_prob)` converts them.
    """),
  code("""
    test_bpd = model.evaluate(test_ds, verbose=0, return_dict=True)["bits_per_dim"]
    print(f"test: {test_bpd:.3f} bits/dim   (uniform baseline {UNIFORM_BPD:.2f})")

    images = next(iter(test_ds))[:5]
    bpd = model.bits_per_dim(model.log_prob(images))
    print("five test images, bits/dim each:", np.round(bpd.numpy(), 2))
    """),
  md("""
    Next: `02_bijectors_and_tfp.ipynb` takes the flow apart into its TFP bijectors; `03_latent_space.ipynb`
    explores the latent space; `04_conditional.ipynb` trains a class-conditional model. For real images,
    `load_dataset("mnist" | "cifar10" | ...)` and a larger model (e.g. `levels=3, steps=32, width=512`) work the
    same way, given the data and a GPU. `model.save_weights(...)`, `model.save("glow.keras")` and
    `model.export(...)` (a SavedModel with `log_prob` and `sample`) persist a trained model.
    """),
]

# --------------------------------------------------------------------------------------------------
# 02: bijectors and TFP
# --------------------------------------------------------------------------------------------------

NB02 = [
  md("""
    # The bijectors, and Glow as a citizen of TensorFlow Probability

    Every layer of `tfp_glow` is a `tfp.bijectors.Bijector` on images `[..., H, W, C]`, and the
    whole flow `tfp_glow.Glow` is one too. Direction, as everywhere in TFP:

    * `forward`: latent -> image (sampling);
    * `inverse`: image -> latent (density; the direction in which the paper writes each layer).

    This notebook (1) checks each bijector's analytic log-determinant against the Jacobian computed by
    autodiff, (2) composes our bijectors with TFP's own (`tfb.Chain`, `tfb.Invert`), (3) swaps the base
    distribution, (4) puts a `GlowDistribution` inside a `tfd.Mixture`, and (5) trains one distribution
    with a `GradientTape` loop, `tfp.math.minimize` and Keras `fit`, one after the other.
    """),
  code(
    PARAMS_INTRO
    + """
    # Training steps of section 5 (each of three stages). Full mode: about a minute in all.
    TAPE_STEPS, MINIMIZE_STEPS, KERAS_EPOCHS = (5, 5, 1) if QUICK else (300, 300, 20)
    LEVELS, STEPS, WIDTH = (2, 1, 8) if QUICK else (2, 4, 32)
    """
  ),
  code(
    """
    import math

    import keras
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp

    import tfp_glow
    from tfp_glow.callbacks import image_grid
    from tfp_glow.data import DIGITS_BINS, dequantize, load_dataset, load_digits, to_uint8
    from tfp_glow.optim import default_optimizer

    tfb, tfd = tfp.bijectors, tfp.distributions
    # batch_jacobian below builds a new tf.function per bijector, on purpose; hide TF's "retracing" warnings.
    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    F64 = tf.float64
    print("TensorFlow", tf.__version__, "| TFP", tfp.__version__)
    """
    + SHOW_HELPER
  ),
  md("""
    ## 1. Each bijector against autodiff

    For a bijector `x = f(z)` on images with D = H * W * C values, flatten both sides: the Jacobian
    `J = dx/dz` is a D x D matrix, and `forward_log_det_jacobian(z, event_ndims=3)` must equal
    `log|det J|`. We compute `J` with `tf.GradientTape.batch_jacobian` and `log|det J|` with
    `tf.linalg.slogdet`, in float64 on tiny shapes (D = 16), and also check `inverse(forward(z)) = z`.

    Most layers *start* as something trivial (the coupling's last convolution is zero-initialized, so it starts
    as the identity; the priors start as N(0, 1)), and a check at the identity proves little. So every
    trainable parameter is first moved by random noise (`perturb`). Parameters are ordinary `tf.Variable`s,
    listed by `bijector.trainable_variables`.

    | bijector | forward (latent -> image) | forward log-det |
    |---|---|---|
    | `ActNorm(C)` | `x = (z - b) / s`, per channel | `-H W sum log s` |
    | `Invertible1x1Conv(C)` | `x[i,j] = W^-1 z[i,j]`, W in LU form (or full, `lu_decomposed=False`) | `-H W log|det W|` |
    | `AffineCoupling(C, width)` | `x_b = z_b / scale(z_a) - shift(z_a)`, `x_a = z_a` | `-sum log scale` |
    | `ChannelPermutation` | fixed channel shuffle / reversal | 0 |
    | `Squeeze()` | depth-to-space `[h, w, 4c] -> [2h, 2w, c]` | 0 |
    | `SplitPrior(C)` | `z_b = mean(z_a) + exp(log_std(z_a)) * eps_b` | `sum log_std` |
    | `TopPrior(C, num_classes)` | `h = mean[y] + exp(log_std[y]) * eps` | `H W sum log_std[y]` |
    """),
  code('''
    def perturb(bijector, scale=0.3):
        """Moves every trainable parameter away from its (often identity-making) initial value."""
        for v in bijector.trainable_variables:
            v.assign(v + scale * rng.standard_normal(v.shape))


    def check_against_autodiff(bijector, latent_shape, **kwargs):
        """Returns (max |inverse(forward(z)) - z|, max |analytic - autodiff log-det|, the log-dets)."""
        z = tf.constant(rng.standard_normal(latent_shape), F64)
        n = latent_shape[0]
        z_flat = tf.reshape(z, [n, -1])
        with tf.GradientTape() as tape:
            tape.watch(z_flat)
            x = bijector.forward(tf.reshape(z_flat, latent_shape), **kwargs)
            x_flat = tf.reshape(x, [n, -1])
        jacobian = tape.batch_jacobian(x_flat, z_flat)            # [n, D, D]
        _, autodiff_log_det = tf.linalg.slogdet(jacobian)
        # tf.identity: fresh tensors, so TFP's bijector cache cannot hand back stored results.
        analytic_log_det = bijector.forward_log_det_jacobian(tf.identity(z), event_ndims=3, **kwargs)
        analytic_log_det = analytic_log_det * tf.ones([n], F64)   # some layers return one value for all images
        z_back = bijector.inverse(tf.identity(x), **kwargs)
        return (float(tf.reduce_max(tf.abs(z_back - z))),
                float(tf.reduce_max(tf.abs(analytic_log_det - autodiff_log_det))),
                analytic_log_det.numpy())


    cases = [
        ("ActNorm(4)", tfp_glow.ActNorm(4, dtype=F64), (3, 2, 2, 4), {}),
        ("Invertible1x1Conv(4), LU", tfp_glow.Invertible1x1Conv(4, seed=0, dtype=F64), (3, 2, 2, 4), {}),
        ("Invertible1x1Conv(4), full W", tfp_glow.Invertible1x1Conv(4, lu_decomposed=False, seed=0, dtype=F64), (3, 2, 2, 4), {}),
        ("AffineCoupling(4, width=8)", tfp_glow.AffineCoupling(4, width=8, dtype=F64), (3, 2, 2, 4), {}),
        ("AffineCoupling, additive", tfp_glow.AffineCoupling(4, width=8, additive=True, dtype=F64), (3, 2, 2, 4), {}),
        ("ChannelPermutation.shuffle(4)", tfp_glow.ChannelPermutation.shuffle(4, seed=0, dtype=F64), (3, 2, 2, 4), {}),
        ("Squeeze()", tfp_glow.Squeeze(dtype=F64), (3, 2, 2, 4), {}),
        ("SplitPrior(4)", tfp_glow.SplitPrior(4, dtype=F64), (3, 2, 2, 4), {}),
        ("TopPrior(4)", tfp_glow.TopPrior(4, dtype=F64), (3, 2, 2, 4), {}),
        ("TopPrior(4, num_classes=3)", tfp_glow.TopPrior(4, num_classes=3, dtype=F64), (3, 2, 2, 4),
         {"labels": tf.constant([0, 1, 2])}),
    ]
    print(f"{'bijector':32s} {'#vars':>5s} {'roundtrip err':>13s} {'log-det err':>11s}   forward log-det per image")
    for name, bijector, shape, kwargs in cases:
        perturb(bijector)
        roundtrip, logdet_err, logdets = check_against_autodiff(bijector, shape, **kwargs)
        print(f"{name:32s} {len(bijector.trainable_variables):5d} {roundtrip:13.1e} {logdet_err:11.1e}   {np.round(logdets, 4)}")
        assert roundtrip < 1e-10 and logdet_err < 1e-10, name
    '''),
  md("""
    The additive coupling, the permutation and the squeeze are volume preserving (log-det exactly 0);
    the others have non-zero log-dets that match autodiff to float64 round-off. The conditional `TopPrior`
    takes the class labels as a keyword (`labels=`), as TFP's conditional bijectors do, and its log-det differs
    per image because each image's label selects its own prior.

    The whole multi-scale flow passes the same check (a tiny one: 4x4x1 images, 2 levels, 2 steps each).
    Before use, a Glow's actnorm layers need their data-dependent initialization, `glow.initialize(images)`.
    """),
  code("""
    tiny_glow = tfp_glow.Glow((4, 4, 1), levels=2, steps=2, width=8, seed=0, dtype=F64)
    tiny_glow.initialize(tf.constant(rng.uniform(-0.5, 0.5, (64, 4, 4, 1)), F64))
    perturb(tiny_glow, scale=0.1)
    roundtrip, logdet_err, logdets = check_against_autodiff(tiny_glow, (3, 4, 4, 1))
    print(f"Glow (4x4x1, L=2, K=2): {len(tiny_glow.trainable_variables)} variables, "
          f"roundtrip err {roundtrip:.1e}, log-det err {logdet_err:.1e}, log-dets {np.round(logdets, 3)}")
    """),
  md("""
    ## 2. Composing with TFP's bijectors

    Our bijectors mix freely with TFP's. `tfb.Chain([b1, b2, b3])` applies `b3` first in the forward
    direction; its log-det is the sum of the parts. Below, a one-step flow on a 4x4x1 image is built by hand,
    with a TFP `Scale` and `Shift` at the image end:

        forward:  z [2,2,4] -> coupling -> 1x1 conv -> actnorm -> unsqueeze [4,4,1] -> * 0.5 -> + 0.25 = x

    The `Squeeze` changes the event shape, and the chain knows it (`forward_event_shape`).
    `tfb.Scale(0.5)` on D = 16 values adds `16 * log(0.5)` to the log-det.
    """),
  code("""
    actnorm = tfp_glow.ActNorm(4, dtype=F64)
    conv = tfp_glow.Invertible1x1Conv(4, seed=1, dtype=F64)
    coupling = tfp_glow.AffineCoupling(4, width=8, dtype=F64)
    for b in (actnorm, conv, coupling):
        perturb(b)
    chain = tfb.Chain([tfb.Shift(tf.constant(0.25, F64)), tfb.Scale(tf.constant(0.5, F64)),
                       tfp_glow.Squeeze(dtype=F64), actnorm, conv, coupling])
    print("event shape: latent", chain.inverse_event_shape([4, 4, 1]), "-> image", chain.forward_event_shape([2, 2, 4]))
    print("trainable variables found through the chain:", len(chain.trainable_variables))

    roundtrip, logdet_err, logdets = check_against_autodiff(chain, (3, 2, 2, 4))
    print(f"chain vs autodiff: roundtrip err {roundtrip:.1e}, log-det err {logdet_err:.1e}")

    z = tf.constant(rng.standard_normal((3, 2, 2, 4)), F64)
    parts = (coupling.forward_log_det_jacobian(z, 3)
             + conv.forward_log_det_jacobian(coupling.forward(z), 3)
             + actnorm.forward_log_det_jacobian(conv.forward(coupling.forward(z)), 3)
             + 16 * math.log(0.5))
    print("sum of the parts' log-dets:", np.round(parts.numpy(), 6))
    print("the chain's log-det:       ", np.round(chain.forward_log_det_jacobian(z, 3).numpy(), 6))
    """),
  md("""
    `tfb.Invert(b)` swaps the directions: its `forward` is `b.inverse`. Inverting a whole `Glow` gives
    an image -> latent bijector, e.g. to push data *into* latent space inside another TFP construct.
    """),
  code("""
    image = tf.constant(rng.uniform(-0.5, 0.5, (2, 4, 4, 1)), F64)
    to_latent = tfb.Invert(tiny_glow)
    print("Invert(glow).forward == glow.inverse:",
          np.allclose(to_latent.forward(image), tiny_glow.inverse(tf.identity(image))))
    print("Invert(glow).forward_log_det_jacobian == glow.inverse_log_det_jacobian:",
          np.allclose(to_latent.forward_log_det_jacobian(image, 3),
                      tiny_glow.inverse_log_det_jacobian(tf.identity(image), 3)))

    squeeze = tfp_glow.Squeeze(dtype=F64)
    ramp = tf.reshape(tf.range(16, dtype=F64), [1, 4, 4, 1])
    print("Invert(Squeeze()) maps a 4x4x1 ramp to 2x2x4 (space-to-depth):")
    print(tfb.Invert(squeeze).forward(ramp)[0].numpy().transpose(2, 0, 1))
    """),
  md("""
    The squeeze puts each 2x2 block of pixels into the 4 channels of one position: channel k of position
    (i, j) holds pixel (2i + k // 2, 2j + k % 2).

    ## 3. A different base distribution

    `GlowDistribution(glow)` is a `tfd.TransformedDistribution` of a standard normal; any distribution with
    event shape `[H, W, C]` can replace it:

        log p(x) = log p_base(glow.inverse(x)) + glow.inverse_log_det_jacobian(x)

    Here a Student-t base with a *learned* number of degrees of freedom (heavier tails than a Gaussian),
    on a small float32 Glow for the 8x8 digits. `tfp.util.TransformedVariable` keeps `df` positive;
    its variable appears in the distribution's `trainable_variables` next to the flow's.
    """),
  code('''
    train_bins, _ = load_digits("train")
    test_bins, _ = load_digits("test")
    x_train = dequantize(train_bins, DIGITS_BINS, seed=[0, 0])   # float32 [1500, 8, 8, 1] in [-0.5, 0.5)
    x_test = dequantize(test_bins, DIGITS_BINS, seed=[0, 1])
    D = 64

    def bits_per_dim(log_prob):
        """(-log p(x) + D log(n_bins)) / (D ln 2), per image."""
        return (-log_prob + D * math.log(DIGITS_BINS)) / (D * math.log(2.0))

    glow_t = tfp_glow.Glow((8, 8, 1), levels=2, steps=2, width=16, seed=1)
    glow_t.initialize(x_train[:256])                       # actnorm's data-dependent init
    df = tfp.util.TransformedVariable(5.0, tfb.Softplus(), name="df")
    student_base = tfd.Sample(tfd.StudentT(df=df, loc=0.0, scale=1.0), sample_shape=(8, 8, 1))
    dist_t = tfp_glow.GlowDistribution(glow_t, base_distribution=student_base)
    print(dist_t)
    print("trainable variables:", len(dist_t.trainable_variables), "(flow:", len(glow_t.trainable_variables), "+ df: 1)")

    x = x_test[:4]
    by_hand = student_base.log_prob(glow_t.inverse(x)) + glow_t.inverse_log_det_jacobian(x, event_ndims=3)
    print("log_prob:        ", np.round(dist_t.log_prob(x).numpy(), 4))
    print("by the formula:  ", np.round(by_hand.numpy(), 4))
    samples = dist_t.sample(5, temperature=0.7, seed=[1, 2])
    print("samples:", samples.shape, "(temperature scales the Student-t draws, as it scales Gaussian ones)")
    '''),
  md("""
    ## 4. A `GlowDistribution` inside `tfd.Mixture`

    A mixture of two flows, `p(x) = pi_1 p_1(x) + pi_2 p_2(x)`, with `tfd.Mixture` and a learnable
    `tfd.Categorical`. We check its `log_prob` against `logsumexp(log pi_k + log p_k(x))` and that
    gradients reach both flows and the mixture weights. `mixture.trainable_variables` lists the mixture
    weights and both flows' parameters: a `GlowDistribution` is a plain (non-composite) TFP distribution,
    so `tf.Module`'s variable walk reaches the Keras-owned variables of its bijectors.
    """),
  code("""
    glow_1 = tfp_glow.Glow((8, 8, 1), levels=2, steps=1, width=16, seed=2)
    glow_2 = tfp_glow.Glow((8, 8, 1), levels=2, steps=1, width=16, seed=3)
    for g in (glow_1, glow_2):
        g.initialize(x_train[:256])
    mixture_logits = tf.Variable([0.0, 0.0], name="mixture_logits")
    mixture = tfd.Mixture(cat=tfd.Categorical(logits=mixture_logits),
                          components=[tfp_glow.GlowDistribution(glow_1), tfp_glow.GlowDistribution(glow_2)])

    x = x_test[:4]
    log_w = tf.math.log_softmax(mixture_logits)
    by_hand = tf.reduce_logsumexp(
        tf.stack([log_w[k] + c.log_prob(x) for k, c in enumerate(mixture.components)]), axis=0)
    print("Mixture.log_prob:     ", np.round(mixture.log_prob(x).numpy(), 4))
    print("logsumexp by hand:    ", np.round(by_hand.numpy(), 4))
    print("samples:", mixture.sample(6, seed=[3, 4]).shape)

    mixture_variables = mixture.trainable_variables
    from_parts = [mixture_logits, *glow_1.trainable_variables, *glow_2.trainable_variables]
    print("mixture.trainable_variables:", len(mixture_variables), "| mixture logits + both flows:",
          len(from_parts), "| the same set:", {id(v) for v in mixture_variables} == {id(v) for v in from_parts})
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(mixture.log_prob(x_train[:64]))
    grads = tape.gradient(loss, mixture_variables)
    print("variables the gradient reaches:", sum(g is not None for g in grads), "of", len(grads),
          "| with a non-zero gradient right now:",
          sum(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads))
    """),
  md("""
    Every variable is reached. Some gradients are still exactly zero: each coupling network ends in a
    zero-initialized convolution, so at the start nothing flows back into the layers before it. One step of
    training changes that.

    ## 5. Training: `GradientTape`, `tfp.math.minimize`, Keras

    The parameters are ordinary `tf.Variable`s (owned by Keras layers), so every TensorFlow training style works.
    We train one `GlowDistribution` on the digits in three stages, each continuing from the previous one:

    1. a hand-written `GradientTape` loop over `dist.trainable_variables`;
    2. `tfp.math.minimize(loss_fn, num_steps, optimizer, trainable_variables=...)`, which runs the whole loop
       in one `tf.function` (the loss function pulls the next batch from a `tf.data` iterator);
    3. Keras `fit`: `glow.layer` is a single Keras layer that owns every parameter of the flow; a small
       `keras.Model` holding it trains the same variables. (`GlowModel` of the quickstart is the full-featured
       version of this.)

    The loss is the mean bits/dim of the batch, i.e. the negative log-likelihood rescaled.
    Each stage has its own optimizer (Adamax with a 20-step warmup), so its moment estimates restart.
    """),
  code("""
    glow = tfp_glow.Glow((8, 8, 1), levels=LEVELS, steps=STEPS, width=WIDTH, seed=0)
    dist = tfp_glow.GlowDistribution(glow)
    glow.initialize(x_train[:256])
    variables = dist.trainable_variables
    print(f"{len(variables)} variables, {sum(int(np.prod(v.shape)) for v in variables):,} parameters")

    train_ds, _ = load_dataset("digits", "train", batch_size=128, seed=0)
    batches = iter(train_ds.repeat())

    def test_bpd():
        return float(tf.reduce_mean(bits_per_dim(dist.log_prob(x_test))))

    curves = {}
    print(f"before training: test {test_bpd():.3f} bits/dim")

    # --- stage 1: a GradientTape loop ---
    optimizer = default_optimizer(3e-3, warmup_steps=20)

    @tf.function
    def train_step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(bits_per_dim(dist.log_prob(images)))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    curves["GradientTape loop"] = [float(train_step(next(batches))) for _ in range(TAPE_STEPS)]
    print(f"after {TAPE_STEPS} GradientTape steps: test {test_bpd():.3f} bits/dim")

    # --- stage 2: tfp.math.minimize ---
    trace = tfp.math.minimize(
        lambda: tf.reduce_mean(bits_per_dim(dist.log_prob(next(batches)))),
        num_steps=MINIMIZE_STEPS, optimizer=default_optimizer(3e-3, warmup_steps=20),
        trainable_variables=variables)
    curves["tfp.math.minimize"] = trace.numpy().tolist()
    print(f"after {MINIMIZE_STEPS} tfp.math.minimize steps: test {test_bpd():.3f} bits/dim")
    """),
  code('''
    # --- stage 3: Keras ---
    class FlowTrainer(keras.Model):
        """A minimal Keras model around a TFP distribution: `flow` (a Keras layer) owns the variables."""

        def __init__(self, flow_layer, log_prob_fn):
            super().__init__()
            self.flow = flow_layer          # Keras tracks (and saves) every flow parameter through this layer
            self.log_prob_fn = log_prob_fn  # a plain function, not tracked
            self.built = True

        def train_step(self, images):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(bits_per_dim(self.log_prob_fn(images)))
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return {"bits_per_dim": loss}

    trainer = FlowTrainer(glow.layer, dist.log_prob)
    same = {id(v.value) for v in trainer.trainable_variables} == {id(v) for v in variables}
    print("Keras sees the same variables as TFP:", same)
    trainer.compile(optimizer=default_optimizer(3e-3, warmup_steps=20))
    keras_history = trainer.fit(train_ds, epochs=KERAS_EPOCHS, shuffle=False, verbose=0)
    curves["Keras fit (per-epoch mean)"] = keras_history.history["bits_per_dim"]
    print(f"after {KERAS_EPOCHS} Keras epoch(s) ({KERAS_EPOCHS * 12} steps): test {test_bpd():.3f} bits/dim")
    '''),
  code("""
    plt.figure(figsize=(7, 3.5))
    start = 0
    for label, values in curves.items():
        steps_per_point = 12 if label.startswith("Keras") else 1   # an epoch is 12 batches of 128
        xs = start + steps_per_point * np.arange(1, len(values) + 1)
        plt.plot(xs, values, "o-" if steps_per_point > 1 else "-", ms=3, label=label)
        start = xs[-1]
    plt.axhline(math.log2(DIGITS_BINS), color="gray", ls="--", label="uniform, log2(17)")
    plt.ylim(top=max(5.0, math.log2(DIGITS_BINS) + 0.5))
    plt.xlabel("training step")
    plt.ylabel("train bits / dim")
    plt.title("one GlowDistribution, three training loops")
    plt.legend()
    plt.grid(alpha=0.3)
    plt.show()

    samples = dist.sample(16, temperature=0.7, seed=[5, 6])       # floats in the model's [-0.5, 0.5) scale
    plt.figure(figsize=(5, 1.8))
    show(to_uint8(samples, DIGITS_BINS), columns=8, title="samples at T = 0.7 from the distribution trained above")
    plt.show()
    """),
  md("""
    The three loops hand the same variables to each other, so the loss continues where the previous stage
    left off. The Keras curve is the mean over each epoch's batches, plotted at the epoch's last step.
    This small flow (K = 4 steps per level, width 32) is weaker than the quickstart's, and so are its samples.
    """),
]

# --------------------------------------------------------------------------------------------------
# 03: latent space
# --------------------------------------------------------------------------------------------------

NB03 = [
  md("""
    # The latent space: reconstruction, interpolation, temperature, arithmetic, and out-of-distribution inputs

    A flow gives every image an exact latent code `z = f^-1(x)` and maps every code back, `x = f(z)`, with no
    reconstruction loss: the two are inverses. This notebook trains a Glow on the 8x8 digits and then works in
    its latent space.
    """),
  code(
    PARAMS_INTRO
    + """
    LEVELS, STEPS, WIDTH = (2, 2, 16) if QUICK else (2, 8, 64)
    EPOCHS = 2 if QUICK else 60
    """
  ),
  code(
    """
    import math
    import time

    import keras
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    from tfp_glow.callbacks import image_grid
    from tfp_glow.data import DIGITS_BINS, dequantize, load_dataset, load_digits, to_uint8
    from tfp_glow.model import GlowModel
    from tfp_glow.optim import default_optimizer

    keras.utils.set_random_seed(0)
    """
    + SHOW_HELPER
  ),
  md("""
    ## 1. Train a model

    The same model as in the quickstart (`01_quickstart.ipynb` explains the pieces).
    """),
  code("""
    train_ds, info = load_dataset("digits", "train", batch_size=128, seed=0)
    test_ds, _ = load_dataset("digits", "test", batch_size=128, shuffle=False, seed=1)
    model = GlowModel(info.image_shape, levels=LEVELS, steps=STEPS, width=WIDTH, n_bins=info.n_bins, seed=0)
    model.compile(optimizer=default_optimizer(3e-3, warmup_steps=20))
    start = time.time()
    history = model.fit(train_ds, validation_data=test_ds, epochs=EPOCHS, verbose=0)
    print(f"{EPOCHS} epochs in {time.time() - start:.0f} s; final train "
          f"{history.history['bits_per_dim'][-1]:.3f}, test {history.history['val_bits_per_dim'][-1]:.3f} bits/dim "
          f"(uniform: {math.log2(info.n_bins):.2f})")

    # Fixed test images (fixed dequantization noise) and their labels, for the rest of the notebook.
    test_bins, test_labels = load_digits("test")
    x_test = dequantize(test_bins, info.n_bins, seed=[0, 1])
    """),
  md("""
    ## 2. Encode and decode

    `model.encode(x)` returns one latent per level: the multi-scale architecture splits half of the channels off
    after each level but the last, so an 8x8x1 image with 2 levels becomes a `[4, 4, 2]` latent (split off after
    level 1) and a `[2, 2, 8]` top latent: 32 + 32 = 64 numbers, as many as pixels. Each latent is
    *standardized* by its prior (`eps = (z - mean) / std`), so under the model every latent is N(0, I).
    `model.decode(latents)` inverts exactly; the only error is float32 round-off.
    """),
  code("""
    latents = model.encode(x_test)
    for level, z in enumerate(latents, 1):
        print(f"level {level}: latent {tuple(z.shape)}, mean {float(tf.reduce_mean(z)):+.3f}, std {float(tf.math.reduce_std(z)):.3f}")
    x_back = model.decode(latents)
    print(f"max |decode(encode(x)) - x| = {float(tf.reduce_max(tf.abs(x_back - x_test))):.2e}  (pixel values span 1.0)")
    same_bins = np.mean(to_uint8(x_back, info.n_bins).numpy() == to_uint8(x_test, info.n_bins).numpy())
    print(f"pixels that land in the same one of 17 bins after the round trip: {100 * same_bins:.3f}%")
    """),
  md("""
    If the model fitted the test images perfectly, their latents would have mean 0 and standard deviation 1.
    A standard deviation somewhat above 1 says the test images are a little less typical for the model than
    its training images: the same train/test gap as in the bits/dim.

    ## 3. Interpolation

    `model.interpolate(a, b, steps)` encodes two images, walks the straight line
    `z_t = (1 - t) z_a + t z_b` for `t` from 0 to 1 (at every level), and decodes each point.
    """),
  code("""
    def first_of(digit, skip=0):
        return x_test[int(np.flatnonzero(test_labels == digit)[skip])]

    pairs = [(0, 1), (3, 8), (4, 7), (2, 6)]
    fig, axes = plt.subplots(len(pairs), 1, figsize=(8, 1.1 * len(pairs)))
    for ax, (a, b) in zip(axes, pairs):
        row = model.interpolate(first_of(a), first_of(b), steps=10)
        show(to_uint8(row, info.n_bins), columns=10, ax=ax)
        ax.set_title(f"{a} -> {b}", fontsize=9, loc="left")
    plt.tight_layout()
    plt.show()
    """),
  md("""
    ## 4. Temperature sweep

    Sampling at temperature `T` decodes `T * eps` with `eps ~ N(0, I)`. With a fixed seed, each column below
    uses one `eps`, scaled by the `T` of its row. (`T` must be > 0; 0.01 stands in for 0, where every column
    would decode the same all-prior-means latent.)
    """),
  code("""
    temperatures = [0.01, 0.3, 0.5, 0.7, 0.85, 1.0]
    fig, axes = plt.subplots(len(temperatures), 1, figsize=(8, 0.95 * len(temperatures)))
    for ax, t in zip(axes, temperatures):
        show(model.sample(12, temperature=t, seed=tf.constant([7, 0], tf.int32)), columns=12, ax=ax)
        ax.set_title(f"T = {t}", fontsize=9, loc="left")
    plt.tight_layout()
    plt.show()
    """),
  md("""
    ## 5. Latent arithmetic with class means

    The Glow paper moves a face along "attribute directions": the mean latent of faces with an attribute minus
    the mean latent of faces without it. The digits have no attributes, but they have classes. For each class `c`
    we average the latents of its test images (level by level), `m_c`, and move an image of class `a` along
    `m_b - m_a`:

        z(alpha) = z_x + alpha * (m_b - m_a),    image = decode(z(alpha)),   alpha = 0 ... 1.5

    The last column decodes the class mean `m_b` itself.
    """),
  code("""
    class_means = [[tf.reduce_mean(tf.boolean_mask(z, test_labels == c), axis=0) for z in latents]
                   for c in range(10)]

    plt.figure(figsize=(8, 1.3))
    show(to_uint8(tf.concat([model.decode([m[None] for m in class_means[c]]) for c in range(10)], 0), info.n_bins),
         columns=10, title="decoded class means m_0 ... m_9")
    plt.show()

    alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    moves = [(1, 7), (3, 5), (9, 4), (0, 6)]
    fig, axes = plt.subplots(len(moves), 1, figsize=(6.5, 1.15 * len(moves)))
    for ax, (a, b) in zip(axes, moves):
        z_x = [z[int(np.flatnonzero(test_labels == a)[1])] for z in latents]
        rows = [[zl + alpha * (mb - ma) for zl, ma, mb in zip(z_x, class_means[a], class_means[b])]
                for alpha in alphas]
        moved = model.decode([tf.stack(level) for level in zip(*rows)])
        target = model.decode([m[None] for m in class_means[b]])
        show(to_uint8(tf.concat([moved, target], 0), info.n_bins), columns=len(alphas) + 1, ax=ax)
        ax.set_title(f"a {a}, moved towards {b}: alpha = {alphas}, then m_{b}", fontsize=8, loc="left")
    plt.tight_layout()
    plt.show()
    """),
  md("""
    ## 6. Likelihood on out-of-distribution inputs

    A density model could, in principle, flag unusual inputs by a low likelihood (high bits/dim). Flows are known
    to be unreliable at this on natural images (Nalisnick et al., 2019, "Do deep generative models know what they
    don't know?": a CIFAR-10 Glow gives SVHN *higher* likelihood). We compare the test digits with two kinds of
    inputs the model never saw, all dequantized the same way:

    * **uniform noise**: every pixel an independent uniform bin in 0..16;
    * **inverted digits**: `16 - bins` of the test images (dark strokes on a bright background);
    * **upside-down digits**: the test images flipped vertically;
    * **faint digits**: the test images at half contrast, `bins // 2`.

    AUROC below is the probability that a random OOD image gets *more* bits/dim than a random test image
    (1.0: bits/dim separates them perfectly, 0.5: not at all).
    """),
  code("""
    def bpd(x):
        return model.bits_per_dim(model.log_prob(x)).numpy()

    rng = np.random.default_rng(0)
    groups = {
        "test digits": bpd(x_test),
        "uniform noise": bpd(dequantize(rng.integers(0, DIGITS_BINS, test_bins.shape), DIGITS_BINS, seed=[0, 2])),
        "inverted digits": bpd(dequantize(DIGITS_BINS - 1 - test_bins, DIGITS_BINS, seed=[0, 3])),
        "upside-down digits": bpd(dequantize(test_bins[:, ::-1], DIGITS_BINS, seed=[0, 4])),
        "faint digits": bpd(dequantize(test_bins // 2, DIGITS_BINS, seed=[0, 5])),
    }
    reference = groups["test digits"]
    for name, values in groups.items():
        auroc = np.mean(values[:, None] > reference[None, :]) + 0.5 * np.mean(values[:, None] == reference[None, :])
        extra = "" if name == "test digits" else f"   AUROC vs test: {auroc:.3f}"
        print(f"{name:19s} bits/dim: median {np.median(values):7.2f}, min {values.min():7.2f}, max {values.max():7.2f}{extra}")

    plt.figure(figsize=(8, 3.8))
    low = min(v.min() for v in groups.values())
    high = max(v.max() for v in groups.values())
    bins = np.geomspace(max(low, 0.5), high, 80)  # a log axis: OOD bits/dim can be 10-100 times larger
    for name, values in groups.items():
        plt.hist(np.maximum(values, bins[0]), bins=bins, alpha=0.55, label=name)
    plt.axvline(math.log2(DIGITS_BINS), color="gray", ls="--", label="uniform model, log2(17)")
    plt.xscale("log")
    plt.xlabel("bits / dim, log scale (lower = more likely under the model)")
    plt.ylabel("images")
    plt.legend()
    plt.show()
    """),
  md("""
    Bits/dim far above log2(17) = 4.09 are possible: a model that concentrates its mass on digits leaves
    noise far less than the uniform share. In the run saved here, noise and inverted digits are easy cases: no
    test digit comes near them. Upside-down and faint digits are harder: they keep the strokes and the dark
    background the model knows, many digits (0, 1, 8) look alike upside down, and their histograms overlap
    the test digits', so a likelihood threshold would let many of them through.
    """),
]

# --------------------------------------------------------------------------------------------------
# 04: class-conditional
# --------------------------------------------------------------------------------------------------

NB04 = [
  md("""
    # A class-conditional Glow

    With `num_classes=K`, the prior of the top latent depends on the label `y`, as in the reference code's
    "ycond" option:

        (mean, log_std) = (learned mean, learned log_std) + one_hot(y) @ W      (W zero-initialized)

    so `p(x | y)` is a flow whose top-level Gaussian moves with the class. Training also adds a small
    classification loss: a linear classifier on the spatial mean of the top activations predicts `y`, and
    `0.01 * cross-entropy` (in bits) is added to the bits/dim (the reference's `weight_y = 0.01`). Keras reports
    its accuracy as `class_accuracy`. Data come as `(images, labels)` pairs, and sampling takes `labels=`.
    """),
  code(
    PARAMS_INTRO
    + """
    LEVELS, STEPS, WIDTH = (2, 2, 16) if QUICK else (2, 8, 64)
    EPOCHS = 2 if QUICK else 120   # the class-dependent part learns more slowly than the rest: ~2 minutes
    """
  ),
  code(
    """
    import math
    import time

    import keras
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    from tfp_glow.callbacks import image_grid
    from tfp_glow.data import dequantize, load_dataset, load_digits
    from tfp_glow.model import GlowModel
    from tfp_glow.optim import default_optimizer

    keras.utils.set_random_seed(0)
    """
    + SHOW_HELPER
  ),
  code("""
    train_ds, info = load_dataset("digits", "train", batch_size=128, with_labels=True, seed=0)
    test_ds, _ = load_dataset("digits", "test", batch_size=128, with_labels=True, shuffle=False, seed=1)
    images, labels = next(iter(train_ds))
    print(info)
    print("a batch:", images.shape, images.dtype, "labels", labels.shape, labels.dtype, labels[:10].numpy())

    model = GlowModel(info.image_shape, levels=LEVELS, steps=STEPS, width=WIDTH, n_bins=info.n_bins,
                      num_classes=info.num_classes, seed=0)
    model.compile(optimizer=default_optimizer(3e-3, warmup_steps=20))
    start = time.time()
    history = model.fit(train_ds, validation_data=test_ds, epochs=EPOCHS, verbose=0)
    h = history.history
    print(f"{EPOCHS} epochs in {time.time() - start:.0f} s; metrics: {sorted(h)}")
    print(f"final: train {h['bits_per_dim'][-1]:.3f} / test {h['val_bits_per_dim'][-1]:.3f} bits/dim, "
          f"class accuracy train {h['class_accuracy'][-1]:.3f} / test {h['val_class_accuracy'][-1]:.3f}")
    """),
  code("""
    epochs = np.arange(1, EPOCHS + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(epochs, h["bits_per_dim"], label="train")
    ax1.plot(epochs, h["val_bits_per_dim"], label="test")
    ax1.axhline(math.log2(info.n_bins), color="gray", ls="--", label="uniform, log2(17)")
    ax1.set(xlabel="epoch", ylabel="bits / dim", title="likelihood (bits/dim)")
    ax1.legend()
    ax2.plot(epochs, h["class_accuracy"], label="train")
    ax2.plot(epochs, h["val_class_accuracy"], label="test")
    ax2.axhline(0.1, color="gray", ls="--", label="chance")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="class_accuracy of the auxiliary classifier", ylim=(0, 1))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    plt.tight_layout()
    plt.show()
    """),
  md("""
    ## Samples per class

    Each row asks for one class: `model.sample(n, temperature=T, labels=[y] * n)`. The columns of a row are
    different draws; the same seed in every row means column j uses the same `eps` for every class, so what
    changes down a column is the label alone.

    Only the *top* prior sees the label (as in the reference code); the latent split off at level 1 has a prior
    that depends on the top half of the activations, not on `y` directly. The label therefore steers the coarse
    layout most, and lower temperatures make the class clearer.
    """),
  code("""
    temperatures = (0.5, 0.7, 1.0)
    fig, axes = plt.subplots(1, len(temperatures), figsize=(4.6 * len(temperatures), 4.9))
    for ax, t in zip(axes, temperatures):
        rows = [model.sample(10, temperature=t, labels=np.full(10, y, np.int32), seed=tf.constant([3, 0], tf.int32))
                for y in range(10)]
        show(tf.concat(rows, 0), columns=10, ax=ax, title=f"rows: classes 0-9, T = {t}")
    plt.tight_layout()
    plt.show()
    """),
  md("""
    ## The conditional flow as a classifier

    The auxiliary classifier above is a linear read-out with a tiny loss weight. The flow itself also classifies,
    by Bayes' rule with uniform class priors: `argmax_y log p(x | y)`. This costs one `log_prob` pass per class.
    """),
  code("""
    test_bins, test_labels = load_digits("test")
    x_test = dequantize(test_bins, info.n_bins, seed=[0, 1])
    log_px_given_y = np.stack([model.log_prob(x_test, labels=np.full(len(x_test), y, np.int32)).numpy()
                               for y in range(10)], axis=1)           # [N, 10]
    predicted = log_px_given_y.argmax(axis=1)
    print(f"Bayes-rule accuracy on {len(x_test)} test images: {np.mean(predicted == test_labels):.3f} "
          f"(auxiliary classifier, last epoch: {h['val_class_accuracy'][-1]:.3f})")
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (test_labels, predicted), 1)
    print("confusion matrix (rows: true class, columns: predicted):")
    print(confusion)
    """),
]

NOTEBOOKS = {
  '01_quickstart.ipynb': NB01,
  '02_bijectors_and_tfp.ipynb': NB02,
  '03_latent_space.ipynb': NB03,
  '04_conditional.ipynb': NB04,
}

KERNELSPEC = {'name': 'python3', 'display_name': 'Python 3 (ipykernel)', 'language': 'python'}


def build(name: str) -> nbformat.NotebookNode:
  nb = new_notebook(cells=NOTEBOOKS[name])
  nb.metadata['kernelspec'] = dict(KERNELSPEC)
  nb.metadata['language_info'] = {'name': 'python'}
  return nb


def execute(nb: nbformat.NotebookNode) -> float:
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel

  env_quick = os.environ.pop('TFP_GLOW_NOTEBOOK_QUICK', None)  # full mode
  try:
    start = time.time()
    # capture_fd_output=False: TensorFlow's C++ start-up logs (oneDNN, CUDA probing) written straight to
    # file descriptor 2 stay in this terminal instead of filling the saved notebooks.
    NotebookClient(
      nb,
      timeout=1800,
      kernel_name='python3',
      record_timing=False,
      extra_arguments=['--IPKernelApp.capture_fd_output=False'],
      resources={'metadata': {'path': HERE}},
    ).execute()
    return time.time() - start
  finally:
    if env_quick is not None:
      os.environ['TFP_GLOW_NOTEBOOK_QUICK'] = env_quick


def main(argv):
  run = '--execute' in argv
  selected = [a for a in argv if not a.startswith('--')]
  for name in NOTEBOOKS:
    if selected and not any(s in name for s in selected):
      continue
    nb = build(name)
    if run:
      seconds = execute(nb)
      print(f'{name}: executed in full mode in {seconds:.0f} s', flush=True)
    nbformat.validate(nb)
    nbformat.write(nb, os.path.join(HERE, name))
    print(f'wrote {os.path.join(HERE, name)}', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
