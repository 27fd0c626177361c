"""Pieces shared by the dialogue callback and ``scripts/evaluate_dialogue.py``.

``build_queries`` picks the searches (one per place: its vague initial caption, the target's
description of view 0 and its attributes); ``encode_gallery`` embeds a split's images with a
retriever module; ``table_markdown`` writes the paper's Table 1 shape; ``recall_figure`` plots
cumulative recall against the round.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from dlgpr.data.jpeg import shard_image_loader
from dlgpr.data.reader import BadSampleLog, iter_shard
from dlgpr.data.schema import PlaceRecord
from dlgpr.data.shards import read_manifest
from dlgpr.data.streaming import ImageTransform
from dlgpr.dialogue.loop import DialogueQuery, DialogueResult, Gallery
from dlgpr.dialogue.types import Target


def build_queries(records: Iterable[PlaceRecord], num_queries: int | None = None, seed: int = 0) -> list[DialogueQuery]:
    """One query per place (its lowest view holds the target description), a seeded subset if asked."""
    first: dict[int, PlaceRecord] = {}
    for r in records:
        if r.place_id not in first or r.view < first[r.place_id].view:
            first[r.place_id] = r
    places = sorted(first)
    if num_queries is not None and num_queries < len(places):
        places = sorted(random.Random(f"dialogue-queries/{seed}").sample(places, num_queries))
    return [
        DialogueQuery(i, first[p].initial_caption, Target(p, first[p].description, first[p].attributes))
        for i, p in enumerate(places)
    ]


def bind_retriever(questioner: Any, retriever: Any) -> None:
    """Give the retriever to questioners that use it (PlugIR scores hypothetical answers with it)."""
    if hasattr(questioner, "bind_retriever"):
        questioner.bind_retriever(retriever)


@torch.inference_mode()
def encode_gallery(module: Any, loader: Iterable[dict], records_by_id: dict[tuple[int, int], PlaceRecord]) -> Gallery:
    """Embed every image of ``loader`` with ``module.encode_images`` and join them with their records."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    embs, recs = [], []
    for batch in loader:
        embs.append(module.encode_images(batch["image"].to(device)).float().cpu())
        recs += [records_by_id[(int(p), int(v))] for p, v in zip(batch["place_id"], batch["view"])]
    module.train(was_training)
    return Gallery.from_records(recs, torch.cat(embs))


@torch.inference_mode()
def encode_split_gallery(module: Any, data_dir: str | Path, split: str | Sequence[str], batch_size: int = 256, with_images: bool = False) -> Gallery:
    """Every image of ``split`` (one split or several) in ``data_dir``, embedded with ``module.encode_images``.

    Reads the shards directly, in manifest order, on this process alone (whatever the DDP rank:
    a reward that re-ranks needs the whole gallery on every rank). Bad samples are skipped and
    reported once. ``with_images`` keeps the JPEG bytes for vision-language questioners.
    """
    data_dir = Path(data_dir)
    splits = [split] if isinstance(split, str) else list(split)
    manifest = read_manifest(data_dir)
    shards = [s for name in splits for s in manifest.split_shards(name)]
    if not shards:
        raise ValueError(f"{data_dir}: the manifest lists no shard of split {split!r}")
    transform = ImageTransform(module.preprocessing())
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    bad = BadSampleLog()
    embs: list[torch.Tensor] = []
    records: list[PlaceRecord] = []
    pending: list[torch.Tensor] = []
    for shard in shards:
        for sample in iter_shard(data_dir / shard.path, bad, shard.samples):
            records.append(sample.record)
            pending.append(transform(sample.image))
            if len(pending) == batch_size:
                embs.append(module.encode_images(torch.stack(pending).to(device)).float().cpu())
                pending = []
    if pending:
        embs.append(module.encode_images(torch.stack(pending).to(device)).float().cpu())
    module.train(was_training)
    bad.report(f"{data_dir} {split} gallery")
    if not records:
        raise ValueError(f"{data_dir}: split {split!r} has no readable image")
    image_fn = shard_image_loader(data_dir, [s.path for s in shards], [r.key for r in records]) if with_images else None
    return Gallery.from_records(records, torch.cat(embs), image_fn=image_fn)


def table_markdown(results: dict[str, DialogueResult], report_rounds: Sequence[int] = (3, 5), ks: Sequence[int] = (1, 5)) -> str:
    """Table 1 shape: an "Initial" row (round 0), then each questioner at ``report_rounds``.

    Columns: cumulative R@K (in %) and BRI (over all rounds of the run).
    """
    head = "| method | round | " + " | ".join(f"R@{k}" for k in ks) + " | BRI | mean PRG |"
    sep = "|" + "---|" * (len(ks) + 4)
    lines = [head, sep]
    first = next(iter(results.values()))
    s0 = first.summary(ks)
    lines.append("| Initial | 0 | " + " | ".join(f"{100 * s0[f'round0/recall@{k}']:.1f}" for k in ks) + " | - | - |")
    for name, res in results.items():
        s = res.summary(ks)
        for t in report_rounds:
            if t > res.rounds:
                continue
            prg_mean = sum(s[f"round{u}/prg"] for u in range(1, t + 1)) / t
            bri_text = f"{s['bri']:.3f}" if t == res.rounds else "-"
            lines.append(f"| {name} | {t} | " + " | ".join(f"{100 * s[f'round{t}/recall@{k}']:.1f}" for k in ks) + f" | {bri_text} | {prg_mean:.3f} |")
    return "\n".join(lines) + "\n"


def recall_figure(results: dict[str, DialogueResult], k: int = 1):
    """Matplotlib figure of cumulative R@k against the round, one line per questioner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, res in results.items():
        s = res.summary((k,))
        ax.plot(range(res.rounds + 1), [100 * s[f"round{t}/recall@{k}"] for t in range(res.rounds + 1)], marker="o", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel(f"cumulative R@{k} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
