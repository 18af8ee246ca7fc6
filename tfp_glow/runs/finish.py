"""The end of a run: which weights to keep (raw or averaged), the final evaluation, and the final files
model.keras, class_names.txt, samples.png and metrics.json (written last: it marks the run finished).

Nothing diverged is saved: the checks come before the first write. With EMA (Polyak averaging), `fit`
leaves the averaged weights in the model; both they and the raw ones are scored, and the better on the
training split is kept (the test split only reports), so a short run is not judged by lagging averages.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_glow import atomic
from tfp_glow.images import image_grid, save_png
from tfp_glow.runs.pause_points import pause_point
from tfp_glow.training import distribute, guard
from tfp_glow.training.model import GlowModel

if TYPE_CHECKING:
  from tfp_glow.runs.run import Run

SAMPLE_TEMPERATURE = 0.7


def grid_layout(n: int, num_classes: int | None) -> tuple[int, int, np.ndarray | None]:
  """(n, columns, labels) for a sample grid; conditional models get one column per class."""
  if not num_classes:
    return n, math.ceil(math.sqrt(n)), None
  n = math.ceil(n / num_classes) * num_classes
  return n, num_classes, np.arange(n, dtype=np.int32) % num_classes


def display_zoom(image_shape: Sequence[int]) -> int:
  return max(1, 32 // max(image_shape[:2]))  # small images (8x8 digits) shown at about 32x32


def bits_per_dim(model: GlowModel, dataset: tf.data.Dataset) -> float:
  """The model's bits/dim on `dataset`: the mean over its images, whatever the batch size."""
  return float(model.evaluate(dataset, verbose=0, return_dict=True)['bits_per_dim'])


class RawWeights(keras.callbacks.Callback):
  """The raw (not averaged) weights after the last epoch (or the restored backup), before `fit`
  overwrites them with the EMA (`optimizer.finalize_variable_values`)."""

  def __init__(self) -> None:
    super().__init__()
    self.values: list[np.ndarray] | None = None

  def _keep(self):
    self.values = [v.numpy() for v in self.model.trainable_weights]

  def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
    self._keep()

  def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
    self._keep()


def choose_weights(
  model: GlowModel, raw_values: list[np.ndarray] | None, train_ds: tf.data.Dataset, test_ds: tf.data.Dataset
) -> dict:
  """Scores the weights `fit` left (the EMA if `raw_values` is given, else the raw ones) and, with
  `raw_values`, the raw weights too; keeps in `model` the better on the training split and returns
  {'weights': 'ema' | 'raw', 'scores': {...}, 'train_bits_per_dim', 'test_bits_per_dim'}."""
  candidates = {'ema' if raw_values is not None else 'raw': [v.numpy() for v in model.trainable_weights]}
  if raw_values is not None:
    candidates['raw'] = raw_values
  scores = {}
  for name, values in candidates.items():
    for v, value in zip(model.trainable_weights, values):
      v.assign(value)
    scores[name] = dict(
      train_bits_per_dim=bits_per_dim(model, train_ds), test_bits_per_dim=bits_per_dim(model, test_ds)
    )
  finite = [k for k in scores if all(math.isfinite(x) for x in scores[k].values())]
  best = min(finite, key=lambda k: scores[k]['train_bits_per_dim']) if finite else next(iter(scores))
  for v, value in zip(model.trainable_weights, candidates[best]):
    v.assign(value)
  return dict(weights=best, scores=scores, **scores[best])


def save_model(model: GlowModel, path: str) -> None:
  """model.keras, atomically; the `saving_model` pause point lies between the write and the rename."""
  with atomic.replacing(path) as tmp:
    keras.Model.save(model, tmp)  # GlowModel.save's own checks ran already (finite weights)
    pause_point('saving_model')


def finish(run: Run, history: keras.callbacks.History, train_seconds: float, raw: RawWeights) -> dict:
  """Evaluates, chooses the weights, writes the final files; returns the metrics (metrics.json)."""
  model, config, info, wout = run.model, run.config, run.info, run.cluster.write_dir
  losses = history.history.get('loss', [])
  if not np.all(np.isfinite(losses)):
    raise run.directory.diverged(f'the loss became NaN or Inf in epoch {run.initial_epoch + len(losses)}')
  # Never save or report a diverged model as if it were trained: check before writing anything.
  train_eval_ds, _ = run.load_split('train', shuffle=False)
  scores = choose_weights(model, raw.values if config['ema'] else None, train_eval_ds, run.test_ds)
  train_bpd, test_bpd = scores['train_bits_per_dim'], scores['test_bits_per_dim']
  if not (math.isfinite(test_bpd) and math.isfinite(train_bpd)) or not guard.finite_weights(model):
    raise run.directory.diverged(f'the final model is not finite (test {test_bpd} bits/dim)')
  uniform = math.log2(info.n_bins)
  if test_bpd > uniform:
    print(
      f"warning: the final test bits/dim, {test_bpd:.4g}, is worse than the uniform model's {uniform:.4g}; "
      'the model is saved all the same. A short run may be: more --epochs, fewer --warmup-epochs, or a lower '
      '--lr may help',
      file=sys.stderr,
    )
  save_model(model, os.path.join(wout, 'model.keras'))
  pause_point('after_model')
  if info.class_names:  # label id i is line i
    atomic.write_bytes(
      os.path.join(wout, 'class_names.txt'), ''.join(f'{c}\n' for c in info.class_names).encode()
    )
  n, columns, labels = grid_layout(64, model.num_classes)
  samples = model.sample(
    n, temperature=SAMPLE_TEMPERATURE, labels=labels, seed=tf.constant([config['seed'], 1])
  )
  save_png(
    os.path.join(wout, 'samples.png'),
    image_grid(np.asarray(samples), columns, zoom=display_zoom(info.image_shape)),
  )
  report = run.report
  metrics = dict(
    train_bits_per_dim=train_bpd,
    test_bits_per_dim=test_bpd,
    weights=scores['weights'],
    scores=scores['scores'],
    uniform_bits_per_dim=uniform,
    epochs=config['epochs'],
    epochs_this_run=len(history.epoch),
    steps=int(model.optimizer.iterations.numpy()),  # every training step of the run, resumes included
    train_seconds=round(train_seconds, 1),
    wall_seconds=round(time.time() - run.started, 1),
    image_shape=list(info.image_shape),
    n_bins=info.n_bins,
    num_classes=model.num_classes,
    config=config,
    num_parameters=int(sum(np.prod(v.shape) for v in model.trainable_variables)),
    strategy=run.cluster.name,
    replicas=run.cluster.replicas,
    weights_sha256=distribute.weights_digest(model),
    class_names=list(info.class_names) if info.class_names else None,
    skipped_files=report.skipped.count,
    converted_files=report.conversions.counts(),  # {kind: files}: grayscale to RGB, resized, ...
  )
  if report.skipped.count:
    print(f'warning: {report.skipped.summary()}')
  if report.conversions.counts():
    print(f'note: {report.conversions.summary()}')
  if run.cluster.distributed:
    print(f'weights sha256 {metrics["weights_sha256"]} ({metrics["replicas"]} replicas)')
  atomic.write_json(os.path.join(wout, 'metrics.json'), metrics)
  pause_point('after_metrics')
  return metrics
