"""What each cheaper-step lever of the retriever recipe buys: CMPL training steps side by side.

    python scripts/bench_retriever_step.py                 # needs data/synthcities (make demo makes it)
    python scripts/bench_retriever_step.py --repeats 7 --json

Four settings of the same full CMPL step (forward, Eq. 6 loss, backward, AdamW), timed
interleaved (a, b, c, d, a, b, ...) so that a noisy machine slows all alike; medians over
``--repeats``; ratios against the first:
  a. the former recipe: ``dlgpr-tiny`` (64 px, 8 px patches), every text padded to the 248-token
     context, float32, 16 places x 4 views;
  b. a + texts padded to the longest of the batch (``backbone.pad_to_longest``);
  c. b + bf16 autocast for the towers and heads (losses stay float32: ``dlgpr.losses.float32``);
  d. the new recipe: ``dlgpr-mini`` (128 px, 16 px patches: the same 64 patches) with c's
     settings and 32 places x 2 views, half of the texts dialogue-shaped (as configs/cmpl.yaml).
The texts are real: SynthCities val descriptions (and captions + description sentences for d).
Weights are random: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time
from pathlib import Path

import torch

from dlgpr.data.reader import iter_records
from dlgpr.data.shards import read_manifest
from dlgpr.data.streaming import dialogue_style_query
from dlgpr.losses import CMPLLoss
from dlgpr.models.clip_backbone import ClipBackboneConfig
from dlgpr.models.cmpl import CMPLConfig
from dlgpr.modules.cmpl import CMPLModule

SETTINGS = {
    "a_former": dict(model="dlgpr-tiny", long=248, pad_longest=False, bf16=False, places=16, views=4, query_prob=0.0),
    "b_pad_longest": dict(model="dlgpr-tiny", long=248, pad_longest=True, bf16=False, places=16, views=4, query_prob=0.0),
    "c_bf16": dict(model="dlgpr-tiny", long=248, pad_longest=True, bf16=True, places=16, views=4, query_prob=0.0),
    "d_new_recipe": dict(model="dlgpr-mini", long=None, pad_longest=True, bf16=True, places=32, views=2, query_prob=0.5),
}


def texts_of(data_dir: Path, n: int) -> list[tuple[str, str]]:
    manifest = read_manifest(data_dir)
    out: list[tuple[str, str]] = []
    for shard in manifest.split_shards("val"):
        out += [(r.initial_caption, r.description) for r in iter_records(data_dir / shard.path)]
        if len(out) >= n:
            break
    if len(out) < n:
        raise ValueError(f"{data_dir}: fewer than {n} val records")
    return out[:n]


def build(setting: dict) -> tuple[CMPLModule, torch.optim.Optimizer]:
    torch.manual_seed(0)
    backbone = ClipBackboneConfig(model_name=setting["model"], long_text_length=setting["long"], pad_to_longest=setting["pad_longest"])
    module = CMPLModule(backbone=backbone, cmpl=CMPLConfig(), loss=CMPLLoss(), logit_scale=14.29, learnable_logit_scale=True)
    return module, torch.optim.AdamW(module.optimizer_groups(), lr=1e-5)


def batch_of(module: CMPLModule, setting: dict, texts: list[tuple[str, str]], seed: int) -> dict:
    rng = random.Random(seed)
    n = setting["places"] * setting["views"]
    chosen = rng.sample(texts, n)
    strings = [dialogue_style_query(c, d, rng, 5) if rng.random() < setting["query_prob"] else d for c, d in chosen]
    size = module.clip.image_size
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 3, size, size, generator=g),
        "tokens": module.preprocessing().tokenizer(strings),
        "place_id": torch.arange(setting["places"]).repeat_interleave(setting["views"]),
    }


def step_seconds(module: CMPLModule, opt: torch.optim.Optimizer, batch: dict, bf16: bool, steps: int) -> float:
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    for _ in range(steps):
        with amp:
            loss, _ = module.compute_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default="data/synthcities")
    ap.add_argument("--steps", type=int, default=3, help="steps per timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    texts = texts_of(Path(args.data_dir), 512)
    runs = {}
    for name, setting in SETTINGS.items():
        module, opt = build(setting)
        batches = [batch_of(module, setting, texts, seed) for seed in range(args.repeats)]
        step_seconds(module, opt, batches[0], setting["bf16"], 1)  # warm-up
        runs[name] = (module, opt, batches, setting)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, (module, opt, batches, setting) in runs.items():
            times[name].append(step_seconds(module, opt, batches[r], setting["bf16"], args.steps))
    med = {n: statistics.median(v) for n, v in times.items()}
    base = med["a_former"]
    result = {"threads": torch.get_num_threads(), "steps": args.steps, "repeats": args.repeats,
              "median_step_s": med, "pairs_per_s": {n: SETTINGS[n]["places"] * SETTINGS[n]["views"] / med[n] for n in med},
              "speedup_vs_former": {n: base / med[n] for n in med}, "runs_s": times}
    for n in med:
        print(f"{n:14s}: median {1000 * med[n]:7.1f} ms/step  {result['pairs_per_s'][n]:6.1f} pairs/s  x{base / med[n]:.2f} vs former  runs {[round(1000 * t) for t in times[n]]}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
