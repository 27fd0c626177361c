"""Rule-based questioners: random, the oracle teacher, and the PlugIR procedure.

* ``RandomQuestioner`` asks about a random attribute slot not asked before (the floor).
* ``OracleTeacherQuestioner`` reads the ground-truth attributes of the top
  candidates, keeps those consistent with what the user said, and asks about the unsettled slot
  that splits them best (largest entropy of its values over the candidate places, times a
  visibility weight), with a four-step chain of thought in the DQ-Pilot output format. It is the
  teacher of the SFT corpus.
* ``PlugIRQuestioner`` follows PlugIR (Lee et al. 2024): cluster the candidates, summarise each
  cluster, let a language model propose questions, drop those already answered, and keep the one
  whose hypothetical answers move the retrieval distribution most (expected KL divergence between
  the candidate softmaxes before and after); the language model also rewrites the dialogue into a
  single query. The language model is pluggable (``PlugIRLanguageModel``); ``AttributePlugIRModel``
  plays it from ground-truth attributes, an API model can play it on real data.

The rule-based pieces reach a world's attributes through an attribute schema
(:class:`~dlgpr.dialogue.slots.AttributeSchema`; SynthCities' when none is given).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F

from dlgpr.dialogue.slots import AttributeSchema, resolve_schema
from dlgpr.data.turns import Candidate, Question, QuestionRequest, Turn
from dlgpr.models.reply_format import format_question
from dlgpr.retrieval import TextRetriever


def asked_slots(history: Sequence[Turn], schema: AttributeSchema) -> set[str]:
    """Slots settled by answered turns (a failed turn settles nothing)."""
    return {s for t in history if not t.failed for s in schema.question_slots(t.question)}


def distinct_places(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The best-ranked candidate of each place, in rank order."""
    seen: set[int] = set()
    out = []
    for c in candidates:
        if c.place_id not in seen:
            seen.add(c.place_id)
            out.append(c)
    return out


class RandomQuestioner:
    """Asks about a uniformly random slot that has not been asked yet (seeded per query and round).

    ``slots``: the slots it may ask about (every slot of ``schema`` when None).
    """

    def __init__(self, seed: int = 0, slots: Sequence[str] | None = None, schema: AttributeSchema | None = None) -> None:
        self.seed = seed
        self.schema = resolve_schema(schema)
        self.slots = tuple(slots) if slots is not None else self.schema.slots

    def ask(self, requests: list[QuestionRequest]) -> list[Question]:
        out = []
        for req in requests:
            done = asked_slots(req.history, self.schema)
            options = [s for s in self.slots if s not in done] or list(self.slots)
            slot = random.Random(f"random-questioner/{self.seed}/{req.query_id}/{req.round}").choice(options)
            q = self.schema.question(slot)
            out.append(Question(text=q, raw=format_question("", q)))
        return out


def _consistent(attrs: dict[str, Any], history: Sequence[Turn], schema: AttributeSchema) -> bool:
    """Whether a place agrees with every answered turn (the oracle user's sentences are fixed)."""
    for t in history:
        if t.failed:
            continue
        for s in schema.question_slots(t.question):
            if s in attrs and schema.answer_sentence(s, attrs[s], attrs) not in t.answer:
                return False
    return True


def _entropy(values: Sequence[Any]) -> float:
    counts = Counter(values)
    n = len(values)
    return -sum(c / n * math.log(c / n) for c in counts.values())


def _slot_name(slot: str) -> str:
    return slot.replace("_", " ")


@dataclass
class TeacherConfig:
    """How the oracle teacher weighs slots."""

    slot_weights: dict[str, float] | None = None
    """Multiplier of a slot's split score (1 for a slot not named); None takes the schema's
    ``slot_weights``. Features hard to see in a street view (a small house-number plate)
    separate candidates on paper but help a retriever little."""
    max_candidates: int = 30
    """Candidates the teacher studies (the top of the list it is shown). Early in a dialogue
    the target is often below the top 10, so a deeper look splits more useful slots."""


class OracleTeacherQuestioner:
    """The oracle teacher: asks about the slot that best splits the consistent candidates.

    ``schema``: the world's attribute slots (SynthCities' when None).
    """

    def __init__(self, config: TeacherConfig | None = None, schema: AttributeSchema | None = None) -> None:
        self.config = config or TeacherConfig()
        self.schema = resolve_schema(schema)
        weights = self.config.slot_weights
        self.slot_weights: dict[str, float] = dict(self.schema.slot_weights if weights is None else weights)

    def choose(self, req: QuestionRequest) -> tuple[str, str]:
        """``(slot, reasoning)`` for one request."""
        places = distinct_places(req.candidates[: self.config.max_candidates])
        places = [p for p in places if p.attributes]
        slots = self.schema.slots
        done = asked_slots(req.history, self.schema)
        consistent = [p for p in places if _consistent(p.attributes, req.history, self.schema)]
        pool = consistent or places
        scores: dict[str, float] = {}
        for slot in slots:
            if slot in done or not pool or slot not in pool[0].attributes:
                continue
            scores[slot] = _entropy([p.attributes[slot] for p in pool]) * self.slot_weights.get(slot, 1.0)
        if not scores:  # every slot settled: ask the most telling one again
            scores = {s: self.slot_weights.get(s, 1.0) for s in slots}
        slot = max(scores, key=lambda s: (scores[s], -slots.index(s)))
        return slot, self._reasoning(req, places, consistent, scores, slot)

    @staticmethod
    def _reasoning(req: QuestionRequest, places: list[Candidate], consistent: list[Candidate], scores: dict[str, float], slot: str) -> str:
        answered = [t for t in req.history if not t.failed]
        if answered:
            known = " ".join(t.answer for t in answered)
            step1 = f"1. History: the user described \"{req.initial_description}\" and told me: {known}"
        else:
            step1 = f"1. History: only the initial description \"{req.initial_description}\"; nothing asked yet."
        step2 = f"2. Candidates: {len(places)} distinct places among the top results; {len(consistent)} agree with everything the user said."
        ranked = sorted(scores, key=lambda s: -scores[s])[:3]
        pool = consistent or places
        parts = []
        for s in ranked:
            values = Counter(str(p.attributes.get(s)) for p in pool)
            parts.append(f"{_slot_name(s)} ({', '.join(f'{v} x{c}' for v, c in values.most_common(4))})")
        step3 = "3. Differentiators: " + "; ".join(parts) + "."
        step4 = f"4. Strategy: ask about the {_slot_name(slot)}, which splits the remaining candidates most evenly."
        return "\n".join((step1, step2, step3, step4))

    def ask(self, requests: list[QuestionRequest]) -> list[Question]:
        out = []
        for req in requests:
            slot, think = self.choose(req)
            q = self.schema.question(slot)
            out.append(Question(text=q, think=think, raw=format_question(think, q)))
        return out


# ---- PlugIR -------------------------------------------------------------------------------------


class PlugIRLanguageModel(Protocol):
    """The language-model steps of PlugIR."""

    def summarize(self, cluster: Sequence[Candidate]) -> str: ...

    def propose_questions(self, description: str, history: Sequence[Turn], summaries: Sequence[str], n: int) -> list[str]: ...

    def is_answered(self, description: str, history: Sequence[Turn], question: str) -> bool: ...

    def hypothetical_answer(self, question: str, cluster: Sequence[Candidate], summary: str) -> str: ...

    def reformulate(self, description: str, history: Sequence[Turn]) -> str: ...


class AttributePlugIRModel:
    """Plays PlugIR's language model from ground-truth attributes (no LLM needed).

    Summaries give each slot's majority value in the cluster; proposals are the questions of the
    slots whose majority values differ between clusters (most disagreeing first); a question is
    answered when its slot was asked or its majority value is already in the description; the
    hypothetical answer is the user's sentence for the cluster's majority value; the reformulation
    concatenates the description and the answers (as a rule-based rewriter would). ``schema``:
    the world's attribute slots (SynthCities' when None).
    """

    def __init__(self, schema: AttributeSchema | None = None) -> None:
        self.schema = resolve_schema(schema)

    def _majority(self, cluster: Sequence[Candidate]) -> dict[str, Any]:
        out = {}
        for slot in self.schema.slots:
            values = [c.attributes[slot] for c in cluster if slot in c.attributes]
            if values:
                out[slot] = Counter(map(str, values)).most_common(1)[0][0]
                out[slot] = next(v for v in values if str(v) == out[slot])
        return out

    def summarize(self, cluster: Sequence[Candidate]) -> str:
        maj = self._majority(cluster)
        return "; ".join(f"{_slot_name(s)}: {v}" for s, v in maj.items())

    def propose_questions(self, description: str, history: Sequence[Turn], summaries: Sequence[str], n: int) -> list[str]:
        per_cluster = [dict(item.split(": ", 1) for item in s.split("; ") if ": " in item) for s in summaries]
        disagreement = []
        slots = self.schema.slots
        for slot in slots:
            values = [c.get(_slot_name(slot)) for c in per_cluster if _slot_name(slot) in c]
            if len(values) > 1:
                disagreement.append((len(set(values)), -slots.index(slot), slot))
        disagreement.sort(reverse=True)
        return [self.schema.question(s) for k, _, s in disagreement if k > 1][:n]

    def is_answered(self, description: str, history: Sequence[Turn], question: str) -> bool:
        slots = self.schema.question_slots(question)
        return not slots or any(s in asked_slots(history, self.schema) for s in slots)

    def hypothetical_answer(self, question: str, cluster: Sequence[Candidate], summary: str) -> str:
        maj = self._majority(cluster)
        return " ".join(self.schema.answer_sentence(s, maj[s], maj) for s in self.schema.question_slots(question) if s in maj)

    def reformulate(self, description: str, history: Sequence[Turn]) -> str:
        return " ".join([description, *(t.answer for t in history if not t.failed)])


def kmeans(x: torch.Tensor, k: int, iters: int = 10, seed: int = 0) -> torch.Tensor:
    """Cluster ids ``[N]`` of ``x`` ``[N, D]`` by cosine k-means with farthest-first seeding."""
    n = x.shape[0]
    k = min(k, n)
    x = F.normalize(x.float(), dim=1)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    centers = x[first : first + 1]  # [1, D]
    for _ in range(1, k):
        far = int((x @ centers.T).max(dim=1).values.argmin())  # least similar to every centre so far
        centers = torch.cat([centers, x[far : far + 1]])
    assign = (x @ centers.T).argmax(dim=1)  # [N]
    for _ in range(iters):
        onehot = F.one_hot(assign, k).float()  # [N, k]
        sums = onehot.T @ x  # [k, D]
        centers = torch.where(onehot.sum(0)[:, None] > 0, F.normalize(sums, dim=1), centers)
        new = (x @ centers.T).argmax(dim=1)  # [N]
        if torch.equal(new, assign):
            break
        assign = new
    return assign


@dataclass
class PlugIRConfig:
    num_clusters: int = 3
    """k of the k-means over the candidates' image embeddings."""
    num_questions: int = 5
    """Questions the language model proposes per round."""
    temperature: float = 0.05
    """Softmax temperature of the retrieval distribution over candidates."""
    seed: int = 0


class PlugIRQuestioner:
    """PlugIR's question selection by expected KL divergence of the retrieval distribution.

    ``schema``: the attribute slots of the default language model and of the random fallback
    when no question is left (SynthCities' when None).
    """

    def __init__(
        self,
        retriever: TextRetriever | None = None,
        lm: PlugIRLanguageModel | None = None,
        config: PlugIRConfig | None = None,
        schema: AttributeSchema | None = None,
    ) -> None:
        self.retriever = retriever
        self.schema = resolve_schema(schema)
        self.lm = lm if lm is not None else AttributePlugIRModel(self.schema)
        self.config = config or PlugIRConfig()

    def bind_retriever(self, retriever: TextRetriever) -> None:
        """Set the retriever whose distribution the selection measures (evaluation code calls it)."""
        self.retriever = retriever

    def compose_query(self, initial_description: str, history: Sequence[Turn]) -> str:
        """PlugIR retrieves with the language model's rewrite of the whole dialogue."""
        return self.lm.reformulate(initial_description, history)

    def ask(self, requests: list[QuestionRequest]) -> list[Question]:
        if self.retriever is None:
            raise RuntimeError("PlugIRQuestioner needs a retriever: pass it or call bind_retriever()")
        plans = []
        texts: list[str] = []
        for req in requests:
            plan = self._plan(req)
            plan["text_offset"] = len(texts)
            texts += plan["texts"]
            plans.append(plan)
        emb = self.retriever.embed_texts(texts) if texts else torch.zeros(0, 1)  # one batched encode for the round
        out = []
        for req, plan in zip(requests, plans):
            out.append(self._select(req, plan, emb[plan["text_offset"] : plan["text_offset"] + len(plan["texts"])]))
        return out

    def _plan(self, req: QuestionRequest) -> dict[str, Any]:
        cands = [c for c in req.candidates if c.embedding is not None]
        if len(cands) < 2:
            return {"questions": [], "texts": [], "cands": cands}
        emb = torch.stack([c.embedding for c in cands])  # [C, D]
        assign = kmeans(emb, self.config.num_clusters, seed=self.config.seed)
        clusters = [[c for c, a in zip(cands, assign.tolist()) if a == j] for j in range(int(assign.max()) + 1)]
        clusters = [c for c in clusters if c]
        summaries = [self.lm.summarize(c) for c in clusters]
        proposed = self.lm.propose_questions(req.initial_description, req.history, summaries, self.config.num_questions)
        questions = [q for q in proposed if not self.lm.is_answered(req.initial_description, req.history, q)]
        base = self.compose_query(req.initial_description, req.history)
        texts = [base]
        hyp_index = []
        for q in questions:
            idx = []
            for cluster, summary in zip(clusters, summaries):
                answer = self.lm.hypothetical_answer(q, cluster, summary)
                idx.append((len(texts), len(cluster)))
                texts.append(f"{base} {answer}".strip())
            hyp_index.append(idx)
        return {"questions": questions, "texts": texts, "cands": cands, "hyp": hyp_index}

    def _select(self, req: QuestionRequest, plan: dict[str, Any], emb: torch.Tensor) -> Question:
        if not plan["questions"]:
            fallback = RandomQuestioner(self.config.seed, schema=self.schema).ask([req])[0]
            return Question(text=fallback.text, think="PlugIR: no informative question left; random slot.", raw=fallback.raw)
        gallery = torch.stack([c.embedding for c in plan["cands"]]).float()  # [C, D]
        logp = F.log_softmax(emb @ gallery.T / self.config.temperature, dim=1)  # [T, C]
        before = logp[0]
        scores = []
        for idx in plan["hyp"]:
            weights = torch.tensor([w for _, w in idx], dtype=torch.float)
            kls = torch.stack([F.kl_div(before, logp[i], log_target=True, reduction="sum") for i, _ in idx])  # KL(after || before)
            scores.append(float((weights / weights.sum() * kls).sum()))
        best = max(range(len(scores)), key=lambda i: scores[i])
        q = plan["questions"][best]
        think = f"PlugIR: {len(plan['questions'])} candidate questions; expected KL {scores[best]:.3f} for the chosen one."
        return Question(text=q, think=think, raw=format_question(think, q))
