"""Dialogue-loop benchmark: 5 rounds for 1,000 queries with the oracle questioner and user.

    python scripts/bench_dialogue.py                       # tiny CLIP (random weights), default world
    python scripts/bench_dialogue.py --ckpt <retriever.ckpt> --repeats 5

Times the batched ``run_dialogue`` (one text-encoder pass and one search per round) split into
encoding, search and question/answer, and the naive loop that runs the same dialogues one query
at a time (``run_dialogue`` on a single query), on ``--naive_queries`` queries; the ratio is the
per-query time of the naive loop over that of the batched loop. Medians over ``--repeats``.
The gallery is every image of the world (8,000 for the default SynthCities).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.data.synth import SynthCitiesConfig, ensure_synthcities
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.evaluation import build_queries
from dlgpr.dialogue.loop import run_dialogue
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.modules.clip_baseline import CLIPBaselineModule
from dlgpr.retrieval import ModuleTextRetriever, encode_gallery, load_retriever


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default="data/synthcities")
    ap.add_argument("--ckpt", default=None, help="retriever checkpoint; default: a tiny CLIP with random weights")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--naive_queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top_k", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)

    ensure_synthcities(args.data_dir, SynthCitiesConfig())
    module = load_retriever(args.ckpt) if args.ckpt else CLIPBaselineModule().eval()
    dm = DQCitiesDataModule(data_dir=args.data_dir, synthetic=None)
    dm.set_preprocessing(module.preprocessing())
    dm.setup("test")
    start = time.perf_counter()
    gallery = encode_gallery(module, args.data_dir, ("train", "val", "test"), num_workers=2)
    encode_gallery_s = time.perf_counter() - start
    all_records = [r for split in ("train", "val", "test") for r in dm.records(split)]
    queries = build_queries(all_records, args.queries, seed=0)
    retriever = ModuleTextRetriever(module)
    print(f"gallery: {len(gallery)} images encoded in {encode_gallery_s:.1f} s; {len(queries)} queries, {args.rounds} rounds")

    def batched():
        return run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), queries, gallery, rounds=args.rounds, top_k=args.top_k)

    def naive():
        return [run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), [q], gallery, rounds=args.rounds, top_k=args.top_k)
                for q in queries[: args.naive_queries]]

    batched_s, naive_s, splits = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        res = batched()
        batched_s.append(time.perf_counter() - start)
        splits.append(res.timings)
        start = time.perf_counter()
        singles = naive()
        naive_s.append(time.perf_counter() - start)
    # the two loops must agree on every dialogue they both ran
    for i, s in enumerate(singles):
        assert torch.equal(s.ranks[0], res.ranks[i]), "batched and per-query loops disagree"

    b, n = statistics.median(batched_s), statistics.median(naive_s)
    med = {k: statistics.median(t[k] for t in splits) for k in splits[0]}
    per_q_b, per_q_n = b / len(queries), n / min(args.naive_queries, len(queries))
    print(f"batched: {b:.2f} s for {len(queries)} queries (median of {args.repeats}): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()))
    print(f"naive per-query loop: {n:.2f} s for {min(args.naive_queries, len(queries))} queries")
    print(f"per query: batched {1000 * per_q_b:.2f} ms, naive {1000 * per_q_n:.2f} ms -> speed-up {per_q_n / per_q_b:.1f}x")
    s = res.summary()
    print("oracle teacher, cumulative R@1 by round: " + " ".join(f"{100 * s[f'round{t}/recall@1']:.1f}" for t in range(args.rounds + 1)))


if __name__ == "__main__":
    main()
