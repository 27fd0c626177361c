"""Is one questioner better than another on the same queries? Paired tests over two dialogue runs.

    python scripts/significance.py runs/a/results.json runs/b/results.json --a "DQ-Pilot SFT+GRPO" --b "DQ-Pilot SFT"
    python scripts/significance.py runs/x/results.json runs/x/results.json --a "DQ-Pilot SFT" --b Random --rounds 5 --ks 1 5

Reads the ``results.json`` that ``scripts/evaluate_dialogue.py`` writes (per query: the rank of
the target at every round), pairs the two methods' queries by target place, and reports for
every round and K the cumulative hit rate of each (hit at K at any round up to t) with

* the exact two-sided **sign test** on the discordant queries (found by one method only), and
* a **paired bootstrap** interval of the difference in hit rate (queries resampled with
  replacement, 10,000 draws, 95 % by default),

and the same for BRI (per query: its share of the log-rank integral; lower is better; the sign
test counts the queries where one method's value is lower). Both methods may come from one file.
Writes a Markdown table to stdout and, with ``--json``, every number to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from dlgpr.metrics import paired_bootstrap_interval, per_query_bri, sign_test


def load_ranks(path: str | Path, method: str) -> dict[int, list[float]]:
    """``place id -> ranks by round`` of ``method`` in a results.json of evaluate_dialogue.py."""
    data = json.loads(Path(path).read_text())
    results = data.get("results", {})
    if method not in results:
        raise SystemExit(f"error: {path} has no method {method!r}; it has {sorted(results)}")
    out: dict[int, list[float]] = {}
    for q in results[method]["queries"]:
        pid = int(q["place_id"])
        if pid in out:
            raise SystemExit(f"error: {path}: {method!r} queries place {pid} twice; pairing needs one query per place")
        out[pid] = [float(r) for r in q["ranks"]]
    return out


def compare(a: dict[int, list[float]], b: dict[int, list[float]], rounds: list[int] | None = None, ks: tuple[int, ...] = (1, 5),
            num_samples: int = 10_000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two methods' ranks (``place id -> ranks by round``) on their common queries."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two runs have no query (target place) in common")
    ra = torch.tensor([a[p] for p in common], dtype=torch.float64)  # [Q, T+1]
    rb = torch.tensor([b[p] for p in common], dtype=torch.float64)  # [Q, T+1]
    if ra.shape != rb.shape:
        raise ValueError(f"the runs have different numbers of rounds: {ra.shape[1] - 1} and {rb.shape[1] - 1}")
    last = ra.shape[1] - 1
    rows = []
    for t in rounds if rounds is not None else list(range(last + 1)):
        if not 0 <= t <= last:
            raise ValueError(f"round {t} is not in the runs (0..{last})")
        best_a, best_b = ra[:, : t + 1].min(dim=1).values, rb[:, : t + 1].min(dim=1).values  # [Q]
        for k in ks:
            hit_a, hit_b = (best_a <= k).double(), (best_b <= k).double()  # [Q]
            wins, losses = int(((hit_a == 1) & (hit_b == 0)).sum()), int(((hit_a == 0) & (hit_b == 1)).sum())
            low, high = paired_bootstrap_interval(hit_a - hit_b, num_samples, level, seed)
            rows.append({"metric": f"round{t}/recall@{k}", "a": float(hit_a.mean()), "b": float(hit_b.mean()),
                         "difference": float((hit_a - hit_b).mean()), "a_only": wins, "b_only": losses,
                         "sign_test_p": sign_test(wins, losses), "interval": [low, high]})
    if last >= 1:
        bri_a, bri_b = per_query_bri(ra), per_query_bri(rb)  # [Q]
        better_a, better_b = int((bri_a < bri_b).sum()), int((bri_b < bri_a).sum())
        low, high = paired_bootstrap_interval(bri_a - bri_b, num_samples, level, seed)
        rows.append({"metric": "bri", "a": float(bri_a.mean()), "b": float(bri_b.mean()), "difference": float((bri_a - bri_b).mean()),
                     "a_only": better_a, "b_only": better_b, "sign_test_p": sign_test(better_a, better_b), "interval": [low, high]})
    return {"queries": len(common), "only_in_a": len(set(a) - set(b)), "only_in_b": len(set(b) - set(a)),
            "level": level, "bootstrap_samples": num_samples, "seed": seed, "rows": rows}


def markdown(report: dict[str, Any], name_a: str, name_b: str) -> str:
    pct = int(round(100 * report["level"]))
    lines = [f"A = {name_a}, B = {name_b}: {report['queries']} paired queries. R@K cumulative, in %; BRI lower is better. "
             f"'A only' / 'B only': queries that count for one method only (for BRI: where its value is lower).", "",
             f"| metric | A | B | A - B | {pct} % interval (bootstrap) | A only | B only | sign test p |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        scale, fmt = (1.0, "{:.3f}") if r["metric"] == "bri" else (100.0, "{:.1f}")
        low, high = r["interval"]
        lines.append(f"| {r['metric']} | {fmt.format(scale * r['a'])} | {fmt.format(scale * r['b'])} | {fmt.format(scale * r['difference'])} | "
                     f"[{fmt.format(scale * low)}, {fmt.format(scale * high)}] | {r['a_only']} | {r['b_only']} | {r['sign_test_p']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a_results", help="results.json holding method A")
    p.add_argument("b_results", help="results.json holding method B (may be the same file)")
    p.add_argument("--a", required=True, help="method A's name in its results.json")
    p.add_argument("--b", required=True, help="method B's name in its results.json")
    p.add_argument("--rounds", type=int, nargs="*", default=None, help="rounds to compare (default: every round)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5])
    p.add_argument("--samples", type=int, default=10_000, help="bootstrap draws")
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    a, b = load_ranks(args.a_results, args.a), load_ranks(args.b_results, args.b)
    report = compare(a, b, args.rounds, tuple(args.ks), args.samples, args.level, args.seed)
    report.update({"a": {"results": args.a_results, "method": args.a}, "b": {"results": args.b_results, "method": args.b}})
    if report["only_in_a"] or report["only_in_b"]:
        print(f"note: {report['only_in_a']} queries only in A and {report['only_in_b']} only in B are left out", file=sys.stderr)
    print(markdown(report, args.a, args.b), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
