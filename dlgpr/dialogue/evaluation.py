"""Pieces shared by the dialogue callback and ``scripts/evaluate_dialogue.py``.

``build_queries`` picks the searches (one per place: its vague initial caption, the target's
description of view 0 and its attributes); ``table_markdown`` writes the paper's Table 1 shape;
``recall_figure`` plots cumulative recall against the round; ``dialogue_figure`` draws one
dialogue (the caption, each round's question and answer, the top-ranked thumbnails with the
target marked). The gallery is encoded by ``dlgpr.retrieval.encode_gallery``.
"""

from __future__ import annotations

import random
import textwrap
from typing import Any, Callable, Iterable, Sequence

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


def dialogue_figure(result: DialogueResult, index: int, image: Callable[[str], Any] | None = None, title: str = "",
                    thumbnails: int = 5):
    """Matplotlib figure of dialogue ``index`` of ``result``: one row per round 0..T, the text on
    the left (round 0: the user's initial description; round t: question t and its answer) and
    the first ``thumbnails`` images of that round's ranking on the right, the target's views
    framed in green, with the target's rank above them.

    ``image(key)`` returns the PIL image of a gallery key (None, or a key it cannot read, draws a
    grey tile with the place id). Needs a result with ``ranked_keys`` (``run_dialogue`` records them).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if result.ranked_keys is None or result.ranked_places is None:
        raise ValueError("this DialogueResult has no ranked_keys (made by an older run_dialogue?)")
    if not 0 <= index < len(result.queries):
        raise IndexError(f"dialogue {index} of {len(result.queries)}")
    query, turns = result.queries[index], result.turns[index]
    rows = result.rounds + 1
    fig = plt.figure(figsize=(3.2 + 1.25 * thumbnails, 1.35 * rows + 0.5), dpi=110)
    grid = fig.add_gridspec(rows, thumbnails + 1, width_ratios=[3.2 / 1.25] + [1] * thumbnails, wspace=0.05, hspace=0.35)
    target = query.target.place_id
    for t in range(rows):
        ax = fig.add_subplot(grid[t, 0])
        ax.axis("off")
        if t == 0:
            text = f"user: {query.initial_description}"
        elif t - 1 < len(turns):
            turn = turns[t - 1]
            text = f"Q{t}: {turn.question}" + (f" [failed: {turn.failure}]" if turn.failed else "") + f"\nA{t}: {turn.answer}"
        else:
            text = f"(stopped after round {len(turns)})"
        ax.text(0.0, 0.5, "\n".join(textwrap.fill(line, 46) for line in text.split("\n")), va="center", ha="left", fontsize=6.5,
                transform=ax.transAxes)
        ax.text(0.0, 1.02, f"round {t}: target rank {float(result.ranks[index, t]):g}", fontsize=7, fontweight="bold",
                transform=ax.transAxes, va="bottom")
        keys, places = result.ranked_keys[index][t], result.ranked_places[index][t]
        for j in range(thumbnails):
            tile = fig.add_subplot(grid[t, j + 1])
            tile.set_xticks([])
            tile.set_yticks([])
            if j >= len(keys):
                tile.axis("off")
                continue
            picture = None
            if image is not None:
                try:
                    picture = image(keys[j])
                except (KeyError, OSError, ValueError):
                    picture = None
            if picture is not None:
                tile.imshow(picture)
            else:
                tile.set_facecolor("0.85")
                tile.text(0.5, 0.5, f"place {places[j]}", ha="center", va="center", fontsize=6, transform=tile.transAxes)
            hit = places[j] == target
            for side in tile.spines.values():
                side.set_edgecolor("tab:green" if hit else "0.6")
                side.set_linewidth(3.0 if hit else 0.5)
            if hit:
                tile.add_patch(Rectangle((0, 0), 1, 1, transform=tile.transAxes, fill=False, edgecolor="tab:green", linewidth=3))
            if t == 0:
                tile.set_title(f"#{j + 1}", fontsize=7)
    fig.suptitle(title or f"dialogue {query.query_id} (target place {target})", fontsize=9)
    return fig
