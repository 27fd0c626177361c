"""The ablation script's paired statistics, by hand."""

import json
import math

import pytest

from tests.helpers.scripts import load_script

ablation = load_script("cmpl_ablation")


def test_paired_query_interval_by_hand():
    # row A: seeds hit queries {q0, q1} and {q0, q2}; row B: {q0} and {q0}
    a = [{(0, 0): 1.0, (1, 0): 1.0, (2, 0): 0.0, (3, 0): 0.0}, {(0, 0): 1.0, (1, 0): 0.0, (2, 0): 1.0, (3, 0): 0.0}]
    b = [{(0, 0): 1.0, (1, 0): 0.0, (2, 0): 0.0, (3, 0): 0.0}, {(0, 0): 1.0, (1, 0): 0.0, (2, 0): 0.0, (3, 0): 0.0}]
    mean, low, high, n = ablation.paired_query_interval(a, b, resamples=2000)
    # per-query differences of seed-averaged hits: [0, 0.5, 0.5, 0] -> mean 0.25
    assert n == 4 and mean == pytest.approx(0.25)
    assert 0.0 <= low <= 0.25 <= high <= 0.5
    same, lo, hi, _ = ablation.paired_query_interval(b, b, resamples=500)
    assert same == lo == hi == 0.0  # identical rows: a degenerate interval at 0
    with pytest.raises(ValueError, match="share no query"):
        ablation.paired_query_interval([{(9, 0): 1.0}], [{(8, 0): 1.0}], resamples=10)


def test_paired_seed_interval_by_hand():
    mean, low, high = ablation.paired_seed_interval([0.02, 0.04, 0.06])
    half = 4.303 * 0.02 / math.sqrt(3)  # t(0.975, 2 dof) x std / sqrt(n)
    assert mean == pytest.approx(0.04) and low == pytest.approx(0.04 - half) and high == pytest.approx(0.04 + half)
    m, lo, hi = ablation.paired_seed_interval([0.1])
    assert m == 0.1 and math.isnan(lo) and math.isnan(hi)


def test_summary_reads_runs_and_compares(tmp_path):
    logs = tmp_path / "logs"
    for row, hits in (("full", [1, 1, 0, 0]), ("baseline", [1, 0, 0, 0])):
        for seed in (0, 1):
            d = logs / row / f"seed{seed}"
            d.mkdir(parents=True)
            r1 = sum(hits) / 4
            (d / "retrieval_val.jsonl").write_text(json.dumps({"val/recall@1": r1, "val/recall@5": 0.9, "val/recall@10": 1.0}) + "\n")
            (d / "dialogue_val.jsonl").write_text(json.dumps({"round0/recall@1": 0.1, "round5/recall@1": 0.5}) + "\n")
            ranks = [1 if h else 3 for h in hits]
            (d / "retrieval_val_ranks.json").write_text(json.dumps({"place_id": [0, 1, 2, 3], "view": [0, 0, 0, 0], "rank": ranks}))
    md = ablation.summarise(["baseline", "full"], [0, 1], logs, {}, ("full", "baseline"), resamples=200)
    assert "| full (+ L_vpr) | 50.0 +- 0.0 | 90.0 +- 0.0 |" in md
    assert "| baseline: long text, L_gs (Long-CLIP-style) | 25.0 +- 0.0 |" in md
    assert "over 4 queries" in md and "+25.0" in md
