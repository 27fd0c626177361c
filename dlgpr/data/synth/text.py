"""Text of SynthCities: fine-grained descriptions, vague initial captions and region phrases.

A description states every static slot of a place (absent elements included, as "there is no
awning ..."), with spatial relations read off the :class:`~dlgpr.data.synth.layout.Layout`, and
never mentions transient objects (vehicles, passers-by). Each slot has several phrasings and the
sentence order is shuffled, so views of one place get different paraphrases of the same facts
and the most discriminative facts are not always first. Length is held within
``[MIN_WORDS, MAX_WORDS]`` (``str.split()`` words) by switching sentences to shorter or longer
phrasings and by adding or dropping optional relation sentences.

The initial caption is what a user remembers: one or two salient attributes in one short
sentence, sometimes wrong (the "user description dilemma" of the DlgPR paper).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from dlgpr.data.synth.layout import Layout, center_x, overlaps
from dlgpr.data.synth.world import NONE, SLOTS

MIN_WORDS, MAX_WORDS = 100, 200

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
SHOP_NOUNS = {"CAFE": "cafe", "BANK": "bank", "BAKERY": "bakery", "PHARMACY": "pharmacy", "HOTEL": "hotel",
              "BOOKS": "bookshop", "MARKET": "market", "TAILOR": "tailor's shop", "FLORIST": "florist",
              "BARBER": "barber shop", "PIZZA": "pizzeria", "DELI": "deli", "GALLERY": "gallery",
              "TOYS": "toy shop", "SHOES": "shoe shop", "LAUNDRY": "laundry"}
#: Words naming transient objects; descriptions must never contain them (tests check this).
TRANSIENT_WORDS = ("car", "cars", "vehicle", "vehicles", "van", "truck", "bus", "traffic", "pedestrian",
                   "pedestrians", "person", "people", "man", "woman", "child", "passer-by", "bicycle",
                   "bicycles", "bike", "cyclist")
#: Nouns used for absent elements ("there is no awning").
_ABSENT_NOUNS = {"shutters": "shutters", "shop_sign": "shop sign", "awning": "awning", "balcony": "balcony",
                 "flower_boxes": "flower boxes", "phone_booth": "phone booth", "bench": "bench",
                 "street_lamp": "street lamp", "tree": "tree"}


_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiou](?!ne-))")


def _fix_articles(text: str) -> str:
    """"a orange awning" -> "an orange awning" ("a one-storey house" stays)."""
    return _A_BEFORE_VOWEL.sub(r"\1n ", text)


def _storeys(n: int) -> str:
    return f"{NUMBER_WORDS[n]} storey" + ("" if n == 1 else "s")


def _join(items: list[str], conj: str = "and") -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {conj} " + items[-1]


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _decap(s: str) -> str:
    """Lower-case a sentence start for use after a connector, unless it is a sign text or number."""
    first = s.split(maxsplit=1)[0]
    return s if first.isupper() and len(first) > 1 else s[0].lower() + s[1:]


class _Scene:
    """Attributes plus the spatial relations the text needs, read off the layout."""

    def __init__(self, attrs: dict[str, Any], layout: Layout) -> None:
        self.a = attrs
        door_x = center_x(layout.door)
        self.plate_side = "left" if center_x(layout.number_plate) < door_x else "right"
        self.multi = attrs["floors"] > 1
        self.window_row = "windows of the first upper floor" if self.multi else "ground-floor windows"
        self.sign_vs_door = None
        if layout.sign is not None:
            if layout.sign[0] <= door_x <= layout.sign[2]:
                self.sign_vs_door = "directly above the door"
            else:
                self.sign_vs_door = f"to the {'right' if center_x(layout.sign) > door_x else 'left'} of the door"
        self.balcony_over_door = layout.balcony is not None and layout.balcony[0] <= door_x <= layout.balcony[2]
        self.tree_hides_windows = layout.tree_crown is not None and any(
            overlaps(layout.tree_crown, w) for w in layout.windows + layout.shop_windows)
        self.bench_by_booth = (layout.bench is not None and layout.phone_booth is not None
                               and abs(center_x(layout.bench) - center_x(layout.phone_booth)) < 0.12)


# Each sentence unit returns its phrasings of the same facts; the composer picks one per unit.
Unit = Callable[[_Scene], list[str]]


def _overview(s: _Scene) -> list[str]:
    c, m, n = s.a["facade_color"], s.a["material"], s.a["floors"]
    storeys = _storeys(n)
    return [f"This {NUMBER_WORDS[n]}-storey building has a {c} facade built of {m}.",
            f"A {c} {m} facade rises {storeys} above the street.",
            f"The building stands {storeys} tall, and its walls are {m} in a {c} tone.",
            f"It is a {c} building of {storeys} with a facade of {m}.",
            f"The place is a {NUMBER_WORDS[n]}-storey house whose {m} front is {c}."]


def _roof(s: _Scene) -> list[str]:
    r = s.a["roof"]
    detail = {"flat": f"edged by a {s.a['trim_color']} cornice",
              "gabled": "with a single pointed gable facing the street",
              "mansard": "with small dormer windows set into its steep slope",
              "hipped": "that slopes gently down on every side"}[r]
    return [f"It is topped by a {r} roof.", f"A {r} roof crowns the building.",
            f"The roof is {r}, {detail}.", f"On top sits a {r} roof {detail}."]


def _windows(s: _Scene) -> list[str]:
    n, st, t = NUMBER_WORDS[s.a["windows_per_floor"]], s.a["window_style"], s.a["trim_color"]
    if s.multi:
        return [f"Each upper floor has {n} {st} windows framed in {t}.",
                f"{_cap(n)} {st} windows with {t} trim line every floor above the shop front.",
                f"Across each upper storey run {n} {st} windows, their frames painted {t}.",
                f"The upper floors are {n} windows wide; the windows are {st} and trimmed in {t}."]
    return [f"The single floor has {n} {st} windows beside the door, framed in {t}.",
            f"Beside the door there are {n} {st} windows with {t} frames.",
            f"{_cap(n)} {st} windows, trimmed in {t}, share the ground floor with the door."]


def _shutters(s: _Scene) -> list[str]:
    c = s.a["shutters"]
    which = "upper windows" if s.multi else "windows"
    return [f"{_cap(c)} shutters flank the {which}.", f"The {which} are flanked by {c} shutters.",
            f"Every one of the {which} has a pair of {c} shutters."]


def _door(s: _Scene) -> list[str]:
    d, pos = s.a["door_color"], s.a["door_position"]
    where = {"left": "at the left end of the ground floor", "center": "in the middle of the ground floor",
             "right": "at the right end of the ground floor"}[pos]
    short = {"left": "on the left", "center": "in the centre", "right": "on the right"}[pos]
    front = "shop front" if s.multi else "facade"
    return [f"The {d} door sits {where}.", f"At street level, a {d} door opens {short}.",
            f"The entrance is a {d} door placed {where}.", f"A {d} front door is set {short} of the {front}."]


def _house_number(s: _Scene) -> list[str]:
    n, side = s.a["house_number"], s.plate_side
    return [f"A small plate to the {side} of the door shows the house number {n}.",
            f"The house number is {n}.", f"The number {n} is displayed on a white plate beside the entrance.",
            f"To the {side} of the door, a blue-edged plate reads {n}."]


def _sign(s: _Scene) -> list[str]:
    text, c = s.a["shop_sign"], s.a["sign_color"]
    noun = SHOP_NOUNS[text]
    return [f"A {c} sign above the ground floor reads {text}.",
            f"The shop sign says {text} on a {c} board.",
            f"Above the shop front hangs a {c} board with the word {text}.",
            f"The ground floor houses a {noun}, announced by a {c} sign reading {text} {s.sign_vs_door}.",
            f"The word {text} is written on a {c} sign {s.sign_vs_door}."]


def _awning(s: _Scene) -> list[str]:
    c, striped = s.a["awning"], s.a["awning_pattern"] == "striped"
    look = f"{c} and white striped" if striped else f"plain {c}"
    return [f"Above the door hangs a {look} awning.", f"A {look} awning shades the entrance.",
            f"The door is sheltered by a {c} awning" + (", striped with white." if striped else " in a plain fabric.")]


def _balcony(s: _Scene) -> list[str]:
    b = s.a["balcony"]
    where = "directly above the door" if s.balcony_over_door else "in the middle of the facade"
    return [f"A {b} balcony projects from the first upper floor, {where}.",
            f"On the first floor above the shop there is a {b} balcony.",
            f"A {b} balcony sits {where} on the first upper floor."]


def _flower_boxes(s: _Scene) -> list[str]:
    c, row = s.a["flower_boxes"], s.window_row
    return [f"Flower boxes with {c} flowers sit beneath the {row}.", f"{_cap(c)} flowers bloom in boxes under the {row}.",
            f"The {row} have window boxes full of {c} flowers."]


def _phone_booth(s: _Scene) -> list[str]:
    c, side, d = s.a["phone_booth_color"], s.a["phone_booth"], s.a["door_color"]
    return [f"A {c} phone booth stands to the {side} of the {d} door.",
            f"To the {side} of the entrance there is a {c} phone booth.",
            f"Right next to the door, on its {side}, stands a {c} telephone booth."]


def _bench(s: _Scene) -> list[str]:
    side = s.a["bench"]
    near = ", next to the phone booth" if s.bench_by_booth else ""
    return [f"A wooden bench sits on the sidewalk in front of the {side} half of the facade{near}.",
            f"There is a bench on the {side} side of the pavement{near}.",
            f"On the {side}, a bench waits by the wall{near}."]


def _street_lamp(s: _Scene) -> list[str]:
    side = s.a["street_lamp"]
    by_tree = " beside the tree" if s.a["tree"] == side else ""
    return [f"A street lamp stands at the kerb on the {side}{by_tree}.",
            f"On the {side}, an old-fashioned street lamp rises from the sidewalk{by_tree}.",
            f"A lamp post marks the {side} end of the frontage{by_tree}."]


def _tree(s: _Scene) -> list[str]:
    side = s.a["tree"]
    hides = ", its crown hiding some of the windows" if s.tree_hides_windows else ""
    return [f"A tree shades the {side} end of the facade{hides}.",
            f"On the {side}, a leafy tree grows in front of the building{hides}.",
            f"A tree stands at the {side} edge of the sidewalk{hides}."]


def _sidewalk(s: _Scene) -> list[str]:
    v = s.a["sidewalk"]
    made = {"cobblestone": "laid with cobblestone", "paved": "paved with square slabs", "asphalt": "covered in asphalt"}[v]
    return [f"The sidewalk in front is {made}.", f"A {v} sidewalk runs along the front.",
            f"In front of the building the pavement is {v}."]


def _absent(s: _Scene) -> list[str]:
    nouns = [noun for slot, noun in _ABSENT_NOUNS.items() if s.a[slot] == NONE]
    if not nouns:
        return []
    return [f"There is {_join([f'no {n}' for n in nouns])}.", f"The scene has no {_join(nouns, 'or')}.",
            f"The building lacks any {_join(nouns, 'or')}."]


_UNITS: tuple[Unit, ...] = (_overview, _roof, _windows, _door, _house_number, _sidewalk, _absent)
_OPTIONAL_UNITS: dict[str, Unit] = {"shutters": _shutters, "shop_sign": _sign, "awning": _awning, "balcony": _balcony,
                                    "flower_boxes": _flower_boxes, "phone_booth": _phone_booth, "bench": _bench,
                                    "street_lamp": _street_lamp, "tree": _tree}


def _extras(s: _Scene) -> list[str]:
    """True but optional sentences (relations, fixed details) used to reach the minimum length."""
    a = s.a
    out = [f"The {a['trim_color']} trim also outlines the door frame.",
           "The door has panelled leaves and a brass handle.",
           "The roof spans the full width of the facade.",
           "Plainer neighbouring buildings in muted tones stand on both sides.",
           "Beyond the kerb, the street runs across the bottom of the scene."]
    if s.multi:
        out += ["The upper windows are evenly spaced across the facade.",
                "The ground floor is taller than the floors above it.",
                "Large shop windows fill the ground floor around the door."]
    if s.sign_vs_door is not None:
        out.append(f"The sign is centred over the shop front, {s.sign_vs_door}.")
    if a["tree"] != NONE and a["street_lamp"] != NONE:
        out.append("The street lamp stands right beside the tree." if a["tree"] == a["street_lamp"]
                   else "The tree and the street lamp frame the building from opposite sides.")
    if a["awning"] != NONE and a["shop_sign"] != NONE:
        out.append("The awning hangs just below the shop sign.")
    if a["phone_booth"] != NONE:
        out.append("The house number plate is on the side of the door away from the phone booth.")
    return out


_CONNECTORS = ("Also, ", "In addition, ", "Notably, ", "Besides, ", "Further, ")
_OPENERS = ("Seen from across the street, ", "From the sidewalk opposite, ", "In this view, ")


def _count(sentences: list[str]) -> int:
    return sum(len(x.split()) for x in sentences)


def describe(attrs: dict[str, Any], layout: Layout, rng: random.Random) -> str:
    """A 100-200 word description of the place's static scene; ``rng`` picks phrasing and order."""
    scene = _Scene(attrs, layout)
    units = list(_UNITS) + [u for slot, u in _OPTIONAL_UNITS.items() if attrs[slot] != NONE]
    options = [variants for variants in (u(scene) for u in units) if variants]
    lengths = [[len(v.split()) for v in variants] for variants in options]
    chosen = [rng.randrange(len(v)) for v in options]
    order = list(range(len(options)))
    rng.shuffle(order)
    extras = _extras(scene)
    rng.shuffle(extras)
    added: list[tuple[int, str]] = []  # (insert position, optional sentence)

    def sentences() -> list[str]:
        out = [options[i][chosen[i]] for i in order]
        for pos, sentence in added:
            out.insert(pos, sentence)
        return out

    def retune(longest: bool) -> bool:
        """Switch the unit with the largest length change (that keeps the text within
        ``MAX_WORDS`` when lengthening) to its longest/shortest phrasing."""
        target = max if longest else min
        room = MAX_WORDS - _count(sentences())
        gains = [abs(target(ls) - ls[c]) for ls, c in zip(lengths, chosen)]
        fits = [i for i in range(len(options)) if 0 < gains[i] and (not longest or gains[i] <= room)]
        if not fits:
            return False
        best = max(fits, key=gains.__getitem__)
        chosen[best] = lengths[best].index(target(lengths[best]))
        return True

    while _count(sentences()) > MAX_WORDS:
        if not retune(longest=False):
            raise RuntimeError(f"description cannot be shortened to {MAX_WORDS} words: {attrs}")
    # Too short: first add optional true sentences at random places (never first), then lengthen.
    while _count(sentences()) < MIN_WORDS and extras:
        extra = extras.pop()
        if _count(sentences()) + len(extra.split()) <= MAX_WORDS:
            added.append((rng.randint(1, len(order) + len(added)), extra))
    while _count(sentences()) < MIN_WORDS:
        if not retune(longest=True):
            raise RuntimeError(f"description cannot reach {MIN_WORDS} words: {attrs}")
    out = sentences()
    # Openers and connectors vary the surface only; each is kept if it still fits the budget.
    budget = MAX_WORDS - _count(out)
    decorations = [(0, rng.choice(_OPENERS))] if rng.random() < 0.3 else []
    decorations += [(i, rng.choice(_CONNECTORS)) for i in range(1, len(out)) if rng.random() < 0.15]
    for i, prefix in decorations:
        if len(prefix.split()) <= budget:
            out[i] = prefix + _decap(out[i])
            budget -= len(prefix.split())
    return _fix_articles(" ".join(out))


# ---------------------------------------------------------------------------------------------
# Initial captions


@dataclass(frozen=True)
class Caption:
    """A vague first description. ``stated`` holds the slot values as the caption states them;
    ``wrong_slot`` names the slot stated wrongly, or is None when the caption is right."""

    text: str
    stated: dict[str, Any]
    wrong_slot: str | None


#: Slots a user may remember, with how salient they are (sampling weight).
_CAPTION_SALIENCE = {"facade_color": 3.0, "shop_sign": 3.0, "awning": 2.0, "material": 2.0, "door_color": 1.5,
                     "floors": 1.0, "roof": 1.0, "phone_booth_color": 1.0, "shutters": 1.0}
_HEAD_SLOTS = ("floors", "facade_color", "material")  # adjectives before the noun, in this order
_CAPTION_FORMS = ("{NP}, I think.", "I remember {np}.", "It was {np}, if I recall correctly.", "Something like {np}.",
                  "{NP}, but I'm not sure about the rest.", "I think it was {np}.", "Maybe {np}?")


def _with_phrase(slot: str, value: Any) -> str:
    if slot == "shop_sign":
        return "a " + SHOP_NOUNS[value]
    return {"roof": "a {} roof", "awning": "a {} awning", "door_color": "a {} door",
            "phone_booth_color": "a {} phone booth in front", "shutters": "{} shutters"}[slot].format(value)


def caption_text(stated: dict[str, Any], rng: random.Random) -> str:
    adjectives = []
    for slot in _HEAD_SLOTS:
        if slot in stated:
            v = stated[slot]
            adjectives.append(f"{NUMBER_WORDS[v]}-storey" if slot == "floors" else str(v))
    noun = rng.choice(("building", "house", "place"))
    np_ = "a " + " ".join(adjectives + [noun])
    withs = [_with_phrase(slot, v) for slot, v in stated.items() if slot not in _HEAD_SLOTS]
    if withs:
        np_ += " with " + _join(withs)
    form = rng.choice(_CAPTION_FORMS)
    return _fix_articles(form.replace("{NP}", _cap(np_)).replace("{np}", np_))


def initial_caption(attrs: dict[str, Any], rng: random.Random, error_rate: float, attributes: tuple[int, int] = (1, 2)) -> Caption:
    """``attributes[0]..attributes[1]`` salient attributes of the place (default one or two);
    with probability ``error_rate`` one of them is wrong.

    The mentioned slots are drawn before the error coin, so the error rate does not change which
    slots a place's caption mentions.
    """
    candidates = [slot for slot in _CAPTION_SALIENCE if attrs[slot] != NONE]
    k = min(len(candidates), rng.choice(tuple(range(attributes[0], attributes[1] + 1))))
    slots: list[str] = []
    while len(slots) < k:  # weighted sampling without replacement
        pool = [c for c in candidates if c not in slots]
        slots.append(rng.choices(pool, weights=[_CAPTION_SALIENCE[c] for c in pool])[0])
    slots.sort(key=list(_CAPTION_SALIENCE).index)
    stated = {slot: attrs[slot] for slot in slots}
    wrong_slot = None
    if rng.random() < error_rate:
        wrong_slot = rng.choice(slots)
        stated[wrong_slot] = rng.choice([v for v in SLOTS[wrong_slot] if v not in (NONE, attrs[wrong_slot])])
    return Caption(text=caption_text(stated, rng), stated=stated, wrong_slot=wrong_slot)


# ---------------------------------------------------------------------------------------------
# Region phrases


def region_phrase(element: str, attrs: dict[str, Any]) -> str:
    """The noun phrase naming a static element (an element name of ``Layout.element_boxes``)."""
    a = attrs
    if element == "awning":
        return f"the {a['awning']} {'striped ' if a['awning_pattern'] == 'striped' else ''}awning"
    return {
        "facade": f"the {a['facade_color']} {a['material']} facade",
        "roof": f"the {a['roof']} roof",
        "windows": f"the {a['window_style']} windows",
        "shop_windows": "the shop windows",
        "shutters": f"the {a['shutters']} shutters",
        "door": f"the {a['door_color']} door",
        "house_number": f"house number {a['house_number']}",
        "sign": f"the {a['sign_color']} {a['shop_sign']} sign",
        "balcony": f"the {a['balcony']} balcony",
        "flower_boxes": f"the {a['flower_boxes']} flower boxes",
        "phone_booth": f"the {a['phone_booth_color']} phone booth",
        "bench": "the bench",
        "street_lamp": "the street lamp",
        "tree": "the tree",
        "sidewalk": f"the {a['sidewalk']} sidewalk",
    }[element]
