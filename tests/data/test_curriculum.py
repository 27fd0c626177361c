"""DDI curriculum order: easy to hard, buckets, random; deterministic; DDP-disjoint."""

import pytest

from dlgpr.data.curriculum import curriculum_order, rank_slice

DDI = [0.9, 0.1, 0.5, 0.1, 0.7, 0.3, 0.2, 0.8, 0.4]


def test_easy_to_hard_sorts_by_ddi_and_breaks_ties_by_seed():
    order = curriculum_order(DDI, "easy_to_hard", seed=0)
    assert [DDI[i] for i in order] == sorted(DDI)
    assert set(order[:2]) == {1, 3}  # the two 0.1 turns first, in a seeded order
    assert order == curriculum_order(DDI, "easy_to_hard", seed=0)  # deterministic


def test_buckets_go_easy_to_hard_and_shuffle_within():
    order = curriculum_order(DDI, "buckets", seed=3, num_buckets=3)
    buckets = [sorted(DDI[i] for i in order[b * 3 : (b + 1) * 3]) for b in range(3)]
    assert buckets == [[0.1, 0.1, 0.2], [0.3, 0.4, 0.5], [0.7, 0.8, 0.9]]
    orders = {tuple(curriculum_order(DDI, "buckets", seed=s, num_buckets=3)) for s in range(10)}
    assert len(orders) > 1  # the within-bucket order depends on the seed
    assert curriculum_order(DDI, "buckets", seed=3, epoch=1) != order  # and on the epoch


def test_random_ignores_ddi_but_is_reproducible():
    a = curriculum_order(DDI, "random", seed=1)
    assert sorted(a) == list(range(len(DDI))) and a == curriculum_order(DDI, "random", seed=1)
    assert a != curriculum_order(DDI, "random", seed=2) or a != curriculum_order(DDI, "random", seed=3)
    with pytest.raises(ValueError, match="unknown curriculum mode"):
        curriculum_order(DDI, "hardest_first")  # type: ignore[arg-type]


def test_rank_slices_are_disjoint_equal_and_follow_the_curriculum():
    order = curriculum_order(DDI, "easy_to_hard")
    slices = [rank_slice(order, r, 2) for r in range(2)]
    assert len(slices[0]) == len(slices[1]) == 4
    assert not set(slices[0]) & set(slices[1])
    for s in slices:  # each rank still goes from easy to hard
        assert [DDI[i] for i in s] == sorted(DDI[i] for i in s)
    assert rank_slice(order, 0, 1) == order
    with pytest.raises(ValueError):
        rank_slice(order, 2, 2)
