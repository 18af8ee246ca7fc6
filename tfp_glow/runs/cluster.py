"""Where this process stands in the run's cluster, decided once: chief or not, where it writes, which
shard of the data it reads (`tfp_glow.training.distribute` holds the rules)."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfp_glow.training import distribute


@dataclasses.dataclass(frozen=True)
class Cluster:
  """One process of a run.

  strategy:     the tf.distribute strategy (create it before any other TF op: `Cluster.make`).
  name:         'default', 'mirrored', 'multi-worker' or 'tpu'.
  chief:        whether this process writes the run's files (and takes its lock).
  write_dir:    where it writes: `out` on the chief, a temporary `out/.worker_TYPE_INDEX` elsewhere.
  worker_shard: (W, i), worker i of W reads its own TFRecord shards; None on one host.
  """

  strategy: tf.distribute.Strategy
  name: str
  chief: bool
  write_dir: str
  worker_shard: tuple[int, int] | None

  @classmethod
  def make(cls, out: str, name: str = 'default', tpu: str | None = None) -> Cluster:
    strategy = distribute.make_strategy(name, tpu=tpu)
    return cls(
      strategy=strategy,
      name=name,
      chief=distribute.is_chief(strategy),
      write_dir=distribute.write_dir(out, strategy),
      worker_shard=distribute.worker_shard(strategy),
    )

  @property
  def distributed(self) -> bool:
    """Anything but the default strategy: the data is sharded and actnorm's init broadcast."""
    return self.name != 'default'

  @property
  def replicas(self) -> int:
    return self.strategy.num_replicas_in_sync
