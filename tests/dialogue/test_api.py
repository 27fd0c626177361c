"""APIQuestioner / LLMAnswerer against a local fake OpenAI-compatible server, faults included."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import openai._base_client
import pytest
import torch
from PIL import Image

from dlgpr.dialogue.api import APIQuestioner, ChatAPIConfig, LLMAnswerer
from dlgpr.data.turns import Answer, AnswerRequest, Candidate, Question, QuestionRequest, Target, Turn
from dlgpr.dialogue.types import Answerer, Questioner
from dlgpr.testing.openai_server import Fault, FakeOpenAIServer, message_text

SECRET = "sk-test-0123456789abcdefSECRET"

DESCRIPTION = (
    "A narrow three-storey house with a red brick facade. "
    "A green shop sign above the window reads BAKERY. "
    "The wooden door is painted blue."
)


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    """A started fake server; the openai client backs off 10 ms instead of 0.5 s between retries.

    The openai client honours only a positive ``Retry-After``; otherwise (``Retry-After: 0``,
    timeouts, connection errors) it sleeps ``INITIAL_RETRY_DELAY * 2**n``, which would make the
    fault tests slow. Shrinking that constant keeps the client's own retry logic under test.
    """
    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a developer's real key stays at home
    with FakeOpenAIServer() as server:
        yield server


def config(server: FakeOpenAIServer, **overrides) -> ChatAPIConfig:
    return ChatAPIConfig(**{"base_url": server.base_url, "model": "fake-model", "timeout_s": 2.0, "max_retries": 2, **overrides})


def question_request(query_id: int = 0, with_image: bool = False) -> QuestionRequest:
    candidates = tuple(
        Candidate(
            key=f"c{i}",
            place_id=i,
            description=f"Candidate place {i} with a {colour} facade.",
            image=(lambda colour=colour: Image.new("RGB", (16, 16), colour)) if with_image else None,
        )
        for i, colour in enumerate(["red", "blue"])
    )
    history = (Turn(question="What colour is the facade?", answer="It is red."),)
    return QuestionRequest(query_id=query_id, round=2, initial_description=f"query {query_id}: a house", history=history, candidates=candidates)


def answer_request(question: str, query_id: int = 0) -> AnswerRequest:
    target = Target(place_id=7, description=DESCRIPTION)
    return AnswerRequest(query_id=query_id, round=1, question=question, target=target, history=())


def user_text(body: dict) -> str:
    return message_text(next(m for m in body["messages"] if m["role"] == "user"))


def test_config_validation_names_the_field():
    for field, value in [("base_url", "127.0.0.1:8000"), ("timeout_s", 0.0), ("max_retries", -1), ("max_concurrency", 0), ("max_tokens", 0)]:
        with pytest.raises(ValueError, match=field):
            ChatAPIConfig(**{field: value})


def test_questioner_happy_path(fake_openai):
    questioner = APIQuestioner(config(fake_openai))
    assert isinstance(questioner, Questioner)
    questions = questioner.ask([question_request(0), question_request(1)])
    assert [q.ok for q in questions] == [True, True]
    assert {q.text for q in questions} == {"What colour is the facade?", "Is there a shop sign, and what does it say?"}
    assert all(q.think and q.raw.startswith("<think>") for q in questions)
    body = fake_openai.requests[0].body
    assert body["model"] == "fake-model" and body["temperature"] == 0.0 and body["max_tokens"] == 512
    # Text-only prompts go as plain strings; the candidates appear as their descriptions.
    assert all(isinstance(m["content"], str) for m in body["messages"])
    assert "Candidate place 1 with a blue facade." in user_text(body)
    usage = questioner.client.usage
    assert usage.requests == 2 and usage.failures == 0 and usage.prompt_tokens > 0 and usage.completion_tokens > 0


def test_answerer_happy_path(fake_openai):
    answerer = LLMAnswerer(config(fake_openai))
    assert isinstance(answerer, Answerer)
    answers = answerer.answer([answer_request("What does the shop sign say?"), answer_request("Is there a bench?")])
    assert answers == [
        Answer(text="A green shop sign above the window reads BAKERY."),
        Answer(text="I don't know."),
    ]


def test_rate_limit_is_retried(fake_openai):
    fake_openai.schedule.extend([Fault.RATE_LIMIT])
    (question,) = APIQuestioner(config(fake_openai)).ask([question_request()])
    assert question.ok and question.text
    assert len(fake_openai.requests) == 2


def test_server_errors_are_retried(fake_openai):
    fake_openai.schedule.extend([Fault.SERVER_ERROR, Fault.SERVER_ERROR])
    (answer,) = LLMAnswerer(config(fake_openai)).answer([answer_request("What colour is the door?")])
    assert answer == Answer(text="The wooden door is painted blue.")
    assert len(fake_openai.requests) == 3


def test_timeouts_beyond_retries_fail_without_raising(fake_openai):
    fake_openai.timeout_delay_s = 1.5
    fake_openai.policy = lambda body: Fault.TIMEOUT
    questioner = APIQuestioner(config(fake_openai, timeout_s=0.3, max_retries=2))
    start = time.monotonic()
    (question,) = questioner.ask([question_request()])
    assert not question.ok and question.text == ""
    assert question.error == "api_error:APITimeoutError"
    assert len(fake_openai.requests) == 3  # max_retries + 1 attempts, no more
    assert time.monotonic() - start < 3.0
    assert questioner.client.usage.failures == 1


@pytest.mark.parametrize("fault", [Fault.MALFORMED_JSON, Fault.NO_CHOICES])
def test_malformed_body_fails_that_request_only(fake_openai, fault):
    fake_openai.policy = lambda body: fault if "query 1:" in user_text(body) else None
    questions = APIQuestioner(config(fake_openai)).ask([question_request(i) for i in range(3)])
    assert [q.ok for q in questions] == [True, False, True]
    assert questions[1] == Question(text="", ok=False, error="malformed_reply")


def test_off_format_reply_is_a_format_failure(fake_openai):
    fake_openai.schedule.extend([Fault.OFF_FORMAT, Fault.EMPTY_CONTENT])
    questioner = APIQuestioner(config(fake_openai, max_concurrency=1))
    off_format, empty = questioner.ask([question_request(0), question_request(1)])
    assert not off_format.ok and off_format.error == "question_format" and off_format.raw == "Sure! Is the building red?"
    assert not empty.ok and empty.error == "question_format"
    assert len(fake_openai.requests) == 2  # a reply in the wrong format is not retried


def test_empty_answer_fails(fake_openai):
    fake_openai.schedule.extend([Fault.EMPTY_CONTENT])
    (answer,) = LLMAnswerer(config(fake_openai)).answer([answer_request("What colour is the door?")])
    assert answer == Answer(text="", ok=False, error="empty_answer")


def test_concurrency_is_bounded(fake_openai):
    fake_openai.delay_s = 0.2
    answerer = LLMAnswerer(config(fake_openai, max_concurrency=3))
    answers = answerer.answer([answer_request("What colour is the door?", query_id=i) for i in range(12)])
    assert len(answers) == 12 and all(a.ok for a in answers)
    assert len(fake_openai.requests) == 12
    assert 1 < fake_openai.max_in_flight <= 3


def test_results_keep_input_order(fake_openai):
    questions = ["What colour is the door?", "What does the shop sign say?", "How tall is the brick facade?", "Is there a bench?"]
    # Held 0.3, 0.2, 0.1, 0 s: the replies arrive in reverse input order.
    holds = {q: 0.1 * (len(questions) - 1 - i) for i, q in enumerate(questions)}
    fake_openai.delay_s = lambda body: next(t for q, t in holds.items() if q in user_text(body))
    answers = LLMAnswerer(config(fake_openai, max_concurrency=4)).answer([answer_request(q) for q in questions])
    assert [a.text for a in answers] == [
        "The wooden door is painted blue.",
        "A green shop sign above the window reads BAKERY.",
        "A narrow three-storey house with a red brick facade.",
        "I don't know.",
    ]


def test_api_key_is_sent_but_never_shown(fake_openai, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    # The 500 exercises the retry logging; the 401 body quotes the key, as real providers do.
    fake_openai.schedule.extend([Fault.SERVER_ERROR, Fault.UNAUTHORIZED, Fault.OFF_FORMAT])
    cfg = config(fake_openai, max_concurrency=1)
    questioner, answerer = APIQuestioner(cfg), LLMAnswerer(cfg)
    questions = questioner.ask([question_request(0), question_request(1)])
    answers = answerer.answer([answer_request("What colour is the door?")])
    assert [q.ok for q in questions] == [False, False] and answers[0].ok
    assert questions[0].error == "api_error:AuthenticationError"

    assert {r.headers["authorization"] for r in fake_openai.requests} == {f"Bearer {SECRET}"}
    assert caplog.records, "the client logs at DEBUG: the check below must see something"
    for record in caplog.records:
        assert SECRET not in record.getMessage()
    shown = [repr(cfg), repr(questioner.client), repr(questioner), repr(answerer), *(q.error for q in questions), *(q.raw for q in questions)]
    assert all(SECRET not in text for text in shown)


def test_missing_key_sends_placeholder(fake_openai):
    (answer,) = LLMAnswerer(config(fake_openai)).answer([answer_request("What colour is the door?")])
    assert answer.ok
    assert fake_openai.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_candidate_images_are_sent_as_data_urls(fake_openai):
    (question,) = APIQuestioner(config(fake_openai, send_images=True)).ask([question_request(with_image=True)])
    assert question.ok
    user = next(m for m in fake_openai.requests[0].body["messages"] if m["role"] == "user")
    images = [p for p in user["content"] if p["type"] == "image_url"]
    assert len(images) == 2
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/") for p in images)  # JPEG magic, base64
    assert "Candidate place" not in message_text(user)  # images replace the descriptions


def test_plugir_with_a_chat_model_over_the_api(fake_openai):
    """PlugIR's language-model steps through the OpenAI-compatible client, in a real dialogue."""
    from dlgpr.dialogue.api import ChatAPIConfig, ChatClient
    from dlgpr.dialogue.loop import DialogueQuery, run_dialogue
    from dlgpr.ranking import Gallery
    from dlgpr.dialogue.plugir_llm import ChatPlugIRModel
    from dlgpr.dialogue.questioners import PlugIRQuestioner
    from dlgpr.data.turns import Answer
    from tests.helpers.lexical import LexicalRetriever

    client = ChatClient(ChatAPIConfig(base_url=fake_openai.base_url, model="fake", timeout_s=2.0, max_retries=0))
    lm = ChatPlugIRModel(lambda messages: client.complete(messages).text)
    retriever = LexicalRetriever()
    descs = ["A red door and a blue facade.", "A green door and a blue facade.", "A red door and a yellow facade.", "A black door and a white facade."]
    gallery = Gallery(retriever.embed_texts(descs), torch.tensor([0, 1, 2, 3]), [f"k{i}" for i in range(4)], descs, [{}] * 4)
    queries = [DialogueQuery(0, "A blue facade.", Target(0, descs[0]))]

    class User:
        def answer(self, requests):
            return [Answer("The door is red.") for _ in requests]

    res = run_dialogue(retriever, PlugIRQuestioner(retriever, lm=lm), User(), queries, gallery, rounds=2, top_k=4)
    asked = [t.question for t in res.turns[0]]
    assert asked[0] in ("What colour is the door?", "Is there a phone booth next to the door?")
    assert "What is the house number?" not in asked  # the LM said it is already answered
    # the fake rewrite keeps the answers only ('The door is red.'): the two red doors tie at the top
    assert res.ranks[0, -1] == 1.5
    assert lm.failures == 0


@pytest.mark.parametrize(
    "settings, sent",
    [
        ({}, {"temperature": 0.0, "max_tokens": 512}),  # the defaults, as before these settings existed
        # a reasoning model: no sampling fields, its own token bound
        ({"temperature": None, "max_tokens": None, "extra_body": {"max_completion_tokens": 256}}, {"max_completion_tokens": 256}),
        # vLLM / SGLang: a JSON reply, guided decoding, template switches
        ({"temperature": 0.7, "max_tokens": None, "response_format": {"type": "json_object"},
          "extra_body": {"guided_json": {"type": "object", "properties": {"answer": {"type": "string"}}},
                         "chat_template_kwargs": {"enable_thinking": False}}},
         {"temperature": 0.7, "response_format": {"type": "json_object"},
          "guided_json": {"type": "object", "properties": {"answer": {"type": "string"}}},
          "chat_template_kwargs": {"enable_thinking": False}}),
    ],
    ids=["defaults", "reasoning_model", "json_and_guided"],
)
def test_request_body_holds_exactly_what_is_configured(fake_openai, settings, sent):
    answerer = LLMAnswerer(config(fake_openai, **settings))
    assert answerer.answer([answer_request("What colour is the door?")]) == [Answer(text="The wooden door is painted blue.")]
    body = fake_openai.requests[0].body
    assert {k: v for k, v in body.items() if k != "messages"} == {"model": "fake-model", **sent}


def test_optional_settings_are_validated():
    with pytest.raises(ValueError, match="extra_body must not set \\['max_tokens', 'model'\\]"):
        ChatAPIConfig(extra_body={"model": "other", "max_tokens": 3, "top_k": 20})
    with pytest.raises(ValueError, match="response_format"):
        ChatAPIConfig(response_format={"type": "xml"})
    with pytest.raises(ValueError, match="temperature"):
        ChatAPIConfig(temperature=3.0)


def test_reply_settings_key_every_setting_that_changes_replies():
    # unchanged for configs without the new settings, so existing response caches stay valid
    assert ChatAPIConfig().reply_settings() == "t=0.0/max_tokens=512"
    keys = {ChatAPIConfig(**s).reply_settings() for s in
            [{}, {"temperature": None}, {"response_format": {"type": "json_object"}}, {"extra_body": {"top_k": 20}}]}
    assert len(keys) == 4
