"""How much of a retriever's quality survives on a SynthCities world it has never seen.

    python scripts/evaluate_generalisation.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt
    python scripts/evaluate_generalisation.py --ckpt ... --other.seed 2 --other.first_city 10 --out runs/generalisation

Evaluates the checkpoint with the same protocol on two worlds' test splits:
- ``--home``: the world it was trained on (default: the default world of ``configs/cmpl.yaml``);
- ``--other``: a world with another seed and other cities (default seed 1, cities 5-9: other
  names, style priors and place ids), generated into ``--other_dir`` if missing.
For each: static text-to-image retrieval with full descriptions (every description of the split
against every image, R@1/5/10) and the 5-round dialogue (oracle teacher over the top 30, oracle
user, every test place from its vague caption; cumulative R@1/R@5 per round, BRI). Prints a table
with the other world's share of the home world's static R@1 and round-5 R@1, and writes
``results.json`` and ``table.md`` to ``--out``. Nothing is trained or tuned on either world here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from jsonargparse import ArgumentParser

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.data.synth import SynthCitiesConfig, ensure_synthcities
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.evaluation import bind_retriever, build_queries
from dlgpr.dialogue.loop import run_dialogue
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.metrics import recall_at_k
from dlgpr.ranking import rank_of_place
from dlgpr.retrieval import ModuleTextRetriever, encode_gallery, load_retriever


def evaluate_world(module, data_dir: Path, split: str, rounds: int, top_k: int, num_queries: int | None) -> dict:
    dm = DQCitiesDataModule(data_dir=str(data_dir), synthetic=None)
    dm.set_preprocessing(module.preprocessing())
    dm.setup("test")
    records = dm.records(split)
    gallery = encode_gallery(module, data_dir, split)
    retriever = ModuleTextRetriever(module)
    text = retriever.embed_texts(list(gallery.descriptions))  # [N, D] each image's own description
    labels = gallery.place_ids  # [N] one description per gallery image, same order
    ranks = rank_of_place(text, labels, gallery.search_embeddings(text), labels, k=10, backend="torch")
    static = {f"recall@{k}": v for k, v in recall_at_k(ranks, [1, 5, 10]).items()}
    teacher = OracleTeacherQuestioner()
    bind_retriever(teacher, retriever)
    queries = build_queries(records, num_queries, seed=0)
    result = run_dialogue(retriever, teacher, OracleAnswerer(), queries, gallery, rounds=rounds, top_k=top_k)
    summary = result.summary([1, 5])
    dialogue = {k: float(v) for k, v in summary.items() if isinstance(v, float) and (k == "bri" or "/recall@" in k)}
    return {"data_dir": str(data_dir), "split": split, "descriptions": len(labels), "places": int(labels.unique().numel()),
            "dialogue_queries": len(queries), "static": static, "dialogue": dialogue}


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", type=Path, required=True, help="retriever checkpoint written by `python -m dlgpr fit`")
    parser.add_argument("--home_dir", type=Path, default=Path("data/synthcities"))
    parser.add_argument("--home", type=SynthCitiesConfig, default=SynthCitiesConfig())
    parser.add_argument("--other_dir", type=Path, default=Path("data/synthcities-seed1"))
    parser.add_argument("--other", type=SynthCitiesConfig, default=SynthCitiesConfig(seed=1, first_city=5))
    parser.add_argument("--split", default="test")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top_k", type=int, default=30, help="candidates the oracle teacher sees")
    parser.add_argument("--num_queries", type=int | None, default=None, help="dialogue queries per world (None: every place)")
    parser.add_argument("--out", type=Path, default=Path("runs/generalisation"))
    args = parser.parse_args(argv)
    init = parser.instantiate_classes(args)
    home, other = init.home, init.other
    if dataclasses.replace(home, num_workers=0).output_signature() == dataclasses.replace(other, num_workers=0).output_signature():
        raise ValueError("--other is the same world as --home")
    ensure_synthcities(args.home_dir, home)
    ensure_synthcities(args.other_dir, other)
    module = load_retriever(args.ckpt, map_location="cuda" if torch.cuda.is_available() else "cpu")
    worlds = {
        "home": evaluate_world(module, args.home_dir, args.split, args.rounds, args.top_k, args.num_queries),
        "other": evaluate_world(module, args.other_dir, args.split, args.rounds, args.top_k, args.num_queries),
    }
    r = args.rounds
    retention = {
        "static_recall@1": worlds["other"]["static"]["recall@1"] / max(worlds["home"]["static"]["recall@1"], 1e-9),
        f"round{r}_recall@1": worlds["other"]["dialogue"][f"round{r}/recall@1"] / max(worlds["home"]["dialogue"][f"round{r}/recall@1"], 1e-9),
    }
    lines = [f"Checkpoint `{args.ckpt}`, {args.split} splits; dialogue: oracle teacher (top {args.top_k}), oracle user, {r} rounds.", "",
             f"| world | static R@1 | R@5 | R@10 | dialogue R@1 round 0 | round {r} | R@5 round {r} | BRI |", "|---|---|---|---|---|---|---|---|"]
    for name, cfg in (("home", home), ("other", other)):
        w = worlds[name]
        lines.append(f"| {name} (seed {cfg.seed}, cities {cfg.first_city}-{cfg.first_city + cfg.num_cities - 1}) | "
                     f"{100 * w['static']['recall@1']:.1f} | {100 * w['static']['recall@5']:.1f} | {100 * w['static']['recall@10']:.1f} | "
                     f"{100 * w['dialogue']['round0/recall@1']:.1f} | {100 * w['dialogue'][f'round{r}/recall@1']:.1f} | "
                     f"{100 * w['dialogue'][f'round{r}/recall@5']:.1f} | {w['dialogue']['bri']:.3f} |")
    lines += ["", f"Other world / home world: static R@1 {100 * retention['static_recall@1']:.0f} %, round-{r} R@1 {100 * retention[f'round{r}_recall@1']:.0f} %."]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table)
    payload = {"ckpt": str(args.ckpt), "home": dataclasses.asdict(home), "other": dataclasses.asdict(other), "worlds": worlds, "retention": retention}
    (args.out / "results.json").write_text(json.dumps(payload, indent=1))
    print(table)
    return payload


if __name__ == "__main__":
    main()
