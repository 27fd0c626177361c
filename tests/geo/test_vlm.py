"""Language-model geolocators: a tiny random HF LM / Qwen2.5-VL (plumbing, scripted replies) and a fake endpoint (retries, cache)."""

from __future__ import annotations

import base64
import io
import random
from typing import Any

import pytest
import torch
from PIL import Image

from dlgpr.data.geo import GeoSample
from dlgpr.dialogue.api import ChatAPIConfig
from dlgpr.geo.answer import EMPTY_ANSWER, GLOBE_PROMPT, GLOBE_SYSTEM, NO_ANSWER_TAG, NO_PLACE, format_answer
from dlgpr.geo.geolocator import BAD_IMAGE
from dlgpr.geo.predict import GeoPredictor
from dlgpr.geo.vlm import EndpointGeoPredictor, HFGeoPredictor, answer_prediction, globe_messages
from dlgpr.pipeline.text import RetryPolicy, StageAborted
from dlgpr.testing.openai_server import FakeOpenAIServer, Fault, message_text
from dlgpr.testing.tiny_models import tiny_causal_lm, tiny_qwen25vl, tiny_tokenizer
from tests.helpers.generation import script_generate
from tests.helpers.geo import colour_sample

PLACES = {(255, 0, 0): ("Kyiv", "Ukraine"), (0, 0, 255): ("Porto", "Portugal"), (0, 255, 0): ("Lima", "Peru")}


def _samples(size: int = 56) -> list[GeoSample]:
    return [colour_sample(f"s{i}", 0.0, 0.0, colour, size=size) for i, colour in enumerate(PLACES)]


def test_answer_prediction_keeps_raw_and_reasoning() -> None:
    p = answer_prediction("k", "<think>wires</think><answer>Kyiv, Ukraine</answer>")
    assert (p.ok, p.city, p.country, p.reasoning, p.extra["well_formed"]) == (True, "Kyiv", "Ukraine", "wires", True)
    bad = answer_prediction("k", "<think>hmm</think> no idea")
    assert (bad.ok, bad.error, bad.raw, bad.reasoning) == (False, NO_ANSWER_TAG, "<think>hmm</think> no idea", "hmm")


def test_globe_messages_put_the_image_before_the_prompt() -> None:
    im = Image.new("RGB", (4, 4))
    system, user = globe_messages(im)
    assert message_text(system) == GLOBE_SYSTEM
    assert [p["type"] for p in user["content"]] == ["image", "text"] and user["content"][1]["text"] == GLOBE_PROMPT
    assert [p["type"] for p in globe_messages("data:image/jpeg;base64,AA")[1]["content"]] == ["image_url", "text"]
    assert [p["type"] for p in globe_messages(None)[1]["content"]] == ["text"]


# ---- Hugging Face models -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_lm() -> tuple[torch.nn.Module, Any]:
    tok = tiny_tokenizer()
    return tiny_causal_lm(tok), tok


def test_random_lm_gives_one_failed_prediction_per_sample_with_the_raw_reply(text_lm) -> None:
    model, tok = text_lm
    samples = _samples() + [GeoSample(key="broken", lat=0.0, lon=0.0, image_bytes=b"nope")]
    geo = HFGeoPredictor.from_model(model, tok, max_new_tokens=8, batch_size=3)
    assert isinstance(geo, GeoPredictor)
    preds = geo.predict(samples)
    assert [p.key for p in preds] == ["s0", "s1", "s2", "broken"]
    assert all(not p.ok and p.error == NO_ANSWER_TAG and isinstance(p.raw, str) for p in preds[:3]) and any(p.raw for p in preds[:3])
    assert preds[3].error == BAD_IMAGE and preds[3].raw is None
    assert geo.stats == {NO_ANSWER_TAG: 3, BAD_IMAGE: 1}


def test_scripted_lm_replies_parse_into_names_in_sample_order(monkeypatch, text_lm) -> None:
    model, tok = text_lm
    replies = iter([format_answer("Kyiv", "Ukraine", "Cyrillic signs"), "<think>t</think><answer>Porto, Portugal</answer>",
                    "<think>t</think><answer> </answer>"])
    prompts: list[str] = []
    script_generate(monkeypatch, model, tok, lambda prompt: prompts.append(prompt) or next(replies))
    preds = HFGeoPredictor.from_model(model, tok, batch_size=2).predict(_samples())
    assert [(p.ok, p.city, p.country) for p in preds] == [(True, "Kyiv", "Ukraine"), (True, "Porto", "Portugal"), (False, "", "")]
    assert preds[0].reasoning == "Cyrillic signs" and preds[2].error == EMPTY_ANSWER
    assert all(GLOBE_PROMPT in p and GLOBE_SYSTEM in p for p in prompts)  # a text-only model: no image in its prompt


def test_vlm_sees_the_image_and_parses_the_reply(monkeypatch) -> None:
    model, processor = tiny_qwen25vl()
    seen: list[dict[str, Any]] = []
    names = iter(PLACES.values())

    def generate(input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        seen.append(kwargs)
        tok = processor.tokenizer
        rows = [tok(format_answer(*next(names)), add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _ in input_ids]
        width = max(map(len, rows))
        return torch.cat([input_ids, torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    geo = HFGeoPredictor.from_model(model, processor, batch_size=2)
    preds = geo.predict(_samples())
    assert geo.runner.with_images
    assert [(p.city, p.country) for p in preds] == list(PLACES.values())
    assert [kw["image_grid_thw"].shape[0] for kw in seen] == [2, 1]  # one image per prompt, batched as asked


def test_vlm_random_weights_run_end_to_end() -> None:
    model, processor = tiny_qwen25vl()
    preds = HFGeoPredictor.from_model(model, processor, max_new_tokens=6, batch_size=2, temperature=0.1).predict(_samples())
    assert len(preds) == 3 and all(isinstance(p.raw, str) and not p.ok for p in preds)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        HFGeoPredictor(model="x", temperature=-0.1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        HFGeoPredictor(model="x", max_new_tokens=0)
    assert HFGeoPredictor(model="x", temperature=0.0).config.do_sample is False  # greedy; nothing loaded yet
    assert HFGeoPredictor(model="x", temperature=0.1).config.temperature == 0.1


# ---- endpoint ------------------------------------------------------------------------------------


def _colour_responder(body: dict) -> str:
    """Answers from the colour of the image sent as a data URL (checks the image arrives)."""
    user = body["messages"][-1]["content"]
    url = next(p["image_url"]["url"] for p in user if p["type"] == "image_url")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        colour = im.convert("RGB").getpixel((0, 0))
    city, country = PLACES[colour]
    return format_answer(city, country, reasoning=f"the picture is {colour}")


def _predictor(server: FakeOpenAIServer, **kw: Any) -> EndpointGeoPredictor:
    api = ChatAPIConfig(base_url=server.base_url, model="fake-vl", temperature=0.1, max_tokens=512, timeout_s=2.0,
                        max_concurrency=kw.pop("max_concurrency", 1))
    return EndpointGeoPredictor(api, retry=kw.pop("retry", RetryPolicy(max_attempts=4, backoff_s=0.0)), **kw)


def test_endpoint_sends_prompt_and_image_and_retries_faults() -> None:
    with FakeOpenAIServer() as server:
        server.responder = _colour_responder
        server.schedule.extend([Fault.RATE_LIMIT, Fault.SERVER_ERROR, Fault.MALFORMED_JSON])  # the first sample's first three tries
        geo = _predictor(server)
        assert isinstance(geo, GeoPredictor)
        preds = geo.predict(_samples(size=8))
    assert [(p.ok, p.city, p.country) for p in preds] == [(True, c, k) for c, k in PLACES.values()]
    assert preds[0].extra["attempts"] == 4 and preds[1].extra["attempts"] == 1 and preds[0].reasoning == "the picture is (255, 0, 0)"
    assert len(server.requests) == 6
    body = server.requests[-1].body
    assert body["temperature"] == 0.1 and body["max_tokens"] == 512 and body["model"] == "fake-vl"
    assert message_text(body["messages"][0]) == GLOBE_SYSTEM and message_text(body["messages"][1]) == GLOBE_PROMPT


def test_endpoint_failures_are_predictions_and_formats_are_not_retried() -> None:
    with FakeOpenAIServer() as server:
        server.responder = _colour_responder
        server.schedule.extend([Fault.OFF_FORMAT, Fault.SERVER_ERROR, Fault.SERVER_ERROR, Fault.EMPTY_CONTENT, Fault.EMPTY_CONTENT])
        geo = _predictor(server, retry=RetryPolicy(max_attempts=2, backoff_s=0.0))
        preds = geo.predict(_samples(size=8) + [GeoSample(key="bad", lat=0.0, lon=0.0, image_bytes=b"??")])
    off, down, empty, bad = preds
    assert (off.ok, off.error, off.raw, off.extra["attempts"]) == (False, NO_ANSWER_TAG, "Sure! Is the building red?", 1)
    assert (down.ok, down.error) == (False, "api_error:InternalServerError")
    assert (empty.ok, empty.error) == (False, "empty_reply")
    assert (bad.ok, bad.error) == (False, BAD_IMAGE)
    assert len(server.requests) == 5  # 1 + 2 + 2, nothing for the bad image
    assert geo.stats == {NO_ANSWER_TAG: 1, "api_error:InternalServerError": 1, "empty_reply": 1, BAD_IMAGE: 1}


def test_endpoint_cache_answers_a_rerun_without_requests(tmp_path) -> None:
    with FakeOpenAIServer() as server:
        server.responder = lambda body: "<think>t</think><answer>city: Lima\ncountry: Peru\n</answer>"
        first = _predictor(server, cache_dir=str(tmp_path / "cache"), max_concurrency=3).predict(_samples(size=8))
        again = _predictor(server, cache_dir=str(tmp_path / "cache")).predict(_samples(size=8))
        assert len(server.requests) == 3
        hotter = EndpointGeoPredictor(ChatAPIConfig(base_url=server.base_url, model="fake-vl", temperature=0.7),
                                      cache_dir=str(tmp_path / "cache"))
        hotter.predict(_samples(size=8)[:1])  # other sampling settings: not the cached reply
        assert len(server.requests) == 4
    assert [p.city for p in again] == ["Lima"] * 3 and all(p.extra["cached"] for p in again)
    assert [p.extra["cached"] for p in first] == [False] * 3


def test_endpoint_refused_key_stops_with_one_line(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    with FakeOpenAIServer() as server:
        server.schedule.append(Fault.UNAUTHORIZED)
        with pytest.raises(StageAborted, match="AuthenticationError") as err:
            _predictor(server).predict(_samples(size=8)[:1])
    assert "sk-secret" not in str(err.value)


def test_endpoint_concurrent_requests_keep_sample_order() -> None:
    with FakeOpenAIServer(delay_s=lambda body: random.Random(str(body["messages"][-1])).uniform(0.02, 0.06)) as server:
        server.responder = _colour_responder
        samples = [colour_sample(f"k{i}", 0, 0, list(PLACES)[i % 3]) for i in range(9)]
        preds = _predictor(server, max_concurrency=4).predict(samples)
    assert [p.key for p in preds] == [s.key for s in samples]
    assert [p.city for p in preds] == [PLACES[list(PLACES)[i % 3]][0] for i in range(9)] and server.max_in_flight > 1
    assert NO_PLACE not in {p.error for p in preds}
