"""The geo-reasoning distillation end to end: stages, funnel, shards, kill and resume, the API path."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Sequence

import pytest

from dlgpr.data.geo import GeoSample, parse_dataset_spec, read_synthcities_geo
from dlgpr.dialogue.api import ChatAPIConfig
from dlgpr.geo.predict import GeoPrediction
from dlgpr.pipeline.geo_reasoning import (GeoReasoningConfig, build_geo_reasoning, default_context, format_funnel, iter_reasoning_samples,
                                          member_stem)
from dlgpr.pipeline.geo_teachers import APIGeoTeacher, WorldGeoTeacher
from dlgpr.pipeline.geo_validation import BagOfWordsEmbedder, ValidationConfig
from dlgpr.pipeline.store import ItemStore
from dlgpr.pipeline.text import RetryPolicy
from dlgpr.testing.openai_server import FakeOpenAIServer, Fault, image_sha256s
from tests.helpers.geo import make_geo_world

# Bag-of-words embeddings keep these tests fast; they score on their own scale (docs/GLOBE.md).
VALIDATION = ValidationConfig(min_similarity=0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("geo") / "world"
    make_geo_world(out, num_cities=6, countries=2, places_per_city=24, views=2)
    return out


class NoisyGPS:
    """A GPS predictor double: the truth moved by a seeded offset (about 0-60 km), confidence 0.5."""

    name = "gps"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        self.calls.append([s.key for s in samples])
        out = []
        for s in samples:
            r = random.Random(s.key)
            out.append(GeoPrediction(key=s.key, lat=s.lat + r.uniform(-0.4, 0.4), lon=s.lon + r.uniform(-0.4, 0.4), confidence=0.5))
        return out


class Counting:
    """Wraps a predictor; records each call's keys; raises ``KeyboardInterrupt`` on call ``die_on`` (a kill)."""

    def __init__(self, inner: object, die_on: int | None = None, fail_keys: frozenset[str] = frozenset()) -> None:
        self.inner, self.die_on, self.fail_keys = inner, die_on, fail_keys
        self.name = inner.name  # type: ignore[attr-defined]
        self.calls: list[list[str]] = []

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        self.calls.append([s.key for s in samples])
        if self.die_on is not None and len(self.calls) == self.die_on:
            raise KeyboardInterrupt
        preds = self.inner.predict(samples)  # type: ignore[attr-defined]
        return [GeoPrediction.failed(p.key, "api_error:Flaky") if p.key in self.fail_keys else p for p in preds]


def _teachers(world: Path) -> list[WorldGeoTeacher]:
    return [WorldGeoTeacher(str(world), "architect"), WorldGeoTeacher(str(world), "colourist")]


def _config(world: Path, out: Path, **kw: object) -> GeoReasoningConfig:
    return GeoReasoningConfig(dataset=f"synthcities:{world}:train", out_dir=str(out), chunk_size=16, shard_size=50,
                              validation=VALIDATION, progress=False, **kw)  # type: ignore[arg-type]


def _context(world: Path):  # noqa: ANN202
    return default_context(parse_dataset_spec(f"synthcities:{world}:train"), VALIDATION, embedder=BagOfWordsEmbedder())


def test_the_pipeline_writes_every_sample_once_with_its_verdicts_and_a_consistent_funnel(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = build_geo_reasoning(_config(world, out), _teachers(world), NoisyGPS(), _context(world))
    samples = {s.key: s for s in read_synthcities_geo(world, "train")}
    funnel = summary["funnel"]
    assert funnel["input"] == len(samples) and funnel["prediction_missing"] == 0
    assert [c["name"] for c in funnel["checks"]] == ["localizable", "accuracy", "consistency", "grounding"]
    assert funnel["input"] - sum(c["removed"] for c in funnel["checks"]) == funnel["kept"]
    assert 0 < funnel["kept"] < funnel["input"]  # the teachers' mistakes give every check work...
    assert all(c["fails_alone"] > 0 for c in funnel["checks"])  # ...each on its own
    rows = list(iter_reasoning_samples(out, kept_only=False))
    assert sorted(m["key"] for m, _ in rows) == sorted(samples)
    kept = list(iter_reasoning_samples(out))
    assert len(kept) == funnel["kept"] == json.loads((out / "manifest.json").read_text())["kept"]
    for meta, jpg in rows:
        s = samples[meta["key"]]
        assert jpg == s.image_data() and (meta["lat"], meta["lon"], meta["city"], meta["country"]) == (s.lat, s.lon, s.city, s.country)
        assert set(meta["teachers"]) == {"world-architect", "world-colourist"} and meta["gps"]["predictor"] == "gps"
        assert [v["name"] for v in meta["validations"]] == ["localizable", "accuracy", "consistency", "grounding"]
        assert meta["kept"] == all(v["passed"] for v in meta["validations"])
        failed = [v["name"] for v in meta["validations"] if not v["passed"]]
        assert meta["first_failure"] == (failed[0] if failed else None)
        chosen = meta["teachers"][meta["teacher"]]
        assert meta["reasoning"] == chosen["reasoning"] and meta["answer"] == {"city": chosen["city"], "country": chosen["country"]}
        assert chosen["confidence"] == max(t["confidence"] for t in meta["teachers"].values())
    for meta, _ in kept:  # kept samples name the right place, and the reasoning names only what is there
        assert meta["answer"]["city"] == meta["city"]
        grounding = next(v for v in meta["validations"] if v["name"] == "grounding")
        assert not any(grounding["detail"]["unmatched"])
    # an invented element in a reasoning is never kept
    for meta, _ in kept:
        assert not meta["teachers"][meta["teacher"]]["extra"]["invented"]
    table = format_funnel(funnel)
    assert f"**{funnel['kept']}**" in table and (out / "funnel.md").read_text().strip() == table


def test_a_killed_run_resumes_without_lost_or_doubled_predictions(world: Path, tmp_path: Path) -> None:
    reference = tmp_path / "ref"
    build_geo_reasoning(_config(world, reference), _teachers(world), NoisyGPS(), _context(world))
    out = tmp_path / "out"
    architect, colourist = _teachers(world)
    dying = Counting(colourist, die_on=3)  # killed during its third chunk: two chunks are on disk
    with pytest.raises(KeyboardInterrupt):
        build_geo_reasoning(_config(world, out), [architect, dying], NoisyGPS(), _context(world))
    store = out / "work" / "teacher-world-colourist.jsonl"
    assert len(store.read_text().splitlines()) == 32
    with open(store, "a") as fh:
        fh.write('{"key": "torn')  # a kill during a write
    again = Counting(colourist)
    gps = NoisyGPS()
    summary = build_geo_reasoning(_config(world, out), [architect, again], gps, _context(world))
    n = summary["images"]
    asked = [k for call in again.calls for k in call]
    assert len(asked) == len(set(asked)) == n - 32  # only what was missing, each once
    assert summary["stages"]["teachers"]["world-colourist"]["resumed"] == 32
    assert summary["stages"]["teachers"]["world-architect"]["resumed"] == n and summary["stages"]["teachers"]["world-architect"]["done"] == 0
    assert len(ItemStore(store).done()) == n
    # the output equals an uninterrupted run's, shard for shard
    ref, got = (json.loads((d / "manifest.json").read_text()) for d in (reference, out))
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in ref["shards"]]
    assert got["funnel"] == ref["funnel"]
    # a third run asks nobody anything
    third = Counting(colourist)
    build_geo_reasoning(_config(world, out), [architect, third], gps, _context(world))
    assert third.calls == []


def test_failed_predictions_are_counted_then_asked_again(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    keys = sorted(s.key for s in read_synthcities_geo(world, "train"))
    flaky = frozenset(keys[:5])
    architect, colourist = _teachers(world)
    summary = build_geo_reasoning(_config(world, out), [architect, Counting(colourist, fail_keys=flaky)], NoisyGPS(), _context(world))
    assert summary["stages"]["teachers"]["world-colourist"]["failed"] == 5
    assert summary["stages"]["teachers"]["world-colourist"]["failures"] == {"api_error": 5}
    assert summary["funnel"]["prediction_missing"] == 5 and summary["funnel"]["prediction_missing_by"] == {"world-colourist": 5}
    assert "world-colourist 5" in format_funnel(summary["funnel"])
    retry = Counting(colourist)
    summary = build_geo_reasoning(_config(world, out), [architect, retry], NoisyGPS(), _context(world))
    assert sorted(k for call in retry.calls for k in call) == sorted(flaky)
    assert summary["funnel"]["prediction_missing"] == 0


def test_endpoint_teachers_through_the_pipeline_with_faults(world: Path, tmp_path: Path) -> None:
    """Two endpoint teachers (served by the test server from the world teachers' answers), with
    429s, 500s, malformed bodies and replies of the wrong schema on a third of the requests."""
    samples = list(read_synthcities_geo(world, "train"))[:24]
    replies: dict[str, str] = {}
    for teacher in _teachers(world):
        for s, p in zip(samples, teacher.predict(samples)):
            sha = hashlib.sha256(s.image_data()).hexdigest()
            replies[f"{teacher.name}/{sha}"] = json.dumps({"localizable": p.localizable, "confidence": p.confidence,
                                                            "reasoning": p.reasoning, "city": p.city, "country": p.country})
    faults = [Fault.RATE_LIMIT, Fault.SERVER_ERROR, Fault.MALFORMED_JSON, Fault.NO_CHOICES]
    seen: dict[str, int] = {}

    def policy(body: dict) -> Fault | None:
        key = body["model"] + image_sha256s(body)[0]
        seen[key] = seen.get(key, 0) + 1
        h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        return faults[h % 4] if seen[key] == 1 and h % 3 == 0 else None

    with FakeOpenAIServer() as server:
        server.policy = policy
        server.responder = lambda body: replies.get(f"{body['model']}/{image_sha256s(body)[0]}") if seen[body["model"] + image_sha256s(body)[0]] != 2 \
            else '{"city": "wrong schema"}'
        retry = RetryPolicy(max_attempts=4, backoff_s=0.0, max_backoff_s=0.0)
        teachers = [APIGeoTeacher(ChatAPIConfig(base_url=server.base_url, model=name, max_concurrency=4), retry=retry, image_max_side=None, name=name)
                    for name in ("world-architect", "world-colourist")]
        api_out, world_out = tmp_path / "api", tmp_path / "world"
        summary = build_geo_reasoning(dataclasses.replace(_config(world, api_out), limit=24), teachers, NoisyGPS(), _context(world))
    assert summary["funnel"]["prediction_missing"] == 0
    reference = build_geo_reasoning(dataclasses.replace(_config(world, world_out), limit=24), _teachers(world), NoisyGPS(), _context(world))
    assert summary["funnel"] == reference["funnel"]
    got = {m["key"]: m for m, _ in iter_reasoning_samples(api_out, kept_only=False)}
    ref = {m["key"]: m for m, _ in iter_reasoning_samples(world_out, kept_only=False)}
    assert {k: (m["kept"], m["reasoning"], m["answer"]) for k, m in got.items()} == {k: (m["kept"], m["reasoning"], m["answer"]) for k, m in ref.items()}
    assert len(server.requests) > 2 * 24  # the faults were retried


def test_member_stems_are_webdataset_keys_and_unique() -> None:
    used: set[str] = set()
    a = member_stem("9f/2b/12345.jpg", used)
    b = member_stem("9f_2b_12345_jpg", used)
    assert a == "9f_2b_12345_jpg" and b.startswith("9f_2b_12345_jpg-") and "." not in a + b and "/" not in a + b


def test_bad_configs_fail_with_one_line(world: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stages \\['teach'\\] unknown"):
        GeoReasoningConfig(dataset="synthcities:x:train", out_dir="o", stages=["teach"])
    with pytest.raises(ValueError, match="distinct names"):
        build_geo_reasoning(_config(world, tmp_path / "o"), [WorldGeoTeacher(str(world)), WorldGeoTeacher(str(world))], NoisyGPS(), _context(world))
