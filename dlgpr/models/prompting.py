"""The questioner's prompt: its chat messages, their encoding into model inputs, and generation.

One path from a :class:`~dlgpr.data.turns.QuestionRequest` to new tokens, shared by the
dialogue-loop questioner (``dlgpr.dialogue.hf.HFQuestioner``), the GRPO rollout
(``dlgpr.modules.dqpilot.GRPOModule``) and the SFT collator (``datamodules.dialogue``), so
training prompts are exactly the prompts the policy generates from:

* :func:`questioner_messages` builds chat messages in one neutral structure: a list of
  ``{"role": ..., "content": [parts]}`` where a part is ``{"type": "text", "text": str}`` or
  ``{"type": "image", "image": PIL.Image}`` (candidates as images for a vision-language model,
  as their descriptions otherwise);
* :class:`PromptEncoder` renders them with the chat template (generation prompt added),
  tokenizes them left-padded, turns image parts into the processor's image tensors and cuts
  prompts longer than ``max_prompt_tokens`` on the left without cutting into image tokens;
* :func:`generate` runs ``model.generate`` on an encoded batch in eval mode without gradients.

Shapes of one batch (B prompts, left-padded to length L, N new tokens): ``input_ids`` /
``attention_mask`` [B, L]; for Qwen2.5-VL also ``pixel_values`` [sum of patches over the batch's
images, C * T * P * P], ``image_grid_thw`` [images, 3] and ``mm_token_type_ids`` [B, L];
:func:`generate` returns [B * num_return_sequences, L + N'] with N' <= N.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import BatchEncoding, BatchFeature, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

if TYPE_CHECKING:
    from dlgpr.data.turns import QuestionRequest

log = logging.getLogger("dlgpr.models")

Messages = list[dict[str, Any]]
"""One prompt: chat messages in the neutral structure of the module docstring."""

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

GEO_SYSTEM = (
    "You locate street-view photos. Name the visible clues that tell where the photo was taken "
    "inside <think></think>, then give the place inside <answer>city, country</answer>."
)
GEO_QUESTION = "Where was this photo taken?"
CAPTION_QUESTION = "Describe this street view."
"""The image policy's two tasks: GLOBE's geo-localization prompt, and the description task it is pretrained on."""


def geo_messages(image: Any, question: str = GEO_QUESTION) -> Messages:
    """Chat messages asking where ``image`` was taken (GLOBE's format), or another question about it.

    One prompt for the image policy's SFT, GRPO rollouts and evaluation; a text-only tokenizer
    drops the image part (:func:`flatten_text`) and the policy reads the image as its prefix.
    """
    return [{"role": "system", "content": [{"type": "text", "text": GEO_SYSTEM}]},
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""Used for tokenizers without a chat template (base models): ``System: ..\\n\\nUser: ..\\n\\nAssistant:``."""

SHOW_IMAGES = ("auto", "always", "never")
TOKEN_ALIGNED_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
"""Encoder outputs with one entry per prompt token, cut together when a prompt is truncated."""


@dataclass
class PromptConfig:
    """How the questioner's prompt is built: one config for the policy and the data it trains on."""

    show_images: str = "auto"
    """Show candidates as images: ``auto`` (if the policy is a vision-language model), ``always`` or ``never`` (descriptions)."""
    max_description_words: int = 60
    """Candidate descriptions are cut to this many words when shown as text."""
    max_prompt_tokens: int = 2048
    """Longer prompts are cut on the left to this many tokens."""

    def __post_init__(self) -> None:
        if self.show_images not in SHOW_IMAGES:
            raise ValueError(f"prompt.show_images must be one of {SHOW_IMAGES}, got {self.show_images!r}")
        for name in ("max_description_words", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"prompt.{name} must be >= 1, got {getattr(self, name)}")


def is_vlm(processor: Any) -> bool:
    """Whether a loaded policy is a vision-language model: its processor carries an image processor
    (a causal LM comes with a bare tokenizer)."""
    return isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None


def tokenizer_of(processor: Any) -> PreTrainedTokenizerBase:
    """The tokenizer of a processor (itself for a causal LM's tokenizer)."""
    return processor.tokenizer if isinstance(processor, ProcessorMixin) else processor


def _truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def history_text(req: Any) -> str:
    """The answered turns of a request's ``history`` as ``Q1: ..\nA1: ..`` lines (failed turns left out)."""
    turns = [t for t in req.history if not t.failed]
    if not turns:
        return "(no questions asked yet)"
    return "\n".join(f"Q{i + 1}: {t.question}\nA{i + 1}: {t.answer}" for i, t in enumerate(turns))


def questioner_messages(req: QuestionRequest, with_images: bool = False, max_description_words: int = 80) -> Messages:
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


def flatten_text(messages: Messages) -> list[dict[str, str]]:
    """Messages with text-only content strings (for tokenizers whose chat template wants strings)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(p["text"] for p in content if p.get("type") == "text")
        out.append({"role": m["role"], "content": content})
    return out


def message_images(messages: Messages) -> list[Any]:
    """The images of one prompt's messages, in order (how many the prompt actually shows)."""
    return [part["image"] for msg in messages for part in msg["content"] if part["type"] == "image"]


class PromptEncoder:
    """Question requests -> chat messages -> model inputs, for one policy's tokenizer or processor.

    ``with_images`` is resolved from ``prompt.show_images`` and whether the processor is a
    vision-language one; prompts cut to ``prompt.max_prompt_tokens`` are counted in
    :attr:`num_truncated`.
    """

    def __init__(self, processor: PreTrainedTokenizerBase | ProcessorMixin, prompt: PromptConfig) -> None:
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.prompt = prompt
        self.is_vlm = is_vlm(processor)
        if prompt.show_images == "always" and not self.is_vlm:
            raise ValueError("show_images='always' needs a vision-language model with an image processor")
        if self.is_vlm and processor.chat_template is None:
            # image placeholders are model-specific: without the processor's template there is no
            # way to tell where the vision features go
            raise ValueError("the vision-language processor has no chat template to place image tokens with")
        self.with_images = self.is_vlm and prompt.show_images != "never"
        self.num_truncated = 0

    def messages(self, request: QuestionRequest) -> Messages:
        """The chat messages of one request, candidates shown as this encoder shows them."""
        return questioner_messages(request, with_images=self.with_images, max_description_words=self.prompt.max_description_words)

    def encode(self, prompts: list[Messages], model: Any = None) -> BatchEncoding | BatchFeature:
        """:meth:`__call__`, plus ``pixel_values`` [B, 3, S, S] (one image per prompt) when ``model``
        reads images as a prefix of its own (the embedded image policy, ``takes_pixel_values``)."""
        enc = self(prompts)
        if getattr(model, "takes_pixel_values", False):
            images = [message_images(m) for m in prompts]
            if any(len(ims) != 1 for ims in images):
                raise ValueError("the image policy reads exactly one image per prompt")
            enc["pixel_values"] = model.pixel_values([ims[0] for ims in images])
        return enc

    def __call__(self, prompts: list[Messages]) -> BatchEncoding | BatchFeature:
        """Render ``prompts`` with the chat template (generation prompt added), left-padded, on the CPU.

        Returns ``input_ids`` and ``attention_mask`` [B, L] (and the processor's image tensors),
        with every prompt cut on the left to at most ``prompt.max_prompt_tokens`` tokens unless
        that would cut into image placeholders.
        """
        if self.is_vlm:
            texts = [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
            images = [image for m in prompts for image in message_images(m)]
            # images are matched to placeholders in order across the whole batch
            enc = self.processor(text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt")
        else:
            template = None if self.tokenizer.chat_template is not None else FALLBACK_CHAT_TEMPLATE
            texts = [
                self.tokenizer.apply_chat_template(flatten_text(m), tokenize=False, add_generation_prompt=True, chat_template=template)
                for m in prompts
            ]
            # the rendered template already holds the model's special tokens (bos included)
            enc = self.tokenizer(texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
        return self._truncate_left(enc)

    def _truncate_left(self, enc: BatchEncoding | BatchFeature) -> BatchEncoding | BatchFeature:
        ids = enc["input_ids"]  # [B, L], left-padded
        cut = ids.shape[1] - self.prompt.max_prompt_tokens
        if cut <= 0:
            return enc
        image_token_id = getattr(self.processor, "image_token_id", None) if self.is_vlm else None
        if image_token_id is not None:
            image_cols = (ids == image_token_id).any(dim=0).nonzero()
            if len(image_cols):
                # the vision features replace the placeholders one for one: never cut into them
                cut = min(cut, int(image_cols[0]))
        # with left padding, dropping the first columns shortens exactly the rows that are longer
        # than the limit (the others lose only padding)
        shortened = int(enc["attention_mask"][:, :cut].any(dim=1).sum())
        if shortened and not self.num_truncated:
            # once per encoder: the count keeps the rest (an evaluation would repeat it every batch)
            log.warning("prompts are cut on the left to %d tokens (prompt.max_prompt_tokens); see num_truncated", ids.shape[1] - cut)
        self.num_truncated += shortened
        for key in TOKEN_ALIGNED_KEYS:
            if key in enc:
                enc[key] = enc[key][:, cut:]
        return enc


PLACEHOLDER_CONFIG_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def placeholder_token_ids(model: PreTrainedModel) -> list[int]:
    """Token ids a vision-language model reads as image or video placeholders (Qwen2.5-VL:
    ``<|image_pad|>``, ``<|video_pad|>``, ``<|vision_start|>``, ``<|vision_end|>``); [] for a text model.

    A policy must never write them: fed back (GRPO's log-prob pass, a later prompt), each one asks
    the model for vision features that do not exist, and the forward fails. ``generate`` suppresses
    them and ``GRPOModule.completion_logp`` masks them the same way, so the log-probabilities stay
    those of the distribution sampled from.
    """
    config = getattr(model, "config", None)
    ids = {getattr(config, field, None) for field in PLACEHOLDER_CONFIG_FIELDS}
    return sorted(int(i) for i in ids if isinstance(i, int) and i >= 0)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    enc: BatchEncoding | BatchFeature,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    eos_token_id: int | None = None,
) -> torch.Tensor:
    """``model.generate`` on an encoded batch (moved to the model's device) with the KV cache, in
    eval mode and without gradients; the model's train/eval mode is restored afterwards, so a
    module can generate in the middle of training.

    Returns [B * num_return_sequences, L + N'] (rows ``p * num_return_sequences + g``).
    ``eos_token_id`` pins the stop token (the GRPO rollout masks completions at the tokenizer's);
    None keeps the model's generation config, or the tokenizer's when that has none. A
    vision-language model never writes its image or video placeholders (``placeholder_token_ids``).
    """
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,
        "num_return_sequences": num_return_sequences,
    }
    suppressed = placeholder_token_ids(model)
    if suppressed:
        kwargs["suppress_tokens"] = suppressed
    if eos_token_id is not None:
        kwargs["eos_token_id"] = eos_token_id
    elif model.generation_config.eos_token_id is None:
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    if do_sample:
        # top_k=0 turns off the top-k filter that transformers adds by default and that some
        # checkpoints' generation configs set (top_k=1 would make every GRPO sample greedy)
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    enc = enc.to(model.get_input_embeddings().weight.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model.generate(**enc, **kwargs)
    finally:
        model.train(was_training)
