"""Time to the first batch of a `folder:PATH` data set, 10,000 against 100,000 tiny PNGs, without and with the
listing kept from an earlier run (tfp_glow.data.listing_cache).

  python benchmarks/folder_listing.py [--rounds 3] [--work /tmp/tfp_glow_folder_listing]

Each measurement is a fresh process (as a new run is): `load_dataset('folder:...', 'train', batch_size=64,
seed=0)` and its first batch, timed from the call; and, alone, the listing (`folder.listing`). 'cold': an
empty listing cache (the first run on a folder); 'warm': the listing that run kept. The four settings
alternate round by round; medians. The 32x32 PNGs (256 distinct images, repeated) are written once.
Results: benchmarks/results/folder_listing.json (load averages included: the machine may be shared).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SIZES = {'10k': 10_000, '100k': 100_000}

CHILD = """
import json, sys, time
from tfp_glow.data import folder, load_dataset
root = sys.argv[1]
t = time.perf_counter(); folder.listing(root); listing = time.perf_counter() - t
t = time.perf_counter()
ds, _ = load_dataset('folder:' + root, 'train', batch_size=64, seed=0)
next(iter(ds))
print(json.dumps(dict(listing_seconds=listing, first_batch_seconds=time.perf_counter() - t)))
"""


def generate(work: pathlib.Path) -> None:
  import numpy as np  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415

  rng = np.random.RandomState(0)
  blobs = []
  for _ in range(256):
    coarse = rng.uniform(0, 255, (4, 4, 3)).repeat(8, 0).repeat(8, 1)
    image = np.clip(coarse + rng.normal(0, 8, (32, 32, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='PNG')
    blobs.append(buffer.getvalue())
  for name, count in SIZES.items():
    folder = work / name
    if (work / f'{name}.done').exists():
      continue
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
      (folder / f'{i:06d}.png').write_bytes(blobs[i % 256])
    (work / f'{name}.done').write_text('')
  time.sleep(3)  # older than listing_cache.RACY_SECONDS: a listing of them may be kept


def measure(folder: pathlib.Path, cache_home: str) -> dict:
  env = dict(
    os.environ,
    XDG_CACHE_HOME=cache_home,
    TF_CPP_MIN_LOG_LEVEL='2',
    PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
  )
  done = subprocess.run([sys.executable, '-c', CHILD, str(folder)], env=env, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(done.stderr[-2000:])
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--work', default=os.path.join(tempfile.gettempdir(), 'tfp_glow_folder_listing'))
  args = parser.parse_args()
  work = pathlib.Path(args.work)
  generate(work)
  load_before = os.getloadavg()
  samples: dict[str, list[dict]] = {}
  for round_ in range(args.rounds):
    for name in SIZES:
      cold = tempfile.mkdtemp(prefix='listing_cold_')
      try:
        for mode in ('cold', 'warm'):  # warm: the same cache, which the cold run filled
          result = measure(work / name, cold)
          samples.setdefault(f'{name} {mode}', []).append(result)
          print(round_, name, mode, json.dumps(result), flush=True)
      finally:
        shutil.rmtree(cold, ignore_errors=True)
  medians = {
    k: {m: statistics.median(r[m] for r in rs) for m in ('listing_seconds', 'first_batch_seconds')}
    for k, rs in samples.items()
  }
  command = 'python benchmarks/folder_listing.py ' + ' '.join(sys.argv[1:])
  commit = subprocess.run(
    ['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True
  ).stdout.strip()
  date = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
  load = f'load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after'
  if load_before[0] > 0.5 * (os.cpu_count() or 1):
    load += ': a shared machine'
  metrics = []
  for mode in ('cold', 'warm'):
    small, large = medians[f'10k {mode}'], medians[f'100k {mode}']
    what = 'first run on the folder' if mode == 'cold' else 'listing kept from an earlier run'
    metrics.append(
      dict(
        metric=f'time to first batch, folder of 32x32 PNGs: 10k / 100k images, {what} (target: ratio <= 1.2)',
        value=f'{small["first_batch_seconds"]:.2f} s / {large["first_batch_seconds"]:.2f} s '
        f'({large["first_batch_seconds"] / small["first_batch_seconds"]:.2f}x; the listing alone '
        f'{small["listing_seconds"]:.3f} s / {large["listing_seconds"]:.3f} s; {load})',
        command=command,
        commit=commit,
        date=date,
      )
    )
  out = ROOT / 'benchmarks' / 'results' / 'folder_listing.json'
  out.write_text(
    json.dumps(dict(command=command, commit=commit, date=date, samples=samples, medians=medians,
                    loadavg_before=load_before, loadavg_after=os.getloadavg(), metrics=metrics), indent=1) + '\n'
  )  # fmt: skip
  print(json.dumps(medians, indent=1))


if __name__ == '__main__':
  main()
