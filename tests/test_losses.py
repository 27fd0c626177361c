import math

import pytest
import torch
import torch.nn.functional as F

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


# ---- CMPL losses ------------------------------------------------------------------------------

from dlgpr.losses import (  # noqa: E402
    CMPLLoss,
    hard_negative_isolation_loss,
    local_similarity,
    multi_similarity_loss,
    sdm_loss_from_similarity,
)

HI_COS = torch.tensor([[0.5, 0.6, 0.1], [0.2, 0.4, 0.5], [0.45, 0.1, 0.7]])  # text rows, image columns


def test_hi_loss_by_hand_distinct_places():
    # image j: hardest other text = column max off the diagonal; text i: row max off the diagonal
    # i2t: [2(.45-.5)+.2, 2(.6-.4)+.2, 2(.5-.7)+.2]_+ = [.1, .6, 0];  t2i: [2(.6-.5)+.2, 2(.5-.4)+.2, 2(.45-.7)+.2]_+ = [.4, .4, 0]
    loss, stats = hard_negative_isolation_loss(HI_COS, torch.tensor([0, 1, 2]), margin=0.2)
    assert loss.item() == pytest.approx((0.1 + 0.6 + 0.4 + 0.4) / 3, abs=1e-6)
    assert stats["active"].item() == pytest.approx(4 / 6)


def test_hi_loss_by_hand_same_place_is_not_a_negative():
    # pairs 0 and 1 show one place: only place-1 items are negatives for them, and vice versa
    loss, _ = hard_negative_isolation_loss(HI_COS, torch.tensor([0, 0, 1]), margin=0.2)
    # i2t: [2(.45-.5)+.2, 2(.1-.4)+.2, 2(.5-.7)+.2]_+ = [.1, 0, 0];  t2i: [2(.1-.5)+.2, 2(.5-.4)+.2, 2(.45-.7)+.2]_+ = [0, .4, 0]
    assert loss.item() == pytest.approx((0.1 + 0.4) / 3, abs=1e-6)


def test_hi_loss_matches_euclidean_definition():
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    v = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    expected = 0.0
    for i in range(6):
        others = [j for j in range(6) if labels[j] != labels[i]]
        j_star = max(others, key=lambda j: float(t[j] @ v[i]))  # most similar other-place text for image i
        k_star = max(others, key=lambda k: float(t[i] @ v[k]))  # most similar other-place image for text i
        d2 = lambda a, b: float(((a - b) ** 2).sum())  # noqa: E731
        expected += max(d2(v[i], t[i]) - d2(v[i], t[j_star]) + 0.3, 0) + max(d2(t[i], v[i]) - d2(t[i], v[k_star]) + 0.3, 0)
    loss, _ = hard_negative_isolation_loss(t @ v.T, labels, margin=0.3)
    assert loss.item() == pytest.approx(expected / 6, abs=1e-5)


def test_multi_similarity_by_hand():
    # unit vectors with cosines s01=.8 s02=.6 s03=0 s12=.96 s13=.6 s23=.8; places [0, 0, 1, 1]
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # miner (eps .1): anchors 0 and 3 keep nothing (their negatives are easier than their positive);
    # anchors 1 and 2 keep their positive (.8) and the negative .96 (s12)
    per_anchor = math.log(1 + math.exp(-0.8)) / 1.0 + math.log(1 + math.exp(2.0 * 0.96)) / 2.0
    loss, stats = multi_similarity_loss(emb, labels, alpha=1.0, beta=2.0, base=0.0, epsilon=0.1)
    assert loss.item() == pytest.approx(2 * per_anchor / 4, abs=1e-6)
    assert stats["pos_pairs"].item() == pytest.approx(2 / 4) and stats["neg_pairs"].item() == pytest.approx(2 / 8)


def test_multi_similarity_matches_pytorch_metric_learning():
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(32, 16, generator=g)
    labels = torch.arange(8).repeat_interleave(4)
    miner = pml_miners.MultiSimilarityMiner(epsilon=0.1)
    reference = pml_losses.MultiSimilarityLoss(alpha=1.0, beta=50.0, base=0.0)(emb, labels, miner(emb, labels))
    ours, _ = multi_similarity_loss(emb, labels)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)


def test_sdm_from_similarity_is_sdm():
    g = torch.Generator().manual_seed(1)
    t, v = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    a, _ = sdm_loss(t, v, labels, logit_scale=20.0)
    b, _ = sdm_loss_from_similarity(F.normalize(t, dim=-1) @ F.normalize(v, dim=-1).T, labels, logit_scale=20.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_local_similarity_is_mean_of_matched_query_cosines():
    g = torch.Generator().manual_seed(2)
    t, v = torch.randn(3, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    s = local_similarity(t, v)
    assert s.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            expected = sum(F.cosine_similarity(t[i, q], v[j, q], dim=0) for q in range(5)) / 5
            assert s[i, j].item() == pytest.approx(expected.item(), abs=1e-6)


def test_cmpl_loss_is_eq6_weighted_sum():
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    tg, ig, vpr = (torch.randn(6, 8, generator=g) for _ in range(3))
    tl = [torch.randn(6, 3, 4, generator=g) for _ in range(2)]
    il = [torch.randn(6, 3, 4, generator=g) for _ in range(2)]
    fn = CMPLLoss(lambda_gs=0.7, lambda_h=0.5, hi_weight=2.0, lambda_vpr=0.3, hi_margin=0.1)
    loss, stats = fn(tg, ig, labels, tl, il, vpr, logit_scale=10.0)
    gs = sdm_loss(tg, ig, labels, logit_scale=10.0)[0]
    ls = sum(sdm_loss_from_similarity(local_similarity(a, b), labels, logit_scale=10.0)[0] for a, b in zip(tl, il))
    hi = sum(hard_negative_isolation_loss(local_similarity(a, b), labels, 0.1)[0] for a, b in zip(tl, il))
    ms = multi_similarity_loss(vpr, labels)[0]
    assert loss.item() == pytest.approx((0.7 * gs + 0.5 * (ls + 2.0 * hi) + 0.3 * ms).item(), rel=1e-6)
    assert stats["gs"].item() == pytest.approx(gs.item()) and stats["vpr"].item() == pytest.approx(ms.item())
    assert set(stats) >= {"ls/l0", "ls/l1", "hi/l0", "hi/l1"}
    # the ablation switches drop their terms
    only_gs, stats = CMPLLoss(lambda_h=0.0, lambda_vpr=0.0)(tg, ig, labels, tl, il, vpr, logit_scale=10.0)
    assert only_gs.item() == pytest.approx(gs.item(), rel=1e-6) and stats["ls"].item() == 0.0
    with pytest.raises(ValueError, match="lambda_h"):
        CMPLLoss(lambda_h=-1.0)


def test_losses_run_in_float32_under_bf16_autocast():
    # bf16 would resolve these cosines (0.999 vs 0.995) to the same value; the losses must not
    torch.manual_seed(0)
    base = F.normalize(torch.randn(8, 16), dim=-1)
    text = F.normalize(base + 0.03 * torch.randn(8, 16), dim=-1)
    image = F.normalize(base + 0.03 * torch.randn(8, 16), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    local_t, local_v = torch.randn(8, 4, 8), torch.randn(8, 4, 8)
    loss_fn = CMPLLoss(lambda_vpr=1.0)
    reference, ref_stats = loss_fn(text, image, labels, [local_t], [local_v], image, logit_scale=50.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, stats = loss_fn(text, image, labels, [local_t], [local_v], image, logit_scale=50.0)
        ms, _ = multi_similarity_loss(image, labels)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference.item(), rel=1e-6)
    assert stats["vpr"].item() == pytest.approx(ref_stats["vpr"].item(), rel=1e-6)
    assert ms.item() == pytest.approx(multi_similarity_loss(image, labels)[0].item(), rel=1e-6)
