"""The interfaces of the dialogue loop: questioners, answerers and the hooks they may implement
(docs/METHOD.md, "The dialogue"). The records they exchange (candidates, turns, requests,
questions, answers) are in :mod:`dlgpr.data.turns`; the questioner's reply format in
:mod:`dlgpr.models.reply_format`.

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

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from dlgpr.data.turns import Answer, AnswerRequest, Question, QuestionRequest, Turn

if TYPE_CHECKING:
    from dlgpr.data.schema import PlaceRecord
    from dlgpr.retrieval import TextRetriever


def compose_query(initial_description: str, history: Sequence[Turn]) -> str:
    """``d_t = concat(d_0, a_1, ..., a_t)``: answers only, failed turns skipped."""
    return " ".join([initial_description.strip(), *(t.answer.strip() for t in history if not t.failed)])


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
