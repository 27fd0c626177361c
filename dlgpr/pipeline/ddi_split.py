"""The DDI split of the corpus: the PRG filter and the disjoint ``sft`` and ``grpo`` stages (paper section 3.2 step 4).

Turns with PRG < tau_1 are dropped; the rest are split at a DDI threshold into low- and
high-DDI turns, and two disjoint stages are drawn: ``sft`` (mostly low-DDI) and ``grpo``
(mostly high-DDI), or, for the ablation, stages of the same sizes drawn at random.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Sequence

from dlgpr.data.turns import DialogueTurnRecord
from dlgpr.pipeline.dialogues import CorpusConfig

log = logging.getLogger("dlgpr.pipeline")


def split_by_ddi(turns: Sequence[DialogueTurnRecord], config: CorpusConfig) -> tuple[dict[str, list[DialogueTurnRecord]], dict[str, Any]]:
    """Drop PRG < tau_1, split at the DDI threshold, draw the disjoint ``sft`` and ``grpo`` stages.

    With ``stage_sampling="random"`` the stages have the sizes the DDI draw gives, but their
    turns are drawn at random from all kept turns (the ablation of the DDI selection).
    Returns the stages (records with ``stage`` set) and the numbers behind them.
    """
    kept = [t for t in turns if t.prg >= config.prg_threshold]
    ddis = sorted(t.ddi for t in kept)
    thr = config.ddi_threshold if config.ddi_threshold is not None else (ddis[(len(ddis) - 1) // 2] if ddis else 0.0)
    rng = random.Random(f"ddi-split/{config.seed}")
    low = [t for t in kept if t.ddi <= thr]
    high = [t for t in kept if t.ddi > thr]
    rng.shuffle(low)
    rng.shuffle(high)
    fs, fg = config.sft_low_fraction, config.grpo_high_fraction
    if config.sft_size is None and config.grpo_size is None:
        # the largest (S, R) with S = ratio * R that both pools can supply
        r = config.size_ratio
        need_low, need_high = fs * r + (1 - fg), (1 - fs) * r + fg
        n_grpo = int(min(len(low) / need_low if need_low else math.inf, len(high) / need_high if need_high else math.inf))
        n_sft = int(r * n_grpo)
    else:
        n_sft = config.sft_size if config.sft_size is not None else 0
        n_grpo = config.grpo_size if config.grpo_size is not None else 0
    sft_low = min(round(fs * n_sft), len(low))
    sft_high = min(n_sft - round(fs * n_sft), len(high))
    grpo_high = min(round(fg * n_grpo), len(high) - sft_high)
    grpo_low = min(n_grpo - round(fg * n_grpo), len(low) - sft_low)
    sft = low[:sft_low] + high[:sft_high]
    grpo = high[sft_high : sft_high + grpo_high] + low[sft_low : sft_low + grpo_low]
    if len(sft) < n_sft or len(grpo) < n_grpo:
        log.warning("DDI split: asked for %d SFT / %d GRPO turns, the kept turns supply %d / %d", n_sft, n_grpo, len(sft), len(grpo))
    if config.stage_sampling == "random":  # the same sizes, turns drawn whatever their DDI
        pool = sorted(kept, key=lambda t: t.key)
        random.Random(f"random-stages/{config.seed}").shuffle(pool)
        sft, grpo = pool[: len(sft)], pool[len(sft) : len(sft) + len(grpo)]
        sft_low, grpo_low = sum(t.ddi <= thr for t in sft), sum(t.ddi <= thr for t in grpo)
        sft_high, grpo_high = len(sft) - sft_low, len(grpo) - grpo_low
    stages = {
        "sft": sorted((t.with_stage("sft") for t in sft), key=lambda t: t.key),
        "grpo": sorted((t.with_stage("grpo") for t in grpo), key=lambda t: t.key),
    }
    info = {
        "stage_sampling": config.stage_sampling,
        "turns": len(turns), "kept_after_prg_filter": len(kept), "ddi_threshold": thr, "low_ddi": len(low), "high_ddi": len(high),
        "sft": {"turns": len(sft), "low_ddi": sft_low, "high_ddi": sft_high},
        "grpo": {"turns": len(grpo), "low_ddi": grpo_low, "high_ddi": grpo_high},
    }
    return stages, info



def summarize_turns(turns: Sequence[DialogueTurnRecord]) -> dict[str, Any]:
    """Mean PRG per round, share of turns with PRG > 0, DDI quartiles (for the manifest)."""
    by_round: dict[int, list[float]] = {}
    for t in turns:
        by_round.setdefault(t.round, []).append(t.prg)
    ddis = sorted(t.ddi for t in turns)
    q = (lambda f: ddis[min(len(ddis) - 1, int(f * len(ddis)))]) if ddis else (lambda f: 0.0)
    return {
        "turns": len(turns),
        "mean_prg_by_round": {r: sum(v) / len(v) for r, v in sorted(by_round.items())},
        "positive_prg_share": sum(t.prg > 0 for t in turns) / max(len(turns), 1),
        "ddi_quartiles": [q(0.25), q(0.5), q(0.75)],
    }


__all__ = ["split_by_ddi", "summarize_turns"]
