"""A folder's listing is kept between runs (tfp_glow.data.listing_cache): an unchanged folder is not listed
again, a changed one is, and a folder still being written is never kept."""

import os
import time

import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import data
from tfp_glow.data import folder as folder_source


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
  home = tmp_path / 'xdg'
  monkeypatch.setenv('XDG_CACHE_HOME', str(home))
  return home


def _png(path, i):
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  image = np.random.RandomState(i).randint(0, 256, size=(4, 4, 3)).astype(np.uint8)
  image[0, 0, 0] = i
  tf.io.write_file(str(path), tf.io.encode_png(tf.constant(image)))


def _age(*dirs, seconds=3600):
  """Sets the folders' modification time `seconds` back: as if written long before the run."""
  for d in dirs:
    then = time.time() - seconds
    os.utime(d, (then, then))


def _first_pixels(root, split='train'):
  ds, info = data.load_dataset(f'folder:{root}', split, batch_size=256, shuffle=False)
  return [int(x[0, 0, 0]) for batch in ds for x in data.to_uint8(batch, 256).numpy()], info


def _no_listing(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('the folder was listed again')

  monkeypatch.setattr(folder_source.os, 'scandir', refuse)


def test_an_unchanged_folder_is_not_listed_again(tmp_path, monkeypatch):
  root = tmp_path / 'flat'
  for i in range(30):
    _png(root / f'{i:03d}.png', i)
  _age(root)
  first, info = _first_pixels(root)
  _no_listing(monkeypatch)
  again, info_again = _first_pixels(root)  # the same files, in the same order, in the same split
  assert again == first and info_again.num_examples == info.num_examples == len(first)
  test = folder_source.test_mask([f'{i:03d}.png' for i in range(30)])
  assert first == [i for i in range(30) if not test[i]]


def test_class_folders_keep_labels_and_notice_a_file_added_below_a_class(tmp_path, monkeypatch):
  root = tmp_path / 'classes'
  for i in range(12):
    _png(root / ('cat' if i % 2 else 'dog') / 'deep' / f'{i:03d}.png', i)
  _age(root, root / 'cat', root / 'dog', root / 'cat' / 'deep', root / 'dog' / 'deep')
  paths, labels, classes, mask = folder_source.listing(str(root))
  listed = folder_source.list_images(str(root))
  assert paths == listed[0] and list(labels) == list(listed[1]) and classes == listed[2] == ('cat', 'dog')
  with monkeypatch.context() as m:
    _no_listing(m)
    cached = folder_source.listing(str(root))
  assert [p.decode() for p in cached[0]] == paths and list(cached[1]) == list(labels)
  assert cached[2] == classes and list(cached[3]) == list(mask)
  _png(root / 'dog' / 'deep' / '100.png', 100)  # a new file two levels below the class folder
  _age(root / 'dog' / 'deep', seconds=60)
  again = folder_source.listing(str(root))
  assert 'dog/deep/100.png' in list(again[0]) and len(again[0]) == 13


def test_a_removed_file_is_not_read_from_a_stale_listing(tmp_path):
  root = tmp_path / 'flat'
  for i in range(20):
    _png(root / f'{i:03d}.png', i)
  _age(root)
  before = folder_source.listing(str(root))
  os.remove(root / '000.png')
  _age(root, seconds=60)
  after = folder_source.listing(str(root))
  assert list(after[0]) == before[0][1:] == [f'{i:03d}.png' for i in range(1, 20)]
  assert list(after[3]) == list(before[3][1:])


def test_a_folder_being_written_is_listed_afresh_each_time(tmp_path, cache_home):
  root = tmp_path / 'fresh'
  for i in range(5):
    _png(root / f'{i:03d}.png', i)
  folder_source.listing(str(root))  # just written: its time could still change within this clock tick
  assert not cache_home.exists() or not any(cache_home.rglob('*.npz'))
  _age(root)
  folder_source.listing(str(root))
  assert len(list(cache_home.rglob('*.npz'))) == 1


def test_an_unreadable_cache_falls_back_to_listing(tmp_path, cache_home):
  root = tmp_path / 'flat'
  for i in range(8):
    _png(root / f'{i:03d}.png', i)
  _age(root)
  expected = folder_source.listing(str(root))
  (cached,) = cache_home.rglob('*.npz')
  cached.write_bytes(b'not an npz')
  again = folder_source.listing(str(root))
  assert again[0] == expected[0] and list(again[3]) == list(expected[3])


def test_the_cache_keeps_only_the_most_recently_used_listings(tmp_path, cache_home, monkeypatch):
  from tfp_glow.data import listing_cache

  monkeypatch.setattr(listing_cache, 'MAX_ENTRIES', 2)
  roots = []
  for n in range(3):
    root = tmp_path / f'folder{n}'
    for i in range(3):
      _png(root / f'{i:03d}.png', i)
    _age(root)
    roots.append(root)
  folder_source.listing(str(roots[0]))
  folder_source.listing(str(roots[1]))
  older = time.time() - 600
  for cached in cache_home.rglob('*.npz'):  # both written long ago ...
    os.utime(cached, (older, older))
  assert listing_cache.load(str(roots[0])) is not None  # ... and folder0 used again now
  folder_source.listing(str(roots[2]))  # a third listing: folder1, the least recently used, goes
  assert len(list(cache_home.rglob('*.npz'))) == 2
  assert listing_cache.load(str(roots[1])) is None
  assert listing_cache.load(str(roots[0])) is not None and listing_cache.load(str(roots[2])) is not None


def test_eviction_removes_temporary_files_a_killed_writer_left(tmp_path, cache_home):
  from tfp_glow.data import listing_cache

  os.makedirs(listing_cache.cache_dir())
  left = os.path.join(listing_cache.cache_dir(), 'abc.123.tmp.npz')
  fresh = os.path.join(listing_cache.cache_dir(), 'abc.456.tmp.npz')
  for path in (left, fresh):
    open(path, 'wb').close()
  long_ago = time.time() - 2 * listing_cache.STALE_TEMPORARY_SECONDS
  os.utime(left, (long_ago, long_ago))
  assert listing_cache.evict(keep=10) == 1
  assert not os.path.exists(left) and os.path.exists(fresh)  # a writer may still be writing the fresh one
