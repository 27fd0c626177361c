"""Run the CMPL ablation ladder (paper Table 3) and the Table 2 baselines, same seed, and tabulate.

    python scripts/cmpl_ablation.py                               # every row, default config
    python scripts/cmpl_ablation.py --rows baseline full --out docs/results/cmpl_ablation.md
    python scripts/cmpl_ablation.py --extra --trainer.max_epochs 8   # flags passed to every fit

Each row is ``python -m dlgpr fit --config configs/cmpl.yaml --config configs/ablation/<row>.yaml``
(seed 0 from the config), logged to ``<logs>/<row>``. A row whose log already holds a finished
run (its last checkpoint and ``max_epochs`` evaluations) is not trained again, so an interrupted
ladder resumes where it stopped. The table reports the final epoch's static retrieval with full
descriptions on the val split (R@1/5/10 of the model's own score, and of the global similarity
alone), and the 5-round dialogue's cumulative R@1 (oracle teacher and user) at rounds 0 and 5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    "clip77": "CLIP (77 tokens, L_gs)",
    "baseline": "baseline: long text, L_gs (Long-CLIP-style)",
    "token_selection": "+ token selection (SFM, one level, L_ls)",
    "hsdm": "+ progressive hsdm (4 levels)",
    "hi": "+ HI",
    "full": "full (+ L_vpr)",
}


def _last(path: Path) -> dict:
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def run_row(row: str, logs: Path, extra: list[str]) -> float:
    version_dir = logs / row
    if (version_dir / "checkpoints" / "last.ckpt").is_file() and _last(version_dir / "retrieval_val.jsonl"):
        print(f"[{row}] already done in {version_dir}, skipping", flush=True)
        timing = version_dir / "wall_seconds.txt"
        return float(timing.read_text()) if timing.is_file() else 0.0
    cmd = [sys.executable, "-m", "dlgpr", "fit", "--config", str(ROOT / "configs" / "cmpl.yaml"),
           "--config", str(ROOT / "configs" / "ablation" / f"{row}.yaml"),
           "--trainer.logger.init_args.save_dir", str(logs.parent), "--trainer.logger.init_args.name", logs.name,
           "--trainer.logger.init_args.version", row, "--trainer.enable_progress_bar", "false", *extra]
    print(f"[{row}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    (version_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def table(rows: list[str], logs: Path, seconds: dict[str, float]) -> str:
    out = [
        "| row | R@1 | R@5 | R@10 | global-only R@1 | dialogue R@1 round 0 -> 5 | train time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = _last(logs / row / "retrieval_val.jsonl")
        d = _last(logs / row / "dialogue_val.jsonl")
        if not r:
            out.append(f"| {ROWS[row]} | (no result) | | | | | |")
            continue
        pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
        glob = pct(r["val/global/recall@1"]) if "val/global/recall@1" in r else "="
        dlg = f"{pct(d['round0/recall@1'])} -> {pct(d['round5/recall@1'])}" if d else "-"
        t = f"{seconds[row] / 60:.1f} min" if seconds.get(row) else "-"
        out.append(f"| {ROWS[row]} | {pct(r['val/recall@1'])} | {pct(r['val/recall@5'])} | {pct(r['val/recall@10'])} | {glob} | {dlg} | {t} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--logs", default="lightning_logs/cmpl_ablation", help="parent folder of the per-row logs")
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags appended to every fit command")
    args = ap.parse_args()
    logs = Path(args.logs).resolve()
    seconds = {row: run_row(row, logs, args.extra) for row in args.rows}
    md = table(args.rows, logs, seconds)
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md)


if __name__ == "__main__":
    main()
