import math

import pytest
import torch

from dlgpr.metrics import linear_probe, recall_at_k


def test_recall_at_k():
    r = recall_at_k(torch.tensor([1, 2, 5, 11]), [1, 5, 10])
    assert r == {1: 0.25, 5: 0.75, 10: 0.75}
    with pytest.raises(ValueError):
        recall_at_k(torch.tensor([], dtype=torch.long), [1])


# ---- AUROC ----------------------------------------------------------------------------------------


def test_auroc_by_hand():
    from dlgpr.metrics import auroc

    # positives score 0.9, 0.4, 0.6; negatives 0.5, 0.1. Pairs (pos, neg) won: 0.9 beats both (2),
    # 0.4 beats 0.1 (1), 0.6 beats both (2): 5 of 3 * 2 = 6.
    assert auroc(torch.tensor([0.9, 0.5, 0.4, 0.1, 0.6]), torch.tensor([1, 0, 1, 0, 1])) == pytest.approx(5 / 6)
    # a tie between a positive and a negative counts one half: 0.5 = 0.5 gives 1/2, 0.7 > 0.5 gives 1 -> 1.5 / 2
    assert auroc(torch.tensor([0.7, 0.5, 0.5]), torch.tensor([True, True, False])) == pytest.approx(0.75)
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([1, 0])) == 0.0


def test_auroc_degenerate_cases():
    from dlgpr.metrics import auroc

    # a constant score does not rank at all: exactly chance, whatever the class balance
    assert auroc(torch.full((7,), 0.3), torch.tensor([1, 0, 0, 0, 1, 0, 0])) == 0.5
    assert math.isnan(auroc(torch.tensor([0.2, 0.8]), torch.tensor([1, 1])))  # one class: undefined
    with pytest.raises(ValueError, match="2 scores for 3 labels"):
        auroc(torch.tensor([0.1, 0.2]), torch.tensor([0, 1, 1]))


def test_auroc_matches_torchmetrics_with_ties():
    from torchmetrics.functional.classification import binary_auroc

    from dlgpr.metrics import auroc

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 12, (300,), generator=g).float() / 11  # many ties
    labels = (torch.rand(300, generator=g) < 0.15 + 0.5 * scores).long()
    assert auroc(scores, labels) == pytest.approx(float(binary_auroc(scores, labels)), abs=1e-6)


def test_linear_probe_separates_what_is_separable_and_falls_back_to_one_class():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 4
    labels = [["red", "blue", "grey"][i % 3] for i in range(300)]
    x = centres[torch.arange(300) % 3] + torch.randn(300, 8, generator=g)
    pred = linear_probe(x[:200], labels[:200], x[200:])
    assert sum(p == t for p, t in zip(pred, labels[200:])) >= 98  # well-separated blobs
    # features that carry nothing: about chance, never above the majority by much
    noise = torch.randn(300, 8, generator=g)
    pred = linear_probe(noise[:200], labels[:200], noise[200:])
    assert sum(p == t for p, t in zip(pred, labels[200:])) < 55
    assert linear_probe(x[:5], ["a"] * 5, x[5:8]) == ["a"] * 3


def test_log_rank_gain_by_hand() -> None:
    from dlgpr.metrics import log_rank_gain

    prev = torch.tensor([[300, 0], [2, 9], [1, 5], [7, 8]])  # 0 = padding; the best rank counts
    new = torch.tensor([[150, 0], [1, 3], [1, 2], [70, 80]])
    got = log_rank_gain(prev, new, gallery_size=7200)
    half = math.log(2) / math.log(7200)
    assert got.tolist() == pytest.approx([half, half, 0.0, -math.log(10) / math.log(7200)])
    # a move from the bottom of the gallery to the top is the whole range; nothing moved is exactly 0
    assert log_rank_gain(torch.tensor([[7200]]), torch.tensor([[1]]), 7200).item() == pytest.approx(1.0)
    assert log_rank_gain(torch.tensor([[1]]), torch.tensor([[7200]]), 7200).item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="no positive"):
        log_rank_gain(torch.tensor([[0, 0]]), torch.tensor([[1, 0]]), 10)
