"""Stage 3 teacher of the DQ-Cities builder: an LLM over the candidates' evidence base (DlgPR sec. 3.2).

The teacher sees, for each candidate of the compact set (target view, positive view, hard
negatives), its *evidence base*: the fine-grained description and the grounded regions of its
image (phrase + box), optionally the image itself, and writes the four-step chain of thought
(history analysis, candidate validation, differentiating features, question strategy) and one
question, in the DQ-Pilot format ``<think>..</think><question>..</question>``. Like DQ-Pilot at
inference it is not told which candidate is the target: the question must split the set.

It is a :class:`~dlgpr.dialogue.types.Questioner`, so the dialogue-corpus code
(:mod:`dlgpr.pipeline.corpus`) runs it exactly as it runs the oracle teacher on SynthCities.
"""

from __future__ import annotations

from typing import Any, Iterable

from dlgpr.data.schema import PlaceRecord, Region
from dlgpr.dialogue.api import APIQuestioner, ChatAPIConfig
from dlgpr.data.turns import Question, QuestionRequest
from dlgpr.models.prompting import history_text
from dlgpr.pipeline.text import PromptFile


def evidence_text(description: str, regions: Iterable[Region], max_regions: int) -> str:
    """One candidate's evidence base as the teacher reads it."""
    lines = [f"  description: {description}"]
    regions = list(regions)[:max_regions]
    if regions:
        lines.append("  regions:")
        lines += [f"    - {r.phrase} [{', '.join(f'{v:.2f}' for v in r.box)}]" for r in regions]
    return "\n".join(lines)


class EvidenceTeacherQuestioner(APIQuestioner):
    """The API teacher of the real-data corpus: candidates shown with descriptions, regions (and images)."""

    def __init__(self, config: ChatAPIConfig, prompt: str = "teacher_v1", max_regions: int = 12) -> None:
        super().__init__(config)
        self.prompt = PromptFile.load(prompt)
        self.max_regions = max_regions
        self._regions: dict[str, tuple[Region, ...]] = {}

    def __repr__(self) -> str:
        return f"EvidenceTeacherQuestioner(model={self.config.model!r}, prompt={self.prompt.version!r})"

    def bind_records(self, records: Iterable[PlaceRecord]) -> None:
        """The regions of every gallery image the candidates may come from (the corpus builder calls it)."""
        self._regions.update({r.key: r.regions for r in records})

    def messages(self, req: QuestionRequest) -> list[dict[str, Any]]:
        blocks = [f"Candidate {i + 1}:\n" + evidence_text(c.description, self._regions.get(c.key, ()), self.max_regions)
                  for i, c in enumerate(req.candidates)]
        user = self.prompt.user.format(description=req.initial_description, history=history_text(req), candidates="\n".join(blocks))
        parts: list[dict[str, Any]] = [{"type": "text", "text": user}]
        if self.config.send_images:
            for i, c in enumerate(req.candidates):
                if c.image is not None:
                    parts += [{"type": "text", "text": f"\nImage of candidate {i + 1}:"}, {"type": "image", "image": c.image()}]
        return [{"role": "system", "content": [{"type": "text", "text": self.prompt.system}]}, {"role": "user", "content": parts}]

    def ask(self, requests: list[QuestionRequest]) -> list[Question]:
        return [self._question(r) for r in self.client.complete_many([self.messages(req) for req in requests])]


__all__ = ["EvidenceTeacherQuestioner", "evidence_text"]
