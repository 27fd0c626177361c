"""Rewards of the GRPO loop (DQ-Pilot, and GLOBE's later): what a reward is and how rewards are
weighted (``base``), the format reward (``format``) and the retrieval-gain reward (``retrieval_gain``).

Configs name them by their public path here, e.g. ``class_path: dlgpr.rewards.FormatReward``.
"""

from __future__ import annotations

from dlgpr.rewards.base import (
    ANSWER_FAILURE, FAILURE_KINDS, UNANSWERABLE, ProfiledReward, RewardFunction, RewardProfile, WeightedReward, check_failure_order,
    combine_rewards,
)
from dlgpr.rewards.format import FormatReward
from dlgpr.rewards.retrieval_gain import AnswererFailing, RetrievalGainReward

__all__ = [
    "RewardFunction", "ProfiledReward", "FAILURE_KINDS", "UNANSWERABLE", "ANSWER_FAILURE", "RewardProfile", "WeightedReward",
    "combine_rewards", "check_failure_order", "FormatReward", "RetrievalGainReward", "AnswererFailing",
]
