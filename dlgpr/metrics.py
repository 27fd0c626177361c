"""Retrieval metrics as pure functions of tensors (REFERENCE.md, "Metrics").

A query's *rank* is the 1-based position of the best-ranked gallery item of its place; queries
whose place is absent from a top-k list get rank ``k + 1`` (i.e. "beyond k").
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["first_positive_rank", "recall_at_k"]


def first_positive_rank(topk_indices: Tensor, query_labels: Tensor, gallery_labels: Tensor) -> Tensor:
    """1-based rank of the first gallery item with the query's label in each top-k list.

    Args:
        topk_indices: ``[Q, k]`` gallery indices, best first (``-1`` marks an empty slot).
        query_labels: ``[Q]`` place id of each query.
        gallery_labels: ``[G]`` place id of each gallery item.

    Returns:
        ``[Q]`` int64 ranks in ``1..k``, or ``k + 1`` when no positive is in the list.
    """
    q, k = topk_indices.shape
    valid = topk_indices >= 0  # [Q, k]
    labels = gallery_labels[topk_indices.clamp(min=0)]  # [Q, k]
    hit = (labels == query_labels[:, None]) & valid  # [Q, k]
    positions = torch.arange(1, k + 1, device=topk_indices.device).expand(q, k)  # [Q, k]
    sentinel = torch.full_like(positions, k + 1)  # [Q, k]
    if k == 0:  # an empty list holds no positive
        return torch.ones(q, dtype=torch.long, device=topk_indices.device)
    return torch.where(hit, positions, sentinel).min(dim=1).values


def recall_at_k(ranks: Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries with ``rank <= K`` for each K.  ranks: ``[Q]`` 1-based."""
    if ranks.numel() == 0:
        raise ValueError("recall_at_k needs at least one query")
    return {int(k): float((ranks <= k).float().mean()) for k in ks}
