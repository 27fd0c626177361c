"""RetrievalGainReward over a stub retriever whose embeddings fix every rank by hand.

Gallery: 5 images, one-hot embeddings, places [10, 11, 12, 13, 12]; the target is place 12
(images 2 and 4). The stub maps a query text to a score per image, so the target's ranks are:

* before the round (d_0 + earlier answers):           [3, 5]
* after "The door is red." is appended:                [2, 4]  (a gain)
* after "The house number is 7." is appended:          [4, 5]  (a loss)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.api import ChatAPIConfig, LLMAnswerer
from dlgpr.data.turns import Answer, AnswerRequest, Target, Turn
from dlgpr.metrics import prg
from dlgpr.ranking import Gallery
from dlgpr.rewards import AnswererFailing, RetrievalGainReward
from dlgpr.testing.openai_server import FakeOpenAIServer, Fault, message_text

D0 = "a building near a shop"
HISTORY = (Turn(question="Is there a tree?", answer="There is a tree on the left."),)
TARGET = Target(place_id=12, description="a red door, number 7", attributes={"door_color": "red", "house_number": 7})
BEFORE = f"{D0} There is a tree on the left."
SCORES = {"door is red": [3.0, 5.0, 4.0, 1.0, 2.0], "house number is 7": [5.0, 4.0, 1.0, 3.0, 2.0]}
SCORES_BEFORE = [5.0, 4.0, 3.0, 2.0, 1.0]

NO_FORMAT = "What colour is the door?"
UNANSWERABLE = "<think>x</think><question>What is the weather like?</question>"
DOOR = "<think>the doors differ</think><question>What colour is the door?</question>"
NUMBER = "<think>x</think>\n<question>What is the house number?</question>"
EMPTY = "<think>x</think><question>  </question>"


class StubRetriever:
    """``embed_texts``: a fixed score vector per keyword (normalised); records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        rows = [next((v for k, v in SCORES.items() if k in t), SCORES_BEFORE) for t in texts]
        return F.normalize(torch.tensor(rows), dim=1)


def gallery() -> Gallery:
    places = [10, 11, 12, 13, 12]
    return Gallery(embeddings=torch.eye(5), place_ids=torch.tensor(places), keys=[f"k{i}" for i in range(5)],
                   descriptions=[f"image {i}" for i in range(5)], attributes=[{} for _ in places])


def call(reward: RetrievalGainReward, completions: list[str]) -> list[float]:
    n = len(completions)
    return reward([None] * n, completions, target=[TARGET] * n, initial_description=[D0] * n, history=[HISTORY] * n)


def hand_prg(before: list[int], after: list[int], num_positives: int = 2) -> float:
    gain = lambda ranks: sum(1 / math.log2(r + 1) for r in ranks)  # noqa: E731
    ideal = gain(range(1, num_positives + 1))
    return (gain(after) - gain(before)) / (ideal - gain(before))


def test_reward_is_the_prg_of_the_answered_question() -> None:
    retriever = StubRetriever()
    reward = RetrievalGainReward.from_parts(retriever, gallery(), OracleAnswerer())
    values = call(reward, [NO_FORMAT, UNANSWERABLE, DOOR, NUMBER])

    door = float(prg(torch.tensor([[3, 5]]), torch.tensor([[2, 4]]), torch.tensor([2]), clamp=True)[0])
    number = float(prg(torch.tensor([[3, 5]]), torch.tensor([[4, 5]]), torch.tensor([2]), clamp=True)[0])
    assert door == pytest.approx(hand_prg([3, 5], [2, 4])) and 0 < door < 1
    assert number == pytest.approx(hand_prg([3, 5], [4, 5])) and -1 < number < 0
    assert values == pytest.approx([-1.5, -1.5, door, number], abs=1e-9)  # failed replies: failure_value
    assert reward.last_stats["format_failures"] == 1
    assert reward.last_stats["unanswerable"] == 1
    assert reward.last_stats["answered"] == 2 and reward.last_stats["answer_failures"] == 0
    # one batched encode of the queries before and after: d_0 + earlier answers (+ the new answer)
    assert retriever.calls == [[BEFORE, BEFORE, f"{BEFORE} The door is red.", f"{BEFORE} The house number is 7."]]


class FailingAnswerer:
    def answer(self, requests: list[AnswerRequest]) -> list[Answer]:
        return [Answer("", ok=False, error="timeout") for _ in requests]


def test_unusable_completions_score_the_failure_value_without_encoding() -> None:
    retriever = StubRetriever()
    reward = RetrievalGainReward.from_parts(retriever, gallery(), FailingAnswerer(), failure_value=-2.0)
    assert call(reward, [DOOR, NO_FORMAT]) == [-2.0, -2.0]
    assert reward.last_stats["answer_failures"] == 1 and reward.last_stats["format_failures"] == 1
    assert reward.last_stats["answered"] == 0 and retriever.calls == []

    reward = RetrievalGainReward.from_parts(retriever, gallery(), OracleAnswerer())
    assert call(reward, [UNANSWERABLE, EMPTY]) == [-1.5, -1.5]
    assert reward.last_stats["unanswerable"] == 1 and reward.last_stats["format_failures"] == 1 and retriever.calls == []
    with pytest.raises(ValueError, match="below -1"):
        RetrievalGainReward(failure_value=-1.0)  # a question that hurts (PRG -1) would tie with a failure


def test_a_target_missing_from_the_gallery_scores_zero_and_is_counted() -> None:
    # e.g. validation prompts (val places) scored against a train-only gallery: the data's fault, the
    # same for every sample of the prompt, so neutral (0) rather than a failure of the reply
    retriever = StubRetriever()
    reward = RetrievalGainReward.from_parts(retriever, gallery(), OracleAnswerer())
    elsewhere = Target(place_id=99, description=TARGET.description, attributes=TARGET.attributes)
    values = reward([None], [DOOR], target=[elsewhere], initial_description=[D0], history=[HISTORY])
    assert values == [0.0]
    assert reward.last_stats["target_not_in_gallery"] == 1 and reward.last_stats["answered"] == 0
    assert retriever.calls == []


def llm_reward(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, limit: int) -> RetrievalGainReward:
    """The reward with an LLM user on the fake server, no retries (one request per answer), a key set."""
    monkeypatch.setenv("USER_KEY", "sk-SECRET-0123")
    config = ChatAPIConfig(base_url=server.base_url, model="Qwen/Qwen2.5-72B-Instruct", api_key_env="USER_KEY", max_retries=0, timeout_s=5.0)
    return RetrievalGainReward.from_parts(StubRetriever(), gallery(), LLMAnswerer(config), max_consecutive_answer_failures=limit)


def test_an_answerer_failing_every_request_stops_the_run_naming_its_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAIServer() as server:
        server.policy = lambda body: Fault.SERVER_ERROR
        reward = llm_reward(server, monkeypatch, limit=5)
        assert call(reward, [DOOR, NO_FORMAT, NUMBER, DOOR]) == [-1.5] * 4  # 3 failed answers: below the limit, counted
        assert reward.last_stats["answer_failures"] == 3
        with pytest.raises(AnswererFailing) as err:
            call(reward, [DOOR, NUMBER])  # the streak goes on across calls: 5 in a row
    message = str(err.value)
    assert "\n" not in message and "failed 5 answers in a row (api_error:InternalServerError x5)" in message
    assert f"base_url='{server.base_url}'" in message and "model='Qwen/Qwen2.5-72B-Instruct'" in message
    assert "SECRET" not in message and "USER_KEY" not in message


def test_intermittent_answer_failures_are_counted_without_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAIServer() as server:
        # every house-number question fails, the door questions between them are answered
        server.policy = lambda body: Fault.SERVER_ERROR if "house number" in message_text(body["messages"][-1]) else None
        reward = llm_reward(server, monkeypatch, limit=2)
        for _ in range(3):
            values = call(reward, [NUMBER, DOOR, NUMBER, DOOR])
            assert values[0] == values[2] == -1.5 and -1 <= values[1] <= 1
            assert reward.last_stats["answer_failures"] == 2 and reward.last_stats["answered"] == 2
        assert len(server.requests) == 12


def test_the_failure_limit_is_validated_and_can_be_turned_off() -> None:
    with pytest.raises(ValueError, match="max_consecutive_answer_failures"):
        RetrievalGainReward(max_consecutive_answer_failures=0)
    reward = RetrievalGainReward.from_parts(StubRetriever(), gallery(), FailingAnswerer(), max_consecutive_answer_failures=None)
    assert call(reward, [DOOR] * 50) == [-1.5] * 50
    assert reward.last_stats["answer_failures"] == 50
    with pytest.raises(AnswererFailing, match="timeout x20"):  # the default limit, 20
        call(RetrievalGainReward.from_parts(StubRetriever(), gallery(), FailingAnswerer()), [DOOR] * 20)


def test_log_rank_gain_is_the_change_of_the_best_rank_in_log_units_of_the_gallery() -> None:
    # the denser variant: best positive rank 3 -> 2 (door) and 3 -> 4 (number) over a 5-image gallery
    reward = RetrievalGainReward.from_parts(StubRetriever(), gallery(), OracleAnswerer(), gain="log_rank")
    values = call(reward, [NO_FORMAT, DOOR, NUMBER])
    assert values == pytest.approx([-1.5, math.log(3 / 2) / math.log(5), math.log(3 / 4) / math.log(5)], abs=1e-9)
    assert reward.profile().well_formed == (-1.0, 1.0)  # the failure ordering holds as for PRG
    with pytest.raises(ValueError, match="gain must be"):
        RetrievalGainReward(gain="ndcg")
    with pytest.raises(ValueError, match="clamp=False"):
        RetrievalGainReward(gain="log_rank", clamp=False)


def test_the_stats_hold_both_gains_of_the_answered_questions_whichever_is_the_reward() -> None:
    door, number = hand_prg([3, 5], [2, 4]), hand_prg([3, 5], [4, 5])
    log_door, log_number = math.log(3 / 2) / math.log(5), math.log(3 / 4) / math.log(5)
    for gain in ("prg", "log_rank"):
        reward = RetrievalGainReward.from_parts(StubRetriever(), gallery(), OracleAnswerer(), gain=gain)
        call(reward, [NO_FORMAT, DOOR, NUMBER])  # the malformed reply is in neither mean
        assert reward.last_stats["mean_prg"] == pytest.approx((door + number) / 2)
        assert reward.last_stats["mean_log_rank_gain"] == pytest.approx((log_door + log_number) / 2)
