"""Plot validation R@K against wall-clock minutes for one or more training runs.

    python scripts/plot_recall_vs_time.py --run "new recipe=lightning_logs/version_0" \
        --run "from scratch=lightning_logs/version_1" --out docs/recall_vs_time.png

Each run folder holds the ``retrieval_val.jsonl`` that ``RetrievalEvalCallback`` appends after
every validation, with ``fit_seconds`` (wall-clock since ``fit`` started, evaluations included).
A point at 0 minutes is not drawn: the first point is the first validation. Also prints the
points as a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(folder: Path, metric: str) -> list[tuple[float, float]]:
    path = folder / "retrieval_val.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {folder} a run folder of `python -m dlgpr fit`?")
    points = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "fit_seconds" not in record:
            raise ValueError(f"{path}: a record without fit_seconds (written before the callback logged time)")
        points.append((record["fit_seconds"] / 60, 100 * record[metric]))
    return points


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=FOLDER, repeatable")
    ap.add_argument("--metrics", nargs="+", default=["val/recall@1", "val/recall@10"])
    ap.add_argument("--out", default="docs/recall_vs_time.png")
    args = ap.parse_args(argv)
    runs = []
    for spec in args.run:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise ValueError(f"--run {spec!r}: expected NAME=FOLDER")
        runs.append((name, Path(folder)))
    fig, axes = plt.subplots(1, len(args.metrics), figsize=(5 * len(args.metrics), 3.6), squeeze=False)
    rows = ["| run | " + " | ".join(f"minutes, {m}" for m in args.metrics) + " |", "|---|" + "---|" * len(args.metrics)]
    for name, folder in runs:
        cells = []
        for ax, metric in zip(axes[0], args.metrics):
            pts = read_curve(folder, metric)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            cells.append(", ".join(f"{m:.1f}: {v:.1f}" for m, v in pts))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    for ax, metric in zip(axes[0], args.metrics):
        ax.set_xlabel("wall-clock minutes of fit (2 CPU cores)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print("\n".join(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
