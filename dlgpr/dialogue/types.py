"""Data passed between the dialogue loop, questioners and answerers (docs/METHOD.md, "The dialogue").

Round 0 retrieves with the initial description d_0. In round t >= 1 a questioner sees the top
candidates of round t-1 and the history and asks q_t; a simulated user answers a_t; the query
becomes d_t = concat(d_0, a_1, ..., a_t) (answers only, not questions) and is retrieved again.

Questioners and answerers work on a whole round at once (``ask(list) -> list``,
``answer(list) -> list``): model-backed ones batch their generation, API-backed ones issue the
requests of a round concurrently (bounded). Neither may raise on a bad reply: they return
``ok=False`` with the reason, and the loop records a failed turn and goes on.

What a questioner, a reward or a datamodule may implement beyond that is declared here as a
protocol (:class:`RetrieverUser`, :class:`RecordsUser`, :class:`QueryComposer`,
:class:`ReportsStats`, :class:`ProcessorConsumer`); callers test for it with ``isinstance``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from PIL import Image
from torch import Tensor

from dlgpr.dialogue.reply_format import check_reply

if TYPE_CHECKING:
    from dlgpr.data.schema import PlaceRecord
    from dlgpr.retrieval import TextRetriever


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


class TurnFailure(str, enum.Enum):
    """Why a turn failed; the value is the string stored in ``Turn.failure`` and in the records."""

    QUESTION_FORMAT = "question_format"
    """The reply was not a question in the expected format (or a blank one)."""
    QUESTION_ERROR = "question_error"
    """The questioner failed otherwise (an API error)."""
    ANSWER_ERROR = "answer_error"
    """The answerer failed."""
    EMPTY_ANSWER = "empty_answer"
    """The answerer returned nothing."""

    @classmethod
    def of_question(cls, question: Question) -> TurnFailure:
        """The failure of a question the loop cannot ask: a reply the parser refused (or a blank
        question) is a format failure, any other error (an API failure) a questioner error."""
        return cls.QUESTION_FORMAT if question.error in ("", cls.QUESTION_FORMAT.value, LENIENT_FORMAT) else cls.QUESTION_ERROR


@dataclass(frozen=True)
class Turn:
    """One question/answer exchange. ``failed`` turns add nothing to the query."""

    question: str
    answer: str
    think: str = ""
    failed: bool = False
    failure: str = ""
    """Why the turn failed: a :class:`TurnFailure` value, ``""`` for a turn that did not."""


def compose_query(initial_description: str, history: Sequence[Turn]) -> str:
    """``d_t = concat(d_0, a_1, ..., a_t)``: answers only, failed turns skipped."""
    return " ".join([initial_description.strip(), *(t.answer.strip() for t in history if not t.failed)])


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


@runtime_checkable
class RetrieverUser(Protocol):
    """A questioner that reads the retriever (PlugIR scores hypothetical answers with it)."""

    def bind_retriever(self, retriever: TextRetriever) -> None: ...


@runtime_checkable
class RecordsUser(Protocol):
    """A questioner that reads a split's place records before it asks (the corpus teacher)."""

    def bind_records(self, records: Iterable[PlaceRecord]) -> None: ...


@runtime_checkable
class QueryComposer(Protocol):
    """A questioner that writes each round's query itself instead of :func:`compose_query` (PlugIR)."""

    def compose_query(self, initial_description: str, history: Sequence[Turn]) -> str: ...


@runtime_checkable
class ReportsStats(Protocol):
    """A reward that counts what its last call saw (the GRPO module logs the counts)."""

    last_stats: Mapping[str, float]


@runtime_checkable
class ProcessorConsumer(Protocol):
    """A datamodule that renders prompts with the policy's processor (its prompt limits are its own
    ``PromptConfig``, linked to the module's by the CLI)."""

    def set_processor(self, processor: Any, with_images: bool, mode: str) -> None: ...


def parse_question(raw: str) -> Question:
    """Parse ``<think>..</think><question>..</question>`` (``dlgpr.dialogue.reply_format``, the
    definition the format reward uses); a reply in another form, or a blank question, is ``ok=False``."""
    think, question, failure = check_reply(raw)
    if failure:
        return Question(text="", raw=raw or "", ok=False, error=TurnFailure.QUESTION_FORMAT.value)
    return Question(text=question, think=think, raw=raw)


def format_question(think: str, question: str) -> str:
    return f"<think>{think}</think><question>{question}</question>"


LENIENT_FORMAT = "lenient_format"
"""``Question.error`` of a question read from a reply outside the strict format (it is still asked)."""

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
    return Question(text=" ".join(m.group(1).split()).lstrip("-*0123456789. )"), raw=raw or "", error=LENIENT_FORMAT)
