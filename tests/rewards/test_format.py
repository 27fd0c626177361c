"""The format reward: one definition, shared with the question parser."""

from dlgpr.models.reply_format import parse_question
from dlgpr.rewards import FormatReward


def test_format_reward_on_good_and_bad_strings():
    good = [
        "<think>1. The candidates differ in awning colour.</think><question>What colour is the awning?</question>",
        "<think>multi\nline\nreasoning</think>\n  <question>Is there a bench?</question>",
        " <think>x</think><question>q?</question>\n",  # whitespace around the reply
    ]
    bad = [
        "What colour is the awning?",  # no tags
        "<question>Is there a bench?</question>",  # no think
        "<think>x</think><question>Is there a bench?</question> and more",  # trailing text
        "so: <think>x</think><question>q?</question>",  # leading text
        "<think>x<question>q?</question>",  # unclosed think
        "<think>x</think><question></question>",  # empty question
        "<think>x</think><question> \n </question>",  # blank question
        "",
    ]
    assert FormatReward()([None] * 11, good + bad) == [1.0] * 3 + [0.0] * 8
    # one definition: the reward accepts exactly the replies the question parser can ask
    assert [parse_question(c).ok for c in good + bad] == [True] * 3 + [False] * 8
