"""How well a score separates in-distribution from OOD inputs: `metrics` (AUROC, AUPR, FPR at 95% TPR,
scikit-learn, OOD = the positive class) and `score_table`, every score against every OOD set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import tensorflow as tf

from tfp_glow.names import OOD_SCORES as SCORES
from tfp_glow.names import TYPICALITY_IMAGES
from tfp_glow.ood.scores import bits_per_dim, complexity, finite_values
from tfp_glow.ood.typicality import TypicalityTest, training_entropy

if TYPE_CHECKING:
  from numpy.typing import ArrayLike

  from tfp_glow.training.model import GlowModel


def metrics(in_scores: ArrayLike, out_scores: ArrayLike) -> dict[str, float]:
  """{'auroc', 'aupr', 'fpr_at_95_tpr'} of scores where larger = OOD; OOD (out) is the positive class.

  FPR at 95% TPR: the fraction of in-distribution inputs flagged at the threshold that flags 95% of the OOD
  inputs (the smallest such FPR on the ROC curve)."""
  import sklearn.metrics  # pylint: disable=import-outside-toplevel  (lazy: only the metrics need it)

  in_scores, out_scores = finite_values(in_scores, 'in_scores'), finite_values(out_scores, 'out_scores')
  y = np.concatenate([np.zeros(in_scores.size), np.ones(out_scores.size)])
  s = np.concatenate([in_scores, out_scores])
  fpr, tpr, _ = sklearn.metrics.roc_curve(y, s)
  return dict(
    auroc=float(sklearn.metrics.roc_auc_score(y, s)),
    aupr=float(sklearn.metrics.average_precision_score(y, s)),
    fpr_at_95_tpr=float(np.min(fpr[tpr >= 0.95])),
  )


def score_table(
  model: GlowModel,
  in_images: np.ndarray | tf.Tensor,
  out_sets: dict[str, np.ndarray | tf.Tensor],
  scores: Sequence[str] = ('bits_per_dim', 'complexity_corrected'),
  background: GlowModel | None = None,
  train_images: np.ndarray | tf.Tensor | Iterable | None = None,
  samples: int = 1,
  typicality_batch: int = 8,
  seed: int = 0,
  typicality_images: int = TYPICALITY_IMAGES,
) -> list[dict[str, Any]]:
  """Rows {score, out, auroc, aupr, fpr_at_95_tpr} for each score and each OOD set (name -> images), with
  `in_images` (held-out in-distribution images) as the negatives. 'likelihood_ratio' needs `background`
  (a GlowModel trained on `perturb`ed data); 'typicality' needs `train_images` (images or a stream of
  batches, of which at most `typicality_images` estimate H: `training_entropy`; `in_images` give the
  bootstrap threshold and the in-distribution batches). Raises `NonFiniteError` for a non-finite score."""
  unknown = [s for s in scores if s not in SCORES]
  if unknown:
    raise ValueError(f'ood: unknown score(s) {unknown}; accepted: {", ".join(SCORES)}.')
  if 'likelihood_ratio' in scores and background is None:
    raise ValueError('ood: the likelihood_ratio score needs a background model.')
  if 'typicality' in scores and train_images is None:
    raise ValueError('ood: the typicality score needs train_images (for the training entropy H).')
  bpd = lambda images: bits_per_dim(model, images, samples, seed)  # noqa: E731
  per_set = {'in': in_images, **out_sets}
  raw = {name: bpd(images) for name, images in per_set.items()}
  typicality: TypicalityTest | None = None
  if 'typicality' in scores and train_images is not None:  # (not None: checked above)
    half = len(raw['in']) // 2  # threshold from one half of the held-out data, in-batches from the other
    entropy, _ = training_entropy(model, train_images, typicality_images, samples, seed)
    typicality = TypicalityTest.from_entropy(
      entropy, raw['in'][:half], batch_size=typicality_batch, seed=seed
    )
  computed: dict[tuple[str, str], np.ndarray] = {}
  for score in scores:
    for name, images in per_set.items():
      if score == 'bits_per_dim':
        value = raw[name]
      elif score == 'complexity_corrected':
        value = raw[name] - complexity(images, model.n_bins)
      elif score == 'likelihood_ratio' and background is not None:  # (not None: checked above)
        value = raw[name] - bits_per_dim(background, images, samples, seed)
      elif typicality is not None:
        value = typicality.scores(
          raw[name][len(raw[name]) // 2 :] if name == 'in' else raw[name], seed=seed + 1
        )
      computed[score, name] = value
  return [
    dict(score=score, out=name, **metrics(computed[score, 'in'], computed[score, name]))
    for score in scores
    for name in out_sets
  ]
