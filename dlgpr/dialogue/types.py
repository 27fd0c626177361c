"""Data passed between the dialogue loop, questioners and answerers (docs/METHOD.md, "The dialogue").

Round 0 retrieves with the initial description d_0. In round t >= 1 a questioner sees the top
candidates of round t-1 and the history and asks q_t; a simulated user answers a_t; the query
becomes d_t = concat(d_0, a_1, ..., a_t) (answers only, not questions) and is retrieved again.

Questioners and answerers work on a whole round at once (``ask(list) -> list``,
``answer(list) -> list``): model-backed ones batch their generation, API-backed ones issue the
requests of a round concurrently (bounded). Neither may raise on a bad reply: they return
``ok=False`` with the reason, and the loop records a failed turn and goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from PIL import Image
from torch import Tensor

from dlgpr.dialogue.reply_format import check_reply


@dataclass(frozen=True)
class Candidate:
    """A gallery image shown to the questioner (one of the top-k of the previous round)."""

    key: str
    place_id: int
    description: str
    """Fine-grained description of the image (what a text-only questioner reads)."""
    attributes: dict[str, Any] = field(default_factory=dict)
    """SynthCities ground truth of the place (only the oracle teacher may read it)."""
    score: float = 0.0
    """Retrieval similarity of this candidate for the current query."""
    image: Callable[[], Image.Image] | None = None
    """Loads the image (for vision-language questioners); None when the gallery keeps no images."""
    embedding: Tensor | None = None
    """The retriever's image embedding ``[D]`` (PlugIR clusters candidates on it)."""


@dataclass(frozen=True)
class Turn:
    """One question/answer exchange. ``failed`` turns add nothing to the query."""

    question: str
    answer: str
    think: str = ""
    failed: bool = False
    failure: str = ""
    """Why the turn failed: ``question_format``, ``question_error``, ``empty_answer``, ``answer_error``."""


@dataclass(frozen=True)
class QuestionRequest:
    """What a questioner sees for one query in one round."""

    query_id: int
    round: int
    """The round whose question is asked (1-based)."""
    initial_description: str
    history: tuple[Turn, ...]
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class Question:
    """A questioner's output. ``ok=False`` marks a failure (wrong format, API error)."""

    text: str
    think: str = ""
    raw: str = ""
    ok: bool = True
    error: str = ""


@dataclass(frozen=True)
class Target:
    """The place the simulated user has in mind (ground truth the answerer may read)."""

    place_id: int
    description: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnswerRequest:
    query_id: int
    round: int
    question: str
    target: Target
    history: tuple[Turn, ...]


@dataclass(frozen=True)
class Answer:
    text: str
    ok: bool = True
    error: str = ""


@runtime_checkable
class Questioner(Protocol):
    def ask(self, requests: list[QuestionRequest]) -> list[Question]:
        """One question per request, in order."""
        ...


@runtime_checkable
class Answerer(Protocol):
    def answer(self, requests: list[AnswerRequest]) -> list[Answer]:
        """One answer per request, in order."""
        ...


def parse_question(raw: str) -> Question:
    """Parse ``<think>..</think><question>..</question>`` (``dlgpr.dialogue.reply_format``, the
    definition the format reward uses); a reply in another form, or a blank question, is ``ok=False``."""
    think, question, failure = check_reply(raw)
    if failure:
        return Question(text="", raw=raw or "", ok=False, error="question_format")
    return Question(text=question, think=think, raw=raw)


def format_question(think: str, question: str) -> str:
    return f"<think>{think}</think><question>{question}</question>"


_FIRST_QUESTION = re.compile(r"([^.!?\n<>]*\?)")


def extract_question(raw: str) -> Question:
    """Lenient parse for zero-shot models: the strict format if present, else the first
    sentence that ends in "?" (``ok=False`` when there is none)."""
    strict = parse_question(raw)
    if strict.ok:
        return strict
    m = _FIRST_QUESTION.search(re.sub(r"<think>.*?</think>", " ", raw or "", flags=re.DOTALL))
    if m is None or len(m.group(1).split()) < 2:
        return strict
    return Question(text=" ".join(m.group(1).split()).lstrip("-*0123456789. )"), raw=raw or "", error="lenient_format")
