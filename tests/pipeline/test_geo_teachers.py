"""Teachers of the geo-reasoning distillation: the reply parser, the embedded world teacher, the endpoint teacher."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from dlgpr.data.geo import GeoSample, read_synthcities_geo
from dlgpr.data.synth.world import NONE, SLOTS
from dlgpr.dialogue.api import ChatAPIConfig
from dlgpr.pipeline.geo_teachers import (CONFUSABLE, ELEMENT_SLOTS, TEACHER_PROFILES, APIGeoTeacher, TeacherProfile, WorldGeoTeacher,
                                         parse_teacher_reply, visible_elements)
from dlgpr.pipeline.text import RetryPolicy, StageAborted
from dlgpr.testing.openai_server import FakeOpenAIServer, Fault, image_sha256s
from tests.helpers.geo import make_geo_world

ALL_CLUES = tuple(ELEMENT_SLOTS)
PERFECT = TeacherProfile(clues=ALL_CLUES, knowledge_fraction=1.0, min_clues=1, min_confidence=0.0)


@pytest.fixture(scope="module")
def geo_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("geo") / "world"
    make_geo_world(out, num_cities=6, countries=2, places_per_city=30, views=2)
    return out


@pytest.fixture(scope="module")
def train(geo_world: Path) -> list[GeoSample]:
    return list(read_synthcities_geo(geo_world, "train"))


@pytest.fixture(scope="module")
def test_split(geo_world: Path) -> list[GeoSample]:
    return list(read_synthcities_geo(geo_world, "test"))


# ---- the reply -------------------------------------------------------------------------------------

def test_parse_teacher_reply_accepts_what_models_write() -> None:
    reply = 'Sure:\n```json\n{"localizable": "yes", "confidence": 85, "reasoning": " Red  roofs.", "city": "Rome", "country": "Italy"}\n```'
    assert parse_teacher_reply(reply) == {"localizable": True, "confidence": 0.85, "reasoning": "Red roofs.", "city": "Rome", "country": "Italy"}
    assert parse_teacher_reply('{"localizable": false, "confidence": "0.2", "reasoning": "x", "city": "a", "country": "b"}')["confidence"] == 0.2


@pytest.mark.parametrize("reply, error", [
    ("no json here", "no JSON object"),
    ('{"localizable": true,', "no JSON object"),
    ('{"localizable": true, "confidence": 0.5, "reasoning": "r", "city": "c"}', "country missing"),
    ('{"localizable": "maybe", "confidence": 0.5, "reasoning": "r", "city": "c", "country": "d"}', "localizable is not a boolean"),
    ('{"localizable": true, "confidence": "high", "reasoning": "r", "city": "c", "country": "d"}', "confidence is not a number"),
    ('{"localizable": true, "confidence": 130, "reasoning": "r", "city": "c", "country": "d"}', "outside [0, 1]"),
    ('{"localizable": true, "confidence": 0.5, "reasoning": "  ", "city": "c", "country": "d"}', "reasoning missing"),
])
def test_parse_teacher_reply_names_what_is_wrong(reply: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("]", r"\]")):
        parse_teacher_reply(reply)


# ---- the embedded world teacher ---------------------------------------------------------------------

def test_world_teacher_is_deterministic_and_its_seed_matters(geo_world: Path, test_split: list[GeoSample]) -> None:
    a = WorldGeoTeacher(str(geo_world), "colourist").predict(test_split)
    b = WorldGeoTeacher(str(geo_world), "colourist").predict(test_split)
    c = WorldGeoTeacher(str(geo_world), "colourist", seed=1).predict(test_split)
    assert a == b
    assert a != c
    assert [p.key for p in a] == [s.key for s in test_split]


def test_a_teacher_never_recognises_a_place_it_has_seen(geo_world: Path, train: list[GeoSample]) -> None:
    """Leave-one-out: on a known training place the likelihoods are those of a teacher that never saw it."""
    teacher = WorldGeoTeacher(str(geo_world), PERFECT)
    sample = train[0]
    assert sample.place_id in teacher.known
    city, attrs = teacher.known[sample.place_id]
    others = [a for pid, (c, a) in teacher.known.items() if c == city and pid != sample.place_id]
    for slot in ("facade_color", "roof", "shop_sign"):
        value = attrs[slot]
        k = len(SLOTS[slot])
        naive = math.log((sum(a[slot] == value for a in others) + 1.0) / (len(others) + k))
        assert teacher.loglik(city, slot, value, leave_out=teacher.known[sample.place_id]) == pytest.approx(naive)
        # without leaving it out the teacher would count the place itself
        assert teacher.loglik(city, slot, value) > naive


def test_a_perfect_teacher_names_only_what_is_in_the_image_and_beats_chance(geo_world: Path, test_split: list[GeoSample]) -> None:
    teacher = WorldGeoTeacher(str(geo_world), PERFECT)
    preds = teacher.predict(test_split)
    assert all(p.ok and not p.extra["invented"] and not p.extra["misread"] for p in preds)
    for sample in test_split[:10]:
        perceived, seen, invented = teacher.observe(sample, random.Random(0))
        assert not invented
        assert set(seen) == set(visible_elements(sample.record.regions, sample.record.attributes))
        for element in seen:
            for slot in ELEMENT_SLOTS[element]:
                assert perceived[slot] == sample.record.attributes[slot]
    city_acc = sum(p.city == s.city for p, s in zip(preds, test_split)) / len(test_split)
    assert city_acc > 2.0 / 6  # 6 cities: chance is 1/6
    countries = {s.country for s in test_split}
    assert all(p.country in countries for p in preds)
    assert all(0.0 <= p.confidence <= 1.0 for p in preds)


def test_error_profiles_misread_colours_and_invent_elements(geo_world: Path, test_split: list[GeoSample]) -> None:
    colour_blind = dataclasses.replace(PERFECT, colour_confusion=1.0)
    preds = WorldGeoTeacher(str(geo_world), colour_blind, name="cb").predict(test_split)
    assert all(p.extra["misread"] for p in preds)  # every image has a coloured facade and door
    teacher = WorldGeoTeacher(str(geo_world), colour_blind, name="cb")
    perceived, _, _ = teacher.observe(test_split[0], random.Random(0))
    truth = test_split[0].record.attributes
    assert perceived["facade_color"] in CONFUSABLE[truth["facade_color"]]

    dreamer = dataclasses.replace(PERFECT, hallucination_rate=1.0)
    preds = WorldGeoTeacher(str(geo_world), dreamer, name="dreamer").predict(test_split)
    invented = [(p, s) for p, s in zip(preds, test_split) if p.extra["invented"]]
    assert len(invented) >= len(test_split) // 2  # most places lack some optional element
    for p, s in invented:
        element = p.extra["invented"][0]
        assert s.record.attributes[ELEMENT_SLOTS[element][0]] == NONE  # it is not there...
        assert element.replace("_", " ") in p.reasoning.replace("flower boxes", "flower_boxes").replace("_", " ") \
            or element == "sign" and " sign" in p.reasoning  # ...and the reasoning names it


def test_localizability_follows_the_profile(geo_world: Path, test_split: list[GeoSample]) -> None:
    strict = dataclasses.replace(PERFECT, min_clues=len(ALL_CLUES) + 1)
    assert not any(p.localizable for p in WorldGeoTeacher(str(geo_world), strict, name="s").predict(test_split))
    doubtful = dataclasses.replace(PERFECT, min_confidence=1.0)
    assert not any(p.localizable for p in WorldGeoTeacher(str(geo_world), doubtful, name="d").predict(test_split))
    assert all(p.localizable for p in WorldGeoTeacher(str(geo_world), PERFECT).predict(test_split))


def test_the_shipped_profiles_differ_and_a_bad_sample_is_a_failed_prediction(geo_world: Path, test_split: list[GeoSample]) -> None:
    a = WorldGeoTeacher(str(geo_world), "architect").predict(test_split)
    b = WorldGeoTeacher(str(geo_world), "colourist").predict(test_split)
    assert sum(bool(p.extra["invented"]) for p in a) == 0 < sum(bool(p.extra["invented"]) for p in b)
    assert sum(p.city != q.city for p, q in zip(a, b)) > 0  # different knowledge and clues: they disagree sometimes
    bare = GeoSample(key="x", lat=1.0, lon=2.0)
    out = WorldGeoTeacher(str(geo_world), "architect").predict([bare])
    assert len(out) == 1 and not out[0].ok and out[0].error.startswith("no_record")
    with pytest.raises(ValueError, match="profile 'nope' unknown"):
        WorldGeoTeacher(str(geo_world), "nope")
    with pytest.raises(ValueError, match="clues"):
        TeacherProfile(clues=("chimney",))


def test_profiles_name_known_elements() -> None:
    for profile in TEACHER_PROFILES.values():
        assert set(profile.clues) <= set(ELEMENT_SLOTS)
    assert NONE in SLOTS["awning"]


# ---- the endpoint teacher ----------------------------------------------------------------------------

def _answers(samples: list[GeoSample], teacher: WorldGeoTeacher) -> dict[str, str]:
    """Reply text per image hash: the world teacher's prediction as the JSON a VLM would write."""
    out = {}
    for s, p in zip(samples, teacher.predict(samples)):
        out[hashlib.sha256(s.image_data()).hexdigest()] = json.dumps(
            {"localizable": p.localizable, "confidence": p.confidence, "reasoning": p.reasoning, "city": p.city, "country": p.country})
    return out


def _image_sha(body: dict) -> str | None:
    shas = image_sha256s(body)
    return shas[0] if shas else None


FAST = RetryPolicy(max_attempts=4, backoff_s=0.0, max_backoff_s=0.0)


def test_api_teacher_survives_faults_and_caches(geo_world: Path, test_split: list[GeoSample], tmp_path: Path) -> None:
    samples = test_split[:6]
    world = WorldGeoTeacher(str(geo_world), "architect")
    answers = _answers(samples, world)
    expected = {p.key: p for p in world.predict(samples)}
    with FakeOpenAIServer(timeout_delay_s=1.5) as server:
        server.responder = lambda body: answers.get(_image_sha(body) or "")
        # one fault of each kind first, then a reply of the wrong schema: every one is retried
        server.schedule.extend([Fault.RATE_LIMIT, Fault.SERVER_ERROR, Fault.TIMEOUT, Fault.MALFORMED_JSON, Fault.NO_CHOICES, Fault.EMPTY_CONTENT])
        api = ChatAPIConfig(base_url=server.base_url, model="teacher-72b", timeout_s=0.5, max_concurrency=1)
        teacher = APIGeoTeacher(api, retry=dataclasses.replace(FAST, max_attempts=8), cache_dir=str(tmp_path / "cache"), image_max_side=None)
        preds = teacher.predict(samples)
        assert [p.key for p in preds] == [s.key for s in samples]
        for p in preds:
            e = expected[p.key]
            assert p.ok and (p.city, p.country, p.reasoning, p.localizable) == (e.city, e.country, e.reasoning, e.localizable)
            assert p.confidence == pytest.approx(e.confidence)
        assert len(server.requests) == len(samples) + 6
        # a second teacher on the same cache asks nothing
        before = len(server.requests)
        again = APIGeoTeacher(api, retry=FAST, cache_dir=str(tmp_path / "cache"), image_max_side=None).predict(samples)
        assert len(server.requests) == before and [p.city for p in again] == [p.city for p in preds]
        assert all(p.extra["cached"] for p in again)


def test_api_teacher_records_a_reply_of_the_wrong_schema_as_failed(geo_world: Path, test_split: list[GeoSample]) -> None:
    with FakeOpenAIServer() as server:
        server.responder = lambda body: '{"city": "Rome"}'
        api = ChatAPIConfig(base_url=server.base_url, model="m", max_concurrency=2)
        preds = APIGeoTeacher(api, retry=dataclasses.replace(FAST, max_attempts=2)).predict(test_split[:3])
        assert [p.ok for p in preds] == [False] * 3
        assert all(p.error.startswith("bad_reply:localizable") for p in preds)
        assert len(server.requests) == 6  # 2 attempts each


def test_api_teacher_stops_at_once_on_a_bad_key(test_split: list[GeoSample]) -> None:
    with FakeOpenAIServer() as server:
        server.policy = lambda body: Fault.UNAUTHORIZED
        api = ChatAPIConfig(base_url=server.base_url, model="m", max_concurrency=1)
        with pytest.raises(StageAborted, match="refused the request"):
            APIGeoTeacher(api, retry=FAST).predict(test_split[:2])


def test_api_teacher_counts_an_unreadable_image(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with FakeOpenAIServer() as server:
        api = ChatAPIConfig(base_url=server.base_url, model="m")
        preds = APIGeoTeacher(api, retry=FAST).predict([GeoSample(key="b", lat=0.0, lon=0.0, image_path=bad),
                                                         GeoSample(key="m", lat=0.0, lon=0.0, image_path=tmp_path / "missing.jpg")])
    assert [p.error.split(":")[0] for p in preds] == ["bad_image", "bad_image"]
    assert not server.requests
    assert Counter(p.ok for p in preds) == Counter({False: 2})
