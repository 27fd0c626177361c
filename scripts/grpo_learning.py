"""Did a GRPO run learn? The training reward by quarter of the run, from its TensorBoard log.

    python scripts/grpo_learning.py lightning_logs/dqpilot/grpo lightning_logs/dqpilot/grpo_log_rank \
        --out docs/results/dqpilot_grpo_learning.md

For each run (a log folder with ``events.out.tfevents.*``, written by ``GRPOModule`` with
``log_every_n_steps: 1``) and each logged series below, the mean over the first and the last
quarter of the steps, each with its standard error over steps, and the difference last - first
with its standard error (``sqrt(se_first^2 + se_last^2)``, steps treated as independent) and
``z`` = difference / its standard error. "Learned" in the sense of the docs: the reward's
difference exceeds its standard error (z > 1); z > 1.96 is a two-sided 5 % test.

Series: ``train/reward_mean`` (the total reward GRPO maximises), ``train/reward/prg`` (its
retrieval term, PRG or the log-rank gain depending on the run), the answered questions' PRG and
log-rank gain whichever was the reward (``train/reward_stats/prg/mean_prg`` and
``.../mean_log_rank_gain``), ``train/zero_spread_groups`` (groups whose rewards are all equal: no
gradient), ``train/reward_group_std``, ``train/reward/format`` and ``train/kl``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

SERIES = {
    "train/reward_mean": "reward (total)",
    "train/reward/prg": "retrieval term of the reward",
    "train/reward_stats/prg/mean_prg": "PRG of the answered questions",
    "train/reward_stats/prg/mean_log_rank_gain": "log-rank gain of the answered questions",
    "train/zero_spread_groups": "groups with zero reward spread",
    "train/reward_group_std": "within-group reward std",
    "train/reward/format": "format rate",
    "train/kl": "KL to the SFT policy",
}


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` (sorted by step, the last value of a step kept) of every events file in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(log_dir).glob("events.out.tfevents.*"))
    if not files:
        raise SystemExit(f"error: no TensorBoard events file in {log_dir}")
    out: dict[str, dict[int, float]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})  # 0: keep every point
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series = out.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                series[int(ev.step)] = float(ev.value)
    return {tag: sorted(v.items()) for tag, v in out.items()}


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n); 0 for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def quarters(values: Sequence[float]) -> dict[str, float]:
    """First vs last quarter of a series (in step order): means, standard errors, difference, its se and z."""
    n = len(values)
    if n < 4:
        raise ValueError(f"need at least 4 steps to compare quarters, got {n}")
    q = n // 4
    first, last = list(values[:q]), list(values[n - q:])
    m1, s1 = mean_se(first)
    m4, s4 = mean_se(last)
    se = math.sqrt(s1 ** 2 + s4 ** 2)
    diff = m4 - m1
    return {"steps": n, "quarter": q, "first": m1, "first_se": s1, "last": m4, "last_se": s4, "diff": diff, "diff_se": se,
            "z": diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff)),
            "mean": sum(values) / n}


def report(log_dirs: Sequence[str]) -> str:
    lines = []
    for d in log_dirs:
        scalars = read_scalars(d)
        lines += [f"### {d}", "", "| series | steps | first quarter | last quarter | last - first | z | mean over the run |",
                  "|---|---|---|---|---|---|---|"]
        for tag, label in SERIES.items():
            if tag not in scalars or len(scalars[tag]) < 4:
                continue
            s = quarters([v for _, v in scalars[tag]])
            lines.append(f"| {label} (`{tag}`) | {s['steps']} | {s['first']:.4f} +- {s['first_se']:.4f} | "
                         f"{s['last']:.4f} +- {s['last_se']:.4f} | {s['diff']:+.4f} +- {s['diff_se']:.4f} | {s['z']:+.2f} | {s['mean']:.4f} |")
        if "train/reward_mean" in scalars and len(scalars["train/reward_mean"]) >= 4:
            s = quarters([v for _, v in scalars["train/reward_mean"]])
            verdict = "above" if s["diff"] > s["diff_se"] else "not above"
            lines += ["", f"Training reward, last quarter vs first: {s['diff']:+.4f} +- {s['diff_se']:.4f} (z = {s['z']:+.2f}): "
                      f"{verdict} the first quarter beyond its standard error."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log_dirs", nargs="+", help="GRPO log folders (lightning_logs/<name>/<version>)")
    p.add_argument("--out", default=None, help="also write the Markdown here")
    args = p.parse_args(argv)
    text = report(args.log_dirs)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
