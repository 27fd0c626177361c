"""The SynthCities attribute schema: how the dialogue engine asks about and answers SynthCities slots.

Implements :class:`dlgpr.dialogue.slots.AttributeSchema` for the slots of
:mod:`dlgpr.data.synth.world`: the canonical question of each slot, the cue words that map a
free-form question to slots (an object word such as door, sign or awning and, where one object
carries several slots, an aspect word such as colour, where, shape or pattern), one fixed
answer sentence per (slot, value) (the oracle teacher relies on it to check which candidates
agree with what the user said), the vague phrasing of a slot and the values a wrong answer may
state.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from dlgpr.data.synth.world import COLORS, DEPENDENT_SLOTS, NONE, SLOTS
from dlgpr.dialogue.slots import CueRule, CueWordParser

__all__ = ["SLOT_QUESTIONS", "SynthCitiesSchema", "answer_sentence"]

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
assert set(SLOT_QUESTIONS) == set(SLOTS), "every SynthCities slot needs a question"

_COLOUR = ("colour", "color", "coloured", "colored", "painted")
_WHERE = ("where", "which side", "side", "position", "located", "left", "right", "centre", "center", "middle")

# Order matters: specific aspects of an object come before its default slot.
_RULES = (
    CueRule("house_number", "number", ("house number", "street number", "address", "number")),
    CueRule("phone_booth_color", "booth", ("phone booth", "telephone", "phone box", "booth"), _COLOUR),
    CueRule("phone_booth", "booth", ("phone booth", "telephone", "phone box", "booth")),
    CueRule("sign_color", "sign", ("sign", "signboard"), _COLOUR + ("board",)),
    CueRule("shop_sign", "sign", ("sign", "shop", "store", "business", "written", "say", "says", "read", "word", "lettering")),
    CueRule("awning_pattern", "awning", ("awning", "canopy"), ("striped", "stripes", "stripe", "pattern", "plain")),
    CueRule("awning", "awning", ("awning", "canopy")),
    CueRule("door_position", "door", ("door", "entrance", "doorway"), _WHERE),
    CueRule("door_color", "door", ("door", "entrance", "doorway")),
    CueRule("shutters", "shutters", ("shutter", "shutters")),
    CueRule("trim_color", "trim", ("trim", "frames", "window frames")),
    CueRule("flower_boxes", "flowers", ("flower", "flowers", "planter", "planters", "window box", "window boxes")),
    CueRule("window_style", "windows", ("window", "windows"), ("shape", "style", "arched", "round", "square", "narrow", "kind", "type", "look")),
    CueRule("windows_per_floor", "windows", ("window", "windows")),
    CueRule("balcony", "balcony", ("balcony", "balconies")),
    CueRule("floors", "floors", ("floor", "floors", "storey", "storeys", "story", "stories", "levels", "tall", "high")),
    CueRule("roof", "roof", ("roof", "rooftop")),
    CueRule("material", "material", ("material", "made of", "built of", "built from", "brick", "stone", "wooden", "glass", "concrete", "stucco")),
    CueRule("facade_color", "facade", ("facade", "façade", "building", "wall", "walls", "front"), _COLOUR + tuple(c.replace("grey", "gray") for c in COLORS)),
    CueRule("street_lamp", "lamp", ("street lamp", "lamp", "lamppost", "lamp post", "streetlight", "street light", "lantern")),
    CueRule("bench", "bench", ("bench", "seat")),
    CueRule("tree", "tree", ("tree", "trees")),
    CueRule("sidewalk", "sidewalk", ("sidewalk", "pavement", "cobblestone", "cobblestones", "paving")),
)

_PARSER = CueWordParser(_RULES)

#: What a vague user says about a slot instead of its value.
_VAGUE = {
    "facade_color": "The facade had some colour, I'm not sure which.",
    "door_color": "The door was coloured, I didn't look closely.",
    "house_number": "It had a number, but I don't recall it.",
    "shop_sign": "There might have been some sign.",
}


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


class SynthCitiesSchema:
    """The SynthCities slots as an :class:`~dlgpr.dialogue.slots.AttributeSchema` (the engine's default)."""

    slots: tuple[str, ...] = tuple(SLOT_QUESTIONS)
    slot_weights: Mapping[str, float] = MappingProxyType({"house_number": 0.25})
    """A house-number plate is a few pixels of a street view: it splits candidates on paper but
    helps a retriever little, so the oracle teacher weighs it down."""

    def question(self, slot: str) -> str:
        return SLOT_QUESTIONS[slot]

    def question_slots(self, question: str) -> list[str]:
        return _PARSER(question)

    def answer_sentence(self, slot: str, value: Any, attributes: dict[str, Any] | None = None) -> str:
        return answer_sentence(slot, value, attributes)

    def vague_answer(self, slot: str) -> str | None:
        return _VAGUE.get(slot)

    def wrong_values(self, slot: str, value: Any) -> list[Any]:
        """Every other value of the slot; never "none" for a slot that exists exactly when its parent does."""
        return [v for v in SLOTS[slot] if v != value and not (v == NONE and slot in DEPENDENT_SLOTS)]
