"""GLOBE's answer format, defined once: the evaluation prompt, the reply parser and its inverse.

A GLOBE reply reasons inside ``<think>..</think>`` and answers inside ``<answer>..</answer>``.
The answer block is either two lines (what GLOBE's own code writes and reads; order and case
free)::

    <think>Cyrillic shop signs, Soviet-era blocks, trolleybus wires ...</think>
    <answer>country: Ukraine
    city: Kyiv</answer>

or one line ``city, country`` (``Kyiv, Ukraine``; with more parts the first is the city and the
last the country: ``Austin, Texas, United States``).

:func:`parse_answer` is pure (no gazetteer, no I/O) and never raises: it returns a
:class:`GeoAnswer` with the names, the reasoning, whether a usable place was read (``ok``,
else ``error`` says why: :data:`NO_ANSWER_TAG`, :data:`EMPTY_ANSWER`, :data:`NO_PLACE`), and
whether the whole reply is exactly ``<think>..</think><answer>..</answer>`` (``well_formed``, the
strict test GLOBE's format reward applies; the GRPO format reward builds on it). Reading is
tolerant where models are sloppy: tag and key case, whitespace, Markdown emphasis or bullets
around the keys, square brackets echoed from the prompt, a trailing full stop, and several
``<answer>`` blocks (the last one counts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "EMPTY_ANSWER", "GLOBE_PROMPT", "GLOBE_PROMPT_VERSION", "GLOBE_SYSTEM", "GeoAnswer", "NO_ANSWER_TAG", "NO_PLACE",
    "format_answer", "parse_answer",
]

GLOBE_PROMPT_VERSION = "globe_eval_v1"
"""Names :data:`GLOBE_PROMPT`'s exact text; a changed prompt gets a new version (response caches key on it)."""

GLOBE_SYSTEM = "You are a helpful assistant."
"""The system message GLOBE's evaluation sends with the prompt."""

GLOBE_PROMPT = (
    "You are taking part in a geolocation challenge. Look at the image and work out where it was taken:\n"
    "1. Examine the visual clues one by one (architecture, signs and scripts, vegetation, terrain, roads, vehicles, climate).\n"
    "2. Reason step by step about which country and which city they point to, and why.\n"
    "End with exactly these two lines:\n"
    "country: <country name>\n"
    "city: <city name>\n\n"
    "Write your reasoning inside <think> </think> tags and the two lines inside <answer> </answer> tags."
)
"""The user prompt of GLOBE-style evaluation (version :data:`GLOBE_PROMPT_VERSION`): the image comes
first in the message, then this text. Same instructions as the paper's chain-of-thought prompt."""

NO_ANSWER_TAG = "no_answer_tag"
"""Failure kind: the reply has no ``<answer>..</answer>`` block."""
EMPTY_ANSWER = "empty_answer"
"""Failure kind: the answer block holds only whitespace."""
NO_PLACE = "no_place"
"""Failure kind: the answer block holds text, but neither ``country:`` / ``city:`` lines nor ``city, country``
(or only placeholders such as "unknown" or "N/A")."""

_STRICT = re.compile(r"\A\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*\Z", re.DOTALL)
_TAGS = re.compile(r"</?(?:think|answer)>", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_THINK = re.compile(r"<think>(.*?)</think>", re.IGNORECASE | re.DOTALL)
_FIELD = re.compile(r"^[\s>*_#\-•]*(country|city)[\s*_]*[:：][\s*_]*(.*)$", re.IGNORECASE)
_PLACEHOLDERS = frozenset({"", "unknown", "n/a", "na", "none", "not sure", "unsure", "uncertain", "unclear",
                           "country name", "city name", "<country name>", "<city name>", "-", "?"})


@dataclass(frozen=True)
class GeoAnswer:
    """A parsed reply. ``ok``: a city or a country was read (a country alone is a usable answer);
    else ``error`` is one of :data:`NO_ANSWER_TAG`, :data:`EMPTY_ANSWER`, :data:`NO_PLACE` and the
    names are ``""``. ``well_formed``: the reply is exactly ``<think>..</think><answer>..</answer>``
    (whitespace around and between the blocks allowed, nothing else, no nested tags)."""

    reasoning: str
    city: str
    country: str
    ok: bool
    error: str = ""
    well_formed: bool = False


def _clean(value: str) -> str:
    """A name as written, without the decoration models add around it."""
    value = " ".join(value.split())
    for _ in range(3):  # "**[France].**" needs several rounds
        stripped = value.strip(" *_`\"'").rstrip(".;").strip()
        if len(stripped) >= 2 and stripped[0] + stripped[-1] in ("[]", "()", "<>", "{}"):
            stripped = stripped[1:-1].strip()
        if stripped == value:
            break
        value = stripped
    return "" if value.lower() in _PLACEHOLDERS else value


def _names(block: str) -> tuple[str, str]:
    """``(city, country)`` of an answer block: key lines first, else ``city, ..., country``."""
    fields: dict[str, str] = {}
    for line in block.splitlines():
        m = _FIELD.match(line)
        if m and m.group(1).lower() not in fields:  # the first line of each key counts
            fields[m.group(1).lower()] = _clean(m.group(2))
    if fields:
        return fields.get("city", ""), fields.get("country", "")
    text = " ".join(block.split())
    parts = [_clean(p) for p in text.split(",")]
    if len(parts) >= 2 and parts[0] and parts[-1]:
        return parts[0], parts[-1]
    return "", ""


def parse_answer(raw: object) -> GeoAnswer:
    """Read a reply in GLOBE's format (see the module docstring); never raises.

    The reasoning is the last ``<think>`` block before the answer (stripped), or the text before
    ``<answer>`` when there is no ``<think>`` tag.
    """
    text = raw if isinstance(raw, str) else ""
    strict = _STRICT.match(text)
    well_formed = strict is not None and not _TAGS.search(strict.group(1)) and not _TAGS.search(strict.group(2))
    answers = list(_ANSWER.finditer(text))
    if not answers:
        thinks = _THINK.findall(text)
        return GeoAnswer(reasoning=thinks[-1].strip() if thinks else "", city="", country="", ok=False, error=NO_ANSWER_TAG)
    answer = answers[-1]
    before = text[: answer.start()]
    thinks = _THINK.findall(before)
    reasoning = thinks[-1].strip() if thinks else _TAGS.sub(" ", before).strip()
    block = answer.group(1)
    if not block.strip():
        return GeoAnswer(reasoning=reasoning, city="", country="", ok=False, error=EMPTY_ANSWER, well_formed=well_formed)
    city, country = _names(block)
    if not (city or country):
        return GeoAnswer(reasoning=reasoning, city="", country="", ok=False, error=NO_PLACE, well_formed=well_formed)
    return GeoAnswer(reasoning=reasoning, city=city, country=country, ok=True, well_formed=well_formed)


def format_answer(city: str, country: str, reasoning: str = "", style: str = "lines") -> str:
    """The reply :func:`parse_answer` reads back into ``city``, ``country`` and ``reasoning``.

    ``style="lines"``: ``country: ..`` then ``city: ..`` (GLOBE's); ``"comma"``: ``city, country``
    (needs both names). Names must be one line without commas or tags, and at least one given.
    """
    if style not in ("lines", "comma"):
        raise ValueError(f"format_answer: style must be 'lines' or 'comma', got {style!r}")
    for field, value in (("city", city), ("country", country)):
        if "\n" in value or "," in value or _TAGS.search(value):
            raise ValueError(f"format_answer: {field} must be one line without commas or tags, got {value!r}")
    if _TAGS.search(reasoning):
        raise ValueError("format_answer: reasoning must not contain <think> or <answer> tags")
    if not (city.strip() or country.strip()):
        raise ValueError("format_answer: give a city, a country, or both")
    if style == "comma":
        if not (city.strip() and country.strip()):
            raise ValueError("format_answer: style 'comma' needs both a city and a country")
        block = f"{city.strip()}, {country.strip()}"
    else:
        block = "\n".join(f"{k}: {v.strip()}" for k, v in (("country", country), ("city", city)) if v.strip())
    return f"<think>{reasoning.strip()}</think>\n<answer>{block}</answer>"
