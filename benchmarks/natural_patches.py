"""The natural-image benchmark set: 32x32x3 patches of scikit-image's bundled RGB photographs.

Nine photographs ship inside scikit-image (no download): astronaut, chelsea, coffee, rocket, the left and
right views of stereo_motorcycle, hubble_deep_field, immunohistochemistry (ihc) and retina. Each photo is
cut in two by a vertical line: the left `1 - TEST_FRACTION` of its columns is the training region, the rest
the held-out region, with a gap of `GAP` columns between them. Training patches are cut from the training
region only (stride `--train-stride`, overlapping within the split), test patches from the held-out region only
(stride 32, disjoint), so no pixel is in both splits; the gap also keeps the stereo pair's two views apart (a
scene point seen in one view's held-out region is not in the other view's training region).

Written as arrays in the layout `tfp_glow.data.arrays` reads ('images' uint8 [N, 32, 32, 3]):
  OUT/train.npz    OUT/test.npz    OUT/manifest.json (photos, regions, counts)
so that `tfp-glow train --dataset npz:OUT` and `load_dataset('npz:OUT')` train on exactly these splits.
With --folder, also OUT/folder/train/*.png and OUT/folder/test/*.png (for folder-source studies).

  pip install scikit-image
  python benchmarks/natural_patches.py /tmp/natural32
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

PATCH = 32
TEST_FRACTION = 0.2
# Columns left out between the two regions: more than the stereo pair's largest disparity (about 60
# pixels), so that no scene point of one view's held-out region lies in the other view's training region.
GAP = 2 * PATCH


def photos() -> dict[str, np.ndarray]:
  """The nine bundled RGB photographs, uint8 [H, W, 3] each."""
  from skimage import data  # noqa: PLC0415  (a benchmark-only dependency)

  left, right, _ = data.stereo_motorcycle()
  return {
    'astronaut': data.astronaut(),
    'chelsea': data.chelsea(),
    'coffee': data.coffee(),
    'rocket': data.rocket(),
    'motorcycle_left': left,
    'motorcycle_right': right,
    'hubble_deep_field': data.hubble_deep_field(),
    'ihc': data.immunohistochemistry(),
    'retina': data.retina(),
  }


def cut(region: np.ndarray, stride: int) -> np.ndarray:
  """All PATCH x PATCH patches of `region` [H, W, 3] on a grid of `stride`: uint8 [N, PATCH, PATCH, 3]."""
  h, w = region.shape[:2]
  patches = [
    region[i : i + PATCH, j : j + PATCH]
    for i in range(0, h - PATCH + 1, stride)
    for j in range(0, w - PATCH + 1, stride)
  ]
  return np.stack(patches) if patches else np.zeros([0, PATCH, PATCH, 3], np.uint8)


def split_photo(image: np.ndarray, train_stride: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """(train patches, test patches, the regions as column ranges) of one photo."""
  w = image.shape[1]
  test_start = int(round(w * (1 - TEST_FRACTION)))
  train_end = test_start - GAP
  train = cut(image[:, :train_end, :3], train_stride)
  test = cut(image[:, test_start:, :3], PATCH)
  return train, test, {'train_columns': [0, train_end], 'test_columns': [test_start, w]}


def build(out: str, train_stride: int = 16, folder: bool = False) -> dict:
  """Writes the two splits under `out`; returns the manifest."""
  os.makedirs(out, exist_ok=True)
  trains, tests, manifest = [], [], {'patch': PATCH, 'test_fraction': TEST_FRACTION, 'photos': {}}
  for name, image in photos().items():
    train, test, regions = split_photo(image, train_stride)
    trains.append(train)
    tests.append(test)
    manifest['photos'][name] = dict(regions, shape=list(image.shape), train=len(train), test=len(test))
  splits = {'train': np.concatenate(trains), 'test': np.concatenate(tests)}
  for split, images in splits.items():
    np.savez(os.path.join(out, f'{split}.npz'), images=images)
    manifest[f'{split}_images'] = int(len(images))
    if folder:
      _write_pngs(os.path.join(out, 'folder', split), images)
  with open(os.path.join(out, 'manifest.json'), 'w') as f:
    json.dump(manifest, f, indent=1)
  return manifest


def _write_pngs(directory: str, images: np.ndarray) -> None:
  from PIL import Image  # noqa: PLC0415

  os.makedirs(directory, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(os.path.join(directory, f'{i:06d}.png'))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('out', help='output folder')
  parser.add_argument('--train-stride', type=int, default=16, help='stride of the training patches (16)')
  parser.add_argument('--folder', action='store_true', help='also write PNG files, one folder per split')
  args = parser.parse_args()
  if not 1 <= args.train_stride <= PATCH:
    parser.error(f'--train-stride must be in 1..{PATCH}, got {args.train_stride}')
  manifest = build(args.out, args.train_stride, args.folder)
  print(f'{args.out}: {manifest["train_images"]} training and {manifest["test_images"]} test patches')


if __name__ == '__main__':
  main()
