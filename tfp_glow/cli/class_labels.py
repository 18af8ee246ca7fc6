"""Class flags of the `tfp-glow` commands (`--label`, `--to-class`, `--from-class`): a class name or an id.

`train` on a data set with named classes (class subfolders, prepared shards) writes `class_names.txt` beside
`model.keras` (line i: the name of label id i) and `class_names` into `metrics.json`; with either, a flag
may name the class ('flower'). A name is looked up first (a folder named '3' means that folder), then a
whole number is taken as the id. An unknown name is refused in one line that lists the known ones.
"""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from tfp_glow.cli.common import UsageError


def class_names(model_path: str) -> list[str] | None:
  """The class names saved with a model (`class_names.txt`, else `metrics.json`'s `class_names`), or None."""
  model_dir = model_path if tf.io.gfile.isdir(model_path) else os.path.dirname(model_path)
  text_file = os.path.join(model_dir, 'class_names.txt')
  if tf.io.gfile.exists(text_file):
    with tf.io.gfile.GFile(text_file) as f:
      names = [line.rstrip('\n') for line in f]
    return names or None
  metrics_file = os.path.join(model_dir, 'metrics.json')
  if tf.io.gfile.exists(metrics_file):
    with tf.io.gfile.GFile(metrics_file) as f:
      try:
        metrics = json.load(f)
      except ValueError:
        return None
    saved = metrics.get('class_names') if isinstance(metrics, dict) else None
    if isinstance(saved, list) and saved and all(isinstance(n, str) for n in saved):
      return saved
  return None


def class_id(
  flag: str, value: str | None, num_classes: int | None, names: list[str] | None, owner: str = 'the model'
) -> int | None:
  """The label id that `value` (a class name or an id, as typed after `flag`) means, or None if not given.

  Raises UsageError (one line, naming the flag and value) for an unconditional model, an unknown name
  (listing the known ones) or an id outside 0..num_classes-1 (of `owner`: the model, or a data set)."""
  if value is None:
    return None
  if not num_classes:
    raise UsageError(f'{flag} {value}: the model is not class-conditional (trained without --conditional)')
  if names and value in names:
    return names.index(value)
  known = f'its classes: {", ".join(f"{i}={n}" for i, n in enumerate(names))}' if names else ''
  if re.fullmatch(r'-?\d+', value.strip()):
    label = int(value)
    if not 0 <= label < num_classes:
      raise UsageError(
        f'{flag} {value}: {owner} has classes 0..{num_classes - 1}' + (f'; {known}' if known else '')
      )
    return label
  if names:
    raise UsageError(f'{flag} {value!r}: no class of that name; {known} (a name or an id)')
  raise UsageError(
    f'{flag} {value!r}: the model has no class names (no class_names.txt beside model.keras): give a class id '
    f'0..{num_classes - 1}'
  )
