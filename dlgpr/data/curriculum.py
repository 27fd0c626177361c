"""DDI curriculum order for dialogue turns (DQ-Pilot; docs/METHOD.md "DDI").

A pure function of the turns' difficulty, a seed and the epoch, so every rank computes the same
global order and takes its own disjoint, equally long slice of it (DDP needs equal step counts).
"""

from __future__ import annotations

import math
import random
from typing import Literal, Sequence

__all__ = ["CurriculumMode", "curriculum_order", "rank_slice"]

CurriculumMode = Literal["easy_to_hard", "buckets", "stratified", "random"]


def curriculum_order(
    difficulty: Sequence[float], mode: CurriculumMode = "easy_to_hard", seed: int = 0, epoch: int = 0, num_buckets: int = 3
) -> list[int]:
    """Indices of the turns in training order.

    * ``easy_to_hard``: ascending DDI; equal DDIs in a seeded random order.
    * ``buckets``: ``num_buckets`` equal-count DDI buckets from easy to hard, shuffled within
      each bucket (per seed and epoch).
    * ``stratified``: ``num_buckets`` equal-count DDI strata, each shuffled, dealt in turn (one
      turn of every stratum, in a shuffled stratum order, then the next round), so that every
      prefix of the order has the DDI mix of the whole set. The mode for a run that stops
      before the end of an epoch (GRPO under ``max_steps``): easy to hard would only ever see
      the easy turns of the stage.
    * ``random``: a seeded shuffle that ignores DDI (the order-shuffle ablation; the paper's
      "random sampling" row draws the stages' turns at random instead, a corpus option:
      ``dlgpr.pipeline.dialogues.CorpusConfig.stage_sampling``).
    """
    n = len(difficulty)
    rng = random.Random(seed * 1_000_003 + epoch)
    tiebreak = list(range(n))
    rng.shuffle(tiebreak)
    key = {i: t for t, i in enumerate(tiebreak)}  # random rank of each index
    if mode == "random":
        return tiebreak
    by_ddi = sorted(range(n), key=lambda i: (float(difficulty[i]), key[i]))
    if mode == "easy_to_hard":
        return by_ddi
    if mode in ("buckets", "stratified"):
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        size = math.ceil(n / num_buckets) if n else 0
        buckets = [by_ddi[b * size : (b + 1) * size] for b in range(num_buckets)]
        for bucket in buckets:
            rng.shuffle(bucket)
        if mode == "buckets":
            return [i for bucket in buckets for i in bucket]
        out: list[int] = []
        for r in range(size):
            strata = list(range(num_buckets))
            rng.shuffle(strata)
            out += [buckets[b][r] for b in strata if r < len(buckets[b])]
        return out
    raise ValueError(f"unknown curriculum mode {mode!r} (easy_to_hard, buckets, stratified, random)")


def rank_slice(order: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's turns: every ``world_size``-th of the order from ``rank`` (so each rank walks the
    same curriculum), after dropping the tail that would leave ranks unequal."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    usable = len(order) - len(order) % world_size
    return list(order[rank:usable:world_size])
