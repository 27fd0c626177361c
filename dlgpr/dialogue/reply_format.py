"""The questioner's reply format, defined once (docs/METHOD.md, "DQ-Pilot").

A well-formed reply is ``<think>..</think>`` then ``<question>..</question>`` and nothing else
(whitespace around and between the parts is allowed; the dot matches newlines), with a question
that holds at least one non-space character. The format reward (``dlgpr.rewards``) and the
question parser (``dlgpr.dialogue.types.parse_question``) both read replies through
:func:`check_reply`, so a reply the reward accepts is always a question the loop can ask.
"""

from __future__ import annotations

import re

__all__ = ["REPLY_PATTERN", "MALFORMED", "EMPTY_QUESTION", "check_reply"]

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
