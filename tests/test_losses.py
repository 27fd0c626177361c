import math

import pytest
import torch

from dlgpr.losses import sdm_loss


def _pairs():
    # two orthonormal directions: cos(t_i, v_j) = 1 if i == j else 0
    e = torch.eye(2)
    return e.clone(), e.clone()


def test_sdm_hand_computed_distinct_places():
    t, v = _pairs()
    # scale ln 3: S = [[ln3, 0], [0, ln3]], so every softmax row is [3/4, 1/4]
    loss, stats = sdm_loss(t, v, torch.tensor([0, 1]), logit_scale=math.log(3.0))
    # row term: 3/4 (ln 3/4 - ln(1 + 1e-8)) + 1/4 (ln 1/4 - ln 1e-8)
    row = 0.75 * (math.log(0.75) - math.log(1 + 1e-8)) + 0.25 * (math.log(0.25) - math.log(1e-8))
    assert row == pytest.approx(4.042835, abs=1e-5)
    assert stats["t2i"].item() == pytest.approx(row, rel=1e-5)
    assert stats["i2t"].item() == pytest.approx(row, rel=1e-5)
    assert loss.item() == pytest.approx(2 * row, rel=1e-5)  # t2i + i2t, no 1/2
    assert stats["pos_sim"].item() == pytest.approx(1.0)
    assert stats["neg_sim"].item() == pytest.approx(0.0, abs=1e-6)


def test_sdm_hand_computed_same_place():
    t, v = _pairs()
    # both pairs of one place: q = [1/2, 1/2] per row; softmax rows [3/4, 1/4]
    loss, _ = sdm_loss(t, v, torch.tensor([5, 5]), logit_scale=math.log(3.0))
    row = 0.75 * (math.log(0.75) - math.log(0.5 + 1e-8)) + 0.25 * (math.log(0.25) - math.log(0.5 + 1e-8))
    assert row == pytest.approx(0.130812, abs=1e-5)
    assert loss.item() == pytest.approx(2 * row, rel=1e-5)


def test_sdm_asymmetric_labels_and_normalisation():
    # unnormalised inputs are normalised; image labels may differ from text labels
    t = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 5.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss, stats = sdm_loss(t, v, torch.tensor([0, 1, 1]), image_labels=torch.tensor([0, 1]), logit_scale=1.0)
    # naive reference on explicit loops
    tn = torch.nn.functional.normalize(t, dim=1)
    S = tn @ v.T
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    ref_t2i = 0.0
    for i in range(3):
        p = torch.softmax(S[i], 0)
        q = y[i] / y[i].sum()
        ref_t2i += float((p * (p.log() - (q + 1e-8).log())).sum())
    ref_i2t = 0.0
    for j in range(2):
        p = torch.softmax(S[:, j], 0)
        q = y[:, j] / y[:, j].sum()
        ref_i2t += float((p * (p.log() - (q + 1e-8).log())).sum())
    assert stats["t2i"].item() == pytest.approx(ref_t2i / 3, rel=1e-5)
    assert stats["i2t"].item() == pytest.approx(ref_i2t / 2, rel=1e-5)
    assert loss.item() == pytest.approx(ref_t2i / 3 + ref_i2t / 2, rel=1e-5)


def test_sdm_gradient_pulls_pairs_together():
    torch.manual_seed(0)
    t = torch.randn(6, 8, requires_grad=True)
    v = torch.randn(6, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    opt = torch.optim.SGD([t], lr=0.5)
    first = None
    for _ in range(50):
        loss, _ = sdm_loss(t, v, labels, logit_scale=10.0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert not any(s.requires_grad for s in sdm_loss(t, v, labels)[1].values())
