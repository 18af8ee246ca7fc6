"""What a loaded data set says about itself: `DatasetInfo`, the `SkippedFiles` it met, the `Conversions`
it made (an `ImageReport` holds both, for one run), and its errors."""

from __future__ import annotations

import dataclasses
import logging
import threading

from tfp_glow.data.transforms import CONVERSIONS, conversion_names

_LOG = logging.getLogger('tfp_glow.data')
NAMED_SKIPS = 5  # the warnings name this many skipped files; the count covers all


class DatasetUnavailableError(RuntimeError):
  """The tfds data set is not prepared locally and could not be downloaded."""


class SkippedFiles:
  """The image files a streaming source skipped (undecodable, or another size), collected as the
  pipeline meets them: the first `NAMED_SKIPS` are named in a warning each, `count` covers all.

  Filled while the dataset is iterated (by `tf.data` threads), so read it after an epoch.
  """

  def __init__(self) -> None:
    self._reasons: dict[str, str] = {}
    self._lock = threading.Lock()

  def record(self, path: str, reason: str) -> None:
    with self._lock:
      if path in self._reasons:  # met again in a later epoch
        return
      self._reasons[path] = reason
      n = len(self._reasons)
    if n <= NAMED_SKIPS:
      _LOG.warning('tfp_glow: skipping image file %s (%s); %d skipped so far', path, reason, n)

  @property
  def count(self) -> int:
    with self._lock:
      return len(self._reasons)

  @property
  def paths(self) -> list[str]:
    with self._lock:
      return sorted(self._reasons)

  def summary(self) -> str:
    """One line: the count and the first few paths with their reasons ('' when nothing was skipped)."""
    with self._lock:
      items = sorted(self._reasons.items())
    if not items:
      return ''
    named = ', '.join(f'{p} ({r})' for p, r in items[:NAMED_SKIPS])
    more = f' and {len(items) - NAMED_SKIPS} more' if len(items) > NAMED_SKIPS else ''
    return f'skipped {len(items)} image file(s): {named}{more}'


class Conversions:
  """How many image files a source converted to fit the data set, per kind (`transforms.CONVERSIONS`:
  grayscale to RGB, RGB to grayscale, alpha dropped, cropped, resized): each file counted once per kind,
  however many epochs read it. Streaming sources record per file as the pipeline meets it (read it after
  an epoch); sources that convert every example alike (TFRecord shards, arrays) record them in bulk.
  """

  def __init__(self) -> None:
    self._flags: dict[str, int] = {}  # file -> bit flags
    self._bulk: dict[str, dict[str, int]] = {}  # source and split -> {kind: examples}
    self._lock = threading.Lock()

  def record(self, path: str, flags: int) -> None:
    if flags:
      with self._lock:
        self._flags[path] = self._flags.get(path, 0) | int(flags)

  def record_all(self, source: str, kinds: list[str], n: int) -> None:
    """Every one of the `n` examples of `source` (a name for the source and split) had `kinds` done."""
    with self._lock:
      self._bulk[source] = {kind: n for kind in kinds}

  def counts(self) -> dict[str, int]:
    """{kind: files}, kinds with at least one file, in CONVERSIONS order."""
    with self._lock:
      per_file = list(self._flags.values())
      bulk = list(self._bulk.values())
    counts = {
      k: sum(k in conversion_names(f) for f in per_file) + sum(b.get(k, 0) for b in bulk) for k in CONVERSIONS
    }
    return {k: n for k, n in counts.items() if n}

  def summary(self) -> str:
    """One line ('' when nothing was converted), e.g. 'converted image files: 3 grayscale to RGB, 40 resized'."""
    counts = self.counts()
    if not counts:
      return ''
    return 'converted image files: ' + ', '.join(f'{n} {kind}' for kind, n in counts.items())


class ImageReport:
  """The skipped files and conversions of one run: pass the same report to every `load_dataset` call of a
  run (both splits, a split loaded again to evaluate) and each file is warned about and counted once."""

  def __init__(self) -> None:
    self.skipped = SkippedFiles()
    self.conversions = Conversions()


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What `load_dataset` yields.

  image_shape:  (H, W, C) after crop / resize / pad.
  n_bins:       quantization levels of the data the model sees (2**n_bits, or 17 for digits);
                bits/dim needs it: (-log p(x) + D * log(n_bins)) / (D * ln 2).
  num_classes:  number of labels, None for unlabeled data.
  num_examples: examples in the split (files listed, for folders: skipped ones included), None when
                tfds does not know it.
  class_names:  label id -> class name (folder subfolders, TFRecord manifests), None if unnamed.
  num_shards:   files the split is stored in (TFRecord shards), None for other sources.
  sharded_by_file: True when this worker reads only its own shards (load_dataset's worker_shard).
  skipped:      the files a folder source skips while streaming (see `SkippedFiles`), None otherwise.
  conversions:  what the source converted to fit (grey to RGB, alpha dropped, cropped, resized; see
                `Conversions`), None for sources that never convert (digits).
  """

  image_shape: tuple[int, int, int]
  n_bins: int
  num_classes: int | None
  num_examples: int | None
  class_names: tuple[str, ...] | None = None
  num_shards: int | None = dataclasses.field(default=None, compare=False)
  skipped: SkippedFiles | None = dataclasses.field(default=None, compare=False, repr=False)
  sharded_by_file: bool = dataclasses.field(default=False, compare=False)
  conversions: Conversions | None = dataclasses.field(default=None, compare=False, repr=False)
