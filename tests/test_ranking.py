"""The rank rule (dlgpr.ranking): expected ranks under a random order of ties, the same in every
place that ranks (static eval, dialogue loop exact and from backend lists, PRG reward)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.loop import DialogueQuery, run_dialogue
from dlgpr.dialogue.questioners import RandomQuestioner
from dlgpr.data.turns import Target
from dlgpr.models.reply_format import format_question
from dlgpr.metrics import recall_at_k
from dlgpr.ranking import (
    EXACT_BLOCK_ELEMENTS, TIE_EPS,
    Gallery, count_above, exact_positive_ranks, expected_ranks, gallery_positive_ranks, positive_rows, positive_scores, rank_of_place, ranks_from_lists,
)
from dlgpr.rewards import RetrievalGainReward
from dlgpr.search import topk_search


def _tied_gallery():
    """One query [1, 0]; gallery images whose scores are the x coordinates below (place 1 = the target).

    positives 0.5, 0.5, 0.3; others 0.7, 0.5, 0.5, 0.5, 0.3, 0.1.
    """
    xs = [0.5, 0.7, 0.5, 0.5, 0.3, 0.5, 0.1, 0.3, 0.5]
    labels = [1, 2, 3, 4, 1, 5, 6, 7, 1]
    gallery = torch.tensor([[x, math.sqrt(1 - x * x)] for x in xs])
    return torch.tensor([[1.0, 0.0]]), torch.tensor([1]), gallery, torch.tensor(labels)


def _average_over_orders(scores: list[float], is_pos: list[bool]) -> tuple[list[float], float]:
    """Average sorted positions of the positives over every order that breaks ties (by brute force)."""
    groups: dict[float, list[bool]] = {}
    for s, p in zip(scores, is_pos):
        groups.setdefault(round(s, 6), []).append(p)
    ordered = [groups[s] for s in sorted(groups, reverse=True)]
    totals, best, count = None, 0.0, 0
    for perms in itertools.product(*(set(itertools.permutations(g)) for g in ordered)):
        flat = [p for g in perms for p in g]
        positions = [i + 1 for i, p in enumerate(flat) if p]
        totals = positions if totals is None else [a + b for a, b in zip(totals, positions)]
        best += positions[0]
        count += 1
    return [t / count for t in totals], best / count


def test_hand_computed_expected_ranks():
    # scores of the positives 0.5, 0.5, 0.3; other images: one at 0.7, three tied at 0.5, one at 0.3
    # the two positives at 0.5 share a tie group with 3 others after 1 higher image: positions
    # 1 + j + j * 3 / 3 = 3 and 5; the one at 0.3 has 5 above it and one tie: 6 + 1 + 1/2 = 7.5
    r = expected_ranks(torch.tensor([[0.5, 0.3, 0.5]]), torch.tensor([[True, True, True]]),
                       higher_negatives=torch.tensor([[1, 4, 1]]), tied_negatives=torch.tensor([[3, 1, 3]]))
    assert r.tolist() == [[3.0, 5.0, 7.5]]
    # padding stays 0 and behind the real ranks; one positive tied with n others: 1 + higher + n / 2
    r = expected_ranks(torch.tensor([[0.0, 0.2]]), torch.tensor([[False, True]]), torch.tensor([[9, 2]]), torch.tensor([[9, 3]]))
    assert r.tolist() == [[4.5, 0.0]]


def test_every_ranking_path_equals_the_average_over_orders_of_ties():
    q, ql, g, gl = _tied_gallery()
    scores = (q @ g.T)[0].tolist()
    expected, expected_best = _average_over_orders(scores, [int(x) == 1 for x in gl])
    assert expected == pytest.approx([3.0, 5.0, 7.5]) and expected_best == pytest.approx(3.0)
    rows = positive_rows(ql, gl)
    ranks, _, _ = exact_positive_ranks(q, g, rows)
    assert ranks[0].tolist() == pytest.approx(expected)
    for backend in ("torch", "faiss"):
        assert rank_of_place(q, ql, g, gl, k=len(g), backend=backend).tolist() == pytest.approx([expected_best])
        assert rank_of_place(q, ql, g, gl, k=4, backend=backend).tolist() == pytest.approx([expected_best])  # tie band reaches the list's end
        assert rank_of_place(q, ql, g, gl, k=1, backend=backend).tolist() == [2.0]  # beyond the list: k + 1
    # from lists of every depth: decided where the list covers the tie band, recounted otherwise
    for depth in range(1, len(g) + 1):
        s, i = topk_search(q, g, depth, backend="torch")
        listed = i >= 0
        is_pos = (gl[i] == ql[:, None]) & listed
        r, undecided = ranks_from_lists(s, is_pos, listed, positive_scores(q, g, rows), rows >= 0, len(g))
        if not undecided.any():
            capped = [x if x <= depth else depth + 1 for x in expected]
            assert r[0].tolist() == pytest.approx(capped), depth


def test_ranks_do_not_depend_on_the_order_of_gallery_rows():
    # a DDP gather concatenates the ranks' rows in another order than one process reads them
    q, ql, g, gl = _tied_gallery()
    gen = torch.Generator().manual_seed(0)
    base = rank_of_place(q, ql, g, gl, k=5, backend="torch")
    for _ in range(5):
        perm = torch.randperm(len(g), generator=gen)
        for backend in ("torch", "faiss"):
            assert torch.equal(rank_of_place(q, ql, g[perm], gl[perm], k=5, backend=backend), base)


# ---- a collapsed retriever ranks at chance everywhere ----------------------------------------------

PLACES, VIEWS = 10, 4
G = PLACES * VIEWS
CHANCE = (G + 1) / (VIEWS + 1)  # expected best position of 4 positives among 40 in a random order


class ConstantRetriever:
    """Embeds every text alike (a collapsed retriever)."""

    def embed_texts(self, texts):
        return F.normalize(torch.ones(len(texts), 8), dim=1)


def _constant_gallery() -> Gallery:
    emb = F.normalize(torch.ones(G, 8), dim=1)
    pids = torch.arange(G) // VIEWS
    attrs = [{"facade_color": "red"} for _ in range(G)]
    return Gallery(emb, pids, [f"k{i}" for i in range(G)], ["a red building"] * G, attrs)


def test_constant_retriever_ranks_at_chance_in_the_static_eval():
    emb = F.normalize(torch.ones(G, 8), dim=1)
    labels = torch.arange(G) // VIEWS
    for backend in ("torch", "faiss"):
        ranks = rank_of_place(emb, labels, emb, labels, k=10, backend=backend)
        assert ranks.tolist() == pytest.approx([CHANCE] * G)
        assert recall_at_k(ranks, [1, 5]) == {1: 0.0, 5: 0.0}  # not 100 %


@pytest.mark.parametrize("rank_depth,backend", [(None, "torch"), (10, "torch"), (10, "faiss"), (G, "faiss")])
def test_constant_retriever_ranks_at_chance_in_the_dialogue_loop(rank_depth, backend):
    gallery = _constant_gallery()
    queries = [DialogueQuery(i, "a red building", Target(p, "a red building", {"facade_color": "red"})) for i, p in enumerate(range(PLACES))]
    res = run_dialogue(ConstantRetriever(), RandomQuestioner(), OracleAnswerer(), queries, gallery, rounds=2, top_k=5,
                       rank_depth=rank_depth, backend=backend)
    assert torch.allclose(res.ranks, torch.full((PLACES, 3), CHANCE, dtype=torch.float64))
    expected_positives = [j * CHANCE for j in range(1, VIEWS + 1)]  # the j-th of 4 random positions among 40
    assert torch.allclose(res.positive_ranks[:, 0], torch.tensor([expected_positives] * PLACES, dtype=torch.float64))
    s = res.summary()
    assert s["round2/recall@1"] == 0.0 and s["round1/prg"] == 0.0


def test_constant_retriever_ranks_at_chance_in_the_prg_reward():
    gallery = _constant_gallery()
    emb = F.normalize(torch.ones(3, 8), dim=1)
    ranks, num_pos = gallery_positive_ranks(emb, gallery, [0, 4, 9])
    assert torch.allclose(ranks, torch.tensor([[j * CHANCE for j in range(1, VIEWS + 1)]] * 3, dtype=torch.float64))
    assert num_pos.tolist() == [VIEWS] * 3


class CollapsedThenExact:
    """Scores every image alike (``e_0``) until the answer names the door, then embeds the target's own image."""

    def __init__(self, gallery, target_row):
        self.flat = torch.eye(8)[0]
        self.target = gallery.embeddings[target_row]

    def embed_texts(self, texts):
        return torch.stack([self.target if "door" in t else self.flat for t in texts])


def test_prg_reward_credits_leaving_a_collapsed_ranking():
    # the answer takes the target from "everything alike" (rank at chance) to the top: a real gain.
    # Ranks that favoured the target scored the collapsed ranking as already ideal (PRG <= 0).
    gen = torch.Generator().manual_seed(0)
    rest = F.normalize(torch.randn(G, 7, generator=gen), dim=1)
    pids = torch.arange(G) // VIEWS
    rest[pids == 3] = rest[3 * VIEWS].clone()  # the target's views look alike
    emb = torch.cat([torch.full((G, 1), 0.5), math.sqrt(0.75) * rest], dim=1)  # every image scores 0.5 against e_0
    attrs = [{"door_color": "red" if p == 3 else "blue"} for p in pids.tolist()]
    gallery = Gallery(emb, pids, [f"k{i}" for i in range(G)], ["d"] * G, attrs)
    reward = RetrievalGainReward.from_parts(CollapsedThenExact(gallery, 3 * VIEWS), gallery)
    values = reward([None], [format_question("t", "What colour is the door?")], target=[Target(3, "d", attrs[3 * VIEWS])],
                    initial_description=["a building"], history=[()])
    assert reward.last_stats["answered"] == 1
    assert values[0] == pytest.approx(1.0)  # from chance to all four views on top: the whole room gained


# ---- exact counting against a plain-Python reference ------------------------------------------------


def _naive_positive_ranks(scores: torch.Tensor, query_labels: list[int], gallery_labels: list[int], eps: float) -> list[list[float]]:
    """The rank rule one query and one positive at a time, in Python floats: ``higher + j + j n / (m + 1)``
    with ``higher`` the images (positives included) above by more than ``eps``, ``m`` the positives
    tied with it, ``n`` the other images tied with it and ``j`` its place among the ``m``."""
    out = []
    for qi, row in enumerate(scores.tolist()):
        pos = [g for g, lab in enumerate(gallery_labels) if lab == query_labels[qi]]
        ranks = []
        for p in pos:
            s = row[p]
            higher = sum(1 for x in row if x > s + eps)
            tied_pos = [p2 for p2 in pos if abs(row[p2] - s) <= eps]
            n = sum(1 for g, x in enumerate(row) if abs(x - s) <= eps and g not in pos)
            j = 1 + sum(1 for p2 in tied_pos if row[p2] > s or (row[p2] == s and p2 < p))
            ranks.append(higher + j + j * n / (len(tied_pos) + 1))
        out.append(sorted(ranks))
    return out


def _integer_scores(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries in {-1, 0, 1}^6 and gallery rows in {-2..2}/4: exact scores, multiples of 1/4, many tied."""
    q = torch.randint(-1, 2, (9, 6), generator=gen).float()
    g = torch.randint(-2, 3, (70, 6), generator=gen).float() / 4
    return q, g


def _noisy_ties(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot queries read one column of the gallery: multiples of 1/8 plus a few 1e-7 (tied, not equal)."""
    g = torch.randint(-4, 5, (70, 9), generator=gen).double() / 8 + torch.randint(-2, 3, (70, 9), generator=gen).double() * 1e-7
    return torch.eye(9), g.float()


@pytest.mark.parametrize("make", [_integer_scores, _noisy_ties])
def test_exact_positive_ranks_equal_a_naive_count_with_ties_and_padding(make):
    gen = torch.Generator().manual_seed(0)
    q, g = make(gen)
    gallery_labels = torch.randint(0, 12, (g.shape[0],), generator=gen)  # 0 to ~12 images per place
    query_labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 99])  # place 99 has no image: a row of padding
    rows = positive_rows(query_labels, gallery_labels)
    assert (rows == -1).any(dim=1).sum() >= 5 and (rows[-1] == -1).all()  # padding past most places' images, and a row of it
    scores = q @ g.T
    naive = _naive_positive_ranks(scores, query_labels.tolist(), gallery_labels.tolist(), TIE_EPS)
    expected = torch.tensor([r + [0.0] * (rows.shape[1] - len(r)) for r in naive], dtype=torch.float64)
    assert len({round(x, 5) for x in scores[0].tolist()}) < 20  # ties (within eps), plenty of them
    # one query per block, two, the default; k lists as well
    for chunk, max_block in ((1, EXACT_BLOCK_ELEMENTS), (4, EXACT_BLOCK_ELEMENTS), (1024, 2 * g.shape[0]), (1024, 1)):
        ranks, top_s, top_i = exact_positive_ranks(q, g, rows, k=5, chunk=chunk, max_block=max_block)
        assert torch.equal(ranks, expected), (chunk, max_block)
        assert torch.equal(top_s, scores.topk(5, dim=1).values)
        assert torch.equal(scores.gather(1, top_i), top_s)


def test_exact_positive_ranks_degenerate_galleries():
    # every image alike: chance, the j-th of P positives among G at j (G + 1) / (P + 1)
    g = F.normalize(torch.ones(12, 4), dim=1)
    rows = positive_rows(torch.tensor([0]), torch.arange(12) // 3)
    ranks, _, _ = exact_positive_ranks(F.normalize(torch.ones(1, 4), dim=1), g, rows)
    assert ranks[0].tolist() == pytest.approx([13 / 4, 26 / 4, 39 / 4])
    # a one-image gallery; a query with no positive ranks nothing
    ranks, s, i = exact_positive_ranks(torch.ones(2, 4), torch.ones(1, 4), torch.tensor([[0], [-1]]), k=3)
    assert ranks.tolist() == [[1.0], [0.0]] and s.tolist() == [[4.0], [4.0]] and i.tolist() == [[0], [0]]
    ranks, s, i = exact_positive_ranks(torch.ones(0, 4), torch.ones(3, 4), torch.zeros(0, 2, dtype=torch.long), k=2)  # no query
    assert ranks.shape == (0, 2) and s.shape == (0, 2) and i.shape == (0, 2)


def test_the_tie_band_is_closed_at_both_ends_in_float32():
    # a positive at 0.5; images exactly at the float32 ends of its band 0.5 +- eps are tied with it
    # (neither above nor below), the next float past the top end is above: 1 + 1 + 2 / 2 = 3
    half = torch.tensor(0.5)
    top, bottom = half + TIE_EPS, half - TIE_EPS  # float32, as the counts compute them
    past = torch.nextafter(top, torch.tensor(1.0))
    g = torch.stack([half, top, bottom, past, torch.tensor(-1.0)])[:, None] * torch.tensor([[1.0, 0.0]])  # [5, 2]
    ranks, _, _ = exact_positive_ranks(torch.tensor([[1.0, 0.0]]), g, torch.tensor([[0]]))
    assert ranks.tolist() == [[3.0]]


def test_count_above_is_the_comparison_count():
    gen = torch.Generator().manual_seed(1)
    values = torch.randint(-3, 4, (5, 40), generator=gen).float() / 2  # values equal to thresholds
    thresholds = torch.randint(-4, 5, (5, 7), generator=gen).float() / 2  # repeated thresholds
    thresholds[0] = 0.5  # all the same
    naive = (values[:, None, :] > thresholds[:, :, None]).sum(dim=-1)  # [5, 7]
    assert torch.equal(count_above(values, thresholds), naive)
    assert count_above(values, thresholds).tolist()[0] == [int((values[0] > 0.5).sum())] * 7


# ---- the device rule ------------------------------------------------------------------------------


def _tiny_gallery(embeddings: torch.Tensor) -> Gallery:
    n = embeddings.shape[0]
    return Gallery(embeddings, torch.arange(n) // 2, [f"k{i}" for i in range(n)], ["d"] * n, [{} for _ in range(n)])


def test_gallery_is_copied_to_the_search_device_once():
    emb = torch.randn(6, 3, dtype=torch.float64)
    gallery = _tiny_gallery(emb)
    on_meta = gallery.embeddings_on("meta")  # a second device on a CPU-only machine
    assert on_meta.device.type == "meta" and on_meta.dtype == torch.float32 and on_meta.shape == (6, 3)
    assert gallery.embeddings_on(torch.device("meta")) is on_meta  # kept, not copied again
    assert gallery.embeddings is emb  # the gallery itself stays where it was built
    assert gallery.search_embeddings(torch.zeros(2, 3, device="meta")) is on_meta  # queries on the device: search there
    on_cpu = gallery.search_embeddings(torch.zeros(2, 3))  # CPU queries, CPU gallery: the CPU, in float32
    assert on_cpu.device.type == "cpu" and on_cpu.dtype == torch.float32 and torch.equal(on_cpu, emb.float())
    gallery.embeddings = emb.float()  # replaced embeddings: a new copy, and none when already float32 there
    assert gallery.embeddings_on("cpu") is gallery.embeddings
    assert gallery.embeddings_on("meta") is not on_meta
