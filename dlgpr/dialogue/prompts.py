"""Prompts of the model-backed questioners and answerers (versioned: results cite the version).

Messages use one neutral structure that both back ends understand: a list of
``{"role": ..., "content": [parts]}`` where a part is ``{"type": "text", "text": str}`` or
``{"type": "image", "image": PIL.Image}``. The OpenAI-compatible client turns image parts into
``image_url`` data URLs; Hugging Face processors (Qwen2.5-VL) take them as they are; a text-only
model gets the candidates' descriptions instead of their images.
"""

from __future__ import annotations

from typing import Any

from dlgpr.dialogue.types import AnswerRequest, QuestionRequest

PROMPT_VERSION = "questioner-v1/answerer-v1"

QUESTIONER_SYSTEM = (
    "You help a person find a street-view place they are describing. You see the person's "
    "description, the dialogue so far and the top candidate places a retrieval system found. "
    "Ask ONE short question about a static, visible feature of the place (facade, shop sign, "
    "door, awning, windows, roof, street furniture, house number) whose answer best tells the "
    "candidates apart. Never ask about cars or people, and never repeat a question. First reason "
    "in four steps inside <think></think>: 1) analyze the history, 2) validate the candidates "
    "against it, 3) find the differentiating features, 4) choose a strategy. Then write the "
    "question inside <question></question>. Output nothing else."
)

ANSWERER_SYSTEM = (
    "You are a person looking for a place you remember. The description below is what you know "
    "about it. Answer the question in one short natural sentence using only that description. "
    "If the description does not say, answer that you don't know. Never mention cars or people."
)


def _truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def history_text(req: QuestionRequest | AnswerRequest) -> str:
    """The answered turns as ``Q1: ..\nA1: ..`` lines (failed turns left out)."""
    turns = [t for t in req.history if not t.failed]
    if not turns:
        return "(no questions asked yet)"
    return "\n".join(f"Q{i + 1}: {t.question}\nA{i + 1}: {t.answer}" for i, t in enumerate(turns))


def questioner_messages(req: QuestionRequest, with_images: bool = False, max_description_words: int = 80) -> list[dict[str, Any]]:
    """Chat messages asking for the next question of ``req``.

    With ``with_images`` each candidate is shown as its image (vision-language models);
    otherwise as its description, cut to ``max_description_words`` words (text-only models).
    """
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": f"Description: {req.initial_description}\n\nDialogue so far:\n{history_text(req)}\n\nTop candidates:"}
    ]
    for i, cand in enumerate(req.candidates):
        if with_images and cand.image is not None:
            parts.append({"type": "text", "text": f"\nCandidate {i + 1}:"})
            parts.append({"type": "image", "image": cand.image()})
        else:
            parts.append({"type": "text", "text": f"\nCandidate {i + 1}: {_truncate_words(cand.description, max_description_words)}"})
    parts.append({"type": "text", "text": "\n\nWrite your reasoning and your question."})
    return [{"role": "system", "content": [{"type": "text", "text": QUESTIONER_SYSTEM}]}, {"role": "user", "content": parts}]


def answerer_messages(req: AnswerRequest) -> list[dict[str, Any]]:
    text = f"What you remember about the place: {req.target.description}\n\nQuestion: {req.question}\nAnswer:"
    return [
        {"role": "system", "content": [{"type": "text", "text": ANSWERER_SYSTEM}]},
        {"role": "user", "content": [{"type": "text", "text": text}]},
    ]


def flatten_text(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages with text-only content strings (for tokenizers whose chat template wants strings)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(p["text"] for p in content if p.get("type") == "text")
        out.append({"role": m["role"], "content": content})
    return out
