"""Rewards of the GRPO loop together: the weighted sum, its guards, and the failure order of the configs' weights."""

from pathlib import Path

import pytest
import torch
import yaml

from dlgpr.data.turns import Answer, Target
from dlgpr.ranking import Gallery
from dlgpr.rewards import (
    FAILURE_KINDS, FormatReward, RetrievalGainReward, RewardProfile, WeightedReward, check_failure_order, combine_rewards,
)

ROOT = Path(__file__).resolve().parents[2]
GRPO_CONFIGS = sorted(ROOT.glob("configs/dqpilot_grpo*.yaml"))


def test_combine_rewards_weights_and_guards():
    def length(prompts, completions, **kw):
        return [float(len(c)) for c in completions]

    total, parts = combine_rewards([WeightedReward("fmt", FormatReward(), 0.5), WeightedReward("len", length, 0.1)],
                                   ["p", "p"], ["<think>a</think><question>b?</question>", "xy"])
    assert parts == {"fmt": [1.0, 0.0], "len": [39.0, 2.0]}
    assert total == pytest.approx([0.5 + 3.9, 0.2])

    def nan_reward(prompts, completions, **kw):
        return [0.0, float("nan")]

    with pytest.raises(FloatingPointError, match="'bad'.*sample"):
        combine_rewards([WeightedReward("bad", nan_reward)], ["p", "p"], ["a", "b"])
    with pytest.raises(ValueError, match="returned 1 values"):
        combine_rewards([WeightedReward("short", lambda p, c, **k: [1.0])], ["p", "p"], ["a", "b"])


# ---- failed replies score below every well-formed question ------------------------------------------


class Users:
    """The simulated user: an answer for the door, "I don't know." for the weather, nothing when it fails."""

    def answer(self, requests):
        out = []
        for r in requests:
            if "weather" in r.question:
                out.append(Answer("I don't know."))
            elif "fail" in r.question:
                out.append(Answer("", ok=False, error="timeout"))
            else:
                out.append(Answer("The door is red."))
        return out


class OneHot:
    def embed_texts(self, texts):
        return torch.eye(4)[[1 if "door" in t else 0 for t in texts]]


REPLIES = {
    "malformed": "What colour is the door?",
    "empty_question": "<think>the doors differ</think><question> </question>",
    "unanswerable": "<think>x</think><question>What is the weather like?</question>",
    "answer_failure": "<think>x</think><question>Will you fail?</question>",
}
WELL_FORMED = "<think>the doors differ</think><question>What colour is the door?</question>"
PRG_GRID = [-1.0, -0.99, -0.5, -0.01, 0.0, 0.01, 0.5, 1.0]


def configured_rewards(config: Path, monkeypatch, prg_values):
    """The GRPO config's reward list (its weights and init args) over a stub retriever and user; the
    PRG of every well-formed question is taken from ``prg_values`` in order."""
    spec = yaml.safe_load(config.read_text())["model"]["init_args"]["rewards"]
    values = iter(prg_values)
    import dlgpr.rewards.retrieval_gain as module

    monkeypatch.setattr(module, "prg", lambda before, after, n, clamp: torch.tensor([next(values) for _ in range(len(n))]))
    gallery = Gallery(torch.eye(4), torch.tensor([0, 1, 2, 3]), list("abcd"), list("abcd"), [{}] * 4)
    out = []
    for r in spec:
        fn = r["fn"]
        if fn["class_path"].endswith("RetrievalGainReward"):
            args = {k: v for k, v in fn.get("init_args", {}).items() if k in ("failure_value", "clamp")}
            fn_obj = RetrievalGainReward.from_parts(OneHot(), gallery, Users(), **args)
        else:
            assert fn["class_path"] == "dlgpr.rewards.FormatReward"
            fn_obj = FormatReward()
        out.append(WeightedReward(r["name"], fn_obj, r["weight"]))
    return out


@pytest.mark.parametrize("config", GRPO_CONFIGS, ids=[c.stem for c in GRPO_CONFIGS])
def test_failed_replies_score_below_every_well_formed_question(config, monkeypatch):
    rewards = configured_rewards(config, monkeypatch, PRG_GRID)
    completions = [WELL_FORMED] * len(PRG_GRID) + list(REPLIES.values())
    n = len(completions)
    total, parts = combine_rewards(rewards, [None] * n, completions, target=[Target(1, "d")] * n,
                                   initial_description=["a building"] * n, history=[()] * n)
    questions, failures = total[: len(PRG_GRID)], dict(zip(REPLIES, total[len(PRG_GRID):]))
    assert parts["prg"][: len(PRG_GRID)] == pytest.approx(PRG_GRID)  # the grid reached the questions
    assert set(failures) == set(FAILURE_KINDS)
    assert max(failures.values()) < min(questions), (failures, questions)
    assert check_failure_order(rewards) == pytest.approx(min(questions) - max(failures.values()))


def test_check_failure_order_refuses_weights_that_break_the_order():
    prg = RetrievalGainReward.from_parts(OneHot(), Gallery(torch.eye(2), torch.tensor([0, 1]), ["a", "b"], ["a", "b"], [{}] * 2))
    fmt = FormatReward()
    assert check_failure_order([WeightedReward("prg", prg, 1.0), WeightedReward("format", fmt, 0.1)]) == pytest.approx(0.5)  # -0.9 vs -1.5 + 0.1
    with pytest.raises(ValueError, match="unanswerable"):  # no weight on PRG: "I don't know" ties with a question
        check_failure_order([WeightedReward("prg", prg, 0.0), WeightedReward("format", fmt, 0.1)])
    with pytest.raises(ValueError, match="malformed"):  # a negative format weight rewards breaking it
        check_failure_order([WeightedReward("prg", prg, 1.0), WeightedReward("format", fmt, -1.0)])
    prg.clamp = False  # unclamped PRG has no lower bound
    with pytest.raises(ValueError, match="failure"):
        check_failure_order([WeightedReward("prg", prg, 1.0)])
    # a function that declares no profile cannot be checked: a warning, not a refusal
    assert check_failure_order([WeightedReward("len", lambda p, c, **k: [0.0] * len(c))]) is None
    with pytest.raises(ValueError, match="every failure kind"):
        RewardProfile(well_formed=(0.0, 1.0), failures={"malformed": 0.0})
