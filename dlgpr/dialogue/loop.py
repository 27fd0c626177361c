"""The dialogue loop: retrieve, ask, answer, refine, for up to ``rounds`` rounds.

``run_dialogue`` is batched across queries: each round encodes every query text in one
retriever pass and searches the gallery (encoded once, outside) in one call; the questioner and
the answerer get the whole round at once, so model-backed ones batch their generation and API
ones run their requests concurrently. Bad turns never stop the loop: a question in the wrong
format, an API failure, an empty answer or a candidate list shorter than asked are counted in
``DialogueResult.stats`` and the query goes on with what it has.

With a :class:`~dlgpr.dialogue.stopping.StoppingConfig` a query stops being asked once the
retriever is confident (:func:`~dlgpr.dialogue.stopping.stop_decisions`); its later rounds repeat
the list it stopped at. The pieces of one round (:func:`composer_for`, :func:`search_round`,
:func:`question_requests`, :func:`record_questions`, :func:`answer_turn`) are also what
``dlgpr.app.PlaceFinder`` runs for a person, so both update the query the same way.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from dlgpr.data.turns import Answer, AnswerRequest, Candidate, Question, QuestionRequest, Target, Turn, TurnFailure
from dlgpr.dialogue.stopping import StoppingConfig, stop_decisions
from dlgpr.dialogue.types import Answerer, QueryComposer, Questioner, compose_query
from dlgpr.metrics import bri, cumulative_recall, prg, recall_per_round
from dlgpr.ranking import Gallery, backend_search, exact_search, positive_rows
from dlgpr.retrieval import TextRetriever
from dlgpr.search import Backend


@dataclass(frozen=True)
class DialogueQuery:
    """One search: the user's vague first description and the place they mean."""

    query_id: int
    initial_description: str
    target: Target


@dataclass
class DialogueResult:
    """Everything a dialogue run produced, per query and round (rounds 0..T).

    ``ranks [Q, T+1]``: 1-based rank of the best image of the target place (float64: the
    expected rank of ``dlgpr.ranking``, a half-integer when scores tie); ``positive_ranks
    [Q, T+1, P]``: ranks of all its images (0 = padding); ``num_positives [Q]``; ``turns[q]``:
    the T exchanges (fewer when it stopped early); ``top_keys[q][t]``: the candidates of round t;
    ``ranked_keys[q][t]`` / ``ranked_places[q][t]``: the gallery keys and place ids of the first
    ``keep_ranked`` images of round t's ranking (what a figure of the dialogue shows).

    With adaptive stopping, ``questions_asked [Q]`` is the round each query stopped at (T when it
    never stopped) and ``confidence [Q, T+1]`` the stopping rule's value of each ranked round
    (NaN after the stop); rounds after a stop repeat its ranks and candidates, so round T holds
    the list each query ended with. Without stopping, ``questions_asked`` is T for every query
    and ``confidence`` is None.
    """

    queries: list[DialogueQuery]
    ranks: Tensor
    positive_ranks: Tensor
    num_positives: Tensor
    turns: list[list[Turn]]
    top_keys: list[list[list[str]]]
    stats: Counter = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)
    questions_asked: Tensor | None = None
    confidence: Tensor | None = None
    ranked_keys: list[list[list[str]]] | None = None
    ranked_places: list[list[list[int]]] | None = None

    def __post_init__(self) -> None:
        if self.questions_asked is None:
            self.questions_asked = torch.full((len(self.queries),), self.rounds, dtype=torch.long)

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
        out["mean_questions"] = float(self.questions_asked.double().mean()) if len(self.queries) else 0.0
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
                "questions_asked": int(self.questions_asked[i]),
                "turns": [{"question": t.question, "think": t.think, "answer": t.answer, "failed": t.failed, "failure": t.failure} for t in self.turns[i]],
                "top_keys": self.top_keys[i],
                **({"ranked_keys": self.ranked_keys[i], "ranked_places": self.ranked_places[i]} if self.ranked_keys is not None
                   and self.ranked_places is not None else {}),
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
    stopping: StoppingConfig | None = None,
    keep_ranked: int = 5,
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
        stopping: adaptive stopping (:mod:`dlgpr.dialogue.stopping`): after each ranked round
            a query whose list passes the rule is asked nothing more. None: always ``rounds``.
        keep_ranked: images of each round's ranking recorded per query (``ranked_keys``,
            ``ranked_places``), whatever ``top_k``: the thumbnails of a dialogue figure.

    Each round: compose the queries, encode them, search and rank (:func:`search_round`), decide
    who stops (with ``stopping``), then ask (:func:`question_requests`, failures recorded by
    :func:`record_questions`) and answer (:func:`_answer`, each turn by :func:`answer_turn`). The query of round t is ``questioner.compose_query(d_0, history)``
    when the questioner is a :class:`~dlgpr.dialogue.types.QueryComposer` (PlugIR rewrites the
    dialogue), else :func:`~dlgpr.dialogue.types.compose_query`: d_0 and the answers.
    """
    depth = _check_inputs(queries, gallery, rounds, top_k, rank_depth, candidate_sets)
    labels = torch.tensor([q.target.place_id for q in queries], dtype=torch.long)
    rows = positive_rows(labels, gallery.place_ids)  # [Q, P] gallery rows of each target place
    if not bool((rows >= 0).any()):
        raise ValueError("no query's target place has an image in the gallery")
    stats: Counter = Counter()
    stats["targets_missing_from_gallery"] = sum(1 for p in labels.tolist() if gallery.num_positives(p) == 0)
    timings = {"encode": 0.0, "search": 0.0, "question": 0.0, "answer": 0.0}
    compose = composer_for(questioner)
    if keep_ranked < 0:
        raise ValueError(f"keep_ranked must be >= 0, got {keep_ranked}")
    listed_rule = max(top_k, stopping.top_k) if stopping is not None else top_k  # the stopping rule may read deeper than the questioner
    listed = max(listed_rule, keep_ranked)
    depth = max(depth, min(listed, len(gallery)))
    n = len(queries)
    histories: list[list[Turn]] = [[] for _ in queries]
    ranks, pos_ranks, top_keys = [], [], [[] for _ in queries]
    ranked_keys: list[list[list[str]]] = [[] for _ in queries]
    ranked_places: list[list[list[int]]] = [[] for _ in queries]
    active = list(range(n))  # queries still being asked
    asked = torch.full((n,), rounds, dtype=torch.long)
    conf = torch.full((n, rounds + 1), float("nan"), dtype=torch.float64) if stopping is not None else None

    for t in range(rounds + 1):
        act = torch.tensor(active, dtype=torch.long)
        best = ranks[-1].clone() if ranks else torch.zeros(n, dtype=torch.float64)  # stopped queries keep their last round
        all_pos = pos_ranks[-1].clone() if pos_ranks else torch.zeros(n, rows.shape[1], dtype=torch.float64)
        if active:
            texts = [compose(queries[i].initial_description, histories[i]) for i in active]
            with _timer(timings, "encode"):
                emb = retriever.embed_texts(texts)  # [A, D]
            with _timer(timings, "search"):
                scores, idx, act_best, act_pos = search_round(emb, gallery, rows[act], labels[act], listed, rank_depth, depth, backend)
            best[act] = act_best
            all_pos[act] = act_pos.to(all_pos.dtype)
        ranks.append(best)
        pos_ranks.append(all_pos)
        if not active:
            for i in range(n):
                top_keys[i].append(top_keys[i][-1])
                ranked_keys[i].append(ranked_keys[i][-1])
                ranked_places[i].append(ranked_places[i][-1])
            continue
        shown = min(top_k, idx.shape[1])
        if shown < top_k:
            stats["short_candidate_lists"] += len(active)
        keep = set(active)
        head = idx[:, :keep_ranked]  # [A, keep_ranked] gallery rows, -1 for an empty slot
        head_rows, head_places = head.tolist(), gallery.place_ids[head.clamp(min=0)].tolist()
        for a, i in enumerate(active):
            top_keys[i].append([gallery.keys[j] for j in idx[a, :shown].tolist()])
            ranked_keys[i].append([gallery.keys[j] for j in head_rows[a] if j >= 0])
            ranked_places[i].append([p for j, p in zip(head_rows[a], head_places[a]) if j >= 0])
        for i in range(n):
            if i not in keep:
                top_keys[i].append(top_keys[i][-1])
                ranked_keys[i].append(ranked_keys[i][-1])
                ranked_places[i].append(ranked_places[i][-1])
        if t == rounds:
            break
        if stopping is not None:
            head_s, head_i = scores[:, :listed_rule], idx[:, :listed_rule]  # the rule reads what it read before keep_ranked
            stop, c = stop_decisions(head_s, gallery.place_ids[head_i.clamp(min=0)].masked_fill(head_i < 0, -1), t, stopping)
            conf[act, t] = c
            for a, i in enumerate(active):
                if bool(stop[a]):
                    asked[i] = t
            still = [a for a in range(len(active)) if not bool(stop[a])]
            stats["stopped_early"] += len(active) - len(still)
            active = [active[a] for a in still]
            if not active:
                continue
            sel = torch.tensor(still, dtype=torch.long)
            emb, scores, idx = emb[sel], scores[sel], idx[sel]

        qs = [queries[i] for i in active]
        hs = [histories[i] for i in active]
        sets = [candidate_sets[i] for i in active] if candidate_sets is not None else None
        requests = question_requests(qs, hs, t + 1, gallery, emb, scores[:, :shown], idx[:, :shown], sets)
        with _timer(timings, "question"):
            questions = _checked(questioner.ask(requests), len(requests), "questioner")
        asking = record_questions(questions, hs, stats)
        _answer(answerer, qs, questions, asking, hs, t + 1, stats, timings)

    return DialogueResult(
        queries=list(queries),
        ranks=torch.stack(ranks, dim=1),  # [Q, T+1]
        positive_ranks=torch.stack(pos_ranks, dim=1),  # [Q, T+1, P]
        num_positives=torch.tensor([gallery.num_positives(int(p)) for p in labels]),
        turns=histories,
        top_keys=top_keys,
        stats=stats,
        timings=timings,
        questions_asked=asked,
        confidence=conf,
        ranked_keys=ranked_keys,
        ranked_places=ranked_places,
    )


def composer_for(questioner: Questioner) -> Callable[[str, Sequence[Turn]], str]:
    """How the query of a round is written: ``questioner.compose_query(d_0, history)`` when the
    questioner is a :class:`~dlgpr.dialogue.types.QueryComposer` (PlugIR rewrites the dialogue),
    else :func:`~dlgpr.dialogue.types.compose_query` (d_0 and the answers)."""
    return questioner.compose_query if isinstance(questioner, QueryComposer) else compose_query


def _check_inputs(
    queries: Sequence[DialogueQuery], gallery: Gallery, rounds: int, top_k: int, rank_depth: int | None,
    candidate_sets: Sequence[Sequence[int]] | None,
) -> int:
    """Refuse arguments the loop cannot run with; return the search depth (at least the candidates shown)."""
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
    return max(depth, min(top_k, len(gallery)))


def search_round(
    emb: Tensor, gallery: Gallery, rows: Tensor, labels: Tensor, top_k: int, rank_depth: int | None, depth: int, backend: Backend
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``scores, idx`` of the listed candidates, ``best [Q]`` and ``positive ranks [Q, P]`` of one round.

    Exact without a ``rank_depth`` (candidates by top-k, ranks by counting, no full sort); else
    the backend's top-``depth`` lists. On the search device (the retriever's GPU when it has
    one; ``dlgpr.search.search_device``), results on the CPU.
    """
    if rank_depth is None:
        return exact_search(emb.float(), gallery, rows, min(top_k, len(gallery)))
    return backend_search(emb, gallery, rows, labels, depth, backend)


_search = search_round  # the name scripts/gpu_check.py imports


def question_requests(
    queries: Sequence[DialogueQuery], histories: list[list[Turn]], round: int, gallery: Gallery, emb: Tensor, scores: Tensor,
    idx: Tensor, candidate_sets: Sequence[Sequence[int]] | None,
) -> list[QuestionRequest]:
    """What the questioner sees for each query: the shown candidates ``idx [Q, shown]`` with their
    ``scores``, or the query's fixed candidate set scored against this round's query ``emb``."""

    def shown(i: int) -> tuple[Candidate, ...]:
        if candidate_sets is None:
            return tuple(gallery.candidate(int(j), float(s)) for j, s in zip(idx[i], scores[i]))
        gallery_emb = gallery.search_embeddings(emb)  # [G, D] on the search device, copied once
        rows = torch.as_tensor(list(candidate_sets[i]), dtype=torch.long, device=gallery_emb.device)
        row_scores = (gallery_emb[rows] @ emb[i].to(gallery_emb.device).float()).tolist()  # [C]
        return tuple(gallery.candidate(int(j), s) for j, s in zip(rows.tolist(), row_scores))

    return [
        QuestionRequest(query_id=q.query_id, round=round, initial_description=q.initial_description, history=tuple(h), candidates=shown(i))
        for i, (q, h) in enumerate(zip(queries, histories))
    ]


def record_questions(questions: Sequence[Question], histories: list[list[Turn]], stats: Counter) -> list[int]:
    """Record a failed turn for every question that cannot be asked; return the indices of those that can."""
    asking = []
    for i, qu in enumerate(questions):
        if qu.ok and qu.text.strip():
            asking.append(i)
            continue
        stats[f"failed_question:{qu.error or TurnFailure.QUESTION_FORMAT.value}"] += 1
        histories[i].append(Turn(question=qu.text, answer="", think=qu.think, failed=True, failure=TurnFailure.of_question(qu).value))
    return asking


def _answer(
    answerer: Answerer, queries: Sequence[DialogueQuery], questions: Sequence[Question], asking: Sequence[int], histories: list[list[Turn]],
    round: int, stats: Counter, timings: dict[str, float],
) -> None:
    """Let the user answer the questions that can be asked (``asking``) and append each one's turn:
    answered, or failed (no answer, an empty one)."""
    requests = [
        AnswerRequest(query_id=queries[i].query_id, round=round, question=questions[i].text, target=queries[i].target, history=tuple(histories[i]))
        for i in asking
    ]
    with _timer(timings, "answer"):
        answers = _checked(answerer.answer(requests), len(requests), "answerer") if requests else []
    for i, ans in zip(asking, answers):
        histories[i].append(answer_turn(questions[i], ans, stats))


def answer_turn(question: Question, answer: Answer, stats: Counter) -> Turn:
    """The turn of an asked question and its answer: answered (whitespace collapsed), or failed
    (the answerer failed, or the answer is empty), counted in ``stats``."""
    if not answer.ok:
        stats[f"failed_answer:{answer.error or 'error'}"] += 1
        return Turn(question=question.text, answer="", think=question.think, failed=True, failure=TurnFailure.ANSWER_ERROR.value)
    if not answer.text.strip():
        stats["empty_answers"] += 1
        return Turn(question=question.text, answer="", think=question.think, failed=True, failure=TurnFailure.EMPTY_ANSWER.value)
    return Turn(question=question.text, answer=" ".join(answer.text.split()), think=question.think)


@contextmanager
def _timer(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[key] += time.perf_counter() - start


def _checked(items: list, n: int, who: str) -> list:
    if len(items) != n:
        raise RuntimeError(f"{who} returned {len(items)} results for {n} requests")
    return items


__all__ = [
    "DialogueQuery", "DialogueResult", "run_dialogue", "composer_for", "search_round", "question_requests", "record_questions", "answer_turn",
]
