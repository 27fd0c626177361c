"""Adaptive stopping: stop asking once the retriever is confident about its top candidate place.

Confidence is read from the ranked list of a round, collapsed to places (the best score of each
place among the top ``top_k`` images, so another view of the leading place is not a rival):

* ``margin``: the score of the top place minus the score of the runner-up place; stop when it
  is at least ``threshold``. A list with a single place has an infinite margin.
* ``entropy``: the entropy of ``softmax(place scores / temperature)``, divided by ``log n`` for
  ``n`` places so that it lies in [0, 1] whatever ``n`` is; stop when it is at most
  ``threshold``. A single place has entropy 0.

``run_dialogue`` and ``dlgpr.app.PlaceFinder`` both decide with :func:`stop_decisions`, once per
round after ranking and before asking; a query that stops is asked nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["StoppingConfig", "place_scores", "confidence", "stop_decisions"]

Rule = Literal["margin", "entropy"]


@dataclass
class StoppingConfig:
    """When the engine stops asking."""

    rule: Rule = "margin"
    """``margin`` (top place's score minus the runner-up's) or ``entropy`` (normalised softmax
    entropy over the top places)."""
    threshold: float = 0.05
    """Stop when the margin is at least this, or the normalised entropy at most this."""
    top_k: int = 10
    """Images of the ranked list read (collapsed to their places)."""
    temperature: float = 0.05
    """Softmax temperature of the entropy rule (scores are cosine similarities)."""
    min_questions: int = 0
    """Questions asked before the rule may stop a dialogue."""

    def __post_init__(self) -> None:
        if self.rule not in ("margin", "entropy"):
            raise ValueError(f"stopping.rule must be 'margin' or 'entropy', got {self.rule!r}")
        if self.top_k < 2:
            raise ValueError("stopping.top_k must be >= 2 (a margin needs a runner-up)")
        if not self.temperature > 0:
            raise ValueError("stopping.temperature must be > 0")
        if self.min_questions < 0:
            raise ValueError("stopping.min_questions must be >= 0")
        if math.isnan(self.threshold):
            raise ValueError("stopping.threshold must be a number")

    def passes(self, conf: Tensor) -> Tensor:
        """``[Q]`` bool: whether each confidence value ``conf [Q]`` (of :func:`confidence`) stops."""
        return conf >= self.threshold if self.rule == "margin" else conf <= self.threshold


def place_scores(scores: Tensor, place_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Best score of each distinct place of a ranked list.

    ``scores [Q, k]`` best first, ``place_ids [Q, k]`` (``-1``: an empty slot). Returns
    ``[Q, k]`` place scores, best first, padded with ``-inf``, and ``[Q]`` places per row.
    """
    q, k = scores.shape
    out = torch.full((q, k), float("-inf"), dtype=torch.float64)
    counts = torch.zeros(q, dtype=torch.long)
    for i in range(q):
        seen: set[int] = set()
        vals = []
        for s, p in zip(scores[i].tolist(), place_ids[i].tolist()):
            if p < 0 or p in seen:
                continue
            seen.add(p)
            vals.append(s)
        vals.sort(reverse=True)
        out[i, : len(vals)] = torch.tensor(vals, dtype=torch.float64)
        counts[i] = len(vals)
    return out, counts


def confidence(scores: Tensor, place_ids: Tensor, config: StoppingConfig) -> Tensor:
    """``[Q]`` float64 confidence of each ranked list under ``config.rule`` (see the module docstring).

    ``scores [Q, k]`` best first and ``place_ids [Q, k]`` of the listed images; the first
    ``config.top_k`` are read.
    """
    ps, n = place_scores(scores[:, : config.top_k].double(), place_ids[:, : config.top_k])  # [Q, k], [Q]
    if config.rule == "margin":
        if ps.shape[1] < 2:
            return torch.full((ps.shape[0],), float("inf"), dtype=torch.float64)
        return torch.where(n >= 2, ps[:, 0] - ps[:, 1], torch.tensor(float("inf"), dtype=torch.float64))
    logits = torch.where(n[:, None] > 0, ps / config.temperature, torch.zeros_like(ps))  # [Q, k], -inf in padding
    p = torch.softmax(logits, dim=1)  # [Q, k]
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=1)  # [Q]
    norm = torch.log(n.clamp(min=2).double())  # [Q]
    return torch.where(n >= 2, h / norm, torch.zeros_like(h))


def stop_decisions(scores: Tensor, place_ids: Tensor, questions_asked: Tensor | int, config: StoppingConfig) -> tuple[Tensor, Tensor]:
    """``(stop [Q] bool, confidence [Q])`` for ranked lists ``scores [Q, k]``, ``place_ids [Q, k]``
    after ``questions_asked`` questions (a stop needs at least ``config.min_questions``)."""
    conf = confidence(scores, place_ids, config)
    asked = torch.as_tensor(questions_asked)
    return config.passes(conf) & (asked >= config.min_questions), conf
