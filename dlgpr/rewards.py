"""Reward functions for the GRPO loop: callables ``(prompts, completions, **batch) -> list[float]``.

The loop (DQ-Pilot, and the GLOBE recipe) takes a list of them with weights from its config and
knows nothing about what they measure (DESIGN.md, convention 6; trl's reward-function shape).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

__all__ = ["RewardFunction", "FORMAT_PATTERN", "format_reward", "WeightedReward", "combine_rewards"]

FORMAT_PATTERN = re.compile(r"^<think>.*?</think>\s*<question>.*?</question>$", re.DOTALL)
"""DQ-Pilot's output format (REFERENCE.md "DQ-Pilot"); dot matches newline."""


class RewardFunction(Protocol):
    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]: ...


def format_reward(prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
    """1.0 where the completion is exactly ``<think>...</think> <question>...</question>``, else 0.0."""
    return [1.0 if isinstance(c, str) and FORMAT_PATTERN.match(c) else 0.0 for c in completions]


@dataclass
class WeightedReward:
    """One reward function with its weight in the total."""

    name: str
    fn: RewardFunction
    weight: float = 1.0


def combine_rewards(
    rewards: Sequence[WeightedReward], prompts: Sequence[Any], completions: Sequence[str], **batch: Any
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of every reward per completion, and each reward's own values (for logging).

    Raises:
        ValueError: a function returned the wrong number of values.
        FloatingPointError: a function returned NaN or infinity (named, with the sample index).
    """
    parts: dict[str, list[float]] = {}
    total = [0.0] * len(completions)
    for r in rewards:
        values = [float(v) for v in r.fn(prompts, completions, **batch)]
        if len(values) != len(completions):
            raise ValueError(f"reward {r.name!r} returned {len(values)} values for {len(completions)} completions")
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"reward {r.name!r} is not finite for sample(s) {bad[:8]}")
        parts[r.name] = values
        total = [t + r.weight * v for t, v in zip(total, values)]
    return total, parts


class FormatReward:
    """:func:`format_reward` as a configurable object (``class_path: dlgpr.rewards.FormatReward``)."""

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        return format_reward(prompts, completions, **batch)
