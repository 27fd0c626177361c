"""Teachers of the geo-reasoning distillation: who says where a photo was taken, and why.

GLOBE distils its training data from two large VLMs (Qwen2.5-VL-72B and InternVL3-78B). Each
teacher here is a :class:`~dlgpr.geo.predict.GeoPredictor` whose predictions carry
``localizable``, ``confidence``, ``reasoning``, ``city`` and ``country``:

- :class:`APIGeoTeacher`: a VLM behind an OpenAI-compatible endpoint (vLLM, SGLang or a hosted
  API), asked with a versioned prompt file for one JSON object per image. It reuses the DQ-Cities
  builder's client, retries with backoff, rate limit and on-disk reply cache
  (:mod:`dlgpr.pipeline.text`): a rebuild never pays twice for an image, an error no retry can
  fix stops the run with one line, and a reply that is not the JSON asked for is retried, then
  recorded as a failed prediction.
- :class:`WorldGeoTeacher`: an embedded teacher for the SynthCities geo world, so the whole
  pipeline runs offline on 2 CPU cores. It reasons the way the distillation assumes a VLM does:
  it looks at the elements visible in this view (the record's regions), knows the cities' styles
  only from the training places it has seen (its own share of them), and names the most probable
  city under a naive-Bayes posterior. Its mistakes are realistic and differ by profile
  (:data:`TEACHER_PROFILES`): it reads only some kinds of clues, misreads colours, overlooks
  elements, sometimes names an element that is not there, and is over- or under-confident.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from dlgpr.data.geo import GeoSample, world_countries
from dlgpr.data.reader import iter_records
from dlgpr.data.shards import read_manifest
from dlgpr.data.synth.text import region_phrase
from dlgpr.data.synth.world import COLORS, NONE, SLOTS
from dlgpr.dialogue.api import ChatAPIConfig, ChatClient
from dlgpr.geo.predict import GeoPrediction
from dlgpr.pipeline.text import PromptFile, ResponseCache, RetryPolicy, complete_with_retries, image_bytes_payload, reply_json_object

log = logging.getLogger("dlgpr.pipeline")


# ---- the reply of a reasoning teacher -------------------------------------------------------------

def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "true", "no", "false"):
        return value.strip().lower() in ("yes", "true")
    raise ValueError(f"{name} is not a boolean")


def parse_teacher_reply(reply: str) -> dict[str, Any]:
    """``{localizable, confidence, reasoning, city, country}`` from a teacher's reply.

    Takes the outermost ``{...}`` (code fences and a sentence around it are tolerated); a
    confidence given in percent (1 < c <= 100) is scaled to [0, 1]; "yes"/"no" strings are
    booleans. Raises ``ValueError`` naming the first missing or malformed field.
    """
    obj = reply_json_object(reply)
    out: dict[str, Any] = {"localizable": _as_bool(obj.get("localizable"), "localizable")}
    conf = obj.get("confidence")
    if isinstance(conf, str):
        try:
            conf = float(conf.strip().rstrip("%"))
        except ValueError:
            raise ValueError("confidence is not a number") from None
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not math.isfinite(conf):
        raise ValueError("confidence is not a number")
    conf = float(conf) / 100.0 if 1.0 < conf <= 100.0 else float(conf)
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"confidence {conf} outside [0, 1]")
    out["confidence"] = conf
    for name in ("reasoning", "city", "country"):
        value = obj.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} missing or not a string")
        out[name] = " ".join(value.split())
    return out


def teacher_prediction(key: str, fields: dict[str, Any], raw: str | None = None, **extra: Any) -> GeoPrediction:
    """A :class:`GeoPrediction` from parsed teacher fields."""
    return GeoPrediction(key=key, city=fields["city"], country=fields["country"], confidence=fields["confidence"],
                         localizable=fields["localizable"], reasoning=fields["reasoning"], raw=raw, extra=dict(extra))


# ---- a VLM behind an OpenAI-compatible endpoint ---------------------------------------------------

class APIGeoTeacher:
    """A reasoning teacher served over an OpenAI-compatible chat endpoint (one image per request).

    Args:
        api: endpoint, model, concurrency and rate limit. Its ``max_retries`` is forced to 0: this
            teacher retries itself (``retry``), so every attempt counts against the rate limit.
        prompt: a prompt in ``dlgpr/pipeline/prompts`` (without ``.txt``) or a path to a ``.txt``
            file with ``### system`` and ``### user`` sections.
        retry: attempts per image and backoff.
        cache_dir: replies cached by (prompt version, model, image hash); None: no cache.
        image_max_side: longer images are resized (JPEG q90) before sending; None sends the file.
        name: the teacher's name in stores, shards and tables (default: the model name's last part).
        seed: seed of the retry jitter.
    """

    def __init__(self, api: ChatAPIConfig, prompt: str = "geo_teacher_v1", retry: RetryPolicy | None = None,
                 cache_dir: str | None = None, image_max_side: int | None = 1024, name: str | None = None, seed: int = 0) -> None:
        self.api = api
        self.prompt = PromptFile.load(prompt)
        self.retry = retry or RetryPolicy()
        self.client = ChatClient(replace(api, max_retries=0))
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self.image_max_side = image_max_side
        self.name = name or api.model.rsplit("/", 1)[-1]
        self.seed = seed

    def __repr__(self) -> str:
        return f"APIGeoTeacher({self.name!r}, model={self.api.model!r}, prompt={self.prompt.version!r})"

    def messages(self, data_url: str) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": [{"type": "text", "text": self.prompt.system}]},
            {"role": "user", "content": [{"type": "image_url", "url": data_url}, {"type": "text", "text": self.prompt.user}]},
        ]

    def predict_one(self, sample: GeoSample) -> GeoPrediction:
        try:
            digest, url = image_bytes_payload(sample.image_data(), self.image_max_side)
        except (OSError, ValueError) as exc:  # unreadable file, corrupt image, no image at all
            return GeoPrediction.failed(sample.key, f"bad_image:{type(exc).__name__}")
        if self.cache is not None:
            cached = self.cache.get(self.prompt.version, self.api.model, digest)
            if cached is not None:
                try:
                    return teacher_prediction(sample.key, parse_teacher_reply(cached["text"]), cached["text"], cached=True, attempts=0)
                except (ValueError, KeyError, TypeError):
                    pass  # a reply the current parser rejects: ask again
        rng = random.Random(f"{self.seed}/{self.name}/{sample.key}")
        got = complete_with_retries(self.client, self.messages(url), parse_teacher_reply, self.retry, rng)
        usage = {"attempts": got.attempts, "prompt_tokens": got.prompt_tokens, "completion_tokens": got.completion_tokens}
        if got.value is None:
            return GeoPrediction(key=sample.key, ok=False, error=got.error, extra=usage)
        if self.cache is not None:
            self.cache.put(self.prompt.version, self.api.model, digest, {"text": got.raw})
        return teacher_prediction(sample.key, got.value, got.raw, cached=False, **usage)

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        """One prediction per sample, ``api.max_concurrency`` requests in flight. Raises
        :class:`~dlgpr.pipeline.text.StageAborted` on an error no retry can fix (bad key, model, URL)."""
        if not samples:
            return []
        with ThreadPoolExecutor(max_workers=self.api.max_concurrency, thread_name_prefix=f"teacher-{self.name}") as pool:
            return list(pool.map(self.predict_one, samples))


# ---- the embedded world-aware teacher ---------------------------------------------------------------

#: The SynthCities slots each visible element shows (``region_phrase`` element names).
ELEMENT_SLOTS: dict[str, tuple[str, ...]] = {
    "facade": ("facade_color", "material", "floors", "trim_color"),
    "roof": ("roof",),
    "windows": ("window_style", "windows_per_floor"),
    "shutters": ("shutters",),
    "door": ("door_color", "door_position"),
    "sign": ("shop_sign", "sign_color"),
    "awning": ("awning", "awning_pattern"),
    "balcony": ("balcony",),
    "flower_boxes": ("flower_boxes",),
    "phone_booth": ("phone_booth", "phone_booth_color"),
    "bench": ("bench",),
    "street_lamp": ("street_lamp",),
    "tree": ("tree",),
    "sidewalk": ("sidewalk",),
}
#: Elements that may be absent (their first slot is ``"none"``): seeing the facade without one is a clue too.
OPTIONAL_ELEMENTS = ("shutters", "sign", "awning", "balcony", "flower_boxes", "phone_booth", "bench", "street_lamp", "tree")
#: The slots whose value is a colour (what a colour misreading changes).
COLOUR_SLOTS = frozenset(s for s, values in SLOTS.items() if set(COLORS) <= set(v for v in values if v != NONE))
#: Colours a teacher may mistake for each other (neighbours in hue or lightness).
CONFUSABLE = {
    "red": ("orange", "pink", "brown"), "orange": ("red", "yellow", "brown"), "yellow": ("orange", "beige"),
    "green": ("teal",), "blue": ("teal", "purple"), "teal": ("green", "blue"), "purple": ("pink", "blue"),
    "pink": ("red", "purple"), "white": ("grey", "beige"), "grey": ("white", "black"), "black": ("grey",),
    "brown": ("red", "beige"), "beige": ("white", "brown", "yellow"),
}


@dataclass(frozen=True)
class TeacherProfile:
    """How an embedded teacher sees and reasons; its error profile.

    Attributes:
        clues: the elements it reads (others it ignores, as a model with a blind spot would).
        knowledge_fraction: the share of the world's training places it has "seen": its city
            styles are estimated from those alone (Laplace-smoothed counts).
        colour_confusion: probability of reading a colour as a confusable neighbour.
        miss_rate: probability of overlooking a visible element.
        hallucination_rate: probability of naming one element that is not in the image (and
            using it as a clue).
        temperature: the posterior over cities is ``softmax(log-likelihood / temperature)``;
            below 1 the teacher is over-confident, above 1 under-confident.
        min_clues: fewer readable clues than this and it calls the image not localizable.
        min_confidence: a posterior maximum below this and it calls the image not localizable.
    """

    clues: tuple[str, ...]
    knowledge_fraction: float = 0.5
    colour_confusion: float = 0.0
    miss_rate: float = 0.0
    hallucination_rate: float = 0.0
    temperature: float = 1.0
    min_clues: int = 3
    min_confidence: float = 0.2

    def __post_init__(self) -> None:
        unknown = [c for c in self.clues if c not in ELEMENT_SLOTS]
        if unknown or not self.clues:
            raise ValueError(f"profile clues must be non-empty element names of {sorted(ELEMENT_SLOTS)}, got unknown {unknown}")
        for name in ("knowledge_fraction", "colour_confusion", "miss_rate", "hallucination_rate", "min_confidence"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"profile {name} must be in [0, 1], got {v}")
        if self.knowledge_fraction == 0.0:
            raise ValueError("profile knowledge_fraction must be > 0")
        if not self.temperature > 0:
            raise ValueError(f"profile temperature must be > 0, got {self.temperature}")


#: Two teachers with different error profiles, as two different VLMs would have.
TEACHER_PROFILES: dict[str, TeacherProfile] = {
    # Reads the architecture (facade, roof, windows, pavement) carefully and never invents
    # anything, but ignores shop fronts and street furniture: it confuses cities that build
    # alike, and it is under-confident (calls a third of the images not localizable).
    "architect": TeacherProfile(
        clues=("facade", "roof", "windows", "sidewalk"), knowledge_fraction=0.3, colour_confusion=0.03, miss_rate=0.1,
        hallucination_rate=0.0, temperature=1.3, min_confidence=0.4),
    # Reads colourful details and street furniture, misreads colours and sometimes names a thing
    # that is not there; over-confident.
    "colourist": TeacherProfile(
        clues=("door", "shutters", "sign", "awning", "flower_boxes", "phone_booth", "tree"), knowledge_fraction=0.3,
        colour_confusion=0.12, miss_rate=0.1, hallucination_rate=0.15, temperature=0.6),
}


def _phrase(element: str, attrs: dict[str, Any], article: str = "a") -> str:
    """``region_phrase`` with "a"/"an" (``article="a"``, a first mention) or "the"; plurals get no "a"."""
    text = region_phrase(element, attrs)
    if not text.startswith("the "):
        return text  # "house number 12"
    if article == "the":
        return text
    bare = text[4:]
    if bare.endswith("s") and not bare.endswith("ss"):
        return bare
    return ("an " if bare[0] in "aeiou" else "a ") + bare


def visible_elements(record_regions: Sequence[Any], attrs: dict[str, Any]) -> list[str]:
    """The elements of ``ELEMENT_SLOTS`` that have a region in this view (present and not cropped away)."""
    phrases = {getattr(r, "phrase", r) for r in record_regions}
    out = []
    for element in ELEMENT_SLOTS:
        if element in OPTIONAL_ELEMENTS and attrs.get(ELEMENT_SLOTS[element][0], NONE) == NONE:
            continue
        try:
            if region_phrase(element, attrs) in phrases:
                out.append(element)
        except KeyError:  # a record without this slot (not a SynthCities record of this version)
            continue
    return out


class WorldGeoTeacher:
    """An embedded reasoning teacher for a SynthCities geo world (see the module docstring).

    Args:
        data_dir: the world's shard folder (its manifest names the cities and countries; its
            ``knowledge_split`` records are what the teacher has seen).
        profile: a name of :data:`TEACHER_PROFILES` or a :class:`TeacherProfile`.
        knowledge_split: the split whose places form the teacher's knowledge of city styles
            (never the split being distilled for evaluation).
        name: its name in stores and tables (default: ``world-<profile>``).
        seed: draws which places the teacher knows and its per-image mistakes (deterministic
            in ``(seed, name, sample key)``, so a rerun gives the same predictions).
    """

    def __init__(self, data_dir: str, profile: str | TeacherProfile = "architect", knowledge_split: str = "train",
                 name: str | None = None, seed: int = 0, smoothing: float = 1.0) -> None:
        if isinstance(profile, str):
            if profile not in TEACHER_PROFILES:
                raise ValueError(f"profile {profile!r} unknown; choose from {', '.join(TEACHER_PROFILES)} or give a TeacherProfile")
            self.profile_name, self.profile = profile, TEACHER_PROFILES[profile]
        else:
            self.profile_name, self.profile = "custom", profile
        self.name = name or f"world-{self.profile_name}"
        self.seed = seed
        self.smoothing = smoothing
        data_dir = Path(data_dir)
        manifest = read_manifest(data_dir)
        self.country_of = world_countries(manifest.extra)
        self.cities = [str(c["name"]) for c in manifest.extra.get("cities", [])]
        if not self.cities:
            raise ValueError(f"{data_dir}: manifest extra.cities is empty (WorldGeoTeacher needs a SynthCities world)")
        self._fit(data_dir, manifest, knowledge_split)

    def __repr__(self) -> str:
        return f"WorldGeoTeacher({self.name!r}, knows {self.known_places} places)"

    # -- knowledge -----------------------------------------------------------------------------------
    def _knows(self, place_id: int) -> bool:
        return random.Random(f"{self.seed}/{self.name}/knows/{place_id}").random() < self.profile.knowledge_fraction

    def _fit(self, data_dir: Path, manifest: Any, split: str) -> None:
        shards = manifest.split_shards(split)
        if not shards:
            raise ValueError(f"{data_dir}: no shard of knowledge split {split!r}")
        places: dict[int, tuple[str, dict[str, Any]]] = {}
        for shard in shards:
            for record in iter_records(data_dir / shard.path):
                if record.place_id not in places and record.attributes and self._knows(record.place_id):
                    places[record.place_id] = (record.city, record.attributes)
        self.counts: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        self.totals: Counter = Counter()
        for city, attrs in places.values():
            self.totals[city] += 1
            for slot, value in attrs.items():
                self.counts[city][slot][value] += 1
        self.known = places
        self.known_places = len(places)

    def loglik(self, city: str, slot: str, value: Any, leave_out: tuple[str, dict[str, Any]] | None = None) -> float:
        """log P(slot = value | city), Laplace-smoothed; ``leave_out`` = (city, attributes) of a known
        place to remove from the counts, so a teacher never recognises a place it has seen."""
        k = len(SLOTS.get(slot, ())) or 1
        n, total = self.counts[city][slot][value], self.totals[city]
        if leave_out is not None and leave_out[0] == city:
            total -= 1
            n -= int(leave_out[1].get(slot) == value)
        return math.log((n + self.smoothing) / (total + self.smoothing * k))

    # -- perception ----------------------------------------------------------------------------------
    def observe(self, sample: GeoSample, rng: random.Random) -> tuple[dict[str, Any], list[str], list[str]]:
        """``(perceived slot values, elements named, hallucinated elements)`` for one image."""
        record = sample.record
        if record is None or not record.attributes:
            raise ValueError("no SynthCities record")
        truth = dict(record.attributes)
        p = self.profile
        seen = [e for e in visible_elements(record.regions, truth) if e in p.clues and rng.random() >= p.miss_rate]
        perceived: dict[str, Any] = {}
        for element in seen:
            for slot in ELEMENT_SLOTS[element]:
                value = truth[slot]
                if slot in COLOUR_SLOTS and value in CONFUSABLE and rng.random() < p.colour_confusion:
                    value = rng.choice(CONFUSABLE[value])
                perceived[slot] = value
        # An optional element the teacher reads but does not see is a clue too ("no awning"),
        # when the facade it would hang on is in view.
        if "facade" in seen:
            for element in OPTIONAL_ELEMENTS:
                if element in p.clues and element not in seen and truth.get(ELEMENT_SLOTS[element][0]) == NONE:
                    for slot in ELEMENT_SLOTS[element]:
                        perceived[slot] = NONE
        invented: list[str] = []
        absent = [e for e in OPTIONAL_ELEMENTS if e in p.clues and truth.get(ELEMENT_SLOTS[e][0]) == NONE]
        if absent and rng.random() < p.hallucination_rate:
            element = rng.choice(absent)
            fake = dict(truth)
            for slot in ELEMENT_SLOTS[element]:
                fake[slot] = rng.choice([v for v in SLOTS[slot] if v != NONE])
                perceived[slot] = fake[slot]
            invented.append(element)
            seen.append(element)
        return perceived, seen, invented

    # -- reasoning -----------------------------------------------------------------------------------
    def posterior(self, perceived: dict[str, Any], leave_out: tuple[str, dict[str, Any]] | None = None) -> dict[str, float]:
        """P(city | perceived clues) under the teacher's knowledge, tempered by its profile."""
        logits = {c: sum(self.loglik(c, s, v, leave_out) for s, v in perceived.items()) / self.profile.temperature for c in self.cities}
        top = max(logits.values())
        z = sum(math.exp(v - top) for v in logits.values())
        return {c: math.exp(v - top) / z for c, v in logits.items()}

    def _evidence(self, city: str, perceived: dict[str, Any], elements: list[str],
                  leave_out: tuple[str, dict[str, Any]] | None) -> list[str]:
        """Named elements ordered by how much they favour ``city`` over the average city."""
        def gain(element: str) -> float:
            total = 0.0
            for slot in ELEMENT_SLOTS[element]:
                if slot in perceived:
                    v = perceived[slot]
                    mean = sum(self.loglik(c, slot, v, leave_out) for c in self.cities) / len(self.cities)
                    total += self.loglik(city, slot, v, leave_out) - mean
            return total
        return sorted(elements, key=gain, reverse=True)

    def _reasoning(self, rng: random.Random, attrs: dict[str, Any], named: list[str], city: str, country: str,
                   localizable: bool) -> str:
        if not named:
            return "The photo shows too little of the street to recognise anything specific; it could be almost anywhere."
        listed = [_phrase(e, attrs) for e in named[:4]]
        joined = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
        opening = rng.choice(("The photo shows {x}.", "In this street view I can see {x}.", "Visible here are {x}.",
                              "The scene has {x}."))
        parts = [opening.format(x=joined)]
        if not localizable:
            parts.append(rng.choice(("None of these details is distinctive; many cities look like this.",
                                     "These elements are common in many cities, so they say little about where this is.")))
            parts.append(f"If I had to guess, {city} in {country}, but with little confidence.")
            return " ".join(parts)
        strong = named[:2]
        for element in strong:
            phrase = _phrase(element, attrs, article="the")
            phrase = phrase[0].upper() + phrase[1:]
            plural = phrase.endswith("s") and not phrase.endswith("ss")
            parts.append(rng.choice((f"{phrase} {'are' if plural else 'is'} typical of {city}.",
                                     f"{phrase} {'are' if plural else 'is'} common in {city}.",
                                     f"{phrase} {'point' if plural else 'points'} to {city}.")))
        parts.append(rng.choice((f"Taken together, this is most likely {city}, in {country}.",
                                 f"My best guess is {city}, {country}.",
                                 f"All of this suggests {city} in {country}.")))
        return " ".join(parts)

    def predict_one(self, sample: GeoSample) -> GeoPrediction:
        rng = random.Random(f"{self.seed}/{self.name}/{sample.key}")
        try:
            perceived, seen, invented = self.observe(sample, rng)
        except (ValueError, KeyError) as exc:
            return GeoPrediction.failed(sample.key, f"no_record:{exc}")
        leave_out = self.known.get(sample.place_id) if sample.place_id is not None else None
        post = self.posterior(perceived, leave_out)
        # The country first (the summed posterior of its cities), then the best city within it.
        by_country: dict[str, float] = defaultdict(float)
        for c, p in post.items():
            by_country[self.country_of.get(c, "")] += p
        country = max(by_country, key=by_country.__getitem__)
        city = max((c for c in self.cities if self.country_of.get(c, "") == country), key=post.__getitem__)
        confidence = post[city]
        clues = len(seen)
        localizable = clues >= self.profile.min_clues and confidence >= self.profile.min_confidence
        truth = sample.record.attributes  # type: ignore[union-attr]
        misread = sorted(s for s, v in perceived.items() if s in COLOUR_SLOTS and truth.get(s, NONE) != NONE and v != truth[s])
        attrs = dict(truth)
        attrs.update(perceived)  # phrases name what the teacher believes it saw
        named = self._evidence(city, perceived, seen, leave_out)
        for element in invented:  # what a teacher wrongly believes it saw is part of what it says it saw
            if element not in named[:4]:
                named = [*named[:3], element, *(e for e in named[3:] if e != element)]
        reasoning = self._reasoning(rng, attrs, named, city, country or "an unknown country", localizable)
        return GeoPrediction(key=sample.key, city=city, country=country, confidence=round(confidence, 4), localizable=localizable,
                             reasoning=reasoning, extra={"clues": clues, "invented": invented, "misread": misread})

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        return [self.predict_one(s) for s in samples]


__all__ = ["APIGeoTeacher", "ELEMENT_SLOTS", "TEACHER_PROFILES", "TeacherProfile", "WorldGeoTeacher", "parse_teacher_reply",
           "teacher_prediction", "visible_elements"]
