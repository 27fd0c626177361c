"""Exact top-k inner-product search with two interchangeable backends.

``torch``: chunked ``q @ g.T`` + ``topk``; on a CPU it is the faster exact search for the
gallery sizes of this project (``python scripts/bench_search.py`` times both against the
arithmetic floor; docs/BENCHMARKS.md). ``faiss``: ``IndexFlatIP``, on GPU when
faiss has GPU support and the inputs live on CUDA; the backend for large galleries and the one
a user can swap for an approximate index. ``auto`` picks torch on an accelerator (the GPU search
path of the project: exact, no extra package) and on a CPU for galleries up to
``AUTO_FAISS_MIN_GALLERY`` items, faiss beyond. faiss runs on a GPU only where the user installed
a GPU build of it themselves (the install ships ``faiss-cpu``; see README, "GPUs").

Where a search runs (:func:`search_device`): on the queries' device when it is an accelerator
(the retriever's: a model on a GPU searches on that GPU), else on the gallery's. The one rule of
every search of the project; ``dlgpr.ranking.Gallery.search_embeddings`` copies a gallery there
once and keeps the copy, so a dialogue or a reward searching every round does not copy it again.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

Backend = Literal["auto", "torch", "faiss"]
AUTO_FAISS_MIN_GALLERY = 200_000

__all__ = ["Backend", "search_device", "topk_search"]


def search_device(queries: Tensor, gallery: Tensor) -> torch.device:
    """Where a search of ``queries`` against ``gallery`` runs: the queries' device unless it is the
    CPU (queries come from the retriever, so a GPU model searches on its GPU), else the gallery's
    (a gallery a caller put on a GPU is searched there). The inputs are moved, never the rule."""
    return queries.device if queries.device.type != "cpu" else gallery.device


def _torch_topk(queries: Tensor, gallery: Tensor, k: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    scores, indices = [], []
    for start in range(0, queries.shape[0], chunk_size):
        sim = queries[start : start + chunk_size] @ gallery.T  # [q, G]
        s, i = sim.topk(k, dim=1)  # [q, k]
        scores.append(s)
        indices.append(i)
    return torch.cat(scores), torch.cat(indices)


def _faiss_topk(queries: Tensor, gallery: Tensor, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    import faiss

    dim = gallery.shape[1]
    index = faiss.IndexFlatIP(dim)
    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, device.index or 0, index)
    g = np.ascontiguousarray(gallery.detach().float().cpu().numpy())
    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    index.add(g)
    s, i = index.search(q, k)
    return torch.from_numpy(s).to(device), torch.from_numpy(i).long().to(device)


def topk_search(
    queries: Tensor, gallery: Tensor, k: int, backend: Backend = "auto", chunk_size: int = 4096
) -> tuple[Tensor, Tensor]:
    """Top-k gallery items by inner product for each query (cosine if both are normalised).

    Args:
        queries: ``[Q, D]``.
        gallery: ``[G, D]``.
        k: list length; clipped to ``G``.
        backend: ``torch``, ``faiss`` or ``auto`` (see module docstring).
        chunk_size: queries per matmul in the torch backend (bounds memory at ``chunk_size x G``).

    Runs on :func:`search_device` (a CPU gallery is copied to the queries' GPU for the torch
    backend; faiss builds a GPU index there when it has GPU support).

    Returns:
        ``(scores [Q, k'], indices [Q, k'])`` best first, ``k' = min(k, G)``, on the search device.
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries [Q, D] and gallery [G, D] must share D, got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    k = min(int(k), gallery.shape[0])
    device = search_device(queries, gallery)
    if k <= 0 or queries.shape[0] == 0:
        empty = torch.zeros((queries.shape[0], 0), device=device)
        return empty, empty.long()
    if backend == "auto":
        on_cpu = device.type == "cpu"
        backend = "faiss" if on_cpu and gallery.shape[0] >= AUTO_FAISS_MIN_GALLERY else "torch"
    if backend == "torch":
        return _torch_topk(queries.to(device).float(), gallery.to(device).float(), k, chunk_size)
    if backend == "faiss":
        return _faiss_topk(queries, gallery, k, device)
    raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
