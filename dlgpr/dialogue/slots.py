"""Attribute slots: the interface between the rule-based dialogue agents and a world's ground truth.

The oracle user, the oracle teacher, the random questioner and PlugIR's attribute model work on
*slots*, named attributes of a place with a known value (door colour, house number...). They
reach a world through an :class:`AttributeSchema`: its slots and their canonical questions, how
a free-form question maps to slots, the one fixed sentence that answers a slot, and the vague or
wrong answers a noisy user gives. A schema is passed to each agent; where none is, the agents
use :data:`DEFAULT_SCHEMA`, SynthCities' (``dlgpr.data.synth.dialogue.SynthCitiesSchema``), so
configs that name no schema keep their meaning.

The simulated user must understand free-form questions, including those of language models, so
:class:`CueWordParser` maps a question to slots by cue words: each :class:`CueRule` names the
object words that identify a thing (door, sign, awning...) and, where one object carries several
slots, the aspect words that pick one (colour, where, how many, shape, pattern). Rules are tried
in order and each object group is used once, so "What colour is the door and where is the phone
booth?" asks two slots.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

__all__ = ["DEFAULT_SCHEMA", "AttributeSchema", "CueRule", "CueWordParser", "resolve_schema"]


class AttributeSchema(Protocol):
    """What the rule-based agents know about a world's attribute slots."""

    slots: tuple[str, ...]
    """Every askable slot, in a fixed order (ties between slots go to the earlier one)."""
    slot_weights: Mapping[str, float]
    """The oracle teacher's default multiplier of a slot's split score (1 for a slot not named)."""

    def question(self, slot: str) -> str:
        """The canonical question of ``slot``."""
        ...

    def question_slots(self, question: str) -> list[str]:
        """The slots a free-form question asks about (empty if none is recognised)."""
        ...

    def answer_sentence(self, slot: str, value: Any, attributes: dict[str, Any] | None = None) -> str:
        """The user's answer about ``slot`` when its true value is ``value`` (one fixed sentence;
        ``attributes``, the place's other slots, may shape it)."""
        ...

    def vague_answer(self, slot: str) -> str | None:
        """An answer about ``slot`` without its value, or None for the generic vague answer."""
        ...

    def wrong_values(self, slot: str, value: Any) -> list[Any]:
        """The values a confidently wrong answer about ``slot`` may state when the truth is ``value``."""
        ...


#: The schema of agents given none: ``module.attribute`` of a class built without arguments.
DEFAULT_SCHEMA = "dlgpr.data.synth.dialogue.SynthCitiesSchema"


@functools.cache
def _default_schema() -> AttributeSchema:
    module, _, name = DEFAULT_SCHEMA.rpartition(".")
    return getattr(importlib.import_module(module), name)()


def resolve_schema(schema: AttributeSchema | None) -> AttributeSchema:
    """``schema``, or the :data:`DEFAULT_SCHEMA` (one shared instance) when it is None."""
    return schema if schema is not None else _default_schema()


@dataclass(frozen=True)
class CueRule:
    """``slot`` is asked when one of ``objects`` is in a clause and, if ``aspects`` is given, one of them too.

    Rules sharing a ``group`` (one object) are alternatives: a clause asks about one of them.
    """

    slot: str
    group: str
    objects: tuple[str, ...]
    aspects: tuple[str, ...] = ()


_CLAUSE_SPLIT = re.compile(r"[?;,.]|\band\b|\bor\b")
_PRONOUN = re.compile(r"\b(it|its|they|them|their|one)\b")


class CueWordParser:
    """``parser(question) -> slots``: free-form questions mapped to slots by ordered cue-word rules."""

    def __init__(self, rules: Sequence[CueRule]) -> None:
        self.rules = tuple(rules)
        self._patterns = {w: re.compile(r"\b" + re.escape(w) + r"\b") for r in self.rules for w in (*r.objects, *r.aspects)}

    def _has_any(self, text: str, words: tuple[str, ...]) -> bool:
        return any(self._patterns[w].search(text) for w in words)

    def __call__(self, question: str) -> list[str]:
        """The slots a free-form question asks about (empty if none is recognised).

        The question is cut into clauses. A clause with a pronoun after the first ("..., and what
        colour is it?") is a follow-up on the previous clause's object: its words count as aspects
        of that object, never as a new object. Each head clause asks about at most one slot: the
        first rule whose object is in the head clause and whose aspect (if any) is in the unit.
        """
        text = question.lower().replace("grey", "gray")
        clauses = [c.strip() for c in _CLAUSE_SPLIT.split(text) if c.strip()]
        units: list[tuple[str, str]] = []  # (head clause, head + follow-ups)
        for i, clause in enumerate(clauses):
            if i > 0 and units and _PRONOUN.search(clause):
                head, whole = units[-1]
                units[-1] = (head, f"{whole} {clause}")
            else:
                units.append((clause, clause))
        slots: list[str] = []
        used: set[str] = set()
        for head, whole in units:
            for rule in self.rules:
                if rule.group in used or not self._has_any(head, rule.objects):
                    continue
                if rule.aspects and not self._has_any(whole, rule.aspects):
                    continue
                slots.append(rule.slot)
                used.add(rule.group)
                break
        return slots
