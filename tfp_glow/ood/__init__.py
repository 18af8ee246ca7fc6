"""Out-of-distribution scores from a flow's likelihood, and their evaluation metrics.

Nalisnick et al. 2019 showed that flows (Glow among them) can give inputs unlike the training data a
*higher* likelihood; the fixes are scores built on the likelihood. Every per-image score here is in
bits/dim and oriented the same way: **larger = more likely out-of-distribution**.

  bits_per_dim(x)          = -log2 P(x) / D                      (raw likelihood; the model's bound)
  complexity(x)            = 8 * len(PNG(x)) / D                 (Serra et al. 2020: L(x), a generic
                                                                  lossless code length, bits/dim)
  complexity_corrected(x)  = bits_per_dim(x) - complexity(x)     (S(x) = -log2 p(x) - L(x), per dim)
  likelihood_ratio(x)      = bits_per_dim(x) - bits_per_dim_0(x)  (Ren et al. 2019: -(log p - log p_0)/(D ln 2),
                                                                  p_0 a background model trained on
                                                                  `perturb`ed inputs)
  typicality(batch of M)   = |mean_m bits_per_dim(x_m) - H|       (Nalisnick et al. 2019b: H the mean on
                                                                  training data; a batch test, see
                                                                  `TypicalityTest` for its threshold)

Both -log2 P(x) and L(x) are code lengths of the same discrete image (its bins; the PNG holds the uint8
image, a one-to-one map of the bins), so their difference is in consistent units. PNG's fixed overhead
(about 70 bytes) shifts L by a constant, which no threshold-free metric sees.

Class-conditional models (`num_classes` = K) are scored through their marginal over labels (no label is
needed at test time, and an OOD input has none):

  log p(x) = logsumexp_y [log p(x|y) + log pi(y)],   pi(y) = 1 / K

pi is uniform because a `GlowModel` learns no class prior (its `class_predictor` is a classifier of the top
latent, not a prior over labels); this is the density of a model trained on class-balanced data. It costs
K passes of the flow per image.

Metrics (scikit-learn, OOD = the positive class): AUROC, AUPR, FPR at 95% TPR.
Images everywhere are in the model's scale [-0.5, 0.5) (as `GlowModel.log_prob` takes them), [N, H, W, C].

The modules: `scores` (the per-image scores), `typicality` (the batch test and its H), `shifts` (shifted
test sets, perturbed background data), `evaluation` (metrics, `score_table`).
"""

from tfp_glow.names import OOD_SCORES as SCORES
from tfp_glow.names import OOD_SHIFTS as SHIFTS
from tfp_glow.ood.evaluation import metrics, score_table
from tfp_glow.ood.scores import (
  NonFiniteError,
  bits_per_dim,
  complexity,
  complexity_corrected,
  likelihood_ratio,
)
from tfp_glow.ood.shifts import perturb, perturbed_dataset, shifted
from tfp_glow.ood.typicality import TypicalityTest, training_entropy

__all__ = [
  'SCORES',
  'SHIFTS',
  'NonFiniteError',
  'TypicalityTest',
  'bits_per_dim',
  'complexity',
  'complexity_corrected',
  'likelihood_ratio',
  'metrics',
  'perturb',
  'perturbed_dataset',
  'score_table',
  'shifted',
  'training_entropy',
]
