"""Text-to-image place retrieval: ranks from a gallery search, the retriever interface of the
dialogue loop, and loading a trained retriever from its checkpoint."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from dlgpr.ranking import best_rank, exact_positive_ranks, positive_rows, positive_scores, ranks_from_lists
from dlgpr.search import Backend, topk_search

__all__ = ["rank_of_place", "unique_rows", "TextRetriever", "ModuleTextRetriever", "load_retriever"]


def rank_of_place(
    queries: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    k: int,
    backend: Backend = "auto",
) -> Tensor:
    """Expected 1-based rank of the best gallery image of each query's place (``dlgpr.ranking``).

    Ties are neither in the target's favour nor against it: tied images count half (the expected
    position under a random order of ties), so the rank does not depend on how the backend orders
    equal scores, nor on the order of the gallery rows (which differs between one process and a
    DDP gather), and a retriever that scores everything alike ranks at chance. The backend's top
    ``k`` lists decide most queries; the positives' scores come from the embeddings, and a query
    whose tie group reaches the end of its list is counted over the whole gallery.

    Args:
        queries: ``[Q, D]`` normalised query embeddings.
        query_labels: ``[Q]`` place id of each query.
        gallery: ``[G, D]`` normalised gallery embeddings.
        gallery_labels: ``[G]`` place id of each gallery image.
        k: depth of the search; queries whose place is ranked deeper (or absent) get ``k + 1``.

    Returns:
        ``[Q]`` float64 ranks (whole or half-integers when scores tie).
    """
    rows = positive_rows(query_labels, gallery_labels)  # [Q, P]
    valid = rows >= 0  # [Q, P]
    if k < 1 or queries.shape[0] == 0 or gallery.shape[0] == 0:
        return torch.full((queries.shape[0],), float(max(k, 0) + 1), dtype=torch.float64)
    scores, idx = topk_search(queries, gallery, k, backend=backend)  # [Q, k]
    scores, idx = scores.float().cpu(), idx.cpu()
    listed = idx >= 0  # [Q, k]
    is_pos = (gallery_labels.cpu()[idx.clamp(min=0)] == query_labels.cpu()[:, None]) & listed  # [Q, k]
    ps = positive_scores(queries.cpu(), gallery.cpu(), rows)  # [Q, P]
    ranks, undecided = ranks_from_lists(scores, is_pos, listed, ps, valid, gallery.shape[0])
    if undecided.any():
        todo = undecided.nonzero().flatten()
        exact, _, _ = exact_positive_ranks(queries.cpu()[todo], gallery.cpu(), rows[todo])
        ranks[todo] = exact
    best = best_rank(ranks, valid.sum(dim=1), k + 1)  # [Q]
    return best.clamp(max=float(k + 1))


def unique_rows(*ids: Tensor) -> Tensor:
    """Indices of the first occurrence of each distinct id tuple (DDP padding can repeat samples).

    ids: one or more ``[N]`` integer tensors forming a composite key. Returns sorted ``[U]`` indices.
    """
    key = torch.stack([i.long() for i in ids], dim=1)  # [N, C]
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # [N]
    first = torch.full((int(inverse.max()) + 1,), key.shape[0], dtype=torch.long) if key.numel() else torch.zeros(0, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(key.shape[0]), reduce="amin")  # [U]
    return first.sort().values


# ---- retrievers as the dialogue loop sees them ----------------------------------------------------


@runtime_checkable
class TextRetriever(Protocol):
    """What the dialogue loop needs from a retriever: normalised text embeddings, batched."""

    def embed_texts(self, texts: list[str]) -> Tensor:
        """``len(texts)`` strings -> ``[N, D]`` L2-normalised embeddings."""
        ...


class ModuleTextRetriever:
    """Adapts a trained LightningModule (``preprocessing().tokenizer`` + ``encode_texts``).

    Texts are tokenized and encoded in chunks of ``batch_size`` under ``inference_mode``, on the
    module's device; long queries are truncated by the module's tokenizer.
    """

    def __init__(self, module: Any, batch_size: int = 256) -> None:
        self.module = module
        self.tokenizer = module.preprocessing().tokenizer
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> Tensor:
        was_training = self.module.training
        self.module.eval()
        device = next(self.module.parameters()).device
        out = [self.module.encode_texts(self.tokenizer(texts[i : i + self.batch_size]).to(device)).float() for i in range(0, len(texts), self.batch_size)]
        self.module.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, getattr(self.module, "embed_dim", 0))  # [N, D]


CLASS_PATH_KEY = "dlgpr_class_path"


def load_retriever(ckpt: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a retriever LightningModule saved by ``python -m dlgpr fit`` for inference.

    The module class is read from the checkpoint (modules record their import path under
    ``dlgpr_class_path``), so any retriever of the project loads through this one function.
    Returns the module in eval mode; wrap it in :class:`ModuleTextRetriever` for the dialogue loop.
    """
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}")
    meta = torch.load(ckpt, map_location="cpu", weights_only=False)
    class_path = meta.get(CLASS_PATH_KEY)
    if not class_path:
        raise ValueError(f"{ckpt}: no {CLASS_PATH_KEY} entry; it was not saved by a dlgpr retriever module")
    module_name, _, cls_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    # the file is the user's own training output (hyperparameters include config dataclasses)
    model = cls.load_from_checkpoint(ckpt, map_location=map_location, weights_only=False)
    model.eval()
    return model
