"""PlaceFinder latency: from a person's answer to the updated candidates, questioner excluded.

    python scripts/bench_place_finder.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt \
        --data_dir data/synthcities --index runs/index/test --threads 2

Opens one session per place (``--queries`` test places, their vague captions), lets the oracle
teacher ask (not timed) and the oracle user answer, and times ``FinderSession.answer``: cleaning
the text, composing ``d_t``, encoding it, searching the whole gallery with exact ranks, the
stopping decision and the candidate list. ``--rounds`` answers per session; ``--repeats`` runs;
the figure is the median over runs of each run's median answer, with each run's 90th
percentile and the split into encode / search. Without ``--index`` the split is encoded first
(not timed).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from datamodules.dqcities import DQCitiesDataModule
from dlgpr.app.finder import FinderConfig, PlaceFinder
from dlgpr.app.index import GalleryIndex, build_index, retriever_fingerprint
from dlgpr.data.turns import AnswerRequest
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.evaluation import build_queries
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.dialogue.stopping import StoppingConfig
from dlgpr.retrieval import ModuleTextRetriever, load_retriever


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data_dir", default="data/synthcities")
    ap.add_argument("--split", default="test")
    ap.add_argument("--index", default=None, help="a saved gallery index (scripts/index_gallery.py); default: encode the split first")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top_k", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    module = load_retriever(args.ckpt)
    if args.index:
        start = time.perf_counter()
        index = GalleryIndex.load(args.index, fingerprint=retriever_fingerprint(module))
        print(f"index loaded and checked in {time.perf_counter() - start:.2f} s")
    else:
        index = build_index(module, args.data_dir, args.split, checkpoint=args.ckpt)
    dm = DQCitiesDataModule(data_dir=args.data_dir, synthetic=None)
    dm.set_preprocessing(module.preprocessing())
    dm.setup("test")
    queries = build_queries(dm.records(args.split), args.queries, seed=0)
    config = FinderConfig(top_k=args.top_k, show=5, stopping=StoppingConfig(threshold=float("inf")), max_questions=None)
    finder = PlaceFinder(ModuleTextRetriever(module), index, OracleTeacherQuestioner(), config)
    user = OracleAnswerer()
    finder.start("warm-up").answer("The door is red.")

    medians, p90s, encode, search = [], [], [], []
    for _ in range(args.repeats):
        times = []
        for q in queries:
            s = finder.start(q.initial_description, target_place_id=q.target.place_id)
            for _ in range(args.rounds):
                question = s.next_question()
                if question is None:
                    continue
                reply = user.answer([AnswerRequest(q.query_id, s.questions_asked + 1, question.text, q.target, tuple(s.history))])[0].text
                start = time.perf_counter()
                s.answer(reply)
                times.append(time.perf_counter() - start)
                encode.append(s.rounds[-1].timings["encode_s"])
                search.append(s.rounds[-1].timings["search_s"])
        medians.append(statistics.median(times))
        p90s.append(statistics.quantiles(times, n=10)[-1])
    out = {
        "gallery": len(index), "answers_per_run": len(times), "runs": args.repeats, "threads": args.threads,
        "median_ms": round(1000 * statistics.median(medians), 1), "run_medians_ms": [round(1000 * m, 1) for m in medians],
        "p90_ms_worst_run": round(1000 * max(p90s), 1), "run_p90s_ms": [round(1000 * p, 1) for p in p90s], "encode_median_ms": round(1000 * statistics.median(encode), 1),
        "search_median_ms": round(1000 * statistics.median(search), 1), "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    print(json.dumps(out))
    print(f"answer -> updated candidates: median {out['median_ms']} ms (runs {out['run_medians_ms']}), p90 by run {out['run_p90s_ms']} ms; "
          f"encode {out['encode_median_ms']} ms, search {out['search_median_ms']} ms, {len(index)} images")


if __name__ == "__main__":
    main()
