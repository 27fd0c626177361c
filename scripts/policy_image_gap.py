"""Does an image-conditioned policy read its image? Its loss on validation completions with each
example's own image, and with another example's image (the batch's images rotated by one).

    python scripts/policy_image_gap.py --policy lightning_logs/globe/pretrain/policy --task caption
    python scripts/policy_image_gap.py --policy lightning_logs/globe/sft/policy --task cot

The examples are the validation split of ``datamodules.geo_policy.GeoPolicyDataModule`` for the
task (``caption``: the geo world's val images and their descriptions; ``cot``: the held-out kept
reasoning samples), the same the training's ``val/loss`` reads. Prints the mean loss per
completion token (nats) with the right images and with the rotated ones, and the gap between the
two: a policy that ignores its image has a gap of 0, and the gap grows as the completions come to
depend on what the image shows. ``--city_probe`` adds what the frozen image embedding itself
holds: a ridge probe of the city, trained on the world's train images and scored on its val images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datamodules.geo_policy import IGNORE_INDEX, GeoPolicyDataModule  # noqa: E402
from dlgpr.metrics import linear_probe  # noqa: E402
from dlgpr.models.prompting import PromptConfig  # noqa: E402
from dlgpr.models.questioner import PolicyConfig, load_policy  # noqa: E402


@torch.no_grad()
def completion_loss(model: Any, batches: list[dict[str, Any]], rotate: bool) -> float:
    """Mean cross-entropy per labelled token over ``batches`` (the SFT collator's), the images of
    each batch rotated by one when ``rotate`` (a batch of one keeps its image: rotate needs two)."""
    total, tokens = 0.0, 0
    for batch in batches:
        images = list(batch["images"])
        if rotate:
            images = images[1:] + images[:1]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=model.pixel_values(images))
        logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]  # [B, L-1, V], [B, L-1]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                         ignore_index=IGNORE_INDEX, reduction="sum"))
        tokens += int((labels != IGNORE_INDEX).sum())
    if not tokens:
        raise ValueError("no labelled completion tokens in the validation batches")
    return total / tokens


def image_gap(model: Any, datamodule: GeoPolicyDataModule) -> dict[str, float]:
    """``{"right", "rotated", "gap", "examples"}`` over the datamodule's validation batches."""
    was_training = model.training
    model.eval()
    try:
        batches = list(datamodule.val_dataloader())
        right, rotated = completion_loss(model, batches, False), completion_loss(model, batches, True)
    finally:
        model.train(was_training)
    return {"right": right, "rotated": rotated, "gap": rotated - right, "examples": sum(len(b["images"]) for b in batches)}


@torch.no_grad()
def city_probe(model: Any, world_dir: str, train_split: str = "train", eval_split: str = "val") -> dict[str, float]:
    """Is the city in the policy's frozen image embedding at all? The linear probe of
    ``dlgpr.metrics.linear_probe`` (the one ``scripts/query_shapes.py`` reads attributes with) on the
    unit image embeddings of ``train_split``, scored on ``eval_split``: ``{"accuracy", "majority",
    "examples"}`` (``majority``: the most frequent city's share of ``eval_split``, what a constant
    answer scores)."""
    from dlgpr.data.geo import read_synthcities_geo

    def embed(split: str) -> tuple[torch.Tensor, list[str]]:
        samples = list(read_synthcities_geo(world_dir, split))
        vecs = [torch.nn.functional.normalize(model.tower.encode_image(model.pixel_values([s.image() for s in samples[i:i + 128]])).float(), dim=-1)
                for i in range(0, len(samples), 128)]
        return torch.cat(vecs), [s.city for s in samples]

    x_train, y_train = embed(train_split)
    x_eval, y_eval = embed(eval_split)
    predicted = linear_probe(x_train, y_train, x_eval)
    accuracy = sum(p == y for p, y in zip(predicted, y_eval)) / len(y_eval)
    majority = max(y_eval.count(c) for c in set(y_eval)) / len(y_eval)
    return {"accuracy": accuracy, "majority": majority, "examples": len(y_eval)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="an exported image policy folder (dlgpr_policy.json)")
    ap.add_argument("--task", choices=["caption", "cot"], default="caption")
    ap.add_argument("--world_dir", default="data/synthcities-geo")
    ap.add_argument("--reasoning_dir", default="data/geo_reasoning/synthcities")
    ap.add_argument("--max_val_samples", type=int, default=96, help="as the training configs' validation")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--city_probe", action="store_true", help="also: a ridge probe of the city on the frozen image embedding (train -> val)")
    args = ap.parse_args(argv)
    if not (Path(args.policy) / "dlgpr_policy.json").is_file():
        raise SystemExit(f"{args.policy}: not an exported image policy (no dlgpr_policy.json)")
    torch.manual_seed(args.seed)
    model, processor = load_policy(PolicyConfig(model=args.policy))
    if not getattr(model, "takes_pixel_values", False):
        raise SystemExit(f"{args.policy}: not an image-conditioned policy (ImagePolicy)")
    dm = GeoPolicyDataModule(task=args.task, world_dir=args.world_dir, reasoning_dir=args.reasoning_dir, max_val_samples=args.max_val_samples,
                             val_batch_size=args.batch_size, seed=args.seed, prompt=PromptConfig(max_prompt_tokens=256))
    dm.set_processor(processor, True, "sft")
    dm.setup("fit")
    out = image_gap(model, dm)
    if args.city_probe:
        out.update({f"probe_{k}": v for k, v in city_probe(model, args.world_dir).items()})
    print(json.dumps({"policy": args.policy, "task": args.task, **{k: round(v, 4) for k, v in out.items()}}))
    return out


if __name__ == "__main__":
    main()
