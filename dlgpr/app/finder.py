"""PlaceFinder: a person in the dialogue loop.

``PlaceFinder`` holds what does not change between searches (a retriever, an encoded gallery, a
questioner, a :class:`FinderConfig`); :meth:`PlaceFinder.start` opens a :class:`FinderSession`
from a description. A session ranks, asks, takes an answer (or "don't know"), ranks again and
ends when the person confirms a candidate. Each step is one method call returning plain data,
so the terminal front end (``python -m dlgpr.app --terminal``) and a web page drive the same
object.

The update is the dialogue loop's: the query of each round is composed from the description
and the answers by :func:`dlgpr.dialogue.loop.composer_for` (``d_t = concat(d_0, a_1..a_t)``),
ranked by :func:`~dlgpr.dialogue.loop.search_round`, the questioner sees
:func:`~dlgpr.dialogue.loop.question_requests`, failed questions and answers become turns
through :func:`~dlgpr.dialogue.loop.record_questions` and
:func:`~dlgpr.dialogue.loop.answer_turn`, and adaptive stopping decides with
:func:`~dlgpr.dialogue.stopping.stop_decisions`. A session driven by a simulated user therefore
asks, ranks and stops as ``run_dialogue`` does (a test checks it).

Bad input never ends a session: an empty answer is refused with a message (the question stays
open), a text longer than ``max_chars`` is cut with a message, control characters are dropped,
and a questioner that raises or returns a failed question leaves a failed turn and a message.
Answers are plain text: they are only ever appended to the query.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from dlgpr.app.index import GalleryIndex
from dlgpr.data.turns import Answer, Question, Target, Turn, TurnFailure
from dlgpr.dialogue.answerers import DONT_KNOW
from dlgpr.dialogue.loop import DialogueQuery, answer_turn, composer_for, question_requests, record_questions, search_round
from dlgpr.dialogue.stopping import StoppingConfig, stop_decisions
from dlgpr.dialogue.types import Questioner
from dlgpr.ranking import Gallery, positive_rows
from dlgpr.retrieval import TextRetriever

__all__ = ["FinderConfig", "PlaceFinder", "FinderSession", "CandidateView", "clean_text"]


@dataclass
class FinderConfig:
    """How a PlaceFinder searches and asks."""

    top_k: int = 10
    """Candidates the questioner sees each round."""
    show: int = 5
    """Candidates a person is shown (:meth:`FinderSession.candidates`)."""
    stopping: StoppingConfig | None = None
    """Stop asking once the retriever is confident (None: never on confidence)."""
    max_questions: int | None = 5
    """Questions after which the finder stops asking on its own (None: no limit)."""
    max_chars: int = 1000
    """Longer descriptions and answers are cut to this many characters (with a message)."""
    one_view_per_place: bool = True
    """A person is shown each place once, by its best-scoring view, and candidate ranks count
    places (False: image by image, several views of one place can fill several slots). What the
    questioner sees and the target's rank (the dialogue metric's, over images) do not change."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.show < 1:
            raise ValueError("top_k and show must be >= 1")
        if self.max_questions is not None and self.max_questions < 0:
            raise ValueError("max_questions must be >= 0 or None")
        if self.max_chars < 10:
            raise ValueError("max_chars must be >= 10")


@dataclass(frozen=True)
class CandidateView:
    """One candidate as a person sees it."""

    rank: int
    key: str
    place_id: int
    score: float
    image: str
    """Where the image is: a file, or ``<shard>#<member>`` inside a shard."""
    coordinates: tuple[float, float] | None = None


def clean_text(text: str, max_chars: int) -> tuple[str, str | None]:
    """Plain text from a person: control characters dropped, whitespace collapsed, cut at
    ``max_chars`` (at a word boundary when there is one). Returns the text and a message when cut."""
    kept = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in str(text))
    kept = " ".join(kept.split())
    if len(kept) <= max_chars:
        return kept, None
    cut = kept[:max_chars]
    if " " in cut[max_chars // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut, f"Your text had {len(kept)} characters; only the first {len(cut)} were kept (the limit is {max_chars})."


class PlaceFinder:
    """Finds a place with a person: see the module docstring.

    Args:
        retriever: embeds query texts like the gallery's retriever.
        gallery: a :class:`~dlgpr.app.index.GalleryIndex` (image locations and coordinates
            shown with the candidates) or a bare :class:`~dlgpr.ranking.Gallery`.
        questioner: any :class:`~dlgpr.dialogue.types.Questioner`.
        config: :class:`FinderConfig`.
    """

    def __init__(self, retriever: TextRetriever, gallery: GalleryIndex | Gallery, questioner: Questioner, config: FinderConfig | None = None) -> None:
        self.retriever = retriever
        self.questioner = questioner
        self.config = config or FinderConfig()
        self.index = gallery if isinstance(gallery, GalleryIndex) else None
        self.gallery = gallery.gallery() if isinstance(gallery, GalleryIndex) else gallery
        if len(self.gallery) == 0:
            raise ValueError("PlaceFinder needs a non-empty gallery")
        from dlgpr.dialogue.evaluation import bind_retriever

        bind_retriever(questioner, retriever)
        self._sessions = 0

    def start(self, description: str, target_place_id: int | None = None) -> "FinderSession":
        """A new search from the person's description; ``target_place_id`` when the place is known
        (a "try it" session, a simulated user): then each round records the target's rank."""
        self._sessions += 1
        return FinderSession(self, self._sessions - 1, description, target_place_id)

    def image_location(self, row: int) -> str:
        return self.index.images[row] if self.index is not None else self.gallery.keys[row]

    def coordinates(self, row: int) -> tuple[float, float] | None:
        return self.index.coordinates(row) if self.index is not None else None


@dataclass
class _Round:
    """One ranked round of a session (what :meth:`FinderSession.to_dict` reports)."""

    round: int
    query: str
    rows: list[int]
    scores: list[float]
    target_rank: float | None
    confidence: float | None
    stop: bool
    timings: dict[str, float] = field(default_factory=dict)
    positive_ranks: list[float] = field(default_factory=list)
    """Ranks of every image of the target place (empty when it is not known)."""


class FinderSession:
    """One search by one person (create it with :meth:`PlaceFinder.start`).

    State: ``history`` (the turns, failed ones included), ``rounds`` (one ranked list per
    round), ``messages`` (what the person should be told, oldest first), ``pending`` (the open
    question), ``stopped`` / ``stop_reason`` (``confident``, ``max_questions``, ``confirmed``),
    ``confirmed`` (the chosen candidate).
    """

    def __init__(self, finder: PlaceFinder, session_id: int, description: str, target_place_id: int | None) -> None:
        self.finder = finder
        self.session_id = session_id
        cfg = finder.config
        text, note = clean_text(description, cfg.max_chars)
        self.messages: list[str] = [note] if note else []
        if not text:
            text = "a place"
            self.messages.append("The description was empty; searching for any place. Answer the questions to narrow it down.")
        self.description = text
        self.target_place_id = target_place_id
        self.history: list[Turn] = []
        self.rounds: list[_Round] = []
        self.pending: Question | None = None
        self.stopped = False
        self.stop_reason = ""
        self.confirmed: CandidateView | None = None
        self.stats: Counter = Counter()
        self._compose = composer_for(finder.questioner)
        g = finder.gallery
        self._labels = torch.tensor([target_place_id if target_place_id is not None else -1], dtype=torch.long)
        rows = positive_rows(self._labels, g.place_ids) if target_place_id is not None else torch.full((1, 1), -1, dtype=torch.long)
        self._rows = rows if rows.shape[1] else torch.full((1, 1), -1, dtype=torch.long)
        if target_place_id is not None and g.num_positives(target_place_id) == 0:
            self.messages.append(f"Place {target_place_id} has no image in this gallery; its rank is not recorded.")
        views = int(torch.unique(g.place_ids, return_counts=True)[1].max()) if cfg.one_view_per_place and len(g) else 1
        self._listed = max(cfg.top_k, cfg.show * views, cfg.stopping.top_k if cfg.stopping else 0)  # enough for `show` places
        self._query = DialogueQuery(session_id, text, Target(target_place_id if target_place_id is not None else -1, ""))
        self._emb = self._scores = self._idx = None
        self._update()

    # ---- what a front end reads -----------------------------------------------------------------

    def candidates(self, n: int | None = None) -> list[CandidateView]:
        """The current top ``n`` (``config.show``) candidates, best first: places by their best
        view (``config.one_view_per_place``) or images."""
        n = self.finder.config.show if n is None else n
        return [
            CandidateView(rank=r + 1, key=self.finder.gallery.keys[row], place_id=int(self.finder.gallery.place_ids[row]), score=s,
                          image=self.finder.image_location(row), coordinates=self.finder.coordinates(row))
            for r, (row, s) in enumerate(self._displayed(self.rounds[-1])[:n])
        ]

    def _displayed(self, rnd: "_Round") -> list[tuple[int, float]]:
        """``(gallery row, score)`` of what a person is shown for round ``rnd``, best first."""
        listed = [(row, score) for row, score in zip(rnd.rows, rnd.scores) if row >= 0]
        if not self.finder.config.one_view_per_place:
            return listed
        place_ids, seen, out = self.finder.gallery.place_ids, set(), []
        for row, score in listed:
            pid = int(place_ids[row])
            if pid not in seen:
                seen.add(pid)
                out.append((row, score))
        return out

    @property
    def target_ranks(self) -> list[float | None]:
        """Rank of the target place in each round (None when it is not known)."""
        return [r.target_rank for r in self.rounds]

    @property
    def questions_asked(self) -> int:
        return len(self.history)

    # ---- what a person does -------------------------------------------------------------------

    def next_question(self, force: bool = False) -> Question | None:
        """The questioner's next question (kept as ``pending`` until answered), or None with a
        message: the session has stopped (``force`` asks anyway, unless a candidate was
        confirmed) or the questioner failed (a failed turn is recorded; ask again)."""
        if self.pending is not None:
            return self.pending
        if self.confirmed is not None:
            self.messages.append("This search is finished: a candidate was confirmed.")
            return None
        if self.stopped and not force:
            self.messages.append(self._stopped_message())
            return None
        start = time.perf_counter()
        requests = question_requests([self._query], [self.history], len(self.history) + 1, self.finder.gallery, self._emb,
                                     self._scores[:, : self._shown], self._idx[:, : self._shown], None)
        try:
            questions = self.finder.questioner.ask(requests)
            if len(questions) != 1:
                raise RuntimeError(f"returned {len(questions)} questions for 1 request")
        except Exception as exc:  # a broken questioner or endpoint must not end the person's search
            questions = [Question(text="", ok=False, error=f"{TurnFailure.QUESTION_ERROR.value}: {type(exc).__name__}: {exc}"[:300])]
        elapsed = time.perf_counter() - start
        self.rounds[-1].timings["question_s"] = round(elapsed, 4)
        if record_questions(questions, [self.history], self.stats):
            self.pending = questions[0]
            return self.pending
        q = questions[0]
        self.messages.append(f"The questioner could not ask a question ({q.error or 'no question in its reply'}); ask again, or add a detail as an answer.")
        self._update()
        return None

    def answer(self, text: str) -> list[CandidateView]:
        """Answer the open question (or add a detail when none is open) and rank again.
        An empty answer is refused with a message and changes nothing."""
        if self.confirmed is not None:
            self.messages.append("This search is finished: a candidate was confirmed.")
            return self.candidates()
        cleaned, note = clean_text(text, self.finder.config.max_chars)
        if not cleaned:
            self.messages.append("The answer was empty: type what you remember, or answer \"don't know\".")
            return self.candidates()
        if note:
            self.messages.append(note)
        question = self.pending if self.pending is not None else Question(text="")
        self.pending = None
        self.history.append(answer_turn(question, Answer(cleaned), self.stats))
        self._update()
        return self.candidates()

    def dont_know(self) -> list[CandidateView]:
        """Answer "I don't know." (as the simulated user does for what it cannot tell)."""
        return self.answer(DONT_KNOW)

    def confirm(self, choice: int | str) -> CandidateView:
        """End the search with the candidate of 1-based rank ``choice`` in the current list, or
        with gallery key ``choice``."""
        shown = self._displayed(self.rounds[-1])
        g = self.finder.gallery
        if isinstance(choice, int):
            if not 1 <= choice <= len(shown):
                raise ValueError(f"rank must be between 1 and {len(shown)}, got {choice}")
            row, score = shown[choice - 1]
            rank = choice
        else:
            if choice not in g.keys:
                raise ValueError(f"no gallery image has key {choice!r}")
            row = g.keys.index(choice)
            same = [i for i, (r, _) in enumerate(shown) if r == row or (self.finder.config.one_view_per_place and g.place_ids[r] == g.place_ids[row])]
            rank = same[0] + 1 if same else 0
            score = shown[same[0]][1] if same else float("nan")
        self.confirmed = CandidateView(rank, g.keys[row], int(g.place_ids[row]), score, self.finder.image_location(row), self.finder.coordinates(row))
        self.pending = None
        self.stopped, self.stop_reason = True, "confirmed"
        return self.confirmed

    # ---- the update (the dialogue loop's pieces) ---------------------------------------------

    @property
    def _shown(self) -> int:
        return min(self.finder.config.top_k, self._idx.shape[1])

    def _update(self) -> None:
        """Compose the query from the description and the answers, rank, decide whether to stop."""
        g, cfg = self.finder.gallery, self.finder.config
        t0 = time.perf_counter()
        text = self._compose(self.description, self.history)
        emb = self.finder.retriever.embed_texts([text])  # [1, D]
        t1 = time.perf_counter()
        scores, idx, best, pos = search_round(emb, g, self._rows, self._labels, self._listed, None, len(g), "auto")
        t2 = time.perf_counter()
        self._emb, self._scores, self._idx = emb, scores, idx
        known = self.target_place_id is not None and g.num_positives(self.target_place_id) > 0
        target = float(best[0]) if known else None
        positive_ranks = [float(r) for r in pos[0] if r > 0] if known else []
        conf, stop = None, False
        if cfg.stopping is not None:
            place_ids = g.place_ids[idx.clamp(min=0)].masked_fill(idx < 0, -1)
            s, c = stop_decisions(scores, place_ids, len(self.history), cfg.stopping)
            conf, stop = float(c[0]), bool(s[0])
        t3 = time.perf_counter()
        self.rounds.append(_Round(len(self.history), text, idx[0].tolist(), [float(x) for x in scores[0]], target, conf, stop,
                                  {"encode_s": round(t1 - t0, 4), "search_s": round(t2 - t1, 4), "update_s": round(t3 - t0, 4)}, positive_ranks))
        if self.stopped:
            return
        if stop:
            self.stopped, self.stop_reason = True, "confident"
            self.messages.append(self._stopped_message())
        elif cfg.max_questions is not None and len(self.history) >= cfg.max_questions:
            self.stopped, self.stop_reason = True, "max_questions"
            self.messages.append(self._stopped_message())

    def _stopped_message(self) -> str:
        if self.stop_reason == "confident":
            return "The finder is confident about its top candidate: confirm a candidate, or ask for another question."
        return f"{self.questions_asked} questions asked: confirm a candidate, or ask for another question."

    # ---- the record --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The session as JSON-able data: description, transcript, rounds (query, top candidates,
        target rank, stopping confidence, timings), messages, outcome and the configuration."""
        g = self.finder.gallery
        cfg = self.finder.config
        return {
            "session_id": self.session_id,
            "description": self.description,
            "target_place_id": self.target_place_id,
            "transcript": [{"question": t.question, "think": t.think, "answer": t.answer, "failed": t.failed, "failure": t.failure} for t in self.history],
            "pending_question": self.pending.text if self.pending is not None else None,
            "rounds": [
                {"round": r.round, "query": r.query, "target_rank": r.target_rank, "positive_ranks": r.positive_ranks, "confidence": r.confidence,
                 "stop": r.stop, "timings": r.timings,
                 "candidates": [{"rank": i + 1, "key": g.keys[row], "place_id": int(g.place_ids[row]), "score": s}
                                for i, (row, s) in enumerate(self._displayed(r)[: cfg.show])]}
                for r in self.rounds
            ],
            "target_ranks": self.target_ranks,
            "questions_asked": self.questions_asked,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "confirmed": asdict(self.confirmed) if self.confirmed is not None else None,
            "found": (self.confirmed.place_id == self.target_place_id) if self.confirmed is not None and self.target_place_id is not None else None,
            "messages": list(self.messages),
            "stats": dict(self.stats),
            "config": asdict(cfg),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def drive(session: FinderSession, answer_fn: Any, rounds: int) -> FinderSession:
    """Let ``answer_fn(question) -> str`` answer up to ``rounds`` questions, stopping when the
    session does (a simulated person; the benchmark and the tests use it)."""
    for _ in range(rounds):
        q = session.next_question()
        if q is None:
            if session.stopped:
                break
            continue
        session.answer(answer_fn(q))
    return session


def candidates_text(cands: Sequence[CandidateView]) -> str:
    """Candidates as text lines: rank, score, place, key, image location (and coordinates)."""
    lines = []
    for c in cands:
        where = f"  ({c.coordinates[0]:.5f}, {c.coordinates[1]:.5f})" if c.coordinates else ""
        lines.append(f"  {c.rank:>2}. score {c.score:.3f}  place {c.place_id}  {c.key}  {c.image}{where}")
    return "\n".join(lines)
