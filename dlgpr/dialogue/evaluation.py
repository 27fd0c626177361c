"""Pieces shared by the dialogue callback and ``scripts/evaluate_dialogue.py``.

``build_queries`` picks the searches (one per place: its vague initial caption, the target's
description of view 0 and its attributes); ``table_markdown`` writes the paper's Table 1 shape;
``recall_figure`` plots cumulative recall against the round. The gallery is encoded by
``dlgpr.retrieval.encode_gallery``.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Sequence

from dlgpr.data.schema import PlaceRecord
from dlgpr.dialogue.loop import DialogueQuery, DialogueResult
from dlgpr.data.turns import Target
from dlgpr.dialogue.types import RetrieverUser
from dlgpr.retrieval import TextRetriever


def build_queries(records: Iterable[PlaceRecord], num_queries: int | None = None, seed: int = 0) -> list[DialogueQuery]:
    """One query per place (its lowest view holds the target description), a seeded subset if asked."""
    first: dict[int, PlaceRecord] = {}
    for r in records:
        if r.place_id not in first or r.view < first[r.place_id].view:
            first[r.place_id] = r
    places = sorted(first)
    if num_queries is not None and num_queries < len(places):
        places = sorted(random.Random(f"dialogue-queries/{seed}").sample(places, num_queries))
    return [
        DialogueQuery(i, first[p].initial_caption, Target(p, first[p].description, first[p].attributes))
        for i, p in enumerate(places)
    ]


def bind_retriever(questioner: Any, retriever: TextRetriever) -> None:
    """Give the retriever to questioners that use it (PlugIR scores hypothetical answers with it)."""
    if isinstance(questioner, RetrieverUser):
        questioner.bind_retriever(retriever)


def table_markdown(results: dict[str, DialogueResult], report_rounds: Sequence[int] = (3, 5), ks: Sequence[int] = (1, 5)) -> str:
    """Table 1 shape: an "Initial" row (round 0), then each questioner at ``report_rounds``.

    Columns: cumulative R@K (in %) and BRI (over all rounds of the run).
    """
    head = "| method | round | " + " | ".join(f"R@{k}" for k in ks) + " | BRI | mean PRG |"
    sep = "|" + "---|" * (len(ks) + 4)
    lines = [head, sep]
    first = next(iter(results.values()))
    s0 = first.summary(ks)
    lines.append("| Initial | 0 | " + " | ".join(f"{100 * s0[f'round0/recall@{k}']:.1f}" for k in ks) + " | - | - |")
    for name, res in results.items():
        s = res.summary(ks)
        for t in report_rounds:
            if t > res.rounds:
                continue
            prg_mean = sum(s[f"round{u}/prg"] for u in range(1, t + 1)) / t
            bri_text = f"{s['bri']:.3f}" if t == res.rounds else "-"
            lines.append(f"| {name} | {t} | " + " | ".join(f"{100 * s[f'round{t}/recall@{k}']:.1f}" for k in ks) + f" | {bri_text} | {prg_mean:.3f} |")
    return "\n".join(lines) + "\n"


def recall_figure(results: dict[str, DialogueResult], k: int = 1):
    """Matplotlib figure of cumulative R@k against the round, one line per questioner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, res in results.items():
        s = res.summary((k,))
        ax.plot(range(res.rounds + 1), [100 * s[f"round{t}/recall@{k}"] for t in range(res.rounds + 1)], marker="o", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel(f"cumulative R@{k} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
