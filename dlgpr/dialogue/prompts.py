"""The simulated user's prompt, and the version of the dialogue prompts (results cite it).

The questioner's prompt is part of the questioner model (:mod:`dlgpr.models.prompting`); both
use one neutral message structure: a list of ``{"role": ..., "content": [parts]}`` where a part
is ``{"type": "text", "text": str}`` or ``{"type": "image", "image": PIL.Image}``. The
OpenAI-compatible client turns image parts into ``image_url`` data URLs; Hugging Face processors
(Qwen2.5-VL) take them as they are; a text-only model gets the candidates' descriptions instead
of their images.
"""

from __future__ import annotations

from typing import Any

from dlgpr.data.turns import AnswerRequest

PROMPT_VERSION = "questioner-v1/answerer-v1"

ANSWERER_SYSTEM = (
    "You are a person looking for a place you remember. The description below is what you know "
    "about it. Answer the question in one short natural sentence using only that description. "
    "If the description does not say, answer that you don't know. Never mention cars or people."
)


def answerer_messages(req: AnswerRequest) -> list[dict[str, Any]]:
    text = f"What you remember about the place: {req.target.description}\n\nQuestion: {req.question}\nAnswer:"
    return [
        {"role": "system", "content": [{"type": "text", "text": ANSWERER_SYSTEM}]},
        {"role": "user", "content": [{"type": "text", "text": text}]},
    ]
