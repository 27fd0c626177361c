"""The questioner's reply format, defined once (docs/METHOD.md, "DQ-Pilot").

A well-formed reply is ``<think>..</think>`` then ``<question>..</question>`` and nothing else
(whitespace around and between the parts is allowed; the dot matches newlines), with a question
that holds at least one non-space character. The format reward (``dlgpr.rewards``) and the
question parser (:func:`parse_question`, below) both read replies through
:func:`check_reply`, so a reply the reward accepts is always a question the loop can ask.
"""

from __future__ import annotations

import re

from dlgpr.data.turns import LENIENT_FORMAT, Question, TurnFailure

__all__ = ["REPLY_PATTERN", "MALFORMED", "EMPTY_QUESTION", "check_reply", "parse_question", "format_question", "extract_question"]

REPLY_PATTERN = re.compile(r"^\s*<think>(.*?)</think>\s*<question>(.*?)</question>\s*$", re.DOTALL)

MALFORMED = "malformed"
"""Failure kind: the reply is not ``<think>..</think><question>..</question>``."""
EMPTY_QUESTION = "empty_question"
"""Failure kind: the tags are there, the question is blank."""


def check_reply(raw: object) -> tuple[str, str, str]:
    """``(think, question, failure)`` of a reply: ``failure`` is ``""`` for a well-formed reply, else
    :data:`MALFORMED` or :data:`EMPTY_QUESTION` (``think`` and ``question`` are then ``""``).

    The question comes back with its whitespace collapsed, the think stripped.
    """
    m = REPLY_PATTERN.match(raw) if isinstance(raw, str) else None
    if m is None:
        return "", "", MALFORMED
    question = " ".join(m.group(2).split())
    if not question:
        return "", "", EMPTY_QUESTION
    return m.group(1).strip(), question, ""


def parse_question(raw: str) -> Question:
    """Parse ``<think>..</think><question>..</question>`` (:func:`check_reply`, the
    definition the format reward uses); a reply in another form, or a blank question, is ``ok=False``."""
    think, question, failure = check_reply(raw)
    if failure:
        return Question(text="", raw=raw or "", ok=False, error=TurnFailure.QUESTION_FORMAT.value)
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
    return Question(text=" ".join(m.group(1).split()).lstrip("-*0123456789. )"), raw=raw or "", error=LENIENT_FORMAT)
