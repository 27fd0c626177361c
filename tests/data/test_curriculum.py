"""DDI curriculum order: easy to hard, buckets, stratified, random; deterministic; DDP-disjoint."""

import random
from pathlib import Path

import pytest
import yaml

from datamodules.dialogue import CurriculumSampler
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


def test_stratified_keeps_the_ddi_mix_in_every_prefix():
    ddi = [i / 100 for i in range(100)]
    order = curriculum_order(ddi, "stratified", seed=0, num_buckets=5)
    assert sorted(order) == list(range(100))
    for length in range(5, 101, 5):  # each prefix of 5k turns holds k turns of every DDI quintile
        quintiles = sorted(int(ddi[i] * 5) for i in order[:length])
        assert quintiles == sorted(list(range(5)) * (length // 5))
    assert order != curriculum_order(ddi, "stratified", seed=0, epoch=1, num_buckets=5)  # reshuffled per epoch


GRPO_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("dqpilot_grpo*.yaml"))


@pytest.mark.parametrize("config", GRPO_CONFIGS, ids=[c.stem for c in GRPO_CONFIGS])
@pytest.mark.parametrize("high_share", [0.7, 0.65])
def test_grpo_config_trains_on_the_stages_ddi_mix_within_its_steps(config, high_share):
    # a GRPO stage as the corpus builds it (the embedded one: 1,380 turns, 70 % high-DDI); the run's
    # first N steps must see the stage's share of high-DDI turns, not its easiest turns only
    cfg = yaml.safe_load(config.read_text())
    data = cfg["data"]["init_args"]
    steps, batch = cfg["trainer"]["max_steps"], data["batch_size"]
    world = cfg["trainer"].get("devices", 1) if cfg["trainer"].get("strategy") == "ddp" else 1
    n = 1380
    rng = random.Random(0)
    threshold = 0.731
    high = set(rng.sample(range(n), round(high_share * n)))
    ddi = [threshold + rng.uniform(1e-3, 0.1) if i in high else threshold - rng.uniform(0, 0.1) for i in range(n)]
    for seed in range(3):
        orders = [CurriculumSampler(ddi, data["curriculum"]["mode"], seed, data["curriculum"].get("num_buckets", 3), rank=r, world_size=world).order()
                  for r in range(world)]
        for n_steps in sorted({10, 30, steps}):
            # every rank's first n_steps batches (a step past the epoch wraps into the next one)
            seen = [o[(s * batch + j) % len(o)] for o in orders for s in range(n_steps) for j in range(batch)]
            share = sum(i in high for i in seen) / len(seen)
            assert abs(share - high_share) <= 0.05, (n_steps, share)
