"""Exact positive ranks over a whole gallery: peak memory and time, the former code against the new.

    python scripts/bench_exact_ranks.py --queries 10000 --gallery 1000000 --dim 512 --positives 20 --repeats 3

Ranks ``--queries`` random unit vectors against ``--gallery`` random unit vectors of ``--dim``
dimensions, ``--positives`` images per place (every query's place has that many), with
``dlgpr.ranking.exact_positive_ranks`` (``new``) and with a copy of the function it replaced
(``old``, kept here only for this comparison: one ``[1024, G]`` score block and two comparison
passes over it per positive). Each run is its own process, so that its peak memory is its own:
``peak_extra_mib`` is the process's maximum resident set during the call minus its resident set
just before it (queries, gallery and rows already built), i.e. what the call itself allocated at
its peak. CPU tensors come from malloc, which returns large blocks to the system when freed, so
the resident set follows the tensors. Prints one JSON line per run, then the medians per variant
and, when both ran on the same sizes, whether their ranks are equal.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from dlgpr.ranking import TIE_EPS, exact_positive_ranks, expected_ranks, positive_rows


def old_exact_positive_ranks(queries, gallery, rows, k: int = 0, chunk: int = 1024, eps: float = TIE_EPS):
    """The former ``dlgpr.ranking.exact_positive_ranks`` (before the bounded-memory counting), for the side-by-side only."""
    k = min(int(k), gallery.shape[0])
    g = gallery.float()
    out_r, out_s, out_i = [], [], []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start : start + chunk].float().to(g.device) @ g.T  # [c, G]
        if k:
            s, i = sim.topk(k, dim=1)  # [c, k]
            out_s.append(s.cpu())
            out_i.append(i.cpu())
        r = rows[start : start + chunk].to(g.device)  # [c, P]
        valid = r >= 0  # [c, P]
        ps = sim.gather(1, r.clamp(min=0))  # [c, P]
        above, near = torch.zeros_like(r), torch.zeros_like(r)  # [c, P]
        for p in range(r.shape[1]):
            col = ps[:, p : p + 1]  # [c, 1]
            above[:, p] = (sim > col + eps).sum(dim=1)
            below = (sim < col - eps).sum(dim=1)  # [c]
            near[:, p] = sim.shape[1] - above[:, p] - below
        pos_above = ((ps[:, None, :] > ps[:, :, None] + eps) & valid[:, None, :]).sum(dim=-1)  # [c, P]
        pos_near = (((ps[:, None, :] - ps[:, :, None]).abs() <= eps) & valid[:, None, :]).sum(dim=-1)  # [c, P]
        out_r.append(expected_ranks(ps.cpu(), valid.cpu(), (above - pos_above).cpu(), (near - pos_near).cpu(), eps))
    ranks = torch.cat(out_r) if out_r else torch.zeros(0, rows.shape[1], dtype=torch.float64)
    empty = torch.zeros(queries.shape[0], 0)
    scores = torch.cat(out_s) if out_s else empty
    idx = torch.cat(out_i) if out_i else empty.long()
    return ranks, scores, idx


VARIANTS = {"old": old_exact_positive_ranks, "new": exact_positive_ranks}


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _unit_rows(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, dim, generator=gen)
    return x.div_(x.norm(dim=1, keepdim=True))  # in place: no second copy to inflate the peak before the call


def run_one(args: argparse.Namespace) -> dict:
    """One variant in this process: build the data, then time the call and measure its peak."""
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    gallery = _unit_rows(args.gallery, args.dim, gen)
    queries = _unit_rows(args.queries, args.dim, gen)
    gallery_labels = torch.arange(args.gallery) // args.positives
    query_labels = torch.randint(0, int(gallery_labels[-1]) + 1, (args.queries,), generator=gen)
    rows = positive_rows(query_labels, gallery_labels)  # [Q, positives]
    before = _rss_mib()
    start = time.perf_counter()
    ranks, _, _ = VARIANTS[args.variant](queries, gallery, rows)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if args.save_ranks:
        torch.save(ranks, args.save_ranks)
    return {"variant": args.variant, "queries": args.queries, "gallery": args.gallery, "dim": args.dim, "positives": args.positives,
            "threads": torch.get_num_threads(), "seconds": round(seconds, 2), "ms_per_query": round(1e3 * seconds / args.queries, 2),
            "peak_extra_mib": round(peak - before), "data_mib": round(before)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=10000)
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--positives", type=int, default=20)
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["old", "new"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # one run, in a child process
    p.add_argument("--save_ranks", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_one(args)))
        return
    base = [sys.executable, __file__, "--queries", str(args.queries), "--gallery", str(args.gallery), "--dim", str(args.dim),
            "--positives", str(args.positives)] + (["--threads", str(args.threads)] if args.threads else [])
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    saved = {}
    for rep in range(args.repeats):  # interleaved, so that the load of the shared machine hits both alike
        for v in args.variants:
            extra = ["--save_ranks", f"/tmp/bench_exact_ranks_{v}.pt"] if rep == 0 else []
            out = subprocess.run(base + ["--variant", v] + extra, check=True, capture_output=True, text=True).stdout
            runs[v].append(json.loads(out.strip().splitlines()[-1]))
            print(out.strip(), flush=True)
            if extra:
                saved[v] = extra[1]
    summary = {v: {"seconds": statistics.median(r["seconds"] for r in rs), "ms_per_query": statistics.median(r["ms_per_query"] for r in rs),
                   "peak_extra_mib": statistics.median(r["peak_extra_mib"] for r in rs)} for v, rs in runs.items()}
    if {"old", "new"} <= set(saved):
        summary["ranks_equal"] = bool(torch.equal(torch.load(saved["old"]), torch.load(saved["new"])))
    print(json.dumps({"median_of": args.repeats, **summary}, indent=1))


if __name__ == "__main__":
    main()
