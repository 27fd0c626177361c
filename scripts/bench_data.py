"""Data benchmarks: SynthCities generation time, loader throughput against training consumption.

    python scripts/bench_data.py                      # default world, 5 repeats
    python scripts/bench_data.py --repeats 3 --steps 20

Prints medians over ``--repeats`` runs (the build machines are noisy):
  1. generation time of the default world (5 x 400 x 4 images at 128 px, 2 processes);
  2. training loader (place-batched, ``--num_workers`` workers) alone, samples/s;
  3. the training step of the CLIP baseline (77-token text; CMPL: scripts/bench_cmpl.py) on batches held in
     memory, samples/s, i.e. what training can consume;
  4. the same step fed live by the loader, samples/s; ratio 4/3 close to 1 means the loader is
     not the bottleneck.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.data.synth import SynthCitiesConfig, ensure_synthcities
from dlgpr.losses import sdm_loss
from dlgpr.modules.clip_baseline import CLIPBaselineModule


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_generation(repeats: int) -> tuple[float, Path]:
    times = []
    keep = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    for r in range(repeats):
        out = keep / f"world{r}"
        start = time.perf_counter()
        ensure_synthcities(out, SynthCitiesConfig())
        times.append(time.perf_counter() - start)
    return _median(times), keep / "world0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30, help="training steps per throughput measurement")
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--data_dir", default=None, help="reuse an existing default world instead of timing generation")
    args = ap.parse_args()
    torch.manual_seed(0)

    if args.data_dir is None:
        gen_s, data_dir = bench_generation(args.repeats)
        print(f"generation (default world, 8000 images, 2 processes): median {gen_s:.1f} s over {args.repeats}")
    else:
        data_dir = Path(args.data_dir)

    model = CLIPBaselineModule()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dm = DQCitiesDataModule(data_dir=str(data_dir), synthetic=None, num_workers=args.num_workers)
    dm.set_preprocessing(model.preprocessing())
    dm.setup("fit")

    def step(batch: dict) -> None:
        img = model.backbone.encode_image(batch["image"])
        txt = model.backbone.encode_text(batch["tokens"])
        loss, _ = sdm_loss(txt, img, batch["place_id"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    loader_rates, step_rates, fed_rates = [], [], []
    batch_size = dm.places_per_batch * dm.views_per_place
    for r in range(args.repeats):
        loader = dm.train_dataloader()
        loader._epoch_fn = lambda r=r: r  # a fresh shuffle each repeat
        start = time.perf_counter()
        batches = list(islice(iter(loader), args.steps))
        loader_rates.append(len(batches) * batch_size / (time.perf_counter() - start))

        step(batches[0])  # warm-up
        start = time.perf_counter()
        for b in batches:
            step(b)
        step_rates.append(len(batches) * batch_size / (time.perf_counter() - start))

        start = time.perf_counter()
        n = 0
        for b in islice(iter(loader), args.steps):
            step(b)
            n += 1
        fed_rates.append(n * batch_size / (time.perf_counter() - start))

    lo, st, fe = _median(loader_rates), _median(step_rates), _median(fed_rates)
    print(f"loader alone ({args.num_workers} workers, batches of {batch_size}): median {lo:.0f} samples/s")
    print(f"training step on in-memory batches: median {st:.0f} samples/s")
    print(f"training step fed by the loader:    median {fe:.0f} samples/s")
    print(f"loader / consumption = {lo / st:.1f}x ; fed / in-memory = {fe / st:.2f}")


if __name__ == "__main__":
    main()
