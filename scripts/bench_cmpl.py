"""CMPL cost benchmark: full CMPL against the L_gs-only baseline on the same backbone and batch.

    python scripts/bench_cmpl.py                         # CPU: the embedded tiny CLIP
    python scripts/bench_cmpl.py --model ViT-B-16 --batch 64 --taps 3 6 9 12 --local_dim 256 \
        --extractor_heads 8                             # paper scale (use a CUDA GPU: bf16)

Measured side by side in one run, interleaved (baseline, full, baseline, ...) so drift in a
noisy machine hits both alike; medians over ``--repeats``:
  1. training step (forward, Eq. 6 loss, backward, AdamW step) of the full CMPL and of the
     baseline (no heads, L_gs only, same long-text backbone) -> ratio full / baseline
     (target: at most 1.5, i.e. the multi-level heads and losses add at most 50 %);
     the baseline step is the backbone's share of the full step;
  2. gallery encoding (inference) images/s, full retrieval embedding and global only.
Both models see the same random images and realistic-length token ids (200 of 248 positions);
weights are random (no download): the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from dlgpr.losses import CMPLLoss
from dlgpr.models.clip_backbone import ClipBackboneConfig
from dlgpr.models.cmpl import CMPLConfig
from dlgpr.modules.cmpl import CMPLModule


def build(args: argparse.Namespace, full: bool, device: torch.device) -> CMPLModule:
    backbone = ClipBackboneConfig(model_name=args.model, long_text_length=args.text_length)
    cmpl = CMPLConfig(taps=args.taps if full else [], local_dim=args.local_dim, extractor_heads=args.extractor_heads, keep_ratio=args.keep_ratio)
    loss = CMPLLoss() if full else CMPLLoss(lambda_h=0.0, lambda_vpr=0.0)
    torch.manual_seed(0)
    return CMPLModule(backbone=backbone, cmpl=cmpl, loss=loss, logit_scale=14.29, learnable_logit_scale=True).to(device)


def make_batch(module: CMPLModule, batch: int, views: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size, length = module.clip.image_size, module.clip.context_length
    tokens = torch.zeros(batch, length, dtype=torch.long)
    body = min(200, length - 2)
    tokens[:, 1 : 1 + body] = torch.randint(1, 49000, (batch, body), generator=g)
    tokens[:, 0], tokens[:, 1 + body] = 49406, 49407  # start / end of text (CLIP's ids: EOT is the largest)
    return {
        "image": torch.randn(batch, 3, size, size, generator=g).to(device),
        "tokens": tokens.to(device),
        "place_id": torch.arange(batch // views).repeat_interleave(views).to(device),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(module: CMPLModule, opt: torch.optim.Optimizer, batch: dict, steps: int, device: torch.device, amp) -> float:
    """Seconds per training step, averaged over ``steps``."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with amp():
            loss, _ = module.compute_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return (time.perf_counter() - start) / steps


@torch.inference_mode()
def images_per_s(fn, images: torch.Tensor, steps: int, device: torch.device, amp) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with amp():
            fn(images)
    sync(device)
    return steps * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dlgpr-tiny")
    ap.add_argument("--taps", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--local_dim", type=int, default=128)
    ap.add_argument("--extractor_heads", type=int, default=4)
    ap.add_argument("--keep_ratio", type=float, default=0.5)
    ap.add_argument("--text_length", type=int, default=248)
    ap.add_argument("--batch", type=int, default=64, help="P x K pairs per step (default 16 places x 4 views)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="steps per timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--eval_batch", type=int, default=256)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"model {args.model}, taps {args.taps}, batch {args.batch}, text {args.text_length} tokens, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}")
    models = {name: build(args, name == "full", device) for name in ("baseline", "full")}
    opts = {n: torch.optim.AdamW(m.optimizer_groups(), lr=1e-5) for n, m in models.items()}
    batch = make_batch(models["full"], args.batch, args.views, device)
    for name, m in models.items():  # warm-up (allocator, kernels)
        time_steps(m, opts[name], batch, 1, device, amp)

    step = {n: [] for n in models}
    for _ in range(args.repeats):
        for name, m in models.items():
            step[name].append(time_steps(m, opts[name], batch, args.steps, device, amp))
    med = {n: statistics.median(v) for n, v in step.items()}
    for n in models:
        print(f"train step {n:8s}: median {1000 * med[n]:8.1f} ms  ({args.batch / med[n]:7.1f} pairs/s)  runs {[round(1000 * s, 1) for s in step[n]]}")
    print(f"ratio full / baseline: {med['full'] / med['baseline']:.2f}  (target <= 1.50); backbone share of the full step: {med['baseline'] / med['full']:.0%}")

    full = models["full"].eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.eval_batch, 3, full.clip.image_size, full.clip.image_size, generator=g).to(device)
    rates: dict[str, list[float]] = {"retrieval embedding (global + local)": [], "global only": []}
    fns = {"retrieval embedding (global + local)": full.model.encode_gallery, "global only": full.clip.encode_image}
    for fn in fns.values():
        images_per_s(fn, images, 1, device, amp)
    for _ in range(args.repeats):
        for name, fn in fns.items():
            rates[name].append(images_per_s(fn, images, max(1, args.steps // 2), device, amp))
    for name, r in rates.items():
        print(f"gallery encoding, {name}: median {statistics.median(r):8.1f} images/s")
    print(f"retrieval embedding width: {full.model.retrieval_dim} floats per image (global {full.model.embed_dim})")


if __name__ == "__main__":
    main()
