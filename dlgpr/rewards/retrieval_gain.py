"""The retrieval-gain reward of DQ-Pilot GRPO (docs/METHOD.md, "DQ-Pilot": R_prg = PRG of the round).

For each sampled completion: parse the question, let the simulated user answer it about the
target, append the answer to the query (``d_t = concat(d_0, a_1..a_t)``) and re-rank the whole
gallery with the frozen retriever; the reward is the PRG between the ranks before and after
(clamped to [-1, 1]; ranks by ``dlgpr.ranking``). All queries of a call, before and after, go
through one batched text encode and one exact search.

A failed reply scores ``failure_value`` (default -1.5), below the -1 of the worst question, so
that with the format reward's weight it totals less than every well-formed question
(:func:`dlgpr.rewards.check_failure_order`); each is counted in :attr:`RetrievalGainReward.last_stats`:
a completion not in the ``<think>..</think><question>..</question>`` format or with a blank
question (``format_failures``), a question the user cannot answer ("I don't know":
``unanswerable``), or no answer (``answer_failures``). A target with no image in the gallery is
the data's fault, not the reply's: the question scores 0 and ``target_not_in_gallery`` counts it.

A simulated user that keeps failing is not a reply's fault either, but a dead endpoint, a model
name the server does not serve or a refused key: every sample would score ``failure_value``, the
group advantages would be all zero and the run would train on nothing without a word. So
``max_consecutive_answer_failures`` failed answers in a row (across calls; any answer resets the
count) raise :class:`AnswererFailing`, which stops the run with one line naming the answerer (for
``LLMAnswerer`` its base_url and model) and the error kinds. Isolated failures are counted only.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch

from dlgpr.dialogue.answerers import DONT_KNOW, DONT_REMEMBER, OracleAnswerer
from dlgpr.data.turns import AnswerRequest, Target, Turn
from dlgpr.dialogue.types import Answerer, compose_query
from dlgpr.models.reply_format import parse_question
from dlgpr.metrics import log_rank_gain, prg
from dlgpr.ranking import Gallery, gallery_positive_ranks
from dlgpr.retrieval import ModuleTextRetriever, TextRetriever, encode_gallery, load_retriever
from dlgpr.rewards.base import FAILURE_KINDS, UNANSWERABLE, RewardProfile

__all__ = ["AnswererFailing", "RetrievalGainReward"]

EMPTY_ANSWER = "empty_answer"
"""The error kind of an answer that came back ok but blank."""


class AnswererFailing(RuntimeError):
    """The simulated user failed too many answers in a row to go on (not caught by ``GRPOModule``'s
    step, which skips only a batch with a bad reward value)."""


class RetrievalGainReward:
    """``(prompts, completions, target=, initial_description=, history=) -> PRG per completion``.

    Args:
        retriever: checkpoint of the frozen retriever (loaded on first use, on the GPU if there is one).
        data_dir: place shards whose ``splits`` images form the re-ranked gallery.
        splits: gallery splits; they must hold every target the reward sees (training prompts
            come from the train split, validation prompts from val). A target without an image
            in the gallery scores 0 and is counted (``target_not_in_gallery``).
        answerer: the simulated user (the SynthCities oracle by default).
        unanswerable: answers that carry no information; they score ``failure_value`` instead of
            the noise a re-ranking of "I don't know" would give.
        clamp: clamp PRG to [-1, 1] (as a reward it is clamped; unclamped, PRG has no lower bound
            and no failure value can lie below every question).
        failure_value: the reward of a failed reply (malformed, blank question, unanswerable, no
            answer); it must be below -1, the lowest clamped PRG.
        batch_size: texts per encoder call.
        gain: ``"prg"`` (the paper's R_prg: PRG of the round) or ``"log_rank"`` (a denser variant,
            :func:`dlgpr.metrics.log_rank_gain`: the change of the target's log best rank over
            log of the gallery size, so moving from rank 300 to 150 counts as much as 2 to 1).
            Both lie in [-1, 1], so the failure value and its ordering hold for either.
        max_consecutive_answer_failures: failed answers in a row (across calls) that raise
            :class:`AnswererFailing` (None: never). A setting of the reward, not of the answerer:
            the reward is where a failed answer silently becomes a training signal, it holds for
            every answerer, and the dialogue evaluation and the corpus builder, which use the same
            answerers, record each failed turn instead.
    """

    def __init__(
        self,
        retriever: str = "lightning_logs/dqpilot/retriever/checkpoints/last.ckpt",
        data_dir: str = "data/synthcities",
        splits: list[str] | None = None,
        answerer: Answerer | None = None,
        unanswerable: list[str] | None = None,
        clamp: bool = True,
        failure_value: float = -1.5,
        batch_size: int = 256,
        max_consecutive_answer_failures: int | None = 20,
        gain: str = "prg",
    ) -> None:
        if gain not in ("prg", "log_rank"):
            raise ValueError(f"gain must be 'prg' or 'log_rank', got {gain!r}")
        if gain == "log_rank" and not clamp:
            raise ValueError("gain='log_rank' is bounded in [-1, 1] already; clamp=False applies to 'prg' only")
        if not failure_value < -1.0:
            raise ValueError(f"failure_value must be below -1 (the lowest PRG a question can earn), got {failure_value}")
        if max_consecutive_answer_failures is not None and max_consecutive_answer_failures < 1:
            raise ValueError(f"max_consecutive_answer_failures must be >= 1 or None, got {max_consecutive_answer_failures}")
        self.retriever_path = retriever
        self.data_dir = data_dir
        self.splits = list(splits) if splits is not None else ["train", "val"]
        self.answerer = answerer if answerer is not None else OracleAnswerer()
        self.unanswerable = {a.strip().lower() for a in (unanswerable if unanswerable is not None else [DONT_KNOW, DONT_REMEMBER])}
        self.clamp = clamp
        self.failure_value = float(failure_value)
        self.batch_size = batch_size
        self.max_consecutive_answer_failures = max_consecutive_answer_failures
        self.gain = gain
        self._failure_streak: Counter = Counter()  # error kinds of the failed answers since the last answer
        self._retriever: TextRetriever | None = None
        self._gallery: Gallery | None = None
        self.last_stats: Counter = Counter()

    @classmethod
    def from_parts(cls, retriever: TextRetriever, gallery: Gallery, answerer: Answerer | None = None, **kwargs: Any) -> "RetrievalGainReward":
        """A reward over an already loaded retriever and encoded gallery (tests, benchmarks)."""
        self = cls(retriever="", answerer=answerer, **kwargs)
        self._retriever, self._gallery = retriever, gallery
        return self

    def profile(self) -> RewardProfile:
        """PRG in [-1, 1] (no lower bound unclamped) for a well-formed question; ``failure_value`` for every failure."""
        return RewardProfile(well_formed=(-1.0 if self.clamp else float("-inf"), 1.0),
                             failures={k: self.failure_value for k in FAILURE_KINDS})

    def _load(self) -> tuple[TextRetriever, Gallery]:
        if self._retriever is None or self._gallery is None:
            if not Path(self.retriever_path).is_file():
                raise FileNotFoundError(
                    f"RetrievalGainReward: no retriever checkpoint at {self.retriever_path}; train one with "
                    "`python -m dlgpr fit --config configs/cmpl.yaml --config configs/overrides/dqpilot_retriever.yaml`"
                )
            device = "cuda" if torch.cuda.is_available() else "cpu"
            module = load_retriever(self.retriever_path, map_location=device)
            self._gallery = encode_gallery(module, self.data_dir, self.splits, batch_size=self.batch_size)
            self._retriever = ModuleTextRetriever(module, batch_size=self.batch_size)
        return self._retriever, self._gallery

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **batch: Any) -> list[float]:
        """Needs ``batch["target"]`` (Target), ``batch["initial_description"]`` and ``batch["history"]``
        (the answered turns before this one), one entry per completion."""
        missing = [k for k in ("target", "initial_description", "history") if k not in batch]
        if missing:
            raise KeyError(f"RetrievalGainReward needs batch fields {missing} (one entry per completion)")
        target: Sequence[Target] = batch["target"]
        initial_description: Sequence[str] = batch["initial_description"]
        history: Sequence[Sequence[Turn]] = batch["history"]
        retriever, gallery = self._load()
        n = len(completions)
        stats: Counter = Counter()
        questions = [parse_question(c) for c in completions]
        asking = [i for i, q in enumerate(questions) if q.ok]
        stats["format_failures"] = n - len(asking)
        requests = [AnswerRequest(query_id=i, round=len(history[i]) + 1, question=questions[i].text, target=target[i],
                                  history=tuple(history[i])) for i in asking]
        answers = self.answerer.answer(requests) if requests else []
        informative = []
        new_turn: dict[int, Turn] = {}
        values = [self.failure_value] * n  # failed replies keep it
        for i, a in zip(asking, answers):
            text = " ".join(a.text.split()) if a.ok else ""
            if not a.ok or not text:
                stats["answer_failures"] += 1
                self._answer_failed(a.error or EMPTY_ANSWER)
                continue
            self._failure_streak.clear()
            if text.lower() in self.unanswerable:
                stats[UNANSWERABLE] += 1
            elif gallery.num_positives(target[i].place_id) == 0:
                stats["target_not_in_gallery"] += 1
                values[i] = 0.0  # the data's fault, the same for every sample of the prompt
            else:
                informative.append(i)
                new_turn[i] = Turn(question=questions[i].text, answer=text)
        if informative:
            before = [compose_query(initial_description[i], history[i]) for i in informative]
            after = [compose_query(initial_description[i], [*history[i], new_turn[i]]) for i in informative]
            emb = retriever.embed_texts(before + after)  # [2K, D]: one batched encode
            places = [target[i].place_id for i in informative] * 2
            ranks, num_pos = gallery_positive_ranks(emb, gallery, places)  # [2K, P], [2K]
            k = len(informative)
            gains = {"prg": prg(ranks[:k], ranks[k:], num_pos[:k], clamp=self.clamp),  # [K]
                     "log_rank": log_rank_gain(ranks[:k], ranks[k:], len(gallery))}  # [K]
            # both measures of the answered questions, whichever is the reward, so runs on either compare
            stats["mean_prg"] = float(gains["prg"].mean())
            stats["mean_log_rank_gain"] = float(gains["log_rank"].mean())
            gain = gains[self.gain]
            for j, i in enumerate(informative):
                values[i] = float(gain[j])
        stats["answered"] = len(informative)
        self.last_stats = stats
        return values

    def _answer_failed(self, kind: str) -> None:
        self._failure_streak[kind] += 1
        n, limit = sum(self._failure_streak.values()), self.max_consecutive_answer_failures
        if limit is not None and n >= limit:
            kinds = ", ".join(f"{k} x{v}" for k, v in self._failure_streak.most_common())
            raise AnswererFailing(
                f"the simulated user failed {n} answers in a row ({kinds}) at {self.answerer!r}: is the server up and serving "
                f"this model name? Stopping, as every reward would be the failure value (max_consecutive_answer_failures={limit})"
            )
