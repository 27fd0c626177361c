"""Text-to-image place retrieval: search a gallery and turn the lists into ranks."""

from __future__ import annotations

import torch
from torch import Tensor

from dlgpr.metrics import first_positive_rank
from dlgpr.search import Backend, topk_search

__all__ = ["rank_of_place", "unique_rows"]


def rank_of_place(
    queries: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    k: int,
    backend: Backend = "auto",
) -> Tensor:
    """1-based rank of the best gallery image of each query's place within the top ``k``.

    Args:
        queries: ``[Q, D]`` normalised query embeddings.
        query_labels: ``[Q]`` place id of each query.
        gallery: ``[G, D]`` normalised gallery embeddings.
        gallery_labels: ``[G]`` place id of each gallery image.
        k: depth of the search; queries without a positive in the top k get ``k + 1``.

    Returns:
        ``[Q]`` int64 ranks.
    """
    _, idx = topk_search(queries, gallery, k, backend=backend)  # [Q, k]
    return first_positive_rank(idx.cpu(), query_labels.cpu(), gallery_labels.cpu())


def unique_rows(*ids: Tensor) -> Tensor:
    """Indices of the first occurrence of each distinct id tuple (DDP padding can repeat samples).

    ids: one or more ``[N]`` integer tensors forming a composite key. Returns sorted ``[U]`` indices.
    """
    key = torch.stack([i.long() for i in ids], dim=1)  # [N, C]
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # [N]
    first = torch.full((int(inverse.max()) + 1,), key.shape[0], dtype=torch.long) if key.numel() else torch.zeros(0, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(key.shape[0]), reduce="amin")  # [U]
    return first.sort().values
