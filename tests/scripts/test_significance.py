"""Paired significance of two dialogue runs: sign test and bootstrap (dlgpr.metrics, scripts/significance.py)."""

import json
import math
from pathlib import Path

import pytest
import torch

from dlgpr.metrics import bri, paired_bootstrap_interval, per_query_bri, sign_test
from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def test_sign_test_hand_computed():
    # 13 queries found by A only, 2 by B only: n = 15, P(X <= 2) = (1 + 15 + 105) / 2^15, two-sided
    assert sign_test(13, 2) == pytest.approx(2 * 121 / 32768)  # 0.0074
    assert sign_test(2, 13) == sign_test(13, 2)
    assert sign_test(6, 2) == pytest.approx(2 * (1 + 8 + 28) / 256)  # 0.289
    assert sign_test(0, 3) == pytest.approx(2 / 8)
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0
    with pytest.raises(ValueError):
        sign_test(-1, 2)


def test_paired_bootstrap_interval_hand_computed():
    # differences [1, 0, 0, 0]: a resampled mean is X / 4 with X ~ Binomial(4, 1/4);
    # P(X = 0) = 0.316 > 2.5 % and P(X <= 2) = 0.949 < 97.5 % <= P(X <= 3) = 0.996 -> [0, 0.75]
    assert paired_bootstrap_interval(torch.tensor([1.0, 0.0, 0.0, 0.0])) == (0.0, 0.75)
    assert paired_bootstrap_interval(torch.full((7,), -0.25)) == pytest.approx((-0.25, -0.25))
    d = torch.randn(50, generator=torch.Generator().manual_seed(1))
    assert paired_bootstrap_interval(d, seed=3) == paired_bootstrap_interval(d, seed=3)  # seeded
    low, high = paired_bootstrap_interval(d, level=0.9)
    assert low < float(d.mean()) < high


def test_per_query_bri_averages_to_bri():
    assert float(per_query_bri(torch.tensor([[8, 4, 6, 1, 1, 1]]))[0]) == pytest.approx(0.7625, abs=1e-4)
    ranks = torch.tensor([[8, 4, 6, 1, 1, 1], [3, 3, 2, 2, 1, 1], [1.5, 1, 1, 1, 1, 1]])
    assert float(per_query_bri(ranks).mean()) == pytest.approx(bri(ranks))


def _results(path: Path, runs: dict[str, dict[int, list[float]]]) -> Path:
    # the shape scripts/evaluate_dialogue.py writes (results.<method>.queries[].place_id / ranks)
    payload = {"queries": 4, "results": {name: {"summary": {}, "queries": [{"query_id": i, "place_id": p, "ranks": r}
                                                                         for i, (p, r) in enumerate(ranks.items())]}
                                           for name, ranks in runs.items()}}
    path.write_text(json.dumps(payload))
    return path


A = {11: [3, 1, 1], 12: [10, 6, 2], 13: [1, 1, 1], 14: [7, 7, 7]}
B = {14: [7, 2, 2], 13: [1, 1, 1], 12: [10, 10, 10], 11: [3, 3, 3]}  # another order: paired by place


def test_significance_script_on_two_results_files(tmp_path, capsys):
    script = load_script("significance")
    a, b = _results(tmp_path / "a.json", {"A": A}), _results(tmp_path / "b.json", {"B": B, "other": A})
    report = script.main([str(a), str(b), "--a", "A", "--b", "B", "--rounds", "2", "--json", str(tmp_path / "out.json")])
    rows = {r["metric"]: r for r in report["rows"]}
    assert report["queries"] == 4 and set(rows) == {"round2/recall@1", "round2/recall@5", "bri"}
    r1 = rows["round2/recall@1"]  # A finds 11 and 13, B finds 13
    assert (r1["a"], r1["b"], r1["difference"], r1["a_only"], r1["b_only"]) == (0.5, 0.25, 0.25, 1, 0)
    assert r1["sign_test_p"] == 1.0
    r5 = rows["round2/recall@5"]  # A: 11, 12, 13; B: 11, 13, 14
    assert (r5["a"], r5["b"], r5["a_only"], r5["b_only"], r5["sign_test_p"]) == (0.75, 0.75, 1, 1, 1.0)
    low, high = r5["interval"]
    assert low < 0.0 < high
    # BRI per query (ln of the best rank so far, trapezoids over 2 rounds): A lower on 11 and 12, B lower on 14
    expected = lambda rs: sum((math.log(min(rs[: t + 1])) + math.log(min(rs[: t + 2]))) / 2 for t in range(2)) / 2  # noqa: E731
    assert rows["bri"]["a"] == pytest.approx(sum(expected(r) for r in A.values()) / 4)
    assert rows["bri"]["b"] == pytest.approx(sum(expected(r) for r in B.values()) / 4)
    assert (rows["bri"]["a_only"], rows["bri"]["b_only"]) == (2, 1)
    assert json.loads((tmp_path / "out.json").read_text())["rows"] == report["rows"]
    table = capsys.readouterr().out
    assert "| round2/recall@1 | 50.0 | 25.0 | 25.0 |" in table
    # both methods from one file; an unknown method is a one-line error
    same = script.main([str(b), str(b), "--a", "other", "--b", "B", "--rounds", "2"])
    assert same["rows"] == report["rows"]
    with pytest.raises(SystemExit, match="no method 'C'"):
        script.main([str(a), str(b), "--a", "C", "--b", "B"])
