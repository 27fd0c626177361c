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


def test_dialogue_comparison_pairs_the_dialogue_queries(tmp_path):
    """Round-5 cumulative hits from the per-query ranks: a target at rank 1 in any round up to 5 counts."""
    logs = tmp_path / "logs"
    # 4 queries x 6 rounds; full: q0 found at round 0, q1 at round 2 then lost (still a cumulative hit)
    ranks = {"full": [[1, 1, 1, 1, 1, 1], [9, 4, 1, 3, 3, 3], [9, 9, 9, 9, 9, 2], [5, 5, 5, 5, 5, 5]],
             "baseline": [[1, 1, 1, 1, 1, 1], [9, 9, 9, 9, 9, 9], [9, 9, 9, 9, 9, 9], [5, 5, 5, 5, 5, 5]]}
    round5 = {"full": 0.5, "baseline": 0.25}
    for row in ("full", "baseline"):
        for seed, shift in ((0, 0.0), (1, 0.1)):
            d = logs / row / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "dialogue_val.jsonl").write_text(json.dumps({"round0/recall@1": 0.1, "round5/recall@1": round5[row] + shift}) + "\n")
            (d / "dialogue_val_ranks.json").write_text(json.dumps({"query_id": [0, 1, 2, 3], "place_id": [10, 11, 12, 13], "ranks": ranks[row]}))
    assert ablation.dialogue_hits(logs / "full" / "seed0") == {(0, 10): 1.0, (1, 11): 1.0, (2, 12): 0.0, (3, 13): 0.0}
    assert ablation.dialogue_hits(logs / "full" / "seed0", round_=1) == {(0, 10): 1.0, (1, 11): 0.0, (2, 12): 0.0, (3, 13): 0.0}
    lines = "\n".join(ablation._dialogue_comparison("full", "baseline", [0, 1], logs, resamples=300))
    assert "over 4 dialogue queries" in lines and ": +25.0, 95 % interval" in lines
    assert "per-seed differences +25.0, +25.0" in lines
    # without the per-query files only the seed-level comparison is made, and the table says so
    for f in logs.rglob("dialogue_val_ranks.json"):
        f.unlink()
    lines = "\n".join(ablation._dialogue_comparison("full", "baseline", [0, 1], logs, resamples=300))
    assert "not computed" in lines and "per-seed differences +25.0, +25.0" in lines
