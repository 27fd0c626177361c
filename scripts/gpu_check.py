"""A prepared GPU check: paper-scale step times and peak memory of dlgpr's three GPU workloads.

A session lent a GPU runs it with ``bash scripts/gpu_check.sh`` (installs the carried wheels,
then this script); here it runs tiny on the CPU (``--tiny --device cpu``, seconds), the same code
paths, which is what tests/scripts/test_gpu_check.py checks. Random weights everywhere (the GPU
machine has no network): the real architectures, so times and memory are the paper's.

Parts (each timed after warm-up steps, with ``torch.cuda.max_memory_allocated`` reset per part):

* ``cmpl_train``: CMPLModule (configs/cmpl_vitb16.yaml: open_clip ViT-B-16, taps 3/6/9/12,
  248-token text, batch places_per_batch x views_per_place = 64 at 224 px) training steps, bf16
  autocast (the config's bf16-mixed), AdamW: step time, images/s, peak memory.
* ``dialogue_search``: encode a random gallery (10,000 images) and queries with the same CMPL
  model, then the dialogue loop's per-round search (``dlgpr.dialogue.loop._search``: exact top-k
  and exact positive ranks via ``dlgpr.ranking``; and the ``rank_depth`` backend path), checking
  that ``dlgpr.search.search_device`` puts it on the GPU.
* ``policy_sft`` / ``policy_grpo``: a Qwen2.5-VL-7B-sized model (the checkpoint's config fields,
  random bf16 weights) with the configs' LoRA (r 64 on q/k/v/o/gate/up/down) and gradient
  checkpointing. SFT: ``SFTModule._loss`` + backward + AdamW on batch 2 x 4096-token prompts with
  images. GRPO: ``generate`` (the rollout's call, a few new tokens: random weights never stop),
  then ``GRPOModule.grpo_step`` (reference log-probs with the adapter disabled, clipped surrogate
  ``dlgpr.losses.grpo_loss``, backward, clipping, AdamW) on 2 prompts x group 8 x 384 completion
  tokens (the GRPO config's ``max_new_tokens``).

A part that raises (out of memory, a missing package) is reported as skipped with its reason and
the next part runs; the JSON and the markdown table are rewritten after every part, so a run cut
short keeps what it measured. Output: ``$OUT/gpu_check.json`` and ``$OUT/gpu_check.md`` (``$OUT``
defaults to ./gpu_check_out), both printed at the end.

    python scripts/gpu_check.py                       # on a GPU: paper scale, bf16
    python scripts/gpu_check.py --tiny --device cpu   # seconds, tiny configs, same code paths
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# ---- the Qwen2.5-VL-7B-Instruct architecture (its config.json's fields; weights are random) ----------
QWEN25VL_7B_TEXT = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    tie_word_embeddings=False,
)
QWEN25VL_7B_ROPE = dict(rope_theta=1000000.0, mrope_section=[16, 24, 24])
QWEN25VL_7B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_chans=3,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    hidden_act="silu",
)
# the tiny model of dlgpr.testing.tiny_models (2 layers, hidden 64; 1-block vision tower), for --tiny
from dlgpr.testing.tiny_models import MROPE_SECTION, TEXT_DIMS, VISION_DIMS  # noqa: E402  (after the sys.path line)

TINY_TEXT = dict(vocab_size=512, **TEXT_DIMS, tie_word_embeddings=True)
TINY_ROPE = dict(rope_theta=10000.0, mrope_section=MROPE_SECTION)
TINY_VISION = VISION_DIMS


class Settings:
    """Sizes of one run: paper scale (the configs' values) or tiny (CPU seconds)."""

    def __init__(self, args: argparse.Namespace) -> None:
        tiny = args.tiny
        self.tiny = tiny
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16
        self.warmup = 1 if tiny else 2
        self.steps = args.steps or (2 if tiny else 5)
        # CMPL
        self.gallery_size = args.gallery or (256 if tiny else 10_000)
        self.num_queries = 32 if tiny else 1_000
        self.rounds = 5
        # policy
        self.prompt_tokens = args.prompt_tokens or (96 if tiny else 4096)
        self.images_per_prompt = 2 if tiny else 4
        self.image_px = 56 if tiny else 448  # 448 px: 32x32 patches -> 256 image tokens each
        self.sft_batch = 2
        self.grpo_prompts = 2
        self.group_size = 2 if tiny else 8
        self.completion_tokens = 8 if tiny else 384
        self.generate_tokens = 4 if tiny else 32
        self.policy_steps = 1 if tiny else 3


# ---- helpers ----------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> tuple[list[float], Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``steps`` times timed; ``(seconds per step, last result)``."""
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


def _autocast(s: Settings) -> Any:
    return torch.autocast(device_type=s.device.type, dtype=s.dtype)


# ---- CMPL ---------------------------------------------------------------------------------------------

def _cmpl_settings(s: Settings) -> dict[str, Any]:
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "cmpl_vitb16.yaml").read_text())
    model = cfg["model"]["init_args"]
    data = cfg["data"]["init_args"]
    backbone = dict(model["backbone"], pretrained=None, cache_dir=None)  # random weights: no download
    cmpl = dict(model["cmpl"])
    places, views = data["places_per_batch"], data["views_per_place"]
    if s.tiny:
        backbone.update(model_name="dlgpr-tiny", long_text_length=None)
        cmpl.update(taps=[1, 2, 3, 4], num_queries=4, local_dim=32, extractor_heads=4)
        places, views = 4, 2
    return dict(backbone=backbone, cmpl=cmpl, loss=model["loss"], lr=model["lr"], head_lr=model["head_lr"],
                logit_scale=model["logit_scale"], places=places, views=views, eval_batch_size=64 if s.tiny else data["eval_batch_size"])


def _build_cmpl(s: Settings) -> tuple[Any, dict[str, Any]]:
    from dlgpr.losses import CMPLLoss
    from dlgpr.models.clip_backbone import ClipBackboneConfig
    from dlgpr.models.cmpl import CMPLConfig
    from dlgpr.modules.cmpl import CMPLModule

    c = _cmpl_settings(s)
    torch.manual_seed(0)
    module = CMPLModule(backbone=ClipBackboneConfig(**c["backbone"]), cmpl=CMPLConfig(**c["cmpl"]), loss=CMPLLoss(**c["loss"]),
                        lr=c["lr"], head_lr=c["head_lr"], logit_scale=c["logit_scale"])
    return module.to(s.device), c


_DESCRIPTIONS = (
    "a red brick building with four floors, a green awning and a bakery sign above the door, a bench and a tree",
    "a grey concrete tower with many windows, a phone booth on the sidewalk and parked cars along the street",
    "a white house with a blue door, a small garden behind a fence and a lamp post on the corner",
)


def _tokens(module: Any, n: int) -> torch.Tensor:
    texts = [f"{_DESCRIPTIONS[i % 3]} number {i}" * (1 + i % 3) for i in range(n)]
    return module.preprocessing().tokenizer(texts)


def part_cmpl_train(s: Settings) -> dict[str, Any]:
    """CMPL training steps (Eq. 6 loss, AdamW) at the config's batch, bf16 autocast."""
    _reset_peak(s.device)
    module, c = _build_cmpl(s)
    module.train()
    batch_size = c["places"] * c["views"]
    px = module.clip.image_size
    px = px[0] if isinstance(px, (tuple, list)) else int(px)
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(batch_size, 3, px, px, generator=g).to(s.device),
        "tokens": _tokens(module, batch_size).to(s.device),
        "place_id": torch.arange(c["places"]).repeat_interleave(c["views"]).to(s.device),
    }
    opt = torch.optim.AdamW(module.optimizer_groups(), lr=module.lr)
    losses: list[float] = []

    def step() -> None:
        with _autocast(s):
            loss, _ = module.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    times, _ = _timed(step, s.device, s.warmup, s.steps)
    step_s = sum(times) / len(times)
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"non-finite CMPL loss: {losses}")
    return {
        "model": c["backbone"]["model_name"], "batch": batch_size, "image_px": px, "text_tokens": int(batch["tokens"].shape[1]),
        "params_m": sum(p.numel() for p in module.parameters()) / 1e6, "steps": len(times),
        "step_s": step_s, "step_s_min": min(times), "step_s_max": max(times), "images_per_s": batch_size / step_s,
        "peak_mem_gib": _peak_gib(s.device), "loss_first": losses[0], "loss_last": losses[-1],
    }


# ---- dialogue search ----------------------------------------------------------------------------------

def part_dialogue_search(s: Settings) -> dict[str, Any]:
    """Encode a random gallery and queries with CMPL, then the dialogue loop's per-round search."""
    from dlgpr.dialogue.loop import _search
    from dlgpr.ranking import Gallery, positive_rows
    from dlgpr.search import search_device

    _reset_peak(s.device)
    module, c = _build_cmpl(s)
    module.eval()
    px = module.clip.image_size
    px = px[0] if isinstance(px, (tuple, list)) else int(px)
    views = 4
    n, bs = s.gallery_size, c["eval_batch_size"]
    g = torch.Generator(device=s.device).manual_seed(0)

    def encode_gallery() -> torch.Tensor:
        out = []
        with torch.no_grad(), _autocast(s):
            for start in range(0, n, bs):
                images = torch.randn(min(bs, n - start), 3, px, px, device=s.device, generator=g)
                out.append(module.encode_images(images).float().cpu())  # dlgpr.retrieval.encode_gallery keeps the gallery on the CPU
        return torch.cat(out)

    tokens = _tokens(module, s.num_queries).to(s.device)

    def encode_queries() -> torch.Tensor:
        with torch.no_grad(), _autocast(s):
            return torch.cat([module.encode_texts(tokens[i : i + bs]).float() for i in range(0, len(tokens), bs)])

    t0 = time.perf_counter()
    emb_gallery = encode_gallery()
    _sync(s.device)
    gallery_s = time.perf_counter() - t0
    q_times, emb = _timed(encode_queries, s.device, 1, 1)
    place_ids = torch.arange(n) // views
    gallery = Gallery(emb_gallery, place_ids, [f"k{i}" for i in range(n)], [""] * n, [{}] * n)
    labels = place_ids[torch.randperm(n, generator=torch.Generator().manual_seed(0))[: s.num_queries]]
    rows = positive_rows(labels, gallery.place_ids)
    where = search_device(emb, gallery.embeddings)
    searched_on = gallery.search_embeddings(emb).device
    if s.device.type == "cuda" and (where.type != "cuda" or searched_on.type != "cuda"):
        raise AssertionError(f"the device rule put the search on {where} (gallery copy on {searched_on}), not the GPU")
    top_k, depth = 10, 100

    def exact_round() -> Any:
        return _search(emb, gallery, rows, labels, top_k, None, n, "auto")

    def depth_round() -> Any:
        return _search(emb, gallery, rows, labels, top_k, depth, depth, "torch")

    exact_times, (scores, idx, best, ranks) = _timed(exact_round, s.device, 1, s.rounds + 1)
    depth_times, (_, _, best_d, _) = _timed(depth_round, s.device, 1, s.rounds + 1)
    if not (bool((best >= 1).all()) and bool((best <= n + 1).all()) and idx.shape == (s.num_queries, top_k)):
        raise AssertionError("exact ranks out of [1, G + 1] or wrong candidate lists")
    # where the top-depth lists decide a rank it is the exact one
    decided = best_d <= depth
    if not torch.equal(best_d[decided], best[decided]):
        raise AssertionError("rank_depth ranks differ from the exact ranks where the lists decide them")
    return {
        "gallery": n, "queries": s.num_queries, "dim": int(emb.shape[1]), "search_device": str(where),
        "gallery_copy_device": str(searched_on), "gallery_encode_s": gallery_s, "gallery_images_per_s": n / gallery_s,
        "query_encode_s": q_times[0], "queries_per_s": s.num_queries / q_times[0],
        "exact_round_s": sum(exact_times) / len(exact_times), "depth100_round_s": sum(depth_times) / len(depth_times),
        "rounds_timed": len(exact_times), "median_rank": float(best.float().median()), "peak_mem_gib": _peak_gib(s.device),
    }


# ---- DQ-Pilot policy ----------------------------------------------------------------------------------

class _PolicyShim:
    """The parts of the SFT / GRPO modules their step functions use, around a bare model (no
    Trainer, no checkpoint to load): the steps below are the modules' own methods."""

    def __init__(self, model: Any, optimizer: torch.optim.Optimizer | None, grpo: Any, device: torch.device) -> None:
        from dlgpr.modules.dqpilot import GRPOModule, QuestionerModule, SFTModule

        self.model, self._opt, self.grpo, self.device, self._reference = model, optimizer, grpo, device, []
        cls = type(self)
        cls._loss = SFTModule._loss  # type: ignore[attr-defined]
        cls.completion_logp = GRPOModule.completion_logp  # type: ignore[attr-defined]
        cls.reference_logp = GRPOModule.reference_logp  # type: ignore[attr-defined]
        cls.grpo_step = GRPOModule.grpo_step  # type: ignore[attr-defined]
        cls.trainable_parameters = QuestionerModule.trainable_parameters  # type: ignore[attr-defined]

    def optimizers(self) -> Any:
        return self._opt

    def lr_schedulers(self) -> None:
        return None

    def manual_backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def _policy_config(s: Settings, ids: dict[str, int]) -> Any:
    import transformers
    from transformers import Qwen2_5_VLConfig

    text, rope, vision = (TINY_TEXT, TINY_ROPE, TINY_VISION) if s.tiny else (QWEN25VL_7B_TEXT, QWEN25VL_7B_ROPE, QWEN25VL_7B_VISION)
    text = dict(text, eos_token_id=ids["eos"], pad_token_id=ids["pad"], bos_token_id=None)
    if int(transformers.__version__.split(".")[0]) >= 5:
        text["rope_parameters"] = dict(rope_type="default", rope_theta=rope["rope_theta"], mrope_section=rope["mrope_section"])
    else:
        text.update(rope_theta=rope["rope_theta"], rope_scaling=dict(type="mrope", mrope_section=rope["mrope_section"]))
    return Qwen2_5_VLConfig(text_config=text, vision_config=dict(vision), image_token_id=ids["image"], video_token_id=ids["video"],
                            vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"])


def _build_policy(s: Settings) -> tuple[Any, Any, dict[str, Any]]:
    """The LoRA policy of the 7B configs (random weights) on the device, and its processor."""
    import yaml
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from dlgpr.models.questioner import LoRAConfig, PolicyConfig, _finish, apply_lora
    from dlgpr.testing.tiny_models import VL_CHAT_TEMPLATE, tiny_tokenizer

    sft = yaml.safe_load((ROOT / "configs" / "dqpilot_sft_qwen25vl7b.yaml").read_text())["model"]["init_args"]
    tok = tiny_tokenizer(vision=True, chat_template=None)  # ids < 512; the model's vocab is the checkpoint's
    px = s.image_px
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=px * px, max_pixels=px * px), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=VL_CHAT_TEMPLATE)
    cid = tok.convert_tokens_to_ids
    ids = dict(eos=tok.eos_token_id, pad=tok.pad_token_id, image=cid("<|image_pad|>"), video=cid("<|video_pad|>"),
               vision_start=cid("<|vision_start|>"), vision_end=cid("<|vision_end|>"))
    config = _policy_config(s, ids)
    config._attn_implementation = sft["policy"]["attn_implementation"]
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(s.dtype)
    try:
        with s.device:  # random init on the device: seconds at 7B, not the CPU's minutes
            base = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    policy_cfg = PolicyConfig(model="<random>", dtype="bfloat16", gradient_checkpointing=bool(sft["policy"]["gradient_checkpointing"]),
                              attn_implementation=sft["policy"]["attn_implementation"])
    base, processor = _finish(base, processor, policy_cfg)
    lora = LoRAConfig(**sft["lora"])
    model = apply_lora(base, lora)
    model.train()
    info = {"params_b": sum(p.numel() for p in model.parameters()) / 1e9,
            "lora_params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
            # adapters inside the vision tower (0 with the configs' exclude_modules: the blocks' MLPs share the target names)
            "lora_params_vision_m": sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".visual." in n) / 1e6,
            "lora_r": lora.r, "gradient_checkpointing": policy_cfg.gradient_checkpointing}
    return model, processor, info


def _plain_ids(tok: Any) -> torch.Tensor:
    """The tokenizer's ids that are plain text: no special token, no image/video placeholder."""
    special = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    return torch.tensor([i for i in range(len(tok)) if i not in special])


def _prompts(s: Settings, processor: Any, n: int, length: int) -> dict[str, torch.Tensor]:
    """``n`` encoded prompts of exactly ``length`` tokens, each with its images (the processor's
    placeholders and tensors), the rest random text tokens, ending in the assistant header."""
    from PIL import Image

    tok = processor.tokenizer
    images = [[Image.new("RGB", (s.image_px, s.image_px), ((60 * i + 40 * j) % 256, 90, 160)) for j in range(s.images_per_prompt)]
              for i in range(n)]
    head = "<|im_start|>user\n" + "<|vision_start|><|image_pad|><|vision_end|>" * s.images_per_prompt
    enc = processor(text=[head] * n, images=images, return_tensors="pt")
    tail = tok("<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")["input_ids"][0]
    filler = length - enc["input_ids"].shape[1] - len(tail)
    if filler < 0:
        raise ValueError(f"{length} prompt tokens cannot hold {s.images_per_prompt} images of {s.image_px} px")
    plain = _plain_ids(tok)
    g = torch.Generator().manual_seed(1)
    text = plain[torch.randint(len(plain), (n, filler), generator=g)]
    out = dict(enc)
    out["input_ids"] = torch.cat([enc["input_ids"], text, tail.expand(n, -1)], dim=1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    if "mm_token_type_ids" in enc:
        types = enc["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([types, torch.zeros(n, filler + len(tail), dtype=types.dtype)], dim=1)
    out.pop("token_type_ids", None)
    return out


def _grad_norm(model: Any) -> float:
    norms = [p.grad.float().norm() for p in model.parameters() if p.requires_grad and p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


_POLICY: dict[str, Any] = {}


def _policy(s: Settings) -> tuple[Any, Any, dict[str, Any]]:
    """One policy for both policy parts (built once: 7B random init is the slow part)."""
    if "model" not in _POLICY:
        t0 = time.perf_counter()
        model, processor, info = _build_policy(s)
        _sync(s.device)
        _POLICY.update(model=model, processor=processor, info=dict(info, build_s=time.perf_counter() - t0))
    return _POLICY["model"], _POLICY["processor"], _POLICY["info"]


def part_policy_sft(s: Settings) -> dict[str, Any]:
    """SFT steps: ``SFTModule._loss`` on completions after each prompt, backward, AdamW."""
    _reset_peak(s.device)
    model, processor, info = _policy(s)
    batch = _prompts(s, processor, s.sft_batch, s.prompt_tokens)
    labels = batch["input_ids"].clone()
    completion = max(1, s.completion_tokens // 2)
    labels[:, :-completion] = -100  # the loss on the completion tokens only, as the datamodule masks them
    batch = {k: v.to(s.device) for k, v in dict(batch, labels=labels).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    shim = _PolicyShim(model, opt, None, s.device)
    losses, norms = [], []

    def step() -> None:
        loss, _, _ = shim._loss(batch)  # type: ignore[attr-defined]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(_grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))

    times, _ = _timed(step, s.device, 1, s.policy_steps)
    opt.zero_grad(set_to_none=True)
    if not all(math.isfinite(v) for v in losses + norms) or norms[-1] <= 0:
        raise FloatingPointError(f"SFT: loss {losses}, LoRA gradient norm {norms} (must be finite and > 0)")
    step_s = sum(times) / len(times)
    tokens = s.sft_batch * s.prompt_tokens
    return dict(info, batch=s.sft_batch, prompt_tokens=s.prompt_tokens, images_per_prompt=s.images_per_prompt,
                image_tokens_per_prompt=int((batch["input_ids"][0] == model.config.image_token_id).sum()),
                steps=len(times), step_s=step_s, tokens_per_s=tokens / step_s, peak_mem_gib=_peak_gib(s.device),
                loss=losses[-1], lora_grad_norm=norms[-1])


def part_policy_grpo(s: Settings) -> dict[str, Any]:
    """GRPO: the rollout's ``generate`` (timed, a few tokens), then ``GRPOModule.grpo_step`` on
    ``prompts x group`` completions of the config's length (reference pass with the adapter off)."""
    import yaml

    from dlgpr.models.prompting import generate, placeholder_token_ids
    from dlgpr.modules.dqpilot import GRPOConfig, Rollout, _repeat_vision

    _reset_peak(s.device)
    model, processor, info = _policy(s)
    grpo_cfg = yaml.safe_load((ROOT / "configs" / "dqpilot_grpo_qwen25vl7b.yaml").read_text())["model"]["init_args"]["grpo"]
    grpo = GRPOConfig(**dict(grpo_cfg, group_size=s.group_size, max_new_tokens=s.completion_tokens))
    tok = processor.tokenizer
    enc = _prompts(s, processor, s.grpo_prompts, s.prompt_tokens)
    from transformers import BatchFeature

    enc_dev = BatchFeature({k: v.to(s.device) for k, v in enc.items()})
    t0 = time.perf_counter()
    out = generate(model, tok, enc_dev, s.generate_tokens, do_sample=True, temperature=grpo.temperature, top_p=grpo.top_p,
                   num_return_sequences=grpo.group_size, eos_token_id=tok.eos_token_id)
    _sync(s.device)
    gen_s = time.perf_counter() - t0
    rows = s.grpo_prompts * grpo.group_size
    generated = int(out.shape[1] - enc_dev["input_ids"].shape[1])
    written = out[:, enc_dev["input_ids"].shape[1]:]
    placeholders_written = int(torch.isin(written, torch.tensor(placeholder_token_ids(model), device=written.device)).sum())
    if placeholders_written:
        raise RuntimeError(f"generate wrote {placeholders_written} image/video placeholder tokens (they must be suppressed)")
    # the update on completions of the config's full length (random weights rarely stop early)
    g = torch.Generator().manual_seed(2)
    # plain text tokens, as the rollout writes (generate suppresses the placeholders; one fed back fails the forward)
    plain = _plain_ids(tok)
    completion = plain[torch.randint(len(plain), (rows, s.completion_tokens), generator=g)].to(s.device)
    vision = {k: v.to(s.device) for k, v in _repeat_vision(enc_dev, [s.images_per_prompt] * s.grpo_prompts, grpo.group_size).items()}
    roll = Rollout(enc_dev["input_ids"].repeat_interleave(grpo.group_size, 0), enc_dev["attention_mask"].repeat_interleave(grpo.group_size, 0),
                   completion, torch.ones_like(completion), [""] * rows, vision, None, None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    shim = _PolicyShim(model, opt, grpo, s.device)
    adv = torch.linspace(-1.0, 1.0, rows)
    stats: list[dict[str, float]] = []
    ref_times: list[float] = []

    def step() -> None:
        t = time.perf_counter()
        ref = shim.reference_logp(roll) if grpo.beta > 0 else None  # type: ignore[attr-defined]
        _sync(s.device)
        ref_times.append(time.perf_counter() - t)
        st = shim.grpo_step(roll._replace(ref_logp=ref), adv)  # type: ignore[attr-defined]
        stats.append({k: float(v) for k, v in st.items()})

    times, _ = _timed(step, s.device, 1, s.policy_steps)
    opt.zero_grad(set_to_none=True)
    last = stats[-1]
    if not all(math.isfinite(v) for v in last.values()) or last.get("grad_norm", 1.0) <= 0:
        raise FloatingPointError(f"GRPO step stats not finite / zero gradient: {last}")
    step_s = sum(times) / len(times)
    tokens = rows * (s.prompt_tokens + s.completion_tokens)
    return dict(info, prompts=s.grpo_prompts, group_size=grpo.group_size, rows=rows, prompt_tokens=s.prompt_tokens,
                completion_tokens=s.completion_tokens, generate_new_tokens=generated, placeholders_written=placeholders_written, generate_s=gen_s,
                generate_tokens_per_s=rows * generated / gen_s, steps=len(times), step_s=step_s,
                reference_s=sum(ref_times[-len(times):]) / len(times), tokens_per_s=tokens / step_s,
                peak_mem_gib=_peak_gib(s.device), loss=last["loss"], kl=last["kl"], grad_norm=last.get("grad_norm"))


PARTS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "cmpl_train": part_cmpl_train,
    "dialogue_search": part_dialogue_search,
    "policy_sft": part_policy_sft,
    "policy_grpo": part_policy_grpo,
}


# ---- report -------------------------------------------------------------------------------------------

def environment(s: Settings) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": str(s.device), "tiny": s.tiny,
                           "dtype": str(s.dtype).replace("torch.", ""), "host": platform.node()}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001 - reported, not needed here
        pass
    if s.device.type == "cuda":
        p = torch.cuda.get_device_properties(s.device)
        env.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return env


_KEYS = ("step_s", "images_per_s", "tokens_per_s", "peak_mem_gib", "gallery_images_per_s", "exact_round_s", "depth100_round_s",
         "generate_tokens_per_s", "search_device")


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"GPU check ({env.get('gpu', env['device'])}, torch {env['torch']}, {env['dtype']}{', tiny' if env['tiny'] else ''}): "
             f"`{report['command']}`", "", "| part | status | key numbers |", "|---|---|---|"]
    for name, part in report["parts"].items():
        if part["status"] != "ok":
            lines.append(f"| {name} | {part['status']} | {part['reason']} |")
            continue
        m = part["metrics"]
        nums = ", ".join(f"{k} {m[k]:.4g}" if isinstance(m[k], float) else f"{k} {m[k]}" for k in _KEYS if m.get(k) is not None)
        lines.append(f"| {name} | ok ({part['seconds']:.1f} s) | {nums} |")
    return "\n".join(lines) + "\n"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> dict[str, Any]:
    s = Settings(args)
    out_dir = Path(args.out or os.environ.get("OUT") or "gpu_check_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name if sys.argv[0] else "gpu_check.py"] + sys.argv[1:]),
                              "environment": environment(s), "parts": {}}

    def write() -> None:
        report["total_s"] = time.perf_counter() - start
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
        (out_dir / "gpu_check.md").write_text(markdown(report))

    names = args.parts or list(PARTS)
    for i, name in enumerate(names):
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            report["parts"][name] = {"status": "skipped", "reason": f"time budget: {elapsed:.0f} s of {args.budget_s:.0f} s spent"}
        else:
            print(f"[gpu_check] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                metrics = PARTS[name](s)
                report["parts"][name] = {"status": "ok", "seconds": time.perf_counter() - t0, "metrics": metrics}
            except Exception as exc:  # noqa: BLE001 - a failed part is reported, the others still run
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                report["parts"][name] = {"status": "skipped", "reason": reason, "seconds": time.perf_counter() - t0}
                print(f"[gpu_check] {name} skipped: {reason}", flush=True)
                traceback.print_exc()
        if not any(n.startswith("policy_") for n in names[i + 1 :]):
            _POLICY.clear()  # the 7B policy is shared by the policy parts, freed after the last
        _free(s.device)
        write()
    _POLICY.clear()
    write()
    print(json.dumps(report, indent=1))
    print(markdown(report))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU seconds), the same code paths")
    ap.add_argument("--dry-run", action="store_true", help="= --tiny --device cpu")
    ap.add_argument("--parts", nargs="+", choices=list(PARTS), help="parts to run (default: all)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps of the CMPL part (default 5; tiny 2)")
    ap.add_argument("--gallery", type=int, default=None, help="gallery size of dialogue_search (default 10,000)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="policy prompt length (default 4096, the configs' max_prompt_tokens)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no part after this many seconds (the run must fit 8 min)")
    ap.add_argument("--out", default=None, help="output folder (default $OUT, else ./gpu_check_out)")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.tiny, args.device = True, "cpu"
    return args


if __name__ == "__main__":
    report = run(parse_args())
    sys.exit(0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1)
