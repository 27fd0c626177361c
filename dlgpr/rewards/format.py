"""The format reward of DQ-Pilot GRPO (docs/METHOD.md, "DQ-Pilot": R_fmt).

A reply is well formed by the one definition of ``dlgpr.models.reply_format``, the same the
question parser (``dlgpr.models.reply_format.parse_question``) reads replies with: a reply this reward
pays for is always a question the dialogue loop can ask.
"""

from __future__ import annotations

from typing import Any, Sequence

from dlgpr.models.reply_format import EMPTY_QUESTION, MALFORMED, check_reply
from dlgpr.rewards.base import ANSWER_FAILURE, UNANSWERABLE, RewardProfile

__all__ = ["FormatReward"]


class FormatReward:
    """1.0 where the completion is a well-formed reply (``<think>..</think><question>..</question>``
    with a non-blank question), else 0.0 (``class_path: dlgpr.rewards.FormatReward``)."""

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        return [0.0 if check_reply(c)[2] else 1.0 for c in completions]

    def profile(self) -> RewardProfile:
        # an unanswerable question, or one the user failed to answer, is still in the format
        return RewardProfile(well_formed=(1.0, 1.0), failures={MALFORMED: 0.0, EMPTY_QUESTION: 0.0, UNANSWERABLE: 1.0, ANSWER_FAILURE: 1.0})
