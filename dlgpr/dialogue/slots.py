"""Questions, answers and question understanding for the SynthCities attribute slots.

The simulated user (``OracleAnswerer``) must understand free-form questions, including those of
language models, so a question is mapped to slots by cue words: each rule names the object
words that identify a thing (door, sign, awning...) and, where one object carries several
slots, the aspect words that pick one (colour, where, how many, shape, pattern). Rules are
tried in order and each object group is used once, so "What colour is the door and where is
the phone booth?" asks two slots. Answers are one fixed sentence per (slot, value): the oracle
teacher relies on it to check which candidates agree with what the user said.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dlgpr.data.synth.world import COLORS, NONE, SLOTS

__all__ = ["SLOT_QUESTIONS", "answer_sentence", "question_slots", "ASKABLE_SLOTS"]

#: The canonical question of each slot (what the random and oracle questioners ask).
SLOT_QUESTIONS: dict[str, str] = {
    "facade_color": "What colour is the facade of the building?",
    "material": "What is the building made of?",
    "floors": "How many floors does the building have?",
    "windows_per_floor": "How many windows are there on each upper floor?",
    "window_style": "What shape are the windows?",
    "shutters": "Do the windows have shutters, and what colour are they?",
    "trim_color": "What colour is the trim around the windows?",
    "roof": "What kind of roof does the building have?",
    "shop_sign": "Is there a shop sign, and what does it say?",
    "sign_color": "What colour is the shop sign?",
    "awning": "Is there an awning, and what colour is it?",
    "awning_pattern": "Is the awning plain or striped?",
    "door_color": "What colour is the door?",
    "door_position": "Where is the door: on the left, in the centre or on the right?",
    "balcony": "Is there a balcony, and what is it made of?",
    "flower_boxes": "Are there flower boxes under the windows, and what colour are the flowers?",
    "phone_booth": "Is there a phone booth next to the door, and on which side?",
    "phone_booth_color": "What colour is the phone booth?",
    "bench": "Is there a bench in front of the building, and on which side?",
    "street_lamp": "Is there a street lamp, and on which side?",
    "tree": "Is there a tree, and on which side?",
    "house_number": "What is the house number?",
    "sidewalk": "What is the sidewalk like?",
}
ASKABLE_SLOTS = tuple(SLOT_QUESTIONS)
assert set(ASKABLE_SLOTS) == set(SLOTS), "every SynthCities slot needs a question"

_COLOUR = ("colour", "color", "coloured", "colored", "painted")
_WHERE = ("where", "which side", "side", "position", "located", "left", "right", "centre", "center", "middle")


@dataclass(frozen=True)
class _Rule:
    slot: str
    group: str
    objects: tuple[str, ...]
    aspects: tuple[str, ...] = ()


# Order matters: specific aspects of an object come before its default slot.
_RULES = (
    _Rule("house_number", "number", ("house number", "street number", "address", "number")),
    _Rule("phone_booth_color", "booth", ("phone booth", "telephone", "phone box", "booth"), _COLOUR),
    _Rule("phone_booth", "booth", ("phone booth", "telephone", "phone box", "booth")),
    _Rule("sign_color", "sign", ("sign", "signboard"), _COLOUR + ("board",)),
    _Rule("shop_sign", "sign", ("sign", "shop", "store", "business", "written", "say", "says", "read", "word", "lettering")),
    _Rule("awning_pattern", "awning", ("awning", "canopy"), ("striped", "stripes", "stripe", "pattern", "plain")),
    _Rule("awning", "awning", ("awning", "canopy")),
    _Rule("door_position", "door", ("door", "entrance", "doorway"), _WHERE),
    _Rule("door_color", "door", ("door", "entrance", "doorway")),
    _Rule("shutters", "shutters", ("shutter", "shutters")),
    _Rule("trim_color", "trim", ("trim", "frames", "window frames")),
    _Rule("flower_boxes", "flowers", ("flower", "flowers", "planter", "planters", "window box", "window boxes")),
    _Rule("window_style", "windows", ("window", "windows"), ("shape", "style", "arched", "round", "square", "narrow", "kind", "type", "look")),
    _Rule("windows_per_floor", "windows", ("window", "windows")),
    _Rule("balcony", "balcony", ("balcony", "balconies")),
    _Rule("floors", "floors", ("floor", "floors", "storey", "storeys", "story", "stories", "levels", "tall", "high")),
    _Rule("roof", "roof", ("roof", "rooftop")),
    _Rule("material", "material", ("material", "made of", "built of", "built from", "brick", "stone", "wooden", "glass", "concrete", "stucco")),
    _Rule("facade_color", "facade", ("facade", "façade", "building", "wall", "walls", "front"), _COLOUR + tuple(c.replace("grey", "gray") for c in COLORS)),
    _Rule("street_lamp", "lamp", ("street lamp", "lamp", "lamppost", "lamp post", "streetlight", "street light", "lantern")),
    _Rule("bench", "bench", ("bench", "seat")),
    _Rule("tree", "tree", ("tree", "trees")),
    _Rule("sidewalk", "sidewalk", ("sidewalk", "pavement", "cobblestone", "cobblestones", "paving")),
)

_PATTERNS = {w: re.compile(r"\b" + re.escape(w) + r"\b") for r in _RULES for w in (*r.objects, *r.aspects)}


def _has_any(text: str, words: tuple[str, ...]) -> bool:
    return any(_PATTERNS[w].search(text) for w in words)


_CLAUSE_SPLIT = re.compile(r"[?;,.]|\band\b|\bor\b")
_PRONOUN = re.compile(r"\b(it|its|they|them|their|one)\b")


def question_slots(question: str) -> list[str]:
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
        for rule in _RULES:
            if rule.group in used or not _has_any(head, rule.objects):
                continue
            if rule.aspects and not _has_any(whole, rule.aspects):
                continue
            slots.append(rule.slot)
            used.add(rule.group)
            break
    return slots


def _side(v: str) -> str:
    return "in the middle" if v == "center" else f"on the {v}"


def answer_sentence(slot: str, value: Any, attributes: dict[str, Any] | None = None) -> str:
    """The user's answer about ``slot`` when its true value is ``value`` (one fixed sentence)."""
    a = attributes or {}
    v = value
    if slot == "facade_color":
        return f"The facade is {v}."
    if slot == "material":
        return f"The building is made of {v}."
    if slot == "floors":
        return f"It has {v} floor{'s' if v != 1 else ''}."
    if slot == "windows_per_floor":
        if a.get("floors") == 1:
            return f"There are {v} windows beside the door."
        return f"There are {v} windows on each upper floor."
    if slot == "window_style":
        return f"The windows are {v}."
    if slot == "shutters":
        return "The windows have no shutters." if v == NONE else f"The windows have {v} shutters."
    if slot == "trim_color":
        return f"The window trim is {v}."
    if slot == "roof":
        return f"It has a {v} roof."
    if slot == "shop_sign":
        return "There is no shop sign." if v == NONE else f"The shop sign says {v}."
    if slot == "sign_color":
        return "There is no shop sign." if v == NONE else f"The shop sign is {v}."
    if slot == "awning":
        if v == NONE:
            return "There is no awning."
        pattern = a.get("awning_pattern")
        return f"There is a {v} striped awning." if pattern == "striped" else f"There is a {v} awning."
    if slot == "awning_pattern":
        return "There is no awning." if v == NONE else f"The awning is {v}."
    if slot == "door_color":
        return f"The door is {v}."
    if slot == "door_position":
        return f"The door is {_side(v)}."
    if slot == "balcony":
        return "There is no balcony." if v == NONE else f"There is a {v} balcony."
    if slot == "flower_boxes":
        return "There are no flower boxes." if v == NONE else f"There are flower boxes with {v} flowers."
    if slot == "phone_booth":
        if v == NONE:
            return "There is no phone booth."
        colour = a.get("phone_booth_color")
        booth = f"a {colour} phone booth" if colour and colour != NONE else "a phone booth"
        return f"There is {booth} to the {v} of the door."
    if slot == "phone_booth_color":
        return "There is no phone booth." if v == NONE else f"The phone booth is {v}."
    if slot in ("bench", "street_lamp", "tree"):
        noun = {"bench": "bench", "street_lamp": "street lamp", "tree": "tree"}[slot]
        return f"There is no {noun}." if v == NONE else f"There is a {noun} on the {v}."
    if slot == "house_number":
        return f"The house number is {v}."
    if slot == "sidewalk":
        return "The sidewalk is cobblestone." if v == "cobblestone" else f"The sidewalk is {v}."
    raise KeyError(f"unknown slot {slot!r}")
