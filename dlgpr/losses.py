"""Losses as pure functions of tensors (DESIGN.md, convention 2).

Each returns ``(loss, stats)`` where ``stats`` holds detached scalars for logging. Nothing here
communicates across ranks: a caller that wants the global-batch semantics of the paper gathers
the embeddings first (see ``dlgpr.modules``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sdm_loss", "same_label_matrix"]


def same_label_matrix(row_labels: Tensor, col_labels: Tensor) -> Tensor:
    """``y[i, j] = 1.0`` where ``row_labels[i] == col_labels[j]``.  [R], [C] -> [R, C]"""
    return (row_labels[:, None] == col_labels[None, :]).float()  # [R, C]


def sdm_loss(
    text_emb: Tensor,
    image_emb: Tensor,
    text_labels: Tensor,
    image_labels: Tensor | None = None,
    logit_scale: float | Tensor = 50.0,
    epsilon: float = 1e-8,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Similarity distribution matching (IRRA, Jiang & Ye, CVPR 2023, Eq. 1-3).

    The KL divergence between the softmax of the scaled cosine similarities and the normalised
    label-match distribution, in both directions and summed (IRRA's ``compute_sdm``, no 1/2):

        S = s * t_n @ v_n^T;  q = y / y.sum(1);  t2i = softmax(S) * (log_softmax(S) - log(q + eps))
        loss = mean_i sum_j t2i + mean_i sum_j i2t   (i2t likewise on S^T)

    Args:
        text_emb: ``[B, D]`` text embeddings (normalised here).
        image_emb: ``[B, D]`` image embeddings (normalised here); row i pairs with text i.
        text_labels: ``[B]`` place ids of the texts.
        image_labels: ``[B]`` place ids of the images; defaults to ``text_labels`` (paired batch).
        logit_scale: the scale ``s`` (IRRA fixes 1/0.02 = 50); a tensor keeps it learnable.
        epsilon: keeps ``log(q)`` finite where ``q = 0``.

    Returns:
        ``(loss, {"t2i", "i2t", "pos_sim", "neg_sim"})``.
    """
    if image_labels is None:
        image_labels = text_labels
    t = F.normalize(text_emb.float(), dim=-1)  # [B, D]
    v = F.normalize(image_emb.float(), dim=-1)  # [B, D]
    cos = t @ v.T  # [B, B]
    sim = logit_scale * cos  # [B, B]
    y = same_label_matrix(text_labels, image_labels)  # [B, B]
    q_t2i = y / y.sum(dim=1, keepdim=True)  # [B, B]
    q_i2t = y.T / y.T.sum(dim=1, keepdim=True)  # [B, B]
    t2i = F.softmax(sim, dim=1) * (F.log_softmax(sim, dim=1) - torch.log(q_t2i + epsilon))  # [B, B]
    i2t = F.softmax(sim.T, dim=1) * (F.log_softmax(sim.T, dim=1) - torch.log(q_i2t + epsilon))  # [B, B]
    t2i_loss = t2i.sum(dim=1).mean()
    i2t_loss = i2t.sum(dim=1).mean()
    loss = t2i_loss + i2t_loss
    with torch.no_grad():
        pos = y.bool()
        stats = {
            "t2i": t2i_loss.detach(),
            "i2t": i2t_loss.detach(),
            "pos_sim": cos[pos].mean().detach(),
            "neg_sim": cos[~pos].mean().detach() if (~pos).any() else cos.new_zeros(()),
        }
    return loss, stats
