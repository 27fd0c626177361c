"""Rewards of the GRPO loop (DQ-Pilot, and GLOBE's later): what a reward is and how rewards are
weighted (``base``), the format reward (``format``), the retrieval-gain reward (``retrieval_gain``)
and GLOBE's geo-localization rewards (``geo``: format, R_geo, R_vis, R_loc).

Configs name them by their public path here, e.g. ``class_path: dlgpr.rewards.FormatReward``.
"""

from __future__ import annotations

from dlgpr.rewards.base import (
    ANSWER_FAILURE, FAILURE_KINDS, UNANSWERABLE, ProfiledReward, RewardFunction, RewardProfile, WeightedReward, check_failure_order,
    combine_rewards,
)
from dlgpr.rewards.format import FormatReward
from dlgpr.rewards.geo import GeoAccuracyReward, GeoFormatReward, LocalizabilityReward, VisualGroundingReward
from dlgpr.rewards.retrieval_gain import AnswererFailing, RetrievalGainReward

__all__ = [
    "RewardFunction", "ProfiledReward", "FAILURE_KINDS", "UNANSWERABLE", "ANSWER_FAILURE", "RewardProfile", "WeightedReward",
    "combine_rewards", "check_failure_order", "FormatReward", "RetrievalGainReward", "AnswererFailing",
    "GeoFormatReward", "GeoAccuracyReward", "VisualGroundingReward", "LocalizabilityReward",
]
