"""The dialogue loop: retrieve, ask, answer, refine, for up to ``rounds`` rounds.

``run_dialogue`` is batched across queries: each round encodes every query text in one
retriever pass and searches the gallery (encoded once, outside) in one call; the questioner and
the answerer get the whole round at once, so model-backed ones batch their generation and API
ones run their requests concurrently. Bad turns never stop the loop: a question in the wrong
format, an API failure, an empty answer or a candidate list shorter than asked are counted in
``DialogueResult.stats`` and the query goes on with what it has.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import Tensor

from dlgpr.data.schema import PlaceRecord
from dlgpr.dialogue.types import Answerer, AnswerRequest, Candidate, Questioner, QuestionRequest, Target, Turn
from dlgpr.metrics import bri, cumulative_recall, prg, recall_per_round
from dlgpr.ranking import best_rank, exact_positive_ranks, positive_rows, positive_scores, ranks_from_lists
from dlgpr.retrieval import TextRetriever
from dlgpr.search import Backend, topk_search


@dataclass(frozen=True)
class DialogueQuery:
    """One search: the user's vague first description and the place they mean."""

    query_id: int
    initial_description: str
    target: Target


@dataclass
class Gallery:
    """The searched images, encoded once: ``embeddings [G, D]`` (normalised), ``place_ids [G]``."""

    embeddings: Tensor
    place_ids: Tensor
    keys: list[str]
    descriptions: list[str]
    attributes: list[dict[str, Any]]
    image_fn: Callable[[int], Image.Image] | None = None

    def __post_init__(self) -> None:
        n = self.embeddings.shape[0]
        if not (len(self.place_ids) == len(self.keys) == len(self.descriptions) == len(self.attributes) == n):
            raise ValueError("gallery fields must all have one entry per image")
        ids, counts = torch.unique(self.place_ids, return_counts=True)
        self._positives = dict(zip(ids.tolist(), counts.tolist()))

    @classmethod
    def from_records(cls, records: Sequence[PlaceRecord], embeddings: Tensor, image_fn: Callable[[int], Image.Image] | None = None) -> "Gallery":
        return cls(
            embeddings=embeddings,
            place_ids=torch.tensor([r.place_id for r in records], dtype=torch.long),
            keys=[r.key for r in records],
            descriptions=[r.description for r in records],
            attributes=[r.attributes for r in records],
            image_fn=image_fn,
        )

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def num_positives(self, place_id: int) -> int:
        return self._positives.get(int(place_id), 0)

    def candidate(self, index: int, score: float) -> Candidate:
        fn = self.image_fn
        return Candidate(
            key=self.keys[index],
            place_id=int(self.place_ids[index]),
            description=self.descriptions[index],
            attributes=self.attributes[index],
            score=score,
            image=(lambda: fn(index)) if fn is not None else None,
            embedding=self.embeddings[index],
        )


def compose_query(initial_description: str, history: Sequence[Turn]) -> str:
    """``d_t = concat(d_0, a_1, ..., a_t)``: answers only, failed turns skipped."""
    return " ".join([initial_description.strip(), *(t.answer.strip() for t in history if not t.failed)])


@dataclass
class DialogueResult:
    """Everything a dialogue run produced, per query and round (rounds 0..T).

    ``ranks [Q, T+1]``: 1-based rank of the best image of the target place (float64: the
    expected rank of ``dlgpr.ranking``, a half-integer when scores tie); ``positive_ranks
    [Q, T+1, P]``: ranks of all its images (0 = padding); ``num_positives [Q]``; ``turns[q]``:
    the T exchanges; ``top_keys[q][t]``: the candidates of round t.
    """

    queries: list[DialogueQuery]
    ranks: Tensor
    positive_ranks: Tensor
    num_positives: Tensor
    turns: list[list[Turn]]
    top_keys: list[list[list[str]]]
    stats: Counter = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return int(self.ranks.shape[1]) - 1

    def prg_per_round(self) -> Tensor:
        """``[Q, T]`` PRG of each question round (round t compares ranks t-1 and t)."""
        cols = [prg(self.positive_ranks[:, t - 1], self.positive_ranks[:, t], self.num_positives) for t in range(1, self.rounds + 1)]
        return torch.stack(cols, dim=1) if cols else torch.zeros(len(self.queries), 0, dtype=torch.float64)

    def summary(self, ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
        """Metrics: per-round and cumulative recall@K for every round, BRI, mean PRG per round."""
        per = recall_per_round(self.ranks, ks)
        cum = cumulative_recall(self.ranks, ks)
        out: dict[str, Any] = {"queries": len(self.queries), "rounds": self.rounds}
        for t in range(self.rounds + 1):
            for k in ks:
                out[f"round{t}/recall@{k}"] = float(cum[k][t])
                out[f"round{t}/recall@{k}_this_round"] = float(per[k][t])
        if self.rounds >= 1:
            out["bri"] = bri(self.ranks)
            mean_prg = self.prg_per_round().mean(dim=0)
            for t in range(1, self.rounds + 1):
                out[f"round{t}/prg"] = float(mean_prg[t - 1])
        out["stats"] = dict(self.stats)
        return out

    def records(self) -> list[dict[str, Any]]:
        """Per-query JSON-able records (transcript, ranks, candidates)."""
        out = []
        for i, q in enumerate(self.queries):
            out.append({
                "query_id": q.query_id,
                "place_id": q.target.place_id,
                "initial_description": q.initial_description,
                "ranks": self.ranks[i].tolist(),
                "turns": [{"question": t.question, "think": t.think, "answer": t.answer, "failed": t.failed, "failure": t.failure} for t in self.turns[i]],
                "top_keys": self.top_keys[i],
            })
        return out

    def transcript(self, i: int) -> str:
        q = self.queries[i]
        lines = [f"query {q.query_id} (place {q.target.place_id}): \"{q.initial_description}\" -> rank {float(self.ranks[i, 0]):g}"]
        for t, turn in enumerate(self.turns[i], start=1):
            status = f" [failed: {turn.failure}]" if turn.failed else ""
            lines.append(f"  Q{t}: {turn.question}{status}\n  A{t}: {turn.answer} -> rank {float(self.ranks[i, t]):g}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"summary": self.summary(), "timings": self.timings, "queries": self.records()}, indent=1)




def _positive_ranks(idx: Tensor, scores: Tensor, labels: Tensor, emb: Tensor, gallery: Gallery, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Best rank ``[Q]`` and the ranks of all positives ``[Q, P]`` from a backend's top lists ``[Q, depth]``.

    The rank rule of ``dlgpr.ranking`` (expected rank under a random order of ties): the lists
    decide the positives they cover, the positives' scores come from the embeddings, and a query
    whose tie group reaches the end of its list is counted over the whole gallery. Positives
    deeper than the list get ``depth + 1``; entries past a query's |P| are 0 (padding).
    """
    depth = idx.shape[1]
    listed = idx >= 0  # [Q, depth]
    is_pos = (gallery.place_ids[idx.clamp(min=0)] == labels[:, None]) & listed  # [Q, depth]
    valid = rows >= 0  # [Q, P]
    ps = positive_scores(emb, gallery.embeddings, rows)  # [Q, P]
    ranks, undecided = ranks_from_lists(scores.float(), is_pos, listed, ps, valid, len(gallery))
    if undecided.any():
        todo = undecided.nonzero().flatten()
        ranks[todo] = exact_positive_ranks(emb[todo], gallery.embeddings, rows[todo])[0]
    return best_rank(ranks, valid.sum(dim=1), depth + 1), ranks


def _exact_search(emb: Tensor, gallery: Gallery, rows: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-``k`` candidates and exact positive ranks over the whole gallery (``dlgpr.ranking``).

    Returns ``scores [Q, k]``, ``idx [Q, k]``, ``best [Q]``, ``positive ranks [Q, P]``.
    """
    ranks, scores, idx = exact_positive_ranks(emb.float(), gallery.embeddings, rows, k)
    best = best_rank(ranks, (rows >= 0).sum(dim=1), len(gallery) + 1)
    return scores, idx, best, ranks


def gallery_positive_ranks(emb: Tensor, gallery: Gallery, place_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Exact ranks of every image of each query's place over the whole gallery (``dlgpr.ranking``).

    ``emb [Q, D]`` normalised query embeddings. Returns ``positive ranks [Q, P]`` (ascending,
    0 = padding past the place's image count) and ``num_positives [Q]``: what ``metrics.prg`` takes.
    """
    labels = torch.as_tensor(list(place_ids), dtype=torch.long)
    rows = positive_rows(labels, gallery.place_ids)  # [Q, P]
    ranks, _, _ = exact_positive_ranks(emb.float(), gallery.embeddings, rows)
    return ranks, (rows >= 0).sum(dim=1)


def run_dialogue(
    retriever: TextRetriever,
    questioner: Questioner,
    answerer: Answerer,
    queries: Sequence[DialogueQuery],
    gallery: Gallery,
    rounds: int = 5,
    top_k: int = 10,
    rank_depth: int | None = None,
    backend: Backend = "auto",
    candidate_sets: Sequence[Sequence[int]] | None = None,
) -> DialogueResult:
    """Run ``rounds`` question rounds for every query.

    Args:
        retriever: embeds query texts (``embed_texts``), normalised like the gallery.
        questioner: asks one question per (query, round) from the top-``top_k`` candidates.
        answerer: the simulated user.
        queries: the searches (initial description + target place).
        gallery: the searched images, already encoded.
        rounds: question rounds T (the paper uses 5; rounds 0..T are ranked).
        top_k: candidates shown to the questioner.
        rank_depth: search depth; ranks deeper than it are reported as ``depth + 1``. ``None``
            searches the whole gallery, so ranks (and BRI, PRG) are exact.
        backend: top-k search backend.
        candidate_sets: gallery rows shown to the questioner for each query, in every round,
            instead of the retrieved top-``top_k`` (the compact candidate set of the DQ-Pilot
            corpus: target, positive view, hard negatives). Their scores are the round's.

    The query of round t is ``questioner.compose_query(d_0, history)`` when the questioner
    defines it (PlugIR rewrites the dialogue), else ``compose_query``: d_0 and the answers.
    """
    if rounds < 0 or top_k < 1:
        raise ValueError("rounds must be >= 0 and top_k >= 1")
    if len(gallery) == 0 or not queries:
        raise ValueError("run_dialogue needs a non-empty gallery and at least one query")
    if candidate_sets is not None:
        if len(candidate_sets) != len(queries):
            raise ValueError(f"candidate_sets has {len(candidate_sets)} entries for {len(queries)} queries")
        if any(not 0 <= int(j) < len(gallery) for c in candidate_sets for j in c):
            raise ValueError("candidate_sets holds a row outside the gallery")
    depth = len(gallery) if rank_depth is None else min(int(rank_depth), len(gallery))
    depth = max(depth, min(top_k, len(gallery)))
    labels = torch.tensor([q.target.place_id for q in queries], dtype=torch.long)
    rows = positive_rows(labels, gallery.place_ids)  # [Q, P] gallery rows of each target place
    if not bool((rows >= 0).any()):
        raise ValueError("no query's target place has an image in the gallery")
    stats: Counter = Counter()
    stats["targets_missing_from_gallery"] = sum(1 for p in labels.tolist() if gallery.num_positives(p) == 0)
    timings = {"encode": 0.0, "search": 0.0, "question": 0.0, "answer": 0.0}
    compose = getattr(questioner, "compose_query", compose_query)
    histories: list[list[Turn]] = [[] for _ in queries]
    ranks, pos_ranks, top_keys = [], [], [[] for _ in queries]
    gallery_emb = gallery.embeddings.float()

    for t in range(rounds + 1):
        texts = [compose(q.initial_description, h) for q, h in zip(queries, histories)]
        start = time.perf_counter()
        emb = retriever.embed_texts(texts)  # [Q, D]
        timings["encode"] += time.perf_counter() - start
        start = time.perf_counter()
        if rank_depth is None:  # exact: candidates by top-k, ranks by counting (no full sort)
            scores, idx, best, all_pos = _exact_search(emb.float(), gallery, rows, min(top_k, len(gallery)))
        else:
            scores, idx = topk_search(emb, gallery_emb, depth, backend=backend)  # [Q, depth]
            idx, scores = idx.cpu(), scores.cpu()
            best, all_pos = _positive_ranks(idx, scores, labels, emb.float().cpu(), gallery, rows)
        timings["search"] += time.perf_counter() - start
        ranks.append(best)
        pos_ranks.append(all_pos)
        shown = min(top_k, idx.shape[1])
        if shown < top_k:
            stats["short_candidate_lists"] += len(queries)
        for i in range(len(queries)):
            top_keys[i].append([gallery.keys[j] for j in idx[i, :shown].tolist()])
        if t == rounds:
            break

        def _shown(i: int) -> tuple:
            if candidate_sets is None:
                return tuple(gallery.candidate(int(j), float(s)) for j, s in zip(idx[i, :shown], scores[i, :shown]))
            rows = torch.as_tensor(list(candidate_sets[i]), dtype=torch.long)
            row_scores = (gallery_emb[rows] @ emb[i].float()).tolist()  # [C]
            return tuple(gallery.candidate(int(j), s) for j, s in zip(rows.tolist(), row_scores))

        requests = [
            QuestionRequest(
                query_id=q.query_id,
                round=t + 1,
                initial_description=q.initial_description,
                history=tuple(h),
                candidates=_shown(i),
            )
            for i, (q, h) in enumerate(zip(queries, histories))
        ]
        start = time.perf_counter()
        questions = _checked(questioner.ask(requests), len(requests), "questioner")
        timings["question"] += time.perf_counter() - start

        asking = [i for i, qu in enumerate(questions) if qu.ok and qu.text.strip()]
        asking_set = set(asking)
        for i, qu in enumerate(questions):
            if i not in asking_set:
                kind = qu.error or "question_format"
                stats[f"failed_question:{kind}"] += 1
                histories[i].append(Turn(question=qu.text, answer="", think=qu.think, failed=True, failure="question_format" if "format" in kind else "question_error"))
        answer_requests = [
            AnswerRequest(query_id=queries[i].query_id, round=t + 1, question=questions[i].text, target=queries[i].target, history=tuple(histories[i]))
            for i in asking
        ]
        start = time.perf_counter()
        answers = _checked(answerer.answer(answer_requests), len(answer_requests), "answerer") if answer_requests else []
        timings["answer"] += time.perf_counter() - start
        for i, ans in zip(asking, answers):
            qu = questions[i]
            if not ans.ok:
                stats[f"failed_answer:{ans.error or 'error'}"] += 1
                histories[i].append(Turn(question=qu.text, answer="", think=qu.think, failed=True, failure="answer_error"))
            elif not ans.text.strip():
                stats["empty_answers"] += 1
                histories[i].append(Turn(question=qu.text, answer="", think=qu.think, failed=True, failure="empty_answer"))
            else:
                histories[i].append(Turn(question=qu.text, answer=" ".join(ans.text.split()), think=qu.think))

    return DialogueResult(
        queries=list(queries),
        ranks=torch.stack(ranks, dim=1),  # [Q, T+1]
        positive_ranks=torch.stack(pos_ranks, dim=1),  # [Q, T+1, P]
        num_positives=torch.tensor([gallery.num_positives(int(p)) for p in labels]),
        turns=histories,
        top_keys=top_keys,
        stats=stats,
        timings=timings,
    )


def _checked(items: list, n: int, who: str) -> list:
    if len(items) != n:
        raise RuntimeError(f"{who} returned {len(items)} results for {n} requests")
    return items


__all__ = ["DialogueQuery", "DialogueResult", "Gallery", "compose_query", "gallery_positive_ranks", "run_dialogue"]
