import math

import pytest
import torch

from dlgpr.metrics import bri, cumulative_recall, discounted_gain, ideal_gain, prg, recall_per_round


def test_bri_reference_example():
    # docs/METHOD.md's worked example: ranks [8, 4, 6, 1, 1, 1] -> m = [8, 4, 4, 1, 1, 1] -> 0.7625
    expected = ((math.log(8) + math.log(4)) / 2 + (math.log(4) + math.log(4)) / 2 + (math.log(4) + 0) / 2) / 5
    assert expected == pytest.approx(0.7625, abs=1e-4)
    assert bri(torch.tensor([[8, 4, 6, 1, 1, 1]])) == pytest.approx(expected, abs=1e-9)


def test_bri_averages_queries_and_is_zero_when_found_at_once():
    ranks = torch.tensor([[1, 1, 1], [2, 2, 2]])
    # query 2: (ln2 + ln2)/2 per round -> ln 2; mean over queries -> ln2 / 2
    assert bri(ranks) == pytest.approx(math.log(2) / 2)
    with pytest.raises(ValueError):
        bri(torch.tensor([[3]]))


def test_per_round_and_cumulative_recall():
    ranks = torch.tensor([[3, 1, 7], [12, 9, 2], [1, 20, 20]])
    per = recall_per_round(ranks, [1, 5])
    cum = cumulative_recall(ranks, [1, 5])
    assert per[1].tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])
    assert cum[1].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])  # a hit stays a hit
    assert per[5].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert cum[5].tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])


def test_gains_by_hand():
    # positives at ranks 1 and 3: 1/log2(2) + 1/log2(4) = 1 + 0.5
    assert discounted_gain(torch.tensor([[1, 3, 0]])).tolist() == pytest.approx([1.5])
    # ideal for 2 positives: 1 + 1/log2(3)
    assert ideal_gain(torch.tensor([2, 1]), 3).tolist() == pytest.approx([1 + 1 / math.log2(3), 1.0])


def test_prg_hand_example_and_sign():
    n = torch.tensor([2])
    before = torch.tensor([[3, 7]])  # G = 1/log2 4 + 1/log2 8 = 0.5 + 1/3
    after = torch.tensor([[1, 4]])  # G = 1 + 1/log2 5
    g0, g1 = 0.5 + 1 / 3, 1 + 1 / math.log2(5)
    gs = 1 + 1 / math.log2(3)
    assert prg(before, after, n).item() == pytest.approx((g1 - g0) / (gs - g0))
    assert prg(after, before, n).item() == pytest.approx((g0 - g1) / (gs - g1))  # negative: the answer hurt
    assert prg(after, before, n).item() < 0


def test_prg_already_ideal_choice_and_clamp():
    n = torch.tensor([2, 2])
    ideal = torch.tensor([[1, 2], [1, 2]])
    worse = torch.tensor([[1, 2], [2, 5]])
    out = prg(ideal, worse, n)
    gs = 1 + 1 / math.log2(3)
    assert out[0].item() == 0.0  # unchanged ideal ranking: no gain
    assert out[1].item() == pytest.approx(((1 / math.log2(3) + 1 / math.log2(6)) - gs) / gs)
    # clamped as a reward
    big_drop = prg(torch.tensor([[1, 0]]), torch.tensor([[1000, 0]]), torch.tensor([1]))
    assert big_drop.item() < -0.8
    assert prg(torch.tensor([[2, 0]]), torch.tensor([[1000, 0]]), torch.tensor([1]), clamp=True).item() >= -1.0


def test_semantic_ambiguity_and_ddi_by_hand():
    from dlgpr.metrics import ddi, semantic_ambiguity

    target = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[0.6, 0.8]])  # cos 0.6 with the target
    negatives = torch.tensor([[[0.8, 0.6], [0.0, 2.0]]])  # cos 0.8 and 0 (unnormalised on purpose)
    sa = semantic_ambiguity(target, positive, negatives, alpha=0.25)
    assert sa.item() == pytest.approx(0.25 * 0.4 + 0.75 * 0.4)  # negatives mean (0.8 + 0) / 2; 1 - 0.6
    assert ddi(sa, torch.tensor([0.3]), w_sa=0.6, w_rid=0.4).item() == pytest.approx(0.6 * 0.4 + 0.4 * 0.7)
