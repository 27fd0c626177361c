"""Exact top-k search: torch (chunked matmul + topk) against faiss' IndexFlatIP, and the floor.

    python scripts/bench_search.py --queries 1000 --gallery 10000 --dim 512 --k 10 --repeats 5

Times ``dlgpr.search.topk_search`` with each backend on random unit vectors (medians of
``--repeats``, after one warm-up call) and reports the arithmetic floor: the 2 Q G D flops of
the score matrix at the fp32 matmul rate measured on the same machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from dlgpr.search import topk_search


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--gallery", type=int, default=10000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(args.queries, args.dim, generator=gen), dim=1)
    g = F.normalize(torch.randn(args.gallery, args.dim, generator=gen), dim=1)
    flops = 2.0 * args.queries * args.gallery * args.dim
    matmul_s = _median_s(lambda: q @ g.T, args.repeats)
    out = {
        "queries": args.queries, "gallery": args.gallery, "dim": args.dim, "k": args.k, "threads": torch.get_num_threads(),
        "matmul_gflops": round(flops / matmul_s / 1e9, 1),
        "floor_ms": round(1e3 * matmul_s, 1),
        "torch_ms": round(1e3 * _median_s(lambda: topk_search(q, g, args.k, backend="torch"), args.repeats), 1),
        "faiss_ms": round(1e3 * _median_s(lambda: topk_search(q, g, args.k, backend="faiss"), args.repeats), 1),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
