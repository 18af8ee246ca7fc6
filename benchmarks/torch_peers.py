"""The PyTorch Glows of benchmarks/public_api.py, measured in a separate Python that has torch (torch is never
a tfp_glow dependency): prints one `RESULT {json}` line.

  /work/torchvenv/bin/python benchmarks/torch_peers.py --impl rosinality --code /path/to/glow-pytorch

--code: a checkout of rosinality/glow-pytorch (its model.py) or y0ast/Glow-PyTorch (model.py, modules.py,
utils.py). Settings as public_api.py: image size, L, K, width, batch; affine coupling, LU 1x1 convolution.
Metrics: first_step_s (after the imports: building the model + its first training step, actnorm's data-dependent init included),
train_images_per_s (Adamax, lr 1e-3), sample_images_per_s (temperature 0.7, under no_grad), encode_images_per_s
(the forward pass under no_grad: latents and log-density), peak_rss_gb.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import resource
import sys
import time

N_BINS = 256.0


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def images_per_s(fn, calls: int, batch: int) -> float:
  fn()  # warm-up
  t0 = time.perf_counter()
  for _ in range(calls):
    fn()
  return calls * batch / (time.perf_counter() - t0)


def rosinality(torch, rosinality_model, args):
  # Its coupling width is a constructor default (512): the same width as the others.
  defaults = rosinality_model.AffineCoupling.__init__.__defaults__
  rosinality_model.AffineCoupling.__init__.__defaults__ = (args.width, *defaults[1:])
  glow = rosinality_model.Glow(3, args.steps, args.levels, affine=True, conv_lu=True)
  size, pixels = args.size, args.size * args.size * 3

  def loss_of(x):
    log_p, logdet, _ = glow(x + torch.rand_like(x) / N_BINS)
    return ((-math.log(N_BINS) * pixels + logdet + log_p) / (-math.log(2) * pixels)).mean()

  shapes, c, s = [], 3, size
  for _ in range(args.levels - 1):
    s //= 2
    c *= 2
    shapes.append((c, s, s))
  shapes.append((c * 4, s // 2, s // 2))

  def sample():
    with torch.no_grad():
      return glow.reverse([torch.randn(args.batch, *z) * 0.7 for z in shapes])

  def encode(x):
    with torch.no_grad():
      return glow(x)

  return glow, loss_of, sample, encode


def y0ast(torch, y0ast_model, args):
  glow = y0ast_model.Glow((args.size, args.size, 3), args.width, args.steps, args.levels, 1.0, 'invconv', 'affine', True, 0,
              True, False)  # fmt: skip

  def loss_of(x):
    _, bpd, _ = glow(x + 0.5)  # its input is [0, 1]; it adds the dequantization noise itself
    return bpd.mean()

  def sample():
    return glow(temperature=0.7, reverse=True)  # a batch of 32: y0ast's prior fixes it

  def encode(x):
    with torch.no_grad():
      return glow(x + 0.5)

  return glow, loss_of, sample, encode


def _restore_torch_qr(torch) -> None:
  """y0ast/Glow-PyTorch initializes its 1x1 convolutions with `torch.qr`, which newer torch removed: the same
  QR through `torch.linalg.qr` (reduced, as `torch.qr`'s default `some=True`), so the peer runs unchanged."""
  try:
    torch.qr(torch.eye(2))
  except RuntimeError:
    torch.qr = lambda a, some=True: torch.linalg.qr(a, mode='reduced' if some else 'complete')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--impl', choices=('rosinality', 'y0ast'), required=True)
  parser.add_argument('--code', required=True)
  for flag, default in (('size', 32), ('levels', 3), ('steps', 8), ('width', 128), ('batch', 32)):
    parser.add_argument(f'--{flag}', type=int, default=default)
  parser.add_argument('--train-steps', type=int, default=10)
  parser.add_argument('--calls', type=int, default=3)
  args = parser.parse_args()
  import torch  # noqa: PLC0415  (imports are outside the first step, as for TensorFlow)

  _restore_torch_qr(torch)
  sys.path.insert(0, args.code)
  peer = importlib.import_module('model')  # the peer's model.py, from --code
  t0 = time.perf_counter()
  torch.manual_seed(0)
  glow, loss_of, sample, encode = (rosinality if args.impl == 'rosinality' else y0ast)(torch, peer, args)
  if args.impl == 'y0ast' and args.batch != 32:
    raise SystemExit('y0ast/Glow-PyTorch samples batches of 32 only')
  opt = torch.optim.Adamax(glow.parameters(), lr=1e-3)
  x = torch.rand(args.batch * (args.train_steps + 2), 3, args.size, args.size) - 0.5

  def step(i):
    opt.zero_grad()
    loss = loss_of(x[i * args.batch : (i + 1) * args.batch])
    loss.backward()
    opt.step()
    return loss.item()

  step(0)
  first_step = time.perf_counter() - t0
  step(1)
  t1 = time.perf_counter()
  for i in range(2, args.train_steps + 2):
    step(i)
  train = args.train_steps * args.batch / (time.perf_counter() - t1)
  rss = peak_rss_gb()
  glow.eval()
  result = dict(
    impl=f'torch:{args.impl}',
    first_step_s=first_step,
    train_images_per_s=train,
    peak_rss_gb=rss,
    sample_images_per_s=images_per_s(sample, args.calls, args.batch),
    encode_images_per_s=images_per_s(lambda: encode(x[: args.batch]), args.calls, args.batch),
    torch_threads=torch.get_num_threads(),
  )
  print('RESULT ' + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == '__main__':
  main()
