"""Tiny random Hugging Face models and locally built tokenizers/processors for CPU tests and benchmarks.

Nothing here touches the Hugging Face hub: tokenizers are byte-level BPE models trained in
memory on a few sentences (byte-level, so any text round-trips exactly through encode/decode,
which the format-parsing tests rely on), models are built from small configs with random
weights. The questioner, SFT and GRPO tests and scripts/bench_grpo.py use them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from dlgpr.data.turns import Candidate, QuestionRequest, Turn
from dlgpr.models.questioner import CHATML_SPECIAL, CHATML_TEMPLATE  # the corpus tokenizer's ChatML

CORPUS = (
    "<think>The candidates differ in facade colour and in the shop sign.</think>"
    "<question>What colour is the facade of the building?</question>",
    "A red brick building with four floors, a green awning and a bakery sign above the door.",
    "A grey concrete tower with many windows, a phone booth and a bench on the sidewalk.",
    "Description: Dialogue so far: Top candidates: Candidate Write your reasoning and your question.",
    "Is there a tree in front of the house? Yes, a tall tree stands left of the door, number 12.",
)
"""Sentences the tiny BPE is trained on (its merges only affect how many tokens a text takes)."""

VISION_SPECIAL = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML with multimodal parts: one ``<|image_pad|>`` placeholder per image, expanded by the processor."""


def tiny_tokenizer(vision: bool = False, chat_template: str | None = CHATML_TEMPLATE, pad_token: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~400 tokens) with ChatML special tokens (and Qwen vision ones).

    ``pad_token=False`` leaves the pad token unset (eos-as-pad fallback); ``chat_template=None``
    leaves the template unset (plain-text fallback template).
    """
    special = list(CHATML_SPECIAL) + (list(VISION_SPECIAL) if vision else [])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>" if pad_token else None
    )
    tok.chat_template = chat_template
    return tok


INIT_STD = 0.3
"""Weight init std of the tiny models. At the usual 0.02 a random 2-layer model repeats one token
(often a newline) forever; at 0.3 its greedy text varies from token to token and prompt to prompt,
so batching and decoding tests compare real text and greedy choices are far from ties."""

#: The text model of both tiny builders: 2 layers, hidden 64, grouped-query attention.
TEXT_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    initializer_range=INIT_STD,
)
#: The 1-block vision tower of the tiny Qwen2.5-VL.
VISION_DIMS = dict(
    depth=1,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    fullatt_block_indexes=[0],
    initializer_range=INIT_STD,
)
#: Its multimodal rotary sections: head_dim 16 = 2 * sum(MROPE_SECTION), halves split over (time, height, width).
MROPE_SECTION = [2, 3, 3]


def tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    """A random 2-layer Qwen2 causal LM (hidden 64) sized to ``tokenizer``; eval mode, float32."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        **TEXT_DIMS,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config).eval()


def tiny_qwen25vl(seed: int = 0) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A random Qwen2.5-VL (1-block vision tower, 2-layer text model, hidden 64) and its processor.

    The image processor keeps images between 56x56 and 112x112 pixels, so a 56x56 image is
    4x4 patches of 14 px, merged 2x2 into 4 ``<|image_pad|>`` tokens.
    """
    tok = tiny_tokenizer(vision=True, chat_template=None)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    # the processor insists on a video processor although the questioner never sends videos
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=VL_CHAT_TEMPLATE
    )
    torch.manual_seed(seed)
    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            **TEXT_DIMS,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=MROPE_SECTION),
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=None,
        ),
        vision_config=dict(VISION_DIMS),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval(), processor


def tiny_image(color: tuple[int, int, int], size: int = 56) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def tiny_requests(n: int, n_candidates: int = 2, with_images: bool = True, history: bool = True) -> list[QuestionRequest]:
    """``n`` SynthCities-like question requests of varied lengths (so batches need padding)."""
    colours = ["red", "green", "blue", "yellow", "grey"]
    requests = []
    for q in range(n):
        cands = tuple(
            Candidate(
                key=f"Alpha_{q * 10 + c:07d}_0",
                place_id=q * 10 + c,
                description=f"A {colours[(q + c) % 5]} building with {2 + c + q} floors" + " and a bench" * (q % 3),
                score=1.0 - 0.1 * c,
                image=(lambda rgb=((40 * q) % 256, 40 * c, 200): tiny_image(rgb)) if with_images else None,
            )
            for c in range(n_candidates)
        )
        turns = (Turn(question="Is there a tree?", answer="Yes, on the left."),) if history and q % 2 else ()
        requests.append(
            QuestionRequest(
                query_id=q,
                round=len(turns) + 1,
                initial_description="a building near a shop" + " with a sign" * q,
                history=turns,
                candidates=cands,
            )
        )
    return requests


def save_tiny_policy(out: str | Path, vision: bool = False) -> Path:
    """A tiny random policy saved like a Hugging Face checkpoint in ``out``: the Qwen2 causal LM
    with its tokenizer, or (``vision``) the Qwen2.5-VL with its processor."""
    out = Path(out)
    if vision:
        model, processor = tiny_qwen25vl()
    else:
        processor = tiny_tokenizer()
        model = tiny_causal_lm(processor)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out

