"""Retrieval metrics as pure functions of tensors (docs/METHOD.md, "Retrieval metrics", "PRG, SA, DDI").

A query's *rank* is the 1-based position of the best-ranked gallery item of its place, expected
under a random order of tied scores (``dlgpr.ranking``, so it may be a half-integer); queries
whose place is absent from a top-k list get rank ``k + 1`` (i.e. "beyond k").
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "recall_at_k", "recall_per_round", "cumulative_recall", "bri", "discounted_gain", "ideal_gain", "prg", "log_rank_gain",
    "semantic_ambiguity", "ddi", "per_query_bri", "sign_test", "paired_bootstrap_interval", "auroc", "linear_probe",
]


def recall_at_k(ranks: Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries with ``rank <= K`` for each K.  ranks: ``[Q]`` 1-based."""
    if ranks.numel() == 0:
        raise ValueError("recall_at_k needs at least one query")
    return {int(k): float((ranks <= k).float().mean()) for k in ks}


# ---- dialogue metrics (ranks over rounds 0..T) ---------------------------------------------------


def recall_per_round(ranks: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """Recall@K of each round on its own.  ranks: ``[Q, T+1]`` -> ``{K: [T+1]}``."""
    return {int(k): (ranks <= k).float().mean(dim=0) for k in ks}


def cumulative_recall(ranks: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """Cumulative Recall@K up to each round (ChatIR): hit at K in ANY round s <= t.

    ranks: ``[Q, T+1]`` -> ``{K: [T+1]}``.
    """
    best = ranks.cummin(dim=1).values  # [Q, T+1]
    return {int(k): (best <= k).float().mean(dim=0) for k in ks}


def bri(ranks: Tensor) -> float:
    """Best log Rank Integral (PlugIR, log-rank version; lower is better).

    With ``m_t = min_{s<=t} R_s``: ``BRI = 1/T sum_{t=0}^{T-1} mean_q (ln m_t + ln m_{t+1}) / 2``,
    T = number of question rounds. ranks: ``[Q, T+1]`` 1-based. docs/METHOD.md works an example:
    ranks [8, 4, 6, 1, 1, 1] -> 0.7625.
    """
    if ranks.ndim != 2 or ranks.shape[1] < 2:
        raise ValueError(f"bri needs ranks [Q, T+1] with T >= 1, got {tuple(ranks.shape)}")
    log_m = ranks.cummin(dim=1).values.double().log()  # [Q, T+1]
    trapezoids = (log_m[:, :-1] + log_m[:, 1:]) / 2  # [Q, T]
    return float(trapezoids.mean(dim=0).mean())


def discounted_gain(positive_ranks: Tensor) -> Tensor:
    """``G = sum_j 1 / log2(r_j + 1)`` over the positives' 1-based ranks; 0 entries are padding.

    positive_ranks: ``[..., P]`` -> ``[...]``.
    """
    r = positive_ranks.double()
    gains = torch.where(r > 0, 1.0 / torch.log2(r.clamp(min=1) + 1), torch.zeros_like(r))  # [..., P]
    return gains.sum(dim=-1)


def ideal_gain(num_positives: Tensor, max_positives: int | None = None) -> Tensor:
    """``G* = sum_{k=1}^{|P|} 1 / log2(k + 1)``: every positive ranked on top.  [Q] -> [Q]"""
    p = int(max_positives if max_positives is not None else int(num_positives.max()) if num_positives.numel() else 0)
    k = torch.arange(1, p + 1, dtype=torch.float64)  # [P]
    c = 1.0 / torch.log2(k + 1)  # [P]
    mask = k[None, :] <= num_positives.double()[:, None]  # [Q, P]
    return (c[None, :] * mask).sum(dim=1)


def prg(prev_positive_ranks: Tensor, new_positive_ranks: Tensor, num_positives: Tensor, clamp: bool = False) -> Tensor:
    """Positional retrieval gain of one round (DlgPR): ``(G_i - G_{i-1}) / (G* - G_{i-1})``.

    Args:
        prev_positive_ranks: ``[Q, P]`` ranks of the positives before the round (0 = padding).
        new_positive_ranks: ``[Q, P]`` after the round.
        num_positives: ``[Q]`` |P| per query.
        clamp: clamp to [-1, 1] (as when PRG is a reward).

    Returns:
        ``[Q]`` float64. When the ranking was already ideal (``G* - G_{i-1} < 1e-9``, docs/METHOD.md
        **choice**): 0 if unchanged, else ``(G_i - G_{i-1}) / G*``. Negative when the round hurt.
    """
    g_prev = discounted_gain(prev_positive_ranks)  # [Q]
    g_new = discounted_gain(new_positive_ranks)  # [Q]
    g_star = ideal_gain(num_positives, prev_positive_ranks.shape[-1])  # [Q]
    room = g_star - g_prev  # [Q]
    delta = g_new - g_prev  # [Q]
    saturated = room < 1e-9
    out = torch.where(saturated, delta / g_star.clamp(min=1e-12), delta / torch.where(saturated, torch.ones_like(room), room))
    out = torch.where(saturated & (delta.abs() < 1e-12), torch.zeros_like(out), out)
    return out.clamp(-1.0, 1.0) if clamp else out


def log_rank_gain(prev_positive_ranks: Tensor, new_positive_ranks: Tensor, gallery_size: int) -> Tensor:
    """A dense alternative to :func:`prg`: how many halvings the target's best rank made, on the scale
    of the whole gallery, ``(log r_prev - log r_new) / log N`` (r = best positive rank, N = gallery size).

    PRG discounts by ``1 / log2(r + 1)``, so a round that moves the target from rank 300 to 150 of
    7,200 earns almost nothing; here it earns as much as a move from 2 to 1. In [-1, 1] (ranks are
    in 1..N); 0 when the best rank does not change.

    Args:
        prev_positive_ranks: ``[Q, P]`` 1-based ranks of the positives before the round (0 = padding;
            every row needs at least one positive).
        new_positive_ranks: ``[Q, P]`` after the round.
        gallery_size: N, the number of ranked images (> 1).
    """
    if gallery_size < 2:
        raise ValueError(f"log_rank_gain needs a gallery of at least 2 images, got {gallery_size}")

    def best(r: Tensor) -> Tensor:  # [Q, P] -> [Q]: the smallest non-padding rank
        r = r.double()
        return torch.where(r > 0, r, torch.full_like(r, math.inf)).min(dim=-1).values

    b_prev, b_new = best(prev_positive_ranks), best(new_positive_ranks)
    if not (torch.isfinite(b_prev).all() and torch.isfinite(b_new).all()):
        raise ValueError("log_rank_gain: a query has no positive rank (a row of padding only)")
    return ((b_prev.log() - b_new.log()) / math.log(gallery_size)).clamp(-1.0, 1.0)


def semantic_ambiguity(target: Tensor, positive: Tensor, negatives: Tensor, alpha: float = 0.5) -> Tensor:
    """SA of a candidate set (docs/METHOD.md "PRG, SA, DDI"): how alike the hard negatives read and how
    unlike the positive view reads, by the retriever's text encoder.

        SA = alpha * mean_n cos(t_target, t_neg_n) + (1 - alpha) * (1 - cos(t_target, t_pos))

    (the negative term averaged over the hard negatives: **choice**).

    Args:
        target: ``[N, D]`` text embeddings of the targets' descriptions.
        positive: ``[N, D]`` of a positive view's description.
        negatives: ``[N, M, D]`` of the M hard negatives' descriptions.
        alpha: weight of the negative term.

    Returns:
        ``[N]`` SA values.
    """
    t = torch.nn.functional.normalize(target.float(), dim=-1)  # [N, D]
    p = torch.nn.functional.normalize(positive.float(), dim=-1)  # [N, D]
    n = torch.nn.functional.normalize(negatives.float(), dim=-1)  # [N, M, D]
    neg_sim = torch.einsum("nd,nmd->nm", t, n).mean(dim=1)  # [N]
    pos_sim = (t * p).sum(dim=-1)  # [N]
    return alpha * neg_sim + (1.0 - alpha) * (1.0 - pos_sim)


def ddi(sa: Tensor, prg_values: Tensor, w_sa: float = 0.5, w_rid: float = 0.5) -> Tensor:
    """Dialogue difficulty index: DDI = w_sa * SA + w_rid * RID with RID = 1 - PRG.  [N], [N] -> [N]"""
    return w_sa * sa.float() + w_rid * (1.0 - prg_values.float())


# ---- paired comparisons of two runs over the same queries ---------------------------------------


def per_query_bri(ranks: Tensor) -> Tensor:
    """Each query's share of :func:`bri` (their mean is BRI).  ranks: ``[Q, T+1]`` -> ``[Q]``."""
    log_m = ranks.cummin(dim=1).values.double().log()  # [Q, T+1]
    return ((log_m[:, :-1] + log_m[:, 1:]) / 2).mean(dim=1)  # [Q]


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the probability, with no difference between two methods, of a
    split of the ``wins + losses`` discordant queries at least as uneven as the one seen.

        p = min(1, 2 * sum_{i <= min(wins, losses)} C(n, i) / 2^n),  n = wins + losses

    Ties (queries where both methods agree) carry no information and are left out by the caller.
    """
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must be >= 0")
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2.0 * tail / 2**n)


def paired_bootstrap_interval(differences: Tensor, num_samples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean per-query difference between two methods, resampling the
    queries with replacement (paired: a query's two values stay together).

    differences: ``[Q]`` value of method A minus method B per query. Returns ``(low, high)``.
    """
    if differences.ndim != 1 or differences.numel() == 0:
        raise ValueError("differences must be a non-empty [Q] tensor")
    if not 0.0 < level < 1.0 or num_samples < 1:
        raise ValueError("level must be in (0, 1) and num_samples >= 1")
    gen = torch.Generator().manual_seed(seed)
    d = differences.double()
    chunk = max(1, 2_000_000 // d.numel())  # bounded memory for large query sets
    means = torch.cat([d[torch.randint(0, d.numel(), (min(chunk, num_samples - s), d.numel()), generator=gen)].mean(dim=1)
                       for s in range(0, num_samples, chunk)])  # [S]
    alpha = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return float(low), float(high)


# ---- classification (the localizability reward model) ------------------------------------------


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic over ``P * N``).

    scores: ``[M]`` any real numbers (only their order matters); labels: ``[M]`` 0/1 or bool.
    Computed from average ranks (tied scores share the mean of their ranks), so a constant score
    gives exactly 0.5. NaN when one class is absent (the area is undefined).
    """
    s = scores.detach().reshape(-1).double()  # [M]
    y = labels.detach().reshape(-1).bool()  # [M]
    if s.numel() != y.numel():
        raise ValueError(f"auroc: {s.numel()} scores for {y.numel()} labels")
    if not torch.isfinite(s).all():
        raise ValueError("auroc: scores must be finite")
    n_pos = int(y.sum())
    n_neg = int(y.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    values, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)  # [U], [M], [U]
    first = torch.cumsum(counts, 0) - counts  # [U] 0-based rank of each distinct value's first item
    mean_rank = first.double() + (counts.double() + 1.0) / 2.0  # [U] 1-based average rank of the tie group
    rank_sum = float(mean_rank[inverse][y].sum())  # sum of the positives' ranks
    u = rank_sum - n_pos * (n_pos + 1) / 2.0  # pairs (positive, negative) the positive wins, ties 1/2
    return u / (n_pos * n_neg)


def linear_probe(x_train: torch.Tensor, y_train: list[str], x_eval: torch.Tensor, l2: float = 1.0) -> list[str]:
    """A ridge-regression classifier (one-hot targets, features standardised on the train set,
    a bias, penalty ``l2 * |W|^2``), solved in closed form: the predicted labels of ``x_eval``."""
    classes = sorted(set(y_train))
    if len(classes) == 1:
        return classes * len(x_eval)
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)

    def design(x: torch.Tensor) -> torch.Tensor:
        z = ((x - mean) / std).double()
        return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)

    x = design(x_train)
    targets = torch.zeros(len(y_train), len(classes), dtype=torch.float64)
    targets[torch.arange(len(y_train)), torch.tensor([classes.index(v) for v in y_train])] = 1.0
    penalty = l2 * torch.eye(x.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0.0  # the bias is not penalised
    w = torch.linalg.solve(x.T @ x + penalty, x.T @ targets)
    return [classes[i] for i in (design(x_eval) @ w).argmax(1).tolist()]
