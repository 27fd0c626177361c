"""DQ-Cities builder, input side and stage 1: the GSV-Cities scan, the item store, reply parsing,
retries with backoff, the rate limit, the response cache."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from dlgpr.dialogue import api as api_module
from dlgpr.dialogue.api import ChatAPIConfig, ChatClient
from dlgpr.pipeline.gsv import PLACE_ID_STRIDE, SplitConfig, export_gsv_folder, parse_image_name, scan_gsv_cities
from dlgpr.pipeline.store import ItemStore
from dlgpr.pipeline.text import (
    PromptFile,
    RetryPolicy,
    StageAborted,
    TextExpander,
    TextExpansionConfig,
    complete_with_retries,
    parse_texts,
)
from dlgpr.testing.openai_server import FakeOpenAIServer, Fault
from tests.helpers.gsv import make_gsv_folder

DESCRIPTION = " ".join(["A red brick bank with green awnings stands on the corner."] * 4)


@pytest.fixture(scope="module")
def gsv(tmp_path_factory) -> tuple[Path, dict]:
    return make_gsv_folder(tmp_path_factory.mktemp("gsv"))


# ---- the scan ------------------------------------------------------------------------------------


def test_parse_image_name_keeps_underscores_of_the_panoid():
    assert parse_image_name("Boston_0000042_2017_06_090_42.35_-71.05_ab_cd-ef.jpg") == ("Boston", 42, 2017, 6, 90, "ab_cd-ef")
    assert parse_image_name("Boston_42.jpg") is None
    assert parse_image_name("Boston_00000x2_2017_06_090_42.35_-71.05_ab.jpg") is None


def test_scan_ids_views_limit_cities_and_bad_rows(gsv):
    root, written = gsv
    cities = sorted({r.city for r in written.values()})
    scan = scan_gsv_cities(root, SplitConfig())
    assert len(scan.images) == len(written) == 3 * 4 * 2 and not scan.skipped
    for im in scan.images:
        source = written[im.path.name]
        city_index = cities.index(im.city)
        assert im.place_id == city_index * PLACE_ID_STRIDE + source.place_id % PLACE_ID_STRIDE
        assert im.view == source.view and im.key == source.key  # views ordered by capture date
        assert (im.lat, im.lon) == (source.lat, source.lon)
    # a subset of cities keeps the global ids of the full folder; limit = places per city
    sub = scan_gsv_cities(root, SplitConfig(), cities=[cities[2]], limit=2, max_views=1)
    assert {im.place_id for im in sub.images} == {2 * PLACE_ID_STRIDE + p for p in sorted({s.place_id % PLACE_ID_STRIDE for s in written.values() if s.city == cities[2]})[:2]}
    assert all(im.view == 0 for im in sub.images)
    with pytest.raises(ValueError, match="Nowhere"):
        scan_gsv_cities(root, SplitConfig(), cities=["Nowhere"])
    # a row without image, a row that does not parse, a duplicated row: skipped and counted
    bad_root = root.parent / "gsv_bad"
    export_gsv_folder(root.parent / "synth", bad_root)
    frame = bad_root / "Dataframes" / f"{cities[0]}.csv"
    rows = list(csv.DictReader(open(frame)))
    rows += [{**rows[0], "panoid": "no_such_image"}, {**rows[0], "lat": "north"}, dict(rows[1])]
    with open(frame, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    scan = scan_gsv_cities(bad_root, SplitConfig())
    assert dict(scan.skipped) == {"missing_image": 1, "bad_row": 1, "duplicate_row": 1}
    assert len(scan.images) == len(written)


def test_split_by_place_and_held_out_cities(gsv):
    root, _ = gsv
    scan = scan_gsv_cities(root, SplitConfig(fractions=(0.5, 0.25, 0.25), seed=3))
    by_place: dict[int, set[str]] = {}
    for im in scan.images:
        by_place.setdefault(im.place_id, set()).add(im.split)
    assert all(len(s) == 1 for s in by_place.values())  # never split within a place
    city = scan.cities[1]
    held = scan_gsv_cities(root, SplitConfig(val_cities=[city]))
    assert {im.split for im in held.images if im.city == city} == {"val"}
    with pytest.raises(ValueError, match="both"):
        SplitConfig(val_cities=[city], test_cities=[city])
    with pytest.raises(ValueError, match="fractions"):
        SplitConfig(fractions=(0.5, 0.5, 0.5))


# ---- the store -----------------------------------------------------------------------------------


def test_item_store_last_result_wins_and_a_torn_line_is_ignored(tmp_path):
    store = ItemStore(tmp_path / "w" / "s.jsonl")
    store.append([{"key": "a", "ok": False, "error": "x"}, {"key": "b", "ok": True}])
    store.append([{"key": "a", "ok": True, "v": 1}])
    with open(store.path, "a") as fh:
        fh.write('{"key": "c", "ok": tr')  # a kill in the middle of a write
    assert set(store.done()) == {"a", "b"} and store.torn_lines == 1
    store.append([{"key": "c", "ok": True}])  # the next write starts on a fresh line
    assert set(store.done()) == {"a", "b", "c"} and store.load()["a"]["v"] == 1


# ---- replies -------------------------------------------------------------------------------------


def test_parse_texts_accepts_fenced_json_and_names_what_is_wrong():
    reply = '```json\n{"initial_caption": "a red  bank on a corner", "description": "' + DESCRIPTION + '"}\n```'
    assert parse_texts(reply) == {"initial_caption": "a red bank on a corner", "description": DESCRIPTION}
    for bad, message in [
        ("Sure, here it is.", "no JSON object"),
        ('{"initial_caption": "a bank", "description": ', "no JSON object"),
        ('{"initial_caption": "a red bank", "description": "x" ,}', "does not parse"),
        ('{"initial_caption": "a red bank"}', "description missing"),
        ('{"initial_caption": "bank", "description": "' + DESCRIPTION + '"}', "initial_caption has 1 words"),
        ('{"initial_caption": "a red bank", "description": "too short"}', "description has 2 words"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_texts(bad)


def test_prompt_file_is_versioned_by_name_and_content(tmp_path):
    shipped = PromptFile.load("text_expansion_v1")
    assert shipped.version.startswith("text_expansion_v1@") and "transient" in shipped.system
    own = tmp_path / "mine.txt"
    own.write_text("### system\nBe brief.\n### user\nDescribe it.\n")
    first = PromptFile.load(str(own))
    own.write_text("### system\nBe very brief.\n### user\nDescribe it.\n")
    assert PromptFile.load(str(own)).version != first.version  # an edited prompt is a new cache key
    own.write_text("no sections")
    with pytest.raises(ValueError, match="section"):
        PromptFile.load(str(own))


# ---- retries, rate, cache ------------------------------------------------------------------------


def _client(server: FakeOpenAIServer, **kw) -> ChatClient:
    return ChatClient(ChatAPIConfig(base_url=server.base_url, model="fake", max_retries=0, timeout_s=0.5, **kw))


def _json_reply(body: dict) -> str:
    return json.dumps({"initial_caption": "a red bank on a corner", "description": DESCRIPTION})


def test_retries_back_off_exponentially_up_to_the_bound():
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=4, backoff_s=1.0, max_backoff_s=3.0)
    with FakeOpenAIServer(timeout_delay_s=2.0) as server:
        server.responder = _json_reply
        client = _client(server)
        server.schedule.extend([Fault.RATE_LIMIT, Fault.SERVER_ERROR, Fault.MALFORMED_JSON])
        got = complete_with_retries(client, [{"role": "user", "content": "x"}], parse_texts, policy, random.Random(0), waits.append)
        assert got.value is not None and got.attempts == 4 and got.error == ""
        assert [1.0 * 0.5 <= waits[0] <= 1.0, 1.0 <= waits[1] <= 2.0, 1.5 <= waits[2] <= 3.0] == [True] * 3  # doubled, capped
        assert len(server.requests) == 4

        waits.clear()
        server.schedule.extend([Fault.TIMEOUT, Fault.SERVER_ERROR])
        got = complete_with_retries(client, [{"role": "user", "content": "x"}], parse_texts, RetryPolicy(max_attempts=2, backoff_s=0.0),
                                    random.Random(0), waits.append)
        assert got.value is None and got.attempts == 2 and got.error == "api_error:InternalServerError"

        server.schedule.extend([Fault.OFF_FORMAT])  # a 200 whose content is not the JSON asked for
        got = complete_with_retries(client, [{"role": "user", "content": "x"}], parse_texts, RetryPolicy(max_attempts=1), random.Random(0), waits.append)
        assert got.value is None and got.error.startswith("bad_reply:")


def test_a_refused_key_stops_the_stage_without_echoing_it(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    with FakeOpenAIServer() as server:
        server.schedule.append(Fault.UNAUTHORIZED)
        with pytest.raises(StageAborted, match="AuthenticationError") as err:
            complete_with_retries(_client(server), [{"role": "user", "content": "x"}], parse_texts, RetryPolicy(), random.Random(0), lambda s: None)
        assert "sk-secret" not in str(err.value) and len(server.requests) == 1


def test_rate_limiter_spaces_request_starts(monkeypatch):
    class Clock:
        now = 100.0

        def monotonic(self) -> float:
            return self.now

        def sleep(self, s: float) -> None:
            self.now += s

    clock = Clock()
    monkeypatch.setattr(api_module, "time", clock)
    limiter = api_module.RateLimiter(requests_per_minute=120)  # one start per 0.5 s
    starts = []
    for _ in range(4):
        limiter.acquire()
        starts.append(clock.now)
    assert starts == [100.0, 100.5, 101.0, 101.5]
    clock.now += 10  # idle time is not banked into a burst
    limiter.acquire()
    limiter.acquire()
    assert clock.now == 112.0


def test_text_expander_caches_by_prompt_model_and_image(gsv, tmp_path):
    root, written = gsv
    scan = scan_gsv_cities(root, SplitConfig(), limit=1, max_views=1)
    with FakeOpenAIServer() as server:
        server.responder = _json_reply
        config = TextExpansionConfig(api=ChatAPIConfig(base_url=server.base_url, model="fake-vlm"))
        expander = TextExpander(config, tmp_path / "cache")
        first = [expander(im) for im in scan.images]
        assert all(r["ok"] and not r["cached"] and r["attempts"] == 1 for r in first)
        assert len(server.requests) == len(scan.images)
        again = [TextExpander(config, tmp_path / "cache")(im) for im in scan.images]
        assert all(r["cached"] for r in again) and len(server.requests) == len(scan.images)  # nothing asked twice
        assert [r["description"] for r in again] == [r["description"] for r in first]
        other = TextExpander(TextExpansionConfig(api=ChatAPIConfig(base_url=server.base_url, model="other-vlm")), tmp_path / "cache")
        assert not other(scan.images[0])["cached"]  # another model is another cache entry
        # the original JPEG bytes are sent, and the text comes after the image
        content = server.requests[0].body["messages"][1]["content"]
        assert content[0]["type"] == "image_url" and content[1]["type"] == "text"


def test_an_unreadable_image_is_a_failed_item_not_a_crash(gsv, tmp_path):
    root, _ = gsv
    im = scan_gsv_cities(root, SplitConfig(), limit=1, max_views=1).images[0]
    broken = tmp_path / im.path.name
    broken.write_bytes(im.path.read_bytes()[:100])
    from dataclasses import replace

    result = TextExpander(TextExpansionConfig(api=ChatAPIConfig(base_url="http://127.0.0.1:9/v1")), tmp_path / "c")(replace(im, path=broken))
    assert result["ok"] is False and result["error"].startswith("bad_image") and result["attempts"] == 0


def test_image_payload_sends_the_file_or_a_resized_copy(gsv):
    import base64
    import hashlib
    import io

    from PIL import Image

    from dlgpr.pipeline.text import image_payload

    root, _ = gsv
    path = next(root.rglob("*.jpg"))
    digest, url = image_payload(path, None)
    sent = base64.b64decode(url.split(",", 1)[1])
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() and sent == path.read_bytes()  # the file's own bytes
    digest2, url2 = image_payload(path, 32)
    small = Image.open(io.BytesIO(base64.b64decode(url2.split(",", 1)[1])))
    assert digest2 == digest and max(small.size) == 32  # the cache key stays the original's hash
