"""What every reward of the GRPO loop is: a callable ``(prompts, completions, **batch) -> list[float]``.

The loop (DQ-Pilot, and the GLOBE recipe) takes a list of them with weights from its config and
knows nothing about what they measure (trl's reward-function shape).

A reply that fails (malformed, a blank question, a question the user cannot answer, an answerer
failure) must total strictly less than every well-formed question, or the group advantage can
favour breaking the format. Reward functions say what they give through ``profile()``
(:class:`ProfiledReward`, :class:`RewardProfile`: the range over well-formed questions, the value
per failure kind) and :func:`check_failure_order` refuses weights under which a failure could tie
or beat a question (docs/DQPILOT.md, "Rewards").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from dlgpr.models.reply_format import EMPTY_QUESTION, MALFORMED

__all__ = [
    "RewardFunction", "ProfiledReward", "FAILURE_KINDS", "UNANSWERABLE", "ANSWER_FAILURE", "RewardProfile", "WeightedReward",
    "combine_rewards", "check_failure_order",
]

log = logging.getLogger("dlgpr.rewards")

UNANSWERABLE = "unanswerable"
ANSWER_FAILURE = "answer_failure"
FAILURE_KINDS = (MALFORMED, EMPTY_QUESTION, UNANSWERABLE, ANSWER_FAILURE)
"""Ways a reply fails: not in the format; a blank question; a question the user cannot answer
("I don't know"); no answer at all (the answerer failed or returned nothing)."""


class RewardFunction(Protocol):
    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]: ...


@dataclass(frozen=True)
class RewardProfile:
    """What a reward function gives: ``well_formed`` = (lowest, highest) value over well-formed,
    answered questions; ``failures`` = the value for each of :data:`FAILURE_KINDS`."""

    well_formed: tuple[float, float]
    failures: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lo, hi = self.well_formed
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ValueError(f"well_formed must be (low, high) with low <= high, got {self.well_formed}")
        missing = [k for k in FAILURE_KINDS if k not in self.failures]
        if missing:
            raise ValueError(f"a reward profile must give a value for every failure kind; missing {missing}")


@runtime_checkable
class ProfiledReward(Protocol):
    """A reward function that says what it gives (what :func:`check_failure_order` reads)."""

    def profile(self) -> RewardProfile: ...


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


def check_failure_order(rewards: Sequence[WeightedReward]) -> float | None:
    """Refuse weights under which a failed reply could score as much as a well-formed question.

    With each function's :class:`RewardProfile`, the lowest total a well-formed question can get
    is ``sum_i min(w_i * lo_i, w_i * hi_i)`` and a failure of kind k totals ``sum_i w_i * f_i[k]``;
    every failure total must be strictly below that lowest question total.

    Returns the margin (lowest question total minus the highest failure total), or None when a
    function has no ``profile()`` (the order cannot be checked; a warning says so).

    Raises:
        ValueError: a failure kind totals at least the lowest well-formed question.
    """
    profiles = []
    for r in rewards:
        if not math.isfinite(r.weight):
            raise ValueError(f"reward {r.name!r} has a non-finite weight {r.weight}")
        if not isinstance(r.fn, ProfiledReward):
            log.warning("reward %r declares no profile(): cannot check that failed replies score below every question", r.name)
            return None
        profiles.append((r, r.fn.profile()))
    lowest_question = sum(min(r.weight * p.well_formed[0], r.weight * p.well_formed[1]) for r, p in profiles)
    failures = {k: sum(r.weight * p.failures[k] for r, p in profiles) for k in FAILURE_KINDS}
    bad = {k: v for k, v in failures.items() if not v < lowest_question}
    if bad:
        terms = ", ".join(f"{r.name}: weight {r.weight}, question range {p.well_formed}, failures {p.failures}" for r, p in profiles)
        raise ValueError(
            f"with these rewards a failed reply can score as much as a well-formed question (lowest question total "
            f"{lowest_question:.3f}; failure totals {', '.join(f'{k} {v:.3f}' for k, v in bad.items())}). Lower the failure "
            f"value of the retrieval-gain reward or change the weights. [{terms}]"
        )
    return lowest_question - max(failures.values())
