"""What a loaded data set says about itself: `DatasetInfo`, the `SkippedFiles` it met, and its errors."""

from __future__ import annotations

import dataclasses
import logging
import threading

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
  """

  image_shape: tuple[int, int, int]
  n_bins: int
  num_classes: int | None
  num_examples: int | None
  class_names: tuple[str, ...] | None = None
  num_shards: int | None = dataclasses.field(default=None, compare=False)
  skipped: SkippedFiles | None = dataclasses.field(default=None, compare=False, repr=False)
  sharded_by_file: bool = dataclasses.field(default=False, compare=False)
