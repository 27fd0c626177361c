"""Teacher dialogues of the DQ-Pilot corpus, each turn scored with PRG, SA and DDI (paper section 3.2 step 3).

For every place, a teacher questioner holds a ``rounds``-round dialogue over a *compact
candidate set*: the target view, a positive view of the same place and the
``num_hard_negatives`` places the trained retriever ranks highest for the target's description.
Each turn is recorded (:class:`~dlgpr.data.turns.DialogueTurnRecord`) with its history, the
teacher's ``<think>`` and question, the simulated user's answer, and three numbers:

* PRG of the turn: the gain in the target's positions over the whole gallery when the answer is
  appended to the query (``dlgpr.metrics.prg``), measured with the same retriever;
* SA of the candidate set (``dlgpr.metrics.semantic_ambiguity``, the retriever's text encoder);
* DDI = w_sa * SA + w_rid * (1 - PRG).

The teacher is any :class:`~dlgpr.dialogue.types.Questioner`: the oracle teacher on
SynthCities, an OpenAI-compatible model on real data, through the same code. How the turns are
split into stages is ``dlgpr.pipeline.ddi_split``; the resumable build, ``dlgpr.pipeline.corpus``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from dlgpr.data.turns import DialogueTurnRecord, turn_key
from dlgpr.dialogue.loop import DialogueQuery, run_dialogue
from dlgpr.dialogue.types import Answerer, Questioner
from dlgpr.metrics import ddi, semantic_ambiguity
from dlgpr.ranking import Gallery
from dlgpr.retrieval import TextRetriever
from dlgpr.search import topk_search


@dataclass
class CorpusConfig:
    """How the corpus is built and split (paper: 20k SFT turns ~70% low-DDI, 10k GRPO ~70% high-DDI)."""

    rounds: int = 5
    """Teacher rounds per dialogue."""
    num_hard_negatives: int = 2
    """Places the retriever confuses with the target, added to the candidate set."""
    prg_threshold: float = 0.0
    """tau_1: turns whose PRG is below it are dropped (**choice**: 0 drops the turns that hurt)."""
    sa_alpha: float = 0.5
    """alpha of SA (weight of the hard-negative similarity)."""
    w_sa: float = 0.5
    w_rid: float = 0.5
    ddi_threshold: float | None = None
    """Low-DDI turns are those with DDI <= it; None: the median DDI of the kept turns."""
    sft_size: int | None = None
    """Turns in the SFT stage; None: the largest sizes in ``size_ratio`` the split allows."""
    grpo_size: int | None = None
    """Turns in the GRPO stage; None: as for ``sft_size``."""
    size_ratio: float = 2.0
    """SFT : GRPO size ratio when the sizes are left to the builder (the paper's 20k : 10k)."""
    sft_low_fraction: float = 0.7
    """Share of low-DDI turns in the SFT stage."""
    grpo_high_fraction: float = 0.7
    """Share of high-DDI turns in the GRPO stage."""
    stage_sampling: Literal["ddi", "random"] = "ddi"
    """How the stages are drawn from the kept turns: ``ddi`` (the method: the DDI mixes above) or
    ``random`` (the paper's Table 4 "random sampling" row: disjoint stages of the same sizes drawn
    at random from the kept turns, whatever their DDI)."""
    chunk_places: int = 200
    """Places per resumable work chunk."""
    retry_failed: bool = True
    """A rerun redoes, whole, the dialogues of a finished chunk that have a failed turn (an API
    error after the client's retries, a reply out of format); the chunk's other dialogues are kept."""
    max_turns_per_shard: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.num_hard_negatives < 0 or self.chunk_places < 1 or self.max_turns_per_shard < 1:
            raise ValueError("rounds, chunk_places and max_turns_per_shard must be >= 1 and num_hard_negatives >= 0")
        for name in ("sa_alpha", "sft_low_fraction", "grpo_high_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"corpus.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("sft_size", "grpo_size"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"corpus.{name} must be >= 0")
        if self.size_ratio <= 0:
            raise ValueError(f"corpus.size_ratio must be > 0, got {self.size_ratio}")
        if self.stage_sampling not in ("ddi", "random"):
            raise ValueError(f"corpus.stage_sampling must be 'ddi' or 'random', got {self.stage_sampling!r}")


def compact_candidate_sets(
    queries: Sequence[DialogueQuery], gallery: Gallery, retriever: TextRetriever, num_hard_negatives: int, seed: int = 0
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Gallery rows of each query's compact candidate set, in a seeded shuffled order.

    The set is the target's first view, another view of the target (when there is one) and the
    best-ranked view of each of the ``num_hard_negatives`` other places the retriever scores
    highest for the target's description. Also returns, per query, the rows by role
    (``{"target", "positive", "negatives"}``) for SA.
    """
    by_place: dict[int, list[int]] = {}
    for row, pid in enumerate(gallery.place_ids.tolist()):
        by_place.setdefault(pid, []).append(row)
    emb = retriever.embed_texts([q.target.description for q in queries]).float()  # [Q, D]
    sets, roles = [], []
    depth = min(len(gallery), 8 * (num_hard_negatives + 1) + 8)
    _, top = topk_search(emb, gallery.search_embeddings(emb), depth, backend="torch")  # [Q, depth]: one batched search
    top = top.cpu()
    place_of = gallery.place_ids.tolist()
    for i, q in enumerate(queries):
        rows = by_place.get(q.target.place_id, [])
        if not rows:
            raise ValueError(f"place {q.target.place_id} has no image in the gallery")
        target, positive = rows[0], (rows[1] if len(rows) > 1 else rows[0])
        negatives: list[int] = []
        taken = {q.target.place_id}
        for r in top[i].tolist():
            if place_of[r] not in taken:  # the best-ranked image of each other place
                taken.add(place_of[r])
                negatives.append(r)
            if len(negatives) == num_hard_negatives:
                break
        shown = [target] + ([positive] if positive != target else []) + negatives
        random.Random(f"candidates/{seed}/{q.target.place_id}").shuffle(shown)
        sets.append(shown)
        roles.append({"target": target, "positive": positive, "negatives": negatives})
    return sets, roles


def candidate_set_ambiguity(roles: Sequence[dict[str, Any]], gallery: Gallery, retriever: TextRetriever, alpha: float) -> torch.Tensor:
    """``[Q]`` SA of each candidate set from the descriptions of its members (one batched encode)."""
    m = max((len(r["negatives"]) for r in roles), default=0)
    if m == 0:
        return torch.zeros(len(roles))
    texts: list[str] = []
    for r in roles:
        negs = r["negatives"] or [r["target"]]
        negs = negs + [negs[-1]] * (m - len(negs))  # pad by repeating (the mean is unchanged for one missing)
        texts += [gallery.descriptions[r["target"]], gallery.descriptions[r["positive"]], *(gallery.descriptions[n] for n in negs)]
    emb = retriever.embed_texts(texts).float().view(len(roles), m + 2, -1)  # [Q, 2 + M, D]
    return semantic_ambiguity(emb[:, 0], emb[:, 1], emb[:, 2:], alpha=alpha)


def generate_turns(
    queries: Sequence[DialogueQuery],
    gallery: Gallery,
    retriever: TextRetriever,
    teacher: Questioner,
    answerer: Answerer,
    config: CorpusConfig,
) -> tuple[list[DialogueTurnRecord], dict[str, int]]:
    """Run the teacher's dialogues for ``queries`` and record every answered turn with PRG, SA and DDI."""
    sets, roles = compact_candidate_sets(queries, gallery, retriever, config.num_hard_negatives, config.seed)
    sa = candidate_set_ambiguity(roles, gallery, retriever, config.sa_alpha)  # [Q]
    result = run_dialogue(retriever, teacher, answerer, queries, gallery, rounds=config.rounds,
                          top_k=max(len(s) for s in sets), candidate_sets=sets)
    prg = result.prg_per_round().float()  # [Q, T]
    stats: dict[str, Any] = {"dialogues": len(queries), "failed_turns": 0, "turns": 0, "failed_by_place": {}}
    out: list[DialogueTurnRecord] = []
    difficulty = ddi(sa[:, None].expand_as(prg), prg, config.w_sa, config.w_rid)  # [Q, T]
    for i, q in enumerate(queries):
        answered: list[dict[str, str]] = []
        for t, turn in enumerate(result.turns[i], start=1):
            if turn.failed:
                stats["failed_turns"] += 1
                key = str(q.target.place_id)  # JSON object keys are strings
                stats["failed_by_place"][key] = stats["failed_by_place"].get(key, 0) + 1
                continue
            d = float(difficulty[i, t - 1])
            out.append(DialogueTurnRecord(
                key=turn_key(q.target.place_id, t), place_id=q.target.place_id, round=t,
                initial_description=q.initial_description, history=list(answered),
                candidates=[gallery.keys[j] for j in sets[i]], think=turn.think, question=turn.question,
                answer=turn.answer, prg=float(prg[i, t - 1]), sa=float(sa[i]), ddi=d,
            ))
            answered.append({"question": turn.question, "answer": turn.answer})
            stats["turns"] += 1
    return out, stats


__all__ = ["CorpusConfig", "candidate_set_ambiguity", "compact_candidate_sets", "generate_turns"]
