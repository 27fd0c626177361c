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
