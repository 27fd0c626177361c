"""Gathering rows of different counts from every rank (evaluation under DDP)."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from torch import Tensor


def gather_rows(trainer: Trainer, x: Tensor) -> Tensor:
    """Concatenate ``x`` (``[N_r, ...]``, N_r may differ per rank) from all ranks, rank order.

    Pads to the largest count, all-gathers, and drops the padding. Identity on one process.
    """
    if trainer.world_size == 1:
        return x
    strategy = trainer.strategy
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = strategy.all_gather(n).view(-1).tolist()  # [W]
    pad = max(counts) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    gathered = strategy.all_gather(x)  # [W, max N, ...]
    return torch.cat([gathered[r, :c] for r, c in enumerate(counts)])


class RowCollector:
    """Collects named per-sample rows from eval-step outputs and gathers them across ranks.

    Fields containing ``_emb`` are float ``[N, D]`` embeddings, the others int64 ``[N]`` ids. A rank
    that saw no sample still takes part in the gather, with zero rows of width
    ``pl_module.embed_dims[field]`` (a dict, when the module has one) or ``pl_module.embed_dim``.
    """

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields
        self.reset()

    def reset(self) -> None:
        self._rows: dict[str, list[Tensor]] = {f: [] for f in self.fields}

    def add(self, outputs: object) -> None:
        if not isinstance(outputs, dict) or not all(f in outputs for f in self.fields):
            raise TypeError(f"the eval step must return a dict with {self.fields}")
        for f in self.fields:
            x = outputs[f].detach()
            self._rows[f].append(x.float() if "_emb" in f else x.long())

    def _local(self, field: str, pl_module: object) -> Tensor:
        device = pl_module.device  # type: ignore[attr-defined]
        if self._rows[field]:
            return torch.cat(self._rows[field]).to(device)
        if "_emb" in field:
            width = getattr(pl_module, "embed_dims", {}).get(field, getattr(pl_module, "embed_dim"))
            return torch.zeros(0, int(width), device=device)
        return torch.zeros(0, dtype=torch.long, device=device)

    def gather(self, trainer: Trainer, pl_module: object) -> dict[str, Tensor]:
        """All ranks' rows (on CPU, rank order), and a reset for the next evaluation."""
        rows = {f: gather_rows(trainer, self._local(f, pl_module)).cpu() for f in self.fields}
        self.reset()
        return rows
