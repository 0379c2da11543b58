"""Which shards each DataLoader worker of each rank reads, in which order.

- Training (:func:`resampled_shards`): every worker draws shards with replacement, for ever, from
  its own generator seeded by (seed, rank, worker, epoch). No split is needed (each worker sees a
  random mixture of all shards), so any number of shards feeds any number of ranks and workers.
  Shards are equally likely, or, for a mixture of shard sets, in proportion to per-shard weights
  (:meth:`data.shards.directory.ShardSource.shard_weights`), as open_clip's ResampledShards2 does.
- Finite passes (:func:`finite_shards`): one permutation of all shards, seeded by (seed, epoch)
  and so the same on every rank, is cut into ``world_size x num_workers`` interleaved slices; global
  worker ``g = rank * num_workers + worker`` reads slice ``g``. Every shard, hence every sample, is
  read exactly once per pass across all ranks and workers; with fewer shards than global workers
  some workers read nothing.
"""
from __future__ import annotations

import bisect
import itertools
import random
from typing import Iterator, Sequence


def resampled_shards(urls: Sequence[str], seed: int, weights: Sequence[float] | None = None) -> Iterator[str]:
    """Shards drawn with replacement, for ever: uniformly, or with probability ∝ ``weights[i]``."""
    rng = random.Random(seed)
    if weights is None:
        while True:
            yield urls[rng.randrange(len(urls))]
    if len(weights) != len(urls) or not all(w > 0 for w in weights):
        raise ValueError(f"need one positive weight per shard, got {len(weights)} for {len(urls)} shards")
    cumulative = list(itertools.accumulate(weights))
    total, last = cumulative[-1], len(urls) - 1
    while True:  # random.choices' rule, without building a list per draw
        yield urls[bisect.bisect_right(cumulative, rng.random() * total, 0, last)]


def finite_shards(urls: Sequence[str], seed: int, rank: int, world_size: int, worker: int,
                  num_workers: int) -> list[str]:
    """This worker's slice of the seeded permutation (``seed`` already mixes in the epoch)."""
    order = list(urls)
    random.Random(seed).shuffle(order)
    return order[rank * num_workers + worker:: world_size * num_workers]
