"""Reward functions of the GRPO loop."""

import pytest

from dlgpr.rewards import WeightedReward, combine_rewards, format_reward


def test_format_reward_on_good_and_bad_strings():
    good = [
        "<think>1. The candidates differ in awning colour.</think><question>What colour is the awning?</question>",
        "<think>multi\nline\nreasoning</think>\n  <question>Is there a bench?</question>",
    ]
    bad = [
        "What colour is the awning?",  # no tags
        "<question>Is there a bench?</question>",  # no think
        "<think>x</think><question>Is there a bench?</question> and more",  # trailing text
        " <think>x</think><question>q?</question>",  # leading text
        "<think>x<question>q?</question>",  # unclosed think
        "",
    ]
    assert format_reward([None] * 8, good + bad) == [1.0, 1.0] + [0.0] * 6


def test_combine_rewards_weights_and_guards():
    def length(prompts, completions, **kw):
        return [float(len(c)) for c in completions]

    total, parts = combine_rewards([WeightedReward("fmt", format_reward, 0.5), WeightedReward("len", length, 0.1)],
                                   ["p", "p"], ["<think>a</think><question>b?</question>", "xy"])
    assert parts == {"fmt": [1.0, 0.0], "len": [39.0, 2.0]}
    assert total == pytest.approx([0.5 + 3.9, 0.2])

    def nan_reward(prompts, completions, **kw):
        return [0.0, float("nan")]

    with pytest.raises(FloatingPointError, match="'bad'.*sample"):
        combine_rewards([WeightedReward("bad", nan_reward)], ["p", "p"], ["a", "b"])
    with pytest.raises(ValueError, match="returned 1 values"):
        combine_rewards([WeightedReward("short", lambda p, c, **k: [1.0])], ["p", "p"], ["a", "b"])
