"""Collectives that training losses need, with the gradient semantics they need."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_with_grad"]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands every rank the gradient of its own rows,
    summed over the ranks' losses (each rank's loss sees every row)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        ctx.rank = dist.get_rank()
        return torch.cat(parts)  # [W * B, ...]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # a contiguous buffer: torch.distributed.nn.functional.all_gather's backward sends the
        # incoming gradients through all_to_all as they are, and on gloo non-contiguous ones
        # (CMPL's losses produce them) came back wrong; made contiguous they are right
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """``[B, ...]`` on each rank -> ``[world_size * B, ...]`` in rank order, differentiable.

    Every rank must pass the same shape. The gradient reaching rank r's ``x`` is the sum over
    ranks of d(loss_rank)/d(rows of r); DDP then averages parameter gradients over ranks, which
    gives exactly the single-process gradient of the loss on the concatenated batch (when every
    rank computes the same loss on the gathered batch). Integer tensors are gathered without
    autograd. Identity without an initialised process group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if not x.is_floating_point():
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return _GatherWithGrad.apply(x)
