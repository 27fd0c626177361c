"""Optimiser and learning-rate schedule shared by the LightningModules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay (per optimiser step)."""

    weight_decay: float = 0.1
    """Decoupled weight decay; biases, norms, embeddings' scales and 1-d parameters get none."""
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    """Linear warmup length in optimiser steps (capped at 10% of the run when the run is short)."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak."""

    def __post_init__(self) -> None:
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {self.betas}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def param_groups(named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> list[dict]:
    """Split parameters into decayed (matrices) and undecayed (biases, norms, 1-d) groups."""
    decay = [p for n, p in named if p.requires_grad and p.ndim >= 2 and "positional_embedding" not in n]
    no_decay = [p for n, p in named if p.requires_grad and (p.ndim < 2 or "positional_embedding" in n)]
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay}, {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    total_steps = max(int(total_steps), 1)
    warmup = min(cfg.warmup_steps, max(total_steps // 10, 1)) if total_steps < 10 * cfg.warmup_steps else cfg.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
