"""The scalable sources of tfp_glow.data: streamed folders (class subfolders, the stable split, bad files),
TFRecord shards written by `tfp-glow prepare` (round trip, FILE sharding), and NumPy arrays. All offline,
on generated images."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfp_glow import cli, data
from tfp_glow.data import folder as folder_source
from tfp_glow.training import distribute


def _write(path, image, fmt='png'):
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  encode = tf.io.encode_png if fmt == 'png' else tf.io.encode_jpeg
  tf.io.write_file(str(path), encode(tf.constant(image, tf.uint8)))


def _image(i, shape=(6, 6, 3)):
  """Image number i: a pseudo-random image whose first pixel holds i (< 256), so it can be identified."""
  x = np.random.RandomState(i).randint(0, 256, size=shape).astype(np.uint8)
  x[0, 0, 0] = i
  return x


def _bins(x, n_bins=256):
  return np.floor((np.asarray(x, np.float64) + 0.5) * n_bins).astype(np.int64)


def _all(ds):
  batches = list(ds)
  if isinstance(batches[0], tuple):
    return np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches])
  return np.concatenate([b.numpy() for b in batches]), None


@pytest.fixture
def classes(tmp_path):
  """root/cats (12 images, some in a nested folder), root/dogs (8): image id i, label by folder."""
  root = tmp_path / 'pets'
  ids = {}
  for i in range(20):
    cls = 'cats' if i < 12 else 'dogs'
    rel = os.path.join(cls, 'nested' if i % 3 == 0 else '', f'{i}.png')
    _write(root / rel, _image(i))
    ids[i] = cls
  (root / 'README.txt').write_text('not an image')
  return root, ids


# --- folders ----------------------------------------------------------------------------------------------


def test_class_subfolders_give_sorted_labels_and_every_image_once(classes):
  root, ids = classes
  got = {}
  for split in ('train', 'test'):
    ds, info = data.load_dataset(f'folder:{root}', split, batch_size=5, with_labels=True, seed=1)
    assert info.class_names == ('cats', 'dogs') and info.num_classes == 2
    images, labels = _all(ds)
    assert len(images) == info.num_examples
    for image, label in zip(_bins(images), labels):
      i = int(image[0, 0, 0])
      np.testing.assert_array_equal(image, _image(i))  # decoded exactly (PNG, 8 bits)
      assert i not in got
      got[i] = info.class_names[label]
  assert got == ids  # nested files found; train + test = everything, each once, with its folder's label


def test_a_top_level_mixing_files_and_class_folders_is_an_error(classes):
  root, _ = classes
  _write(root / 'stray.png', _image(99))
  with pytest.raises(ValueError, match=r'mixes image files \(stray.png.*subfolders.*cats'):
    data.load_dataset(f'folder:{root}')


def test_labels_need_class_folders(tmp_path):
  for i in range(3):
    _write(tmp_path / f'{i}.png', _image(i))
  with pytest.raises(ValueError, match='--conditional.*one subfolder per class'):
    data.load_dataset(f'folder:{tmp_path}', with_labels=True)


def test_split_is_stable_when_files_are_added(tmp_path):
  def split_ids(split):
    ds, _ = data.load_dataset(f'folder:{tmp_path}', split, batch_size=64, shuffle=False)
    return {int(b[0, 0, 0]) for b in _bins(_all(ds)[0])}

  for i in range(40):
    _write(tmp_path / f'img{i:03d}.png', _image(i))
  before = split_ids('train'), split_ids('test')
  assert before[1] and len(before[1]) < 15  # about 10% test
  for i in range(40, 120):
    _write(tmp_path / f'img{i:03d}.png', _image(i))
  after = split_ids('train'), split_ids('test')
  assert before[0] <= after[0] and before[1] <= after[1]  # no old file changed split
  assert after[0] | after[1] == set(range(120)) and not after[0] & after[1]


def test_the_test_split_reads_only_its_own_files(tmp_path):
  relative = [f'img{i:03d}.png' for i in range(30)]
  test = folder_source.test_mask(relative)
  for i, (name, is_test) in enumerate(zip(relative, test)):
    if is_test:
      _write(tmp_path / name, _image(i))
    else:  # every train file unreadable: the test split must never open them
      (tmp_path / name).write_bytes(b'not an image')
  ds, info = data.load_dataset(f'folder:{tmp_path}', 'test', batch_size=8, shuffle=False)
  assert len(_all(ds)[0]) == int(test.sum()) and info.skipped.count == 0


def test_a_corrupt_file_is_skipped_counted_and_named(tmp_path, caplog):
  for i in range(30):
    _write(tmp_path / f'img{i:03d}.png', _image(i))
  good = tf.io.encode_png(_image(7)).numpy()
  (tmp_path / 'img007.png').write_bytes(good[: len(good) // 2])  # truncated
  ds, info = data.load_dataset(f'folder:{tmp_path}', batch_size=8, seed=0)
  test_ds, test_info = data.load_dataset(f'folder:{tmp_path}', 'test', batch_size=8)
  with caplog.at_level('WARNING', logger='tfp_glow.data'):
    images = np.concatenate([_all(ds)[0], _all(test_ds)[0]])
  assert len(images) == 29 and 7 not in {int(b[0, 0, 0]) for b in _bins(images)}
  skipped = [s for s in (info.skipped, test_info.skipped) if s.count]
  assert len(skipped) == 1 and skipped[0].paths == [str(tmp_path / 'img007.png')]
  assert 'img007.png' in skipped[0].summary() and 'skipped 1' in skipped[0].summary()
  assert any('img007.png' in r.getMessage() for r in caplog.records)
  # Asked to, the same folder is refused before anything is trained, naming the file.
  split = 'test' if test_info.skipped.count else 'train'
  with pytest.raises(ValueError, match='img007.png'):
    data.load_dataset(f'folder:{tmp_path}', split, bad_files='error')


def test_a_file_of_another_size_is_skipped_not_fatal(tmp_path):
  for i in range(40):
    _write(tmp_path / f'img{i:03d}.png', _image(i))
  _write(tmp_path / 'img001.png', _image(1, (9, 9, 3)))  # the 16 probed files are spread: not the 2nd
  n = 0
  skipped = 0
  for split in ('train', 'test'):
    ds, info = data.load_dataset(f'folder:{tmp_path}', split, batch_size=8)
    n += len(_all(ds)[0])
    skipped += info.skipped.count
    assert info.image_shape == (6, 6, 3)
  assert (n, skipped) == (39, 1)


def test_cache_in_memory_and_to_a_file_give_the_same_images(tmp_path):
  for i in range(12):
    _write(tmp_path / 'img' / f'{i}.jpg', _image(i, (8, 8, 3)), fmt='jpeg')
  reference = _bins(_all(data.load_dataset(f'folder:{tmp_path / "img"}', batch_size=4, shuffle=False)[0])[0])
  for cache in ('memory', str(tmp_path / 'cache')):
    ds, _ = data.load_dataset(f'folder:{tmp_path / "img"}', batch_size=4, cache=cache, seed=0)
    for _ in range(2):  # the second epoch reads the cache, in a new order
      got = _bins(_all(ds)[0])
      assert sorted(map(bytes, got.astype(np.uint8))) == sorted(map(bytes, reference.astype(np.uint8)))
  assert any(f.startswith('cache') for f in os.listdir(tmp_path))


# --- TFRecord shards (tfp-glow prepare) -------------------------------------------------------------------


def test_prepare_round_trip_keeps_pixels_labels_and_split(classes, tmp_path, capsys):
  root, _ = classes
  out = tmp_path / 'shards'
  assert cli.main(['prepare', f'folder:{root}', str(out), '--shards', '3']) == 0
  assert 'classes cats, dogs' in capsys.readouterr().out
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['image_shape'] == [6, 6, 3] and manifest['class_names'] == ['cats', 'dogs']
  assert len(manifest['splits']['train']['shards']) == 3
  for split in ('train', 'test'):
    a = data.load_dataset(f'folder:{root}', split, batch_size=64, with_labels=True, shuffle=False)
    b = data.load_dataset(f'tfrecord:{out}', split, batch_size=64, with_labels=True, shuffle=False)
    assert b[1].num_shards == len(manifest['splits'][split]['shards'])
    assert b[1].class_names == a[1].class_names and b[1].num_examples == a[1].num_examples
    (xa, ya), (xb, yb) = _all(a[0]), _all(b[0])
    pairs = lambda x, y: sorted((bytes(i.astype(np.uint8)), int(l)) for i, l in zip(_bins(x), y))  # noqa: E731
    assert pairs(xa, ya) == pairs(xb, yb)  # the same images with the same labels, bit for bit
  # folder:OUT notices the manifest; an existing OUT is refused.
  assert data.load_dataset(f'folder:{out}', batch_size=8)[1].num_shards == 3
  assert cli.main(['prepare', f'folder:{root}', str(out)]) == 2
  assert 'exists' in capsys.readouterr().err


def test_file_sharding_gives_each_of_two_workers_its_own_shards(tmp_path):
  out = tmp_path / 'digits'
  assert cli.main(['prepare', 'digits', str(out), '--shards', '4']) == 0
  per_worker = []
  for w in range(2):
    ds, info = data.load_dataset(f'tfrecord:{out}', batch_size=50, seed=0, worker_shard=(2, w))
    assert info.num_shards == 4 and info.sharded_by_file and info.n_bins == data.DIGITS_BINS
    per_worker.append(_all(ds)[0])
  rows = [{bytes(b) for b in _bins(x, 17).astype(np.uint8)} for x in per_worker]
  everything = {bytes(b) for b in data.load_digits('train')[0].astype(np.uint8)}
  assert len(per_worker[0]) == len(per_worker[1]) == 750  # 1500 dealt round robin into 4 shards
  assert rows[0] | rows[1] == everything and not rows[0] & rows[1]  # every example exactly once
  # Fewer shards than workers: every worker reads all, and tf.distribute shards by data instead.
  _, info = data.load_dataset(f'tfrecord:{out}', worker_shard=(5, 0))
  assert not info.sharded_by_file
  policy = lambda ds: ds.options().experimental_distribute.auto_shard_policy  # noqa: E731
  assert policy(distribute.shard(ds, True)) == tf.data.experimental.AutoShardPolicy.OFF
  assert policy(distribute.shard(ds, False)) == tf.data.experimental.AutoShardPolicy.DATA


# --- arrays -----------------------------------------------------------------------------------------------


def test_npz_in_the_downsampled_imagenet_layout(tmp_path):
  """Rows of channel planes and labels from 1, in train_* / val_* files, as image-net.org ships them."""
  images = np.stack([_image(i, (8, 8, 3)) for i in range(30)])
  rows = images.transpose(0, 3, 1, 2).reshape(30, -1)  # [N, 3 * 8 * 8], R plane then G then B
  labels = np.arange(30) % 5 + 1
  np.savez(tmp_path / 'train_data_batch_1.npz', data=rows[:12], labels=labels[:12])
  np.savez(tmp_path / 'train_data_batch_2.npz', data=rows[12:24], labels=labels[12:24])
  np.savez(tmp_path / 'val_data.npz', data=rows[24:], labels=labels[24:])
  ds, info = data.load_dataset(f'npz:{tmp_path}', batch_size=7, with_labels=True, shuffle=False)
  assert info.image_shape == (8, 8, 3) and info.num_classes == 5 and info.num_examples == 24
  x, y = _all(ds)
  np.testing.assert_array_equal(_bins(x), images[:24])
  np.testing.assert_array_equal(y, labels[:24] - 1)
  ds, info = data.load_dataset(f'npz:{tmp_path}', 'test', batch_size=7, n_bits=5, seed=0)
  assert info.n_bins == 32 and sorted(map(bytes, _bins(_all(ds)[0], 32).astype(np.uint8))) == sorted(
    map(bytes, (images[24:] >> 3).astype(np.uint8))
  )


def test_npy_file_split_by_index(tmp_path):
  images = np.stack([_image(i, (4, 4, 1)) for i in range(50)])
  np.save(tmp_path / 'x.npy', images)
  n = {
    s: data.load_dataset(f'npy:{tmp_path / "x.npy"}', s, batch_size=64)[1].num_examples
    for s in ('train', 'test')
  }
  assert n == {'train': 45, 'test': 5}
  with pytest.raises(ValueError, match='no labels'):
    data.load_dataset(f'npy:{tmp_path / "x.npy"}', with_labels=True)
  with pytest.raises(ValueError, match='does not exist'):
    data.load_dataset(f'npz:{tmp_path / "missing"}')
