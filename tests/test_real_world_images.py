"""Image files as cameras and phones write them: bytes after the end marker, EXIF orientation, symlinked
folders (and loops), non-square images (one crop rule for every source), grey and RGBA files among RGB
ones (counted conversions), and bad files reported once per run in our own words. All images generated."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from tfp_glow import cli, data
from tfp_glow.data import folder as folder_source
from tfp_glow.data import tfrecord, transforms
from tfp_glow.images import read_image, read_image_noting


def _png(path, image):
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  tf.io.write_file(str(path), tf.io.encode_png(tf.constant(image, tf.uint8)))


def _image(i, shape=(6, 6, 3)):
  """Image number i: pseudo-random pixels, the first holding i, so that it can be identified."""
  x = np.random.RandomState(i).randint(0, 256, size=shape).astype(np.uint8)
  x[0, 0, 0] = i
  return x


def _every_image(root, **kwargs):
  """uint8 images of both splits of folder:root (unshuffled, 8 bits), sorted by their bytes."""
  images = []
  for split in ('train', 'test'):
    ds, _ = data.load_dataset(f'folder:{root}', split, batch_size=64, shuffle=False, **kwargs)
    images += [data.to_uint8(x, 256).numpy() for batch in ds for x in batch]
  return sorted(images, key=lambda x: x.tobytes())


def _from_shards(tmp_path, files, **kwargs):
  """The files' bytes as they are (what `tfp-glow prepare` stores for a folder it does not resize) in one
  TFRecord shard, read back through `tfrecord:` -> uint8 images, sorted by their bytes."""
  encoded = [open(f, 'rb').read() for f in files]
  shape = tuple(tf.io.decode_image(encoded[0]).shape)
  examples = tf.data.Dataset.from_tensor_slices((encoded, np.zeros(len(files), np.int32)))
  out = str(tmp_path / 'shards')
  tfrecord.write_shards(
    out,
    {'train': examples},
    shards=1,
    image_shape=shape,
    n_bins=256,
    class_names=None,
    num_classes=None,
    source='test',
  )
  ds, _ = data.load_dataset(f'tfrecord:{out}', 'train', batch_size=64, shuffle=False, **kwargs)
  return sorted((data.to_uint8(x, 256).numpy() for batch in ds for x in batch), key=lambda x: x.tobytes())


def _quadrants(h, w):
  """An image that looks different after every flip and rotation: four flat coloured quarters."""
  x = np.zeros((h, w, 3), np.uint8)
  x[: h // 2, : w // 2] = [255, 0, 0]
  x[: h // 2, w // 2 :] = [0, 255, 0]
  x[h // 2 :, : w // 3] = [0, 0, 255]
  x[h // 2 :, w // 3 :] = [255, 255, 0]
  return x


def _jpeg_with_orientation(pixels, orientation):
  exif = Image.Exif()
  exif[0x0112] = orientation
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'JPEG', exif=exif.tobytes(), quality=95)
  return buffer.getvalue()


def _displayed(raw, orientation):
  """What Pillow shows for the JPEG `raw`: TensorFlow's pixels (the same decoder as ours) turned by
  `ImageOps.exif_transpose`, the reference implementation of the tag."""
  stored = Image.fromarray(tf.io.decode_jpeg(raw).numpy())
  stored.getexif()[0x0112] = orientation
  return np.asarray(ImageOps.exif_transpose(stored))


# --- decoding ---------------------------------------------------------------------------------------------


def test_png_and_jpeg_with_trailing_bytes_load(tmp_path):
  rng = np.random.RandomState(0)
  for i in range(10):
    pixels = np.full((8, 8, 3), 20 * i, np.uint8)
    encoded = (tf.io.encode_png if i % 2 else tf.io.encode_jpeg)(pixels).numpy()
    # what phones append after the image's end marker (a second picture, padding): 300 bytes, all kept
    suffix = '.png' if i % 2 else '.jpg'
    (tmp_path / f'{i}{suffix}').write_bytes(encoded + rng.bytes(300))
  images = _every_image(tmp_path)
  assert len(images) == 10
  means = sorted(round(float(x.mean())) for x in images)
  np.testing.assert_allclose(means, [20 * i for i in range(10)], atol=2)


def test_a_file_that_does_not_decode_is_skipped_though_its_framing_looks_right(tmp_path):
  for i in range(12):
    _png(tmp_path / f'{i:02d}.png', _image(i))
  good = tf.io.encode_png(_image(99)).numpy()
  # signature and IEND intact, the compressed data in between destroyed: only decoding can tell
  (tmp_path / 'corrupt.png').write_bytes(good[:40] + b'\0' * (len(good) - 52) + good[-12:])
  report = data.ImageReport()
  images = []
  for split in ('train', 'test'):
    ds, _ = data.load_dataset(f'folder:{tmp_path}', split, batch_size=64, shuffle=False, report=report)
    images += list(data.to_uint8(next(iter(ds)), 256).numpy())
  assert len(images) == 12 and report.skipped.paths == [str(tmp_path / 'corrupt.png')]
  assert 'cannot be decoded' in report.skipped.summary()


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
  raw = _jpeg_with_orientation(_quadrants(16, 24), orientation)
  (tmp_path / 'photo.jpg').write_bytes(raw)
  want = _displayed(raw, orientation)
  assert want.shape == ((16, 24, 3) if orientation <= 4 else (24, 16, 3))
  np.testing.assert_array_equal(read_image(str(tmp_path / 'photo.jpg')).numpy(), want)


def test_every_exif_orientation_through_a_folder_and_tfrecord_shards(tmp_path):
  root = tmp_path / 'photos'
  want = []
  for orientation in range(1, 9):  # square, so that every orientation gives the same shape
    raw = _jpeg_with_orientation(_quadrants(16, 16), orientation)
    os.makedirs(root, exist_ok=True)
    (root / f'o{orientation}.jpg').write_bytes(raw)
    want.append(_displayed(raw, orientation))
  want = sorted(want, key=lambda x: x.tobytes())
  assert len({x.tobytes() for x in want}) == 8  # the orientations really differ
  got = _every_image(root)
  # `prepare` stores the JPEG bytes as they are: the TFRecord reader turns them the same way.
  shards = _from_shards(tmp_path, [root / f'o{orientation}.jpg' for orientation in range(1, 9)])
  assert len(got) == len(shards) == 8
  for a, b, c in zip(got, shards, want):
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)


def _png_with_orientation(pixels, orientation):
  """A PNG whose `eXIf` chunk (written by Pillow, before the image data) carries `orientation`."""
  exif = Image.Exif()
  exif[0x0112] = orientation
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'PNG', exif=exif.tobytes())
  return buffer.getvalue()


@pytest.mark.parametrize('orientation', [3, 6])
def test_png_exif_orientation_is_applied_as_pillow_applies_it(tmp_path, orientation):
  raw = _png_with_orientation(_quadrants(16, 24), orientation)
  assert b'eXIf' in raw
  want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert('RGB'))
  assert want.shape == ((16, 24, 3) if orientation <= 4 else (24, 16, 3))
  (tmp_path / 'photo.png').write_bytes(raw)
  np.testing.assert_array_equal(read_image(str(tmp_path / 'photo.png')).numpy(), want)
  # the folder source too (square, so that the data set has one shape)
  root = tmp_path / 'photos'
  os.makedirs(root)
  for i in range(4):
    (root / f'{i}.png').write_bytes(_png_with_orientation(_quadrants(16, 16), orientation))
  want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO((root / '0.png').read_bytes()))))
  for got in _every_image(root):
    np.testing.assert_array_equal(got, want)


# --- folders ----------------------------------------------------------------------------------------------


def test_a_symlinked_folder_below_a_class_folder_is_followed(tmp_path):
  root = tmp_path / 'pets'
  for i in range(4):
    _png(root / 'cats' / f'{i}.png', _image(i))
    _png(root / 'dogs' / f'{i}.png', _image(10 + i))
  for i in range(3):  # kept elsewhere, linked in
    _png(tmp_path / 'elsewhere' / f'{i}.png', _image(20 + i))
  os.symlink(tmp_path / 'elsewhere', root / 'cats' / 'more')
  paths, labels, classes = folder_source.list_images(str(root))
  assert classes == ('cats', 'dogs')
  assert sorted(p for p, y in zip(paths, labels) if y == 0) == sorted(
    [os.path.join('cats', f'{i}.png') for i in range(4)]
    + [os.path.join('cats', 'more', f'{i}.png') for i in range(3)]
  )
  firsts = sorted(int(x[0, 0, 0]) for x in _every_image(root, n_bits=8))
  assert firsts == [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22]


def test_a_symlink_loop_ends_with_a_warning_naming_it(tmp_path, caplog):
  root = tmp_path / 'pets'
  for i in range(3):
    _png(root / 'cats' / 'inner' / f'{i}.png', _image(i))
  os.symlink(root / 'cats', root / 'cats' / 'inner' / 'up')  # a folder above: cats/inner/up/inner/up/...
  with caplog.at_level('WARNING', logger='tfp_glow.data'):
    paths, _, _ = folder_source.list_images(str(root))
  assert sorted(paths) == [os.path.join('cats', 'inner', f'{i}.png') for i in range(3)]
  loop = str(root / 'cats' / 'inner' / 'up')
  assert any(loop in r.getMessage() and 'loop' in r.getMessage() for r in caplog.records)


# --- one crop and resize rule -----------------------------------------------------------------------------


def test_fit_to_size_crops_the_centre_and_never_squashes():
  x = np.arange(12 * 20 * 1).reshape(12, 20, 1).astype(np.uint8)
  image, flags = transforms.fit_to_size(tf.constant(x), 12, 12)
  np.testing.assert_array_equal(image.numpy(), x[:, 4:16])  # the central 12x12, not resized
  assert transforms.conversion_names(int(flags)) == ['cropped']
  image, flags = transforms.fit_to_size(tf.constant(x), 6, 10)  # the same aspect ratio: resized only
  assert image.shape == (6, 10, 1) and transforms.conversion_names(int(flags)) == ['resized']
  assert transforms.fit_conversions(12, 20, 6, 10) == ['resized']
  assert transforms.fit_conversions(12, 20, 4, 4) == ['cropped', 'resized']
  assert transforms.fit_conversions(8, 8, 8, 8) == []


def test_a_non_square_image_is_cropped_alike_by_folder_tfrecord_arrays_and_the_cli(tmp_path):
  root = tmp_path / 'wide'
  images = []
  for i in range(6):
    # left and right thirds bright, centre dark: squashing instead of cropping would show them
    x = _image(i, (12, 20, 3)) // 4
    x[:, :4], x[:, 16:] = 255, 255
    _png(root / f'{i}.png', x)
    images.append(x)
  from_folder = _every_image(root, image_size=8)
  assert all(int(x.max()) < 128 for x in from_folder)  # the central 12x12 only
  report = data.ImageReport()
  from_shards = _from_shards(tmp_path, [root / f'{i}.png' for i in range(6)], image_size=8, report=report)
  np.savez(tmp_path / 'wide.npz', data=np.stack(images))
  from_arrays = []
  for split in ('train', 'test'):
    ds, _ = data.load_dataset(f'npz:{tmp_path / "wide.npz"}', split, batch_size=64, image_size=8)
    from_arrays += [data.to_uint8(x, 256).numpy() for batch in ds for x in batch]
  from_cli = [read_image(str(root / f'{i}.png'), (8, 8, 3)).numpy() for i in range(6)]
  for other in (from_shards, from_arrays, from_cli):
    other = sorted(other, key=lambda x: x.tobytes())
    assert len(other) == len(from_folder) == 6
    for a, b in zip(other, from_folder):
      np.testing.assert_array_equal(a, b)
  assert report.conversions.counts() == {'cropped': 6, 'resized': 6}  # every shard image, once


# --- conversions, counted ---------------------------------------------------------------------------------


def _mixed_folder(root):
  """20 RGB 8x8 PNGs, one grey, one RGBA, one 10x12 (cropped and resized), one broken file."""
  for i in range(20):
    _png(root / f'rgb{i:02d}.png', _image(i, (8, 8, 3)))
  _png(root / 'grey.png', _image(30, (8, 8, 1)))
  _png(root / 'rgba.png', _image(31, (8, 8, 4)))
  _png(root / 'large.png', _image(32, (10, 12, 3)))
  (root / 'broken.png').write_bytes(b'this is not an image')
  return root


def test_conversions_are_counted_once_per_file(tmp_path):
  root = _mixed_folder(tmp_path / 'mixed')
  report = data.ImageReport()
  for split in ('train', 'test', 'train'):  # both splits, and the train split loaded a second time
    ds, info = data.load_dataset(f'folder:{root}', split, batch_size=8, image_size=8, report=report)
    for _ in range(2):  # two epochs
      for _ in ds:
        pass
  assert info.conversions is report.conversions and info.skipped is report.skipped
  want = {'grayscale to RGB': 1, 'alpha dropped': 1, 'cropped': 1, 'resized': 1}
  assert report.conversions.counts() == want
  assert (
    report.conversions.summary()
    == 'converted image files: 1 grayscale to RGB, 1 alpha dropped, 1 cropped, 1 resized'
  )
  assert report.skipped.count == 1


def test_prepare_says_what_it_converted_and_skipped_once(tmp_path, capsys):
  root = _mixed_folder(tmp_path / 'mixed')
  assert cli.main(['prepare', str(root), str(tmp_path / 'shards'), '--image-size', '8']) == 0
  out = capsys.readouterr().out
  want = 'note: converted image files: 1 grayscale to RGB, 1 alpha dropped, 1 cropped, 1 resized (stored converted)'
  assert want in out, out
  assert out.count('broken.png') == 1, out


def test_read_image_says_what_it_converted(tmp_path):
  _png(tmp_path / 'rgba.png', _image(1, (10, 12, 4)))
  image, notes = read_image_noting(str(tmp_path / 'rgba.png'), (8, 8, 3))
  assert image.shape == (8, 8, 3) and notes == ['alpha dropped', 'cropped', 'resized']
  image, notes = read_image_noting(str(tmp_path / 'rgba.png'), (10, 12, 1))
  assert image.shape == (10, 12, 1) and notes == ['RGB to grayscale', 'alpha dropped']
  (tmp_path / 'text.png').write_bytes(b'not an image at all')
  with pytest.raises(ValueError) as e:
    read_image(str(tmp_path / 'text.png'))
  message = str(e.value)
  assert 'text.png' in message and 'Unknown image file format' in message
  assert '{{' not in message and 'function_node' not in message and '[Op:' not in message


TINY = ['--levels', '2', '--steps', '1', '--width', '8', '--batch-size', '64', '--no-ema', '--lr', '1e-3']
TINY += ['--warmup-epochs', '0', '--n-bits', '4', '--epochs', '1']


@pytest.mark.slow
def test_train_and_interpolate_report_conversions_and_skips_once(tmp_path, capsys, caplog):
  root = _mixed_folder(tmp_path / 'mixed')
  out = tmp_path / 'run'
  with caplog.at_level('WARNING', logger='tfp_glow.data'):
    flags = ['--dataset', f'folder:{root}', '--image-size', '8', '--out', str(out)]
    assert cli.main(['train', *TINY, *flags]) == 0
  printed = capsys.readouterr().out
  # The broken file: one warning and one summary for the whole run (training, then the final evaluation).
  warnings = [r.getMessage() for r in caplog.records if 'broken.png' in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert printed.count('broken.png') == 1 and 'skipped 1 image file(s)' in printed
  converted = {'grayscale to RGB': 1, 'alpha dropped': 1, 'cropped': 1, 'resized': 1}
  assert printed.count('note: converted image files: 1 grayscale to RGB, 1 alpha dropped, 1 cropped') == 1
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['skipped_files'] == 1 and metrics['converted_files'] == converted
  # Single images of another size and channels: fitted to the model's 8x8x3, with a note saying how.
  _png(tmp_path / 'a.png', _image(40, (16, 12, 4)))
  _png(tmp_path / 'b.png', _image(41, (8, 8, 1)))
  args = ['interpolate', str(out), str(tmp_path / 'a.png'), str(tmp_path / 'b.png'), '--steps', '3']
  assert cli.main([*args, '--out', str(tmp_path / 'row.png')]) == 0
  printed = capsys.readouterr().out
  assert 'a.png: alpha dropped, cropped, resized' in printed and 'b.png: grayscale to RGB' in printed
  (tmp_path / 'text.png').write_bytes(b'not an image at all')
  args = ['interpolate', str(out), str(tmp_path / 'text.png'), 'test:0', '--out', str(tmp_path / 'r.png')]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert 'text.png' in err and 'function_node' not in err and '[Op:' not in err
