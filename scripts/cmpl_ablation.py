"""Run the CMPL ablation ladder (paper Table 3) and the Table 2 baselines over several seeds, and
tabulate mean, standard deviation and the paired difference of two rows with a 95 % interval.

    python scripts/cmpl_ablation.py --out docs/results/cmpl_ablation.md          # 6 rows x 3 seeds
    python scripts/cmpl_ablation.py --rows baseline full --seeds 0 1 2
    python scripts/cmpl_ablation.py --extra --trainer.max_epochs 8              # flags for every fit

Each run is ``python -m dlgpr fit --config configs/cmpl.yaml --config configs/ablation/<row>.yaml
--seed_everything <seed>``, logged to ``<logs>/<row>/seed<seed>``. A run whose folder already
holds its last checkpoint and its final evaluation is not trained again, so an interrupted ladder
resumes where it stopped. Numbers are the final validation of each run: static retrieval with
full descriptions on the val split (R@1/5/10 of the model's own score; R@1 of the global
similarity alone) and the 5-round dialogue's cumulative R@1 at rounds 0 and 5.

The comparison of ``--compare A B`` (default: full minus baseline) is paired twice:
- over queries: every val description is a query in both rows; its hit@1 is averaged over the
  seeds, and the mean difference gets a 95 % percentile bootstrap interval over queries
  (``--bootstrap`` resamples);
- over seeds: the per-seed differences, with a 95 % t interval (wide with 3 seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    "clip77": "CLIP (77 tokens, L_gs)",
    "baseline": "baseline: long text, L_gs (Long-CLIP-style)",
    "token_selection": "+ token selection (SFM, one level, L_ls)",
    "hsdm": "+ progressive hsdm (4 levels)",
    "hi": "+ HI",
    "full": "full (+ L_vpr)",
}
# two-sided 97.5 % quantiles of Student's t for 1..10 degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _last(path: Path) -> dict:
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def run_dir(logs: Path, row: str, seed: int) -> Path:
    return logs / row / f"seed{seed}"


def run_one(row: str, seed: int, logs: Path, extra: list[str]) -> float:
    folder = run_dir(logs, row, seed)
    if (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "retrieval_val_ranks.json").is_file():
        print(f"[{row} seed {seed}] already done in {folder}, skipping", flush=True)
        timing = folder / "wall_seconds.txt"
        return float(timing.read_text()) if timing.is_file() else 0.0
    cmd = [sys.executable, "-m", "dlgpr", "fit", "--config", str(ROOT / "configs" / "cmpl.yaml"),
           "--config", str(ROOT / "configs" / "ablation" / f"{row}.yaml"), "--seed_everything", str(seed),
           "--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.name", row,
           "--trainer.logger.init_args.version", f"seed{seed}", "--trainer.enable_progress_bar", "false", *extra]
    print(f"[{row} seed {seed}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    (folder / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def hits_at_1(folder: Path) -> dict[tuple[int, int], float]:
    """(place_id, view) -> 1.0 if that description's place is ranked first, from the run's ranks file."""
    r = json.loads((folder / "retrieval_val_ranks.json").read_text())
    return {(p, v): float(k <= 1) for p, v, k in zip(r["place_id"], r["view"], r["rank"])}


def dialogue_hits(folder: Path, round_: int = 5) -> dict[tuple[int, int], float]:
    """(query_id, place_id) -> 1.0 if the dialogue found the target at rank 1 by ``round_``
    (cumulative, as the table's dialogue columns), from the run's ``dialogue_val_ranks.json``."""
    from dlgpr.metrics import cumulative_recall

    d = json.loads((folder / "dialogue_val_ranks.json").read_text())
    ranks = torch.tensor(d["ranks"], dtype=torch.float64)  # [Q, T+1]
    return {(q, p): float(cumulative_recall(ranks[i : i + 1], [1])[1][round_])
            for i, (q, p) in enumerate(zip(d["query_id"], d["place_id"]))}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_query_interval(a: list[dict], b: list[dict], resamples: int, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean over queries of (hit@1 of A - hit@1 of B), each averaged over seeds, and its 95 % bootstrap
    interval over queries. ``a``/``b``: one hits dict per seed. Returns (mean, low, high, queries)."""
    keys = sorted(set.intersection(*(set(h) for h in a + b)))
    if not keys:
        raise ValueError("the two rows share no query")
    diff = torch.tensor([statistics.fmean(h[k] for h in a) - statistics.fmean(h[k] for h in b) for k in keys], dtype=torch.float64)  # [Q]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(keys), (resamples, len(keys)), generator=g)  # [R, Q]
    means = diff[idx].mean(dim=1)  # [R]
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return diff.mean().item(), low, high, len(keys)


def paired_seed_interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of per-seed differences and its 95 % t interval."""
    m, s = mean_std(diffs)
    n = len(diffs)
    if n < 2:
        return m, float("nan"), float("nan")
    half = _T975.get(n - 1, 1.96) * s / math.sqrt(n)
    return m, m - half, m + half


def summarise(rows: list[str], seeds: list[int], logs: Path, seconds: dict[tuple[str, int], float], compare: tuple[str, str], resamples: int) -> str:
    pct = lambda v: 100 * v  # noqa: E731
    lines = [
        f"Val split, full descriptions, mean +- std over seeds {', '.join(map(str, seeds))}.",
        "",
        "| row | R@1 | R@5 | R@10 | global-only R@1 | dialogue R@1 round 0 | dialogue R@1 round 5 | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs = [(_last(run_dir(logs, row, s) / "retrieval_val.jsonl"), _last(run_dir(logs, row, s) / "dialogue_val.jsonl")) for s in seeds]
        runs = [(r, d) for r, d in runs if r]
        if not runs:
            lines.append(f"| {ROWS[row]} | (no result) | | | | | | |")
            continue
        cell = lambda vals: "{:.1f} +- {:.1f}".format(*mean_std([pct(v) for v in vals]))  # noqa: E731
        glob = cell([r.get("val/global/recall@1", r["val/recall@1"]) for r, _ in runs])
        d0 = cell([d["round0/recall@1"] for _, d in runs if d]) if all(d for _, d in runs) else "-"
        d5 = cell([d["round5/recall@1"] for _, d in runs if d]) if all(d for _, d in runs) else "-"
        minutes = [seconds[(row, s)] / 60 for s in seeds if seconds.get((row, s))]
        t = f"{statistics.fmean(minutes):.1f} min" if minutes else "-"
        lines.append(f"| {ROWS[row]} | {cell([r['val/recall@1'] for r, _ in runs])} | {cell([r['val/recall@5'] for r, _ in runs])} | "
                     f"{cell([r['val/recall@10'] for r, _ in runs])} | {glob} | {d0} | {d5} | {t} |")
    a, b = compare
    if a in rows and b in rows:
        ha = [hits_at_1(run_dir(logs, a, s)) for s in seeds if (run_dir(logs, a, s) / "retrieval_val_ranks.json").is_file()]
        hb = [hits_at_1(run_dir(logs, b, s)) for s in seeds if (run_dir(logs, b, s) / "retrieval_val_ranks.json").is_file()]
        if ha and hb and len(ha) == len(hb):
            m, lo, hi, q = paired_query_interval(ha, hb, resamples)
            per_seed = [statistics.fmean(x.values()) - statistics.fmean(y.values()) for x, y in zip(ha, hb)]
            ms, los, his = paired_seed_interval(per_seed)
            lines += [
                "",
                f"Paired difference {a} minus {b}, R@1 in points:",
                f"- over {q} queries (hit@1 averaged over {len(ha)} seeds, {resamples} bootstrap resamples): "
                f"{pct(m):+.1f}, 95 % interval [{pct(lo):+.1f}, {pct(hi):+.1f}]",
                f"- over seeds (per-seed differences {', '.join(f'{pct(d):+.1f}' for d in per_seed)}): "
                f"{pct(ms):+.1f}, 95 % t interval [{pct(los):+.1f}, {pct(his):+.1f}]",
            ]
        lines += _dialogue_comparison(a, b, seeds, logs, resamples)
    return "\n".join(lines) + "\n"


def _dialogue_comparison(a: str, b: str, seeds: list[int], logs: Path, resamples: int) -> list[str]:
    """Paired difference A minus B of the dialogue's cumulative R@1 at round 5: over the dialogue's
    queries where every run kept its per-query ranks, and over seeds from the runs' summaries."""
    pct = lambda v: 100 * v  # noqa: E731
    last = {(row, s): _last(run_dir(logs, row, s) / "dialogue_val.jsonl") for row in (a, b) for s in seeds}
    both = [s for s in seeds if last[(a, s)] and last[(b, s)]]
    if not both:
        return []
    out = ["", f"Paired difference {a} minus {b}, dialogue cumulative R@1 at round 5 in points:"]
    if all((run_dir(logs, row, s) / "dialogue_val_ranks.json").is_file() for row in (a, b) for s in both):
        m, lo, hi, q = paired_query_interval([dialogue_hits(run_dir(logs, a, s)) for s in both],
                                             [dialogue_hits(run_dir(logs, b, s)) for s in both], resamples)
        out.append(f"- over {q} dialogue queries (hit averaged over {len(both)} seeds, {resamples} bootstrap resamples): "
                   f"{pct(m):+.1f}, 95 % interval [{pct(lo):+.1f}, {pct(hi):+.1f}]")
    else:
        out.append("- over queries: not computed (runs made before the dialogue callback kept dialogue_val_ranks.json)")
    per_seed = [last[(a, s)]["round5/recall@1"] - last[(b, s)]["round5/recall@1"] for s in both]
    ms, los, his = paired_seed_interval(per_seed)
    out.append(f"- over seeds (per-seed differences {', '.join(f'{pct(d):+.1f}' for d in per_seed)}): "
               f"{pct(ms):+.1f}, 95 % t interval [{pct(los):+.1f}, {pct(his):+.1f}]")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--logs", default="lightning_logs/cmpl_ablation", help="parent folder of the per-run logs")
    ap.add_argument("--compare", nargs=2, default=["full", "baseline"], metavar=("A", "B"), help="paired difference A minus B")
    ap.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples over queries")
    ap.add_argument("--table_only", action="store_true", help="tabulate the runs already in --logs, train nothing")
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags appended to every fit command")
    args = ap.parse_args(argv)
    logs = Path(args.logs).resolve()
    seconds: dict[tuple[str, int], float] = {}
    for seed in args.seeds:  # seed-major: a partial ladder already has every row once
        for row in args.rows:
            if args.table_only:
                timing = run_dir(logs, row, seed) / "wall_seconds.txt"
                seconds[(row, seed)] = float(timing.read_text()) if timing.is_file() else 0.0
            else:
                seconds[(row, seed)] = run_one(row, seed, logs, args.extra)
    md = summarise(args.rows, args.seeds, logs, seconds, tuple(args.compare), args.bootstrap)
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"Command: `python scripts/cmpl_ablation.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n" + md)


if __name__ == "__main__":
    main()
