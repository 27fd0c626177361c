"""Simulated users: the exact oracle and a noisy wrapper (the real-user gap the paper leaves open).

``OracleAnswerer`` answers from the ground truth of the target (``target.attributes``) through an
attribute schema (:class:`~dlgpr.dialogue.slots.AttributeSchema`, SynthCities' by default): it
maps the question to slots and says one fixed sentence per slot, or that it does not know when
the question is about nothing it has. ``NoisyAnswerer`` wraps any answerer
and, with configured rates, replaces an answer by a vague one, a wrong one (another value of the
same slot) or "I don't remember". The LLM user that answers from the description is
``dlgpr.dialogue.api.LLMAnswerer``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dlgpr.dialogue.slots import AttributeSchema, resolve_schema
from dlgpr.data.turns import Answer, AnswerRequest
from dlgpr.dialogue.types import Answerer

DONT_KNOW = "I don't know."
DONT_REMEMBER = "I don't remember."


class OracleAnswerer:
    """Answers from ``target.attributes`` (ground truth), phrased by ``schema`` (SynthCities' when None)."""

    def __init__(self, schema: AttributeSchema | None = None) -> None:
        self.schema = resolve_schema(schema)

    def answer(self, requests: list[AnswerRequest]) -> list[Answer]:
        out = []
        for req in requests:
            attrs = req.target.attributes
            slots = [s for s in self.schema.question_slots(req.question) if s in attrs]
            if not slots:
                out.append(Answer(DONT_KNOW))
                continue
            out.append(Answer(" ".join(self.schema.answer_sentence(s, attrs[s], attrs) for s in slots)))
        return out


NOT_SURE = "I'm not sure, something like that."
"""The vague answer about a slot the schema has no vague phrasing for."""


@dataclass
class NoiseConfig:
    """Rates of imperfect answers; they are exclusive and must sum to at most 1."""

    vague_rate: float = 0.0
    """Answer without the discriminative value ("the door had some colour")."""
    wrong_rate: float = 0.0
    """Answer with another value of the asked slot, stated as confidently as a true one."""
    dont_remember_rate: float = 0.0
    """Answer "I don't remember"."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vague_rate", "wrong_rate", "dont_remember_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"noise.{name} must be in [0, 1], got {v}")
        if self.vague_rate + self.wrong_rate + self.dont_remember_rate > 1.0 + 1e-9:
            raise ValueError("noise rates must sum to at most 1")

    @classmethod
    def uniform(cls, error_rate: float, seed: int = 0) -> "NoiseConfig":
        """Split a total error rate equally between the three kinds."""
        return cls(error_rate / 3, error_rate / 3, error_rate / 3, seed)


class NoisyAnswerer:
    """Wraps an answerer; each answer is independently perturbed, seeded per (query, round).

    ``schema`` (SynthCities' when None) says which slots a question asks and how a vague or a
    wrong answer about them reads.
    """

    def __init__(self, base: Answerer, noise: NoiseConfig, schema: AttributeSchema | None = None) -> None:
        self.base = base
        self.noise = noise
        self.schema = resolve_schema(schema)
        self.counts = {"vague": 0, "wrong": 0, "dont_remember": 0, "exact": 0}

    def _rng(self, req: AnswerRequest) -> random.Random:
        return random.Random(f"noisy-user/{self.noise.seed}/{req.query_id}/{req.round}")

    def answer(self, requests: list[AnswerRequest]) -> list[Answer]:
        answers = self.base.answer(requests)
        out = []
        n = self.noise
        for req, ans in zip(requests, answers):
            rng = self._rng(req)
            u = rng.random()
            slots = [s for s in self.schema.question_slots(req.question) if s in req.target.attributes]
            if not ans.ok or not slots:
                out.append(ans)
            elif u < n.dont_remember_rate:
                self.counts["dont_remember"] += 1
                out.append(Answer(DONT_REMEMBER))
            elif u < n.dont_remember_rate + n.vague_rate:
                self.counts["vague"] += 1
                out.append(Answer(self.schema.vague_answer(slots[0]) or NOT_SURE))
            elif u < n.dont_remember_rate + n.vague_rate + n.wrong_rate:
                self.counts["wrong"] += 1
                out.append(Answer(self._wrong(slots[0], req, rng)))
            else:
                self.counts["exact"] += 1
                out.append(ans)
        return out

    def _wrong(self, slot: str, req: AnswerRequest, rng: random.Random) -> str:
        attrs = req.target.attributes
        return self.schema.answer_sentence(slot, rng.choice(self.schema.wrong_values(slot, attrs[slot])), attrs)
