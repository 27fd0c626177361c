"""Losses as pure functions of tensors (docs/METHOD.md gives each formula).

Each returns ``(loss, stats)`` where ``stats`` holds detached scalars for logging. Nothing here
communicates across ranks: a caller that wants the global-batch semantics of the paper gathers
the embeddings first (see ``dlgpr.modules``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

_F = TypeVar("_F", bound=Callable[..., Any])


def float32(fn: _F) -> _F:
    """Run a loss outside any autocast region, in float32.

    Under bf16 autocast a matmul of float32 unit vectors still runs in bf16, which resolves a
    cosine near 1 only to about 0.008: coarser than the gaps between a positive and its hard
    negatives that SDM, HI and multi-similarity (beta 50) act on. The towers may run in bf16;
    the similarities and losses do not.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        device = first.device.type if first is not None else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = [
    "zero_spread_share",
    "float32",
    "sdm_loss",
    "sdm_loss_from_similarity",
    "same_label_matrix",
    "local_similarity",
    "hard_negative_isolation_loss",
    "multi_similarity_loss",
    "CMPLLoss",
    "group_advantages",
    "grpo_loss",
]


def same_label_matrix(row_labels: Tensor, col_labels: Tensor) -> Tensor:
    """``y[i, j] = 1.0`` where ``row_labels[i] == col_labels[j]``.  [R], [C] -> [R, C]"""
    return (row_labels[:, None] == col_labels[None, :]).float()  # [R, C]


@float32
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
    return sdm_loss_from_similarity(t @ v.T, text_labels, image_labels, logit_scale, epsilon)


@float32
def sdm_loss_from_similarity(
    cos: Tensor,
    text_labels: Tensor,
    image_labels: Tensor | None = None,
    logit_scale: float | Tensor = 50.0,
    epsilon: float = 1e-8,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SDM on a precomputed similarity matrix (CMPL's L_ls runs it on the local scores).

    Args:
        cos: ``[Bt, Bi]`` similarities in [-1, 1], texts as rows, images as columns.
        text_labels, image_labels: ``[Bt]``, ``[Bi]`` place ids (image labels default to the text ones).
    """
    if image_labels is None:
        image_labels = text_labels
    cos = cos.float()
    sim = logit_scale * cos  # [Bt, Bi]
    y = same_label_matrix(text_labels, image_labels)  # [Bt, Bi]
    q_t2i = y / y.sum(dim=1, keepdim=True)  # [Bt, Bi]
    q_i2t = y.T / y.T.sum(dim=1, keepdim=True)  # [Bi, Bt]
    t2i = F.softmax(sim, dim=1) * (F.log_softmax(sim, dim=1) - torch.log(q_t2i + epsilon))  # [Bt, Bi]
    i2t = F.softmax(sim.T, dim=1) * (F.log_softmax(sim.T, dim=1) - torch.log(q_i2t + epsilon))  # [Bi, Bt]
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


@float32
def local_similarity(text_local: Tensor, image_local: Tensor) -> Tensor:
    """CMPL's local score: mean over the instance queries of the cosine of matched outputs.

    s_ij = (1/Q) sum_q cos(t_iq, v_jq)  (query q of the text with query q of the image).

    text_local: ``[Bt, Q, d]``; image_local: ``[Bi, Q, d]``. Returns ``[Bt, Bi]``.
    """
    t = F.normalize(text_local.float(), dim=-1)  # [Bt, Q, d]
    v = F.normalize(image_local.float(), dim=-1)  # [Bi, Q, d]
    return torch.einsum("iqd,jqd->ij", t, v) / t.shape[1]  # [Bt, Bi]


@float32
def hard_negative_isolation_loss(
    cos: Tensor, labels: Tensor, margin: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Hard-negative isolation (CMPL, L_hi): push each pair's hardest other-place match away.

    With d the Euclidean distance of L2-normalised features (d^2 = 2 - 2 cos):

        L_i = [d(v_i, t_i)^2 - d(v_i, t_j*)^2 + a]_+ + [d(t_i, v_i)^2 - d(t_i, v_k*)^2 + a]_+

    j* = the most similar text of another place for image i, k* = the most similar image of
    another place for text i; the loss is the mean over i. A row without any other-place
    candidate contributes 0.

    Args:
        cos: ``[B, B]`` similarities, text i (row) vs image j (column); pair i is on the diagonal.
        labels: ``[B]`` place ids (text i and image i share labels[i]).
        margin: the margin ``a`` in squared-distance units (d^2 lies in [0, 4]).

    Returns:
        ``(loss, {"i2t", "t2i", "active"})``; active = fraction of hinge terms above zero.
    """
    cos = cos.float()
    other = labels[:, None] != labels[None, :]  # [B, B] different places
    pos = cos.diagonal()  # [B]
    neg_inf = torch.finfo(cos.dtype).min
    hardest_text = cos.masked_fill(~other, neg_inf).max(dim=0).values  # [B] per image (column)
    hardest_image = cos.masked_fill(~other, neg_inf).max(dim=1).values  # [B] per text (row)
    has_neg = other.any(dim=1)  # [B] (symmetric: same rows and columns)
    # d^2(v_i, t_i) - d^2(v_i, t_j*) = 2 (cos(t_j*, v_i) - cos(t_i, v_i))
    i2t = F.relu(2.0 * (hardest_text - pos) + margin) * has_neg  # [B]
    t2i = F.relu(2.0 * (hardest_image - pos) + margin) * has_neg  # [B]
    loss = (i2t + t2i).mean()
    with torch.no_grad():
        terms = torch.cat([i2t[has_neg], t2i[has_neg]])
        stats = {
            "i2t": i2t.mean().detach(),
            "t2i": t2i.mean().detach(),
            "active": (terms > 0).float().mean() if terms.numel() else cos.new_zeros(()),
        }
    return loss, stats


@float32
def multi_similarity_loss(
    emb: Tensor,
    labels: Tensor,
    alpha: float = 1.0,
    beta: float = 50.0,
    base: float = 0.0,
    epsilon: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Multi-similarity loss with its pair miner (Wang et al., CVPR 2019), as GSV-Cities trains
    place recognition (alpha 1, beta 50, base 0, miner epsilon 0.1): CMPL's L_vpr.

    Mining, per anchor i (cosine similarities S, self-pairs excluded): keep a negative n when
    S_in + eps > min_p S_ip (it is harder than the easiest positive), keep a positive p when
    S_ip - eps < max_n S_in (it is harder than the hardest negative). Then

        L_i = 1/alpha log(1 + sum_p exp(-alpha (S_ip - base))) + 1/beta log(1 + sum_n exp(beta (S_in - base)))

    over the kept pairs, and the loss is the mean over all anchors (anchors with nothing kept
    contribute 0).

    Args:
        emb: ``[B, D]`` features (normalised here); labels: ``[B]`` place ids.

    Returns:
        ``(loss, {"pos_pairs", "neg_pairs"})``: fraction of candidate pairs the miner kept.
    """
    x = F.normalize(emb.float(), dim=-1)  # [B, D]
    sim = x @ x.T  # [B, B]
    same = labels[:, None] == labels[None, :]  # [B, B]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)  # [B, B]
    pos_mask, neg_mask = same & ~eye, ~same  # [B, B]
    with torch.no_grad():
        min_pos = sim.masked_fill(~pos_mask, float("inf")).min(dim=1, keepdim=True).values  # [B, 1]
        max_neg = sim.masked_fill(~neg_mask, float("-inf")).max(dim=1, keepdim=True).values  # [B, 1]
        keep_pos = pos_mask & (sim - epsilon < max_neg)  # [B, B]
        keep_neg = neg_mask & (sim + epsilon > min_pos)  # [B, B]
    pos_term = _log1p_sum_exp(-alpha * (sim - base), keep_pos) / alpha  # [B]
    neg_term = _log1p_sum_exp(beta * (sim - base), keep_neg) / beta  # [B]
    loss = (pos_term + neg_term).mean()
    with torch.no_grad():
        stats = {
            "pos_pairs": keep_pos.sum() / pos_mask.sum().clamp(min=1),
            "neg_pairs": keep_neg.sum() / neg_mask.sum().clamp(min=1),
        }
    return loss, stats


def _log1p_sum_exp(logits: Tensor, keep: Tensor) -> Tensor:
    """``log(1 + sum_{j kept} exp(logits_ij))`` per row, stably.  [B, B], [B, B] bool -> [B]"""
    zero = logits.new_zeros(logits.shape[0], 1)  # [B, 1] the "1 +" as exp(0)
    masked = logits.masked_fill(~keep, float("-inf"))  # [B, B]
    return torch.logsumexp(torch.cat([zero, masked], dim=1), dim=1)  # [B]


@dataclass
class CMPLLoss:
    """The CMPL objective (paper Eq. 6), with its weights as constructor arguments:

        L = lambda_gs L_gs + lambda_h sum_l (L_ls^(l) + hi_weight L_hi^(l)) + lambda_vpr L_vpr

    L_gs: SDM on the global embeddings; L_ls^(l): SDM on the layer-l local scores
    (:func:`local_similarity`); L_hi^(l): :func:`hard_negative_isolation_loss` on the same
    local scores; L_vpr: :func:`multi_similarity_loss` on image features by place. Eq. 6 is
    ``hi_weight = lambda_vpr = 1``; the ablation ladder sets them (and lambda_h) to 0.
    """

    lambda_gs: float = 1.0
    lambda_h: float = 1.0
    hi_weight: float = 1.0
    """Weight of L_hi inside the lambda_h sum (1 in Eq. 6; 0 drops HI)."""
    lambda_vpr: float = 1.0
    """Weight of L_vpr (1 in Eq. 6; 0 drops it)."""
    hi_margin: float = 0.2
    """HI margin ``a`` in squared-distance units (VSE++'s 0.2)."""
    ms_alpha: float = 1.0
    ms_beta: float = 50.0
    ms_base: float = 0.0
    ms_epsilon: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lambda_gs", "lambda_h", "hi_weight", "lambda_vpr", "hi_margin", "ms_epsilon"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.ms_alpha <= 0 or self.ms_beta <= 0:
            raise ValueError(f"loss.ms_alpha and loss.ms_beta must be > 0, got {self.ms_alpha}, {self.ms_beta}")

    @float32
    def __call__(
        self,
        text_global: Tensor,
        image_global: Tensor,
        labels: Tensor,
        text_local: list[Tensor] | None = None,
        image_local: list[Tensor] | None = None,
        image_vpr: Tensor | None = None,
        logit_scale: float | Tensor = 50.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Args:
            text_global, image_global: ``[B, D]`` pair i = (text i, image i); labels ``[B]``.
            text_local, image_local: per tapped layer ``[B, Q, d]`` extractor outputs.
            image_vpr: ``[B, E]`` the image features L_vpr groups by place (None: no L_vpr).
            logit_scale: SDM's scale for L_gs and every L_ls.

        Returns:
            ``(loss, stats)`` with ``gs``, ``ls``, ``hi``, ``vpr`` (unweighted, summed over
            layers) and ``ls/l{k}``, ``hi/l{k}`` per tapped layer (k = 0-based tap index).
        """
        zero = text_global.new_zeros(())
        loss_gs, _ = sdm_loss(text_global, image_global, labels, logit_scale=logit_scale)
        loss_ls, loss_hi, stats = zero, zero, {}
        need_local = self.lambda_h > 0 and text_local and image_local
        for k, (t_loc, v_loc) in enumerate(zip(text_local or [], image_local or []) if need_local else []):
            cos = local_similarity(t_loc, v_loc)  # [B, B]
            ls, _ = sdm_loss_from_similarity(cos, labels, logit_scale=logit_scale)
            loss_ls = loss_ls + ls
            stats[f"ls/l{k}"] = ls.detach()
            if self.hi_weight > 0:
                hi, _ = hard_negative_isolation_loss(cos, labels, self.hi_margin)
                loss_hi = loss_hi + hi
                stats[f"hi/l{k}"] = hi.detach()
        loss_vpr = zero
        if self.lambda_vpr > 0 and image_vpr is not None:
            loss_vpr, ms = multi_similarity_loss(image_vpr, labels, self.ms_alpha, self.ms_beta, self.ms_base, self.ms_epsilon)
            stats["vpr_pos_pairs"], stats["vpr_neg_pairs"] = ms["pos_pairs"], ms["neg_pairs"]
        loss = self.lambda_gs * loss_gs + self.lambda_h * (loss_ls + self.hi_weight * loss_hi) + self.lambda_vpr * loss_vpr
        stats.update({"gs": loss_gs.detach(), "ls": loss_ls.detach(), "hi": loss_hi.detach(), "vpr": loss_vpr.detach()})
        return loss, stats


# ---- GRPO (DeepSeekMath; docs/METHOD.md "DQ-Pilot") ----------------------------------------------


def group_advantages(rewards: Tensor, group_size: int, epsilon: float = 1e-4) -> Tensor:
    """GRPO advantages: each reward standardised within its group of ``group_size`` samples.

        A_i = (r_i - mean_group) / (std_group + epsilon)

    with the unbiased standard deviation (trl's choice; a group of one has std 0, so A = 0).

    Args:
        rewards: ``[N * G]`` rewards, the G samples of a prompt contiguous.
        group_size: G.

    Returns:
        ``[N * G]`` advantages.

    Raises:
        FloatingPointError: a reward is NaN or infinite (it would poison its whole group).
    """
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise FloatingPointError(f"non-finite reward at sample(s) {bad[:8]}: refusing to compute advantages")
    r = rewards.float().view(-1, group_size)  # [N, G]
    mean = r.mean(dim=1, keepdim=True)  # [N, 1]
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)  # [N, 1]
    return ((r - mean) / (std + epsilon)).view(-1)  # [N * G]


def zero_spread_share(rewards: Tensor, group_size: int, atol: float = 1e-9) -> Tensor:
    """Share of groups whose ``group_size`` rewards are all equal (within ``atol``): their advantages
    are all 0 and the prompt gives GRPO no gradient.  ``[N * G]`` -> scalar in [0, 1]."""
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # [N, G]
    return ((r.amax(dim=1) - r.amin(dim=1)) <= atol).float().mean()


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    epsilon: float = 0.2,
    beta: float = 0.04,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped GRPO surrogate with the k3 KL to a reference policy, token-level mean.

        rho = exp(logp - old_logp)
        KL  = exp(ref - logp) - (ref - logp) - 1
        loss = - sum_t mask * [min(rho A, clip(rho, 1 - eps, 1 + eps) A) - beta KL] / sum_t mask

    The mean runs over every completion token of the batch (trl's ``bnpo``), so long and short
    completions weigh by their token counts.

    Args:
        logp: ``[B, T]`` log-probabilities of the sampled tokens under the policy being trained.
        old_logp: ``[B, T]`` the same under the policy that sampled them (detached).
        ref_logp: ``[B, T]`` the same under the reference policy, or None when ``beta == 0``.
        advantages: ``[B]`` one advantage per completion.
        mask: ``[B, T]`` 1 on completion tokens, 0 on padding.

    Returns:
        ``(loss, {"kl", "clip_fraction", "ratio"})``: the masked token means.
    """
    mask = mask.to(logp.dtype)  # [B, T]
    n_tokens = mask.sum().clamp(min=1.0)
    adv = advantages.to(logp.dtype)[:, None]  # [B, 1]
    ratio = torch.exp(logp - old_logp)  # [B, T]
    clipped = ratio.clamp(1.0 - epsilon, 1.0 + epsilon)  # [B, T]
    per_token = -torch.min(ratio * adv, clipped * adv)  # [B, T]
    kl = torch.zeros_like(logp)
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("grpo_loss: beta != 0 needs ref_logp")
        delta = ref_logp - logp  # [B, T]
        kl = torch.exp(delta) - delta - 1.0  # [B, T]
        per_token = per_token + beta * kl
    loss = (per_token * mask).sum() / n_tokens
    with torch.no_grad():
        was_clipped = ((ratio < 1.0 - epsilon) & (adv < 0)) | ((ratio > 1.0 + epsilon) & (adv > 0))  # [B, T]
        stats = {
            "kl": (kl * mask).sum() / n_tokens,
            "clip_fraction": (was_clipped.to(mask.dtype) * mask).sum() / n_tokens,
            "ratio": (ratio * mask).sum() / n_tokens,
        }
    return loss, {k: v.detach() for k, v in stats.items()}
