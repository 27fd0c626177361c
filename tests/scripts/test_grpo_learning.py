"""scripts/grpo_learning.py: quarter statistics by hand, read back from a real TensorBoard log."""

import math

import pytest

from tests.helpers.scripts import load_script

learning = load_script("grpo_learning")


def test_quarters_by_hand():
    values = [0.0, 0.2, 0.1, 0.1, 0.3, 0.5, 0.4, 0.6]  # quarters of 2 steps: [0, 0.2] and [0.4, 0.6]
    s = learning.quarters(values)
    assert s["quarter"] == 2 and s["first"] == pytest.approx(0.1) and s["last"] == pytest.approx(0.5)
    se = math.sqrt(0.02 / 2)  # sample variance 0.02 in each quarter, n = 2
    assert s["first_se"] == pytest.approx(se) and s["diff_se"] == pytest.approx(math.sqrt(2) * se)
    assert s["z"] == pytest.approx(0.4 / (math.sqrt(2) * se))
    flat = learning.quarters([0.3] * 8)  # a run that did not move: no difference, z 0
    assert flat["diff"] == 0 and flat["z"] == 0
    with pytest.raises(ValueError, match="at least 4"):
        learning.quarters([1.0, 2.0])


def test_report_reads_the_tensorboard_log(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for step in range(8):
        w.add_scalar("train/reward_mean", 0.1 * step, step)
        w.add_scalar("train/zero_spread_groups", 0.5, step)
    w.close()
    text = learning.report([str(tmp_path)])
    # quarters [0, 0.1] and [0.6, 0.7]: +0.6 with se sqrt(2 * 0.005 / 2)
    assert "| 0.0500 +- 0.0500 | 0.6500 +- 0.0500 | +0.6000 +- 0.0707 |" in text
    assert "above the first quarter beyond its standard error" in text and "not above" not in text
    assert "groups with zero reward spread" in text
    with pytest.raises(SystemExit, match="no TensorBoard"):
        learning.read_scalars(tmp_path / "missing")
