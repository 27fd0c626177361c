"""PlugIR's language-model steps played by a chat model (OpenAI-compatible API or local HF model).

``ChatPlugIRModel`` implements ``dlgpr.dialogue.questioners.PlugIRLanguageModel`` with one chat
call per step. It takes any ``complete(messages) -> str | None`` function, so the same prompts
run on an API (``ChatClient.complete``) or on a local model. A failed or unusable reply never
stops the dialogue: each step falls back to the safe choice (no summary, no proposal, "not yet
answered", no hypothetical answer, the plain concatenation as the query).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from dlgpr.data.turns import Candidate, Turn

Complete = Callable[[list[dict[str, Any]]], "str | None"]

SUMMARIZE = "You summarise a group of street-view places: in one sentence, say the static visible features they share."
PROPOSE = (
    "You propose questions for finding a street-view place: given what the person said and summaries of groups of "
    "candidate places, write short questions about static visible features whose answers tell the groups apart, one "
    "question per line, nothing else."
)
ANSWERED = "You check whether a question is already answered by a description and a dialogue. Reply with yes or no only."
HYPOTHETICAL = "You imagine the answer a person would give if the place were one of a group: answer the question in one short sentence from the group summary."
REWRITE = "You rewrite a place description and the answers of a dialogue into one description of the place, keeping every fact."


def _msg(system: str, user: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": [{"type": "text", "text": system}]}, {"role": "user", "content": [{"type": "text", "text": user}]}]


def _dialogue(history: Sequence[Turn]) -> str:
    turns = [t for t in history if not t.failed]
    return "\n".join(f"Q: {t.question}\nA: {t.answer}" for t in turns) or "(none)"


class ChatPlugIRModel:
    """Args: complete: one chat completion, ``None`` on failure; max_description_words: per candidate."""

    def __init__(self, complete: Complete, max_description_words: int = 60) -> None:
        self.complete = complete
        self.max_description_words = max_description_words
        self.failures = 0

    def _ask(self, system: str, user: str) -> str | None:
        reply = self.complete(_msg(system, user))
        if reply is None or not reply.strip():
            self.failures += 1
            return None
        return reply.strip()

    def summarize(self, cluster: Sequence[Candidate]) -> str:
        descs = "\n".join(f"- {' '.join(c.description.split()[: self.max_description_words])}" for c in cluster)
        return self._ask(SUMMARIZE, f"Places:\n{descs}") or ""

    def propose_questions(self, description: str, history: Sequence[Turn], summaries: Sequence[str], n: int) -> list[str]:
        groups = "\n".join(f"Group {i + 1}: {s}" for i, s in enumerate(summaries))
        reply = self._ask(PROPOSE, f"Description: {description}\nDialogue:\n{_dialogue(history)}\n{groups}\nWrite {n} questions.")
        if reply is None:
            return []
        lines = [re.sub(r"^\s*(?:\d+[.)]|[-*])\s*", "", line).strip() for line in reply.splitlines()]
        return [line for line in lines if line.endswith("?")][:n]

    def is_answered(self, description: str, history: Sequence[Turn], question: str) -> bool:
        reply = self._ask(ANSWERED, f"Description: {description}\nDialogue:\n{_dialogue(history)}\nQuestion: {question}")
        return reply is not None and reply.lower().startswith("yes")

    def hypothetical_answer(self, question: str, cluster: Sequence[Candidate], summary: str) -> str:
        return self._ask(HYPOTHETICAL, f"Group summary: {summary}\nQuestion: {question}") or ""

    def reformulate(self, description: str, history: Sequence[Turn]) -> str:
        fallback = " ".join([description, *(t.answer for t in history if not t.failed)])
        if not any(not t.failed for t in history):
            return description
        return self._ask(REWRITE, f"Description: {description}\nDialogue:\n{_dialogue(history)}") or fallback
