"""rosinality/glow-pytorch trained on the natural-image patches, scored exactly as tfp_glow scores its models.

Run by a Python that has torch (torch is never a tfp_glow dependency), for benchmarks/defaults_study.py's
'rosinality' setting; prints one `RESULT {json}` line:

  /work/torchvenv/bin/python benchmarks/torch_natural.py --code /tmp/peers/rosinality --data DIR --seed 0

--code: a checkout of rosinality/glow-pytorch (its model.py imports scipy.linalg: put a scipy on PYTHONPATH if
the torch Python lacks one). DIR: train.npz and test.npz ('images' uint8 [N, H, W, 3], natural_patches.py).

The peer's model at the harness' architecture (L levels, K steps, coupling width, affine coupling, LU 1x1
convolution; its learned priors and sigmoid scale are its own), trained the way its train.py trains:
  x = b / n_bins - 0.5 + u / n_bins,  u ~ U[0, 1)^D  (b the integer bins: the same scale as tfp_glow's)
  loss = mean_n (-(log p_n + logdet_n) + D log n_bins) / (D ln 2)   (its calc_loss)
  actnorm's data-dependent init on the first batch, under no_grad (its `i == 0` step)
with Adam (lr 1e-3, no warmup; its train.py's default rate is 1e-4), batch B, E epochs of the training set in a
fresh torch permutation per epoch (the last batch smaller, as tfp_glow's; not tfp_glow's tf.data order, which
torch cannot reproduce), every batch a step: the same number of steps as tfp_glow's runs. The seed sets
torch.manual_seed and numpy's seed (the peer's LU init draws from numpy).

Test bits/dim as tfp_glow defines it (tfp_glow.distribution.bits_per_dim), one uniform noise draw per image:
  bits/dim_n = (-log p(x_n + u_n) + D log n_bins) / (D ln 2),  mean over every image of test.npz
where log p(x + u) = log p_n + logdet_n of the peer's forward pass, in the [-0.5, 0.5) scale (the D log n_bins
turns it into the density of the bins' scale, as tfp_glow's does).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time

import numpy as np

N_BINS = 256


def load_bins(path: str):
  """An npz's images as float bins [N, C, H, W] (torch's layout)."""
  import torch  # noqa: PLC0415

  images = np.load(path)['images']
  if images.dtype != np.uint8 or images.ndim != 4:
    raise SystemExit(f'{path}: expected uint8 images [N, H, W, C], got {images.dtype} {images.shape}')
  return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def build(peer, args):
  # Its coupling width is a constructor default (512): set to the harness' width, as torch_peers.py does.
  defaults = peer.AffineCoupling.__init__.__defaults__
  peer.AffineCoupling.__init__.__defaults__ = (args.width, *defaults[1:])
  return peer.Glow(3, args.steps, args.levels, affine=True, conv_lu=True)


def log_density(glow, x):
  """log p(x) per image [N] in the [-0.5, 0.5) scale: the prior's log p plus the log-determinant."""
  log_p, logdet, _ = glow(x)
  return log_p + logdet


def bits_per_dim(log_p, num_dims: int):
  return (-log_p + num_dims * math.log(N_BINS)) / (num_dims * math.log(2.0))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--code', required=True, help='a checkout of rosinality/glow-pytorch')
  parser.add_argument('--data', required=True, help='a folder with train.npz and test.npz')
  for flag, default in (('levels', 3), ('steps', 2), ('width', 32), ('batch-size', 64), ('epochs', 8)):
    parser.add_argument(f'--{flag}', type=int, default=default)
  parser.add_argument('--lr', type=float, default=1e-3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--eval-batch', type=int, default=256)
  args = parser.parse_args()
  import torch  # noqa: PLC0415

  torch.set_num_threads(args.threads)
  sys.path.insert(0, args.code)
  peer = importlib.import_module('model')  # the peer's model.py, from --code
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)
  glow = build(peer, args)
  train = load_bins(os.path.join(args.data, 'train.npz')) / N_BINS - 0.5
  test = load_bins(os.path.join(args.data, 'test.npz')) / N_BINS - 0.5
  num_dims = int(np.prod(train.shape[1:]))
  optimizer = torch.optim.Adam(glow.parameters(), lr=args.lr)
  order = torch.Generator().manual_seed(args.seed)
  started = time.time()
  steps, losses, non_finite = 0, [], 0
  for _ in range(args.epochs):
    perm = torch.randperm(len(train), generator=order)
    for i in range(0, len(train), args.batch_size):
      image = train[perm[i : i + args.batch_size]]
      if steps == 0:  # its train.py: the first batch initializes actnorm, no step
        with torch.no_grad():
          glow(image + torch.rand_like(image) / N_BINS)
      loss = bits_per_dim(log_density(glow, image + torch.rand_like(image) / N_BINS), num_dims).mean()
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      steps += 1
      non_finite += int(not math.isfinite(loss.item()))
      losses.append(loss.item())
  seconds = time.time() - started
  glow.eval()
  noise = torch.Generator().manual_seed(10_000 + args.seed)
  values = []
  with torch.no_grad():
    for i in range(0, len(test), args.eval_batch):
      x = test[i : i + args.eval_batch]
      u = torch.rand(x.shape, generator=noise)
      values.append(bits_per_dim(log_density(glow, x + u / N_BINS), num_dims))
  bpd = torch.cat(values)
  result = dict(
    test_bits_per_dim=float(bpd.mean()),
    test_images=len(bpd),
    test_non_finite=int((~torch.isfinite(bpd)).sum()),
    train_seconds=round(seconds, 1),
    train_images=len(train),
    train_steps=steps,
    train_non_finite_steps=non_finite,
    last_epoch_train_bits_per_dim=float(np.mean(losses[-math.ceil(len(train) / args.batch_size) :])),
    torch_threads=torch.get_num_threads(),
    torch_version=torch.__version__,
  )
  print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
