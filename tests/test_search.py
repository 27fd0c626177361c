import pytest
import torch
import torch.nn.functional as F

from dlgpr.ranking import rank_of_place, unique_rows
from dlgpr.search import topk_search


def _data(q=37, g=211, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(q, d, generator=gen), dim=1), F.normalize(torch.randn(g, d, generator=gen), dim=1)


@pytest.mark.parametrize("backend", ["torch", "faiss", "auto"])
def test_topk_matches_naive_full_sort(backend):
    q, g = _data()
    scores, idx = topk_search(q, g, k=10, backend=backend, chunk_size=8)
    ref = (q @ g.T).argsort(dim=1, descending=True)[:, :10]
    assert torch.equal(idx, ref)
    assert torch.allclose(scores, (q @ g.T).gather(1, ref), atol=1e-5)


def test_topk_clips_k_and_validates():
    q, g = _data(q=3, g=4)
    _, idx = topk_search(q, g, k=10, backend="torch")
    assert idx.shape == (3, 4)
    with pytest.raises(ValueError):
        topk_search(q, g[:, :5], k=2)
    with pytest.raises(ValueError):
        topk_search(q, g, k=2, backend="annoy")  # type: ignore[arg-type]


def test_rank_of_place_against_naive():
    q, g = _data(q=20, g=60)
    gl = torch.arange(60) // 3  # 20 places x 3 images
    ql = torch.arange(20)
    ranks = rank_of_place(q, ql, g, gl, k=60, backend="faiss")
    sim = q @ g.T
    for i in range(20):
        order = sim[i].argsort(descending=True)
        expected = int((gl[order] == ql[i]).nonzero()[0]) + 1
        assert ranks[i].item() == expected


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_rank_of_place_ties_count_half_whatever_the_gallery_order(backend):
    # two identical images of different places: whichever row comes first, the query of either
    # place ranks its own image at 1.5 (the expected position under a random order of the tie)
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]]), dim=1)
    gallery = torch.stack([img[0], img[0], img[1]])  # rows 0 and 1 are the same picture
    q = torch.stack([img[0], img[0]])
    for order in ([0, 1, 2], [1, 0, 2]):
        labels = torch.tensor([7, 8, 9])[order]
        ranks = rank_of_place(q, torch.tensor([7, 8]), gallery, labels, k=3, backend=backend)
        assert ranks.tolist() == [1.5, 1.5]
        assert rank_of_place(q, torch.tensor([7, 8]), gallery, labels, k=1, backend=backend).tolist() == [1.5, 1.5]  # tie at the list's end
    ranks = rank_of_place(q[:1], torch.tensor([9]), gallery, torch.tensor([7, 8, 9]), k=3, backend=backend)
    assert ranks.tolist() == [3]  # two images strictly above it
    assert rank_of_place(q[:1], torch.tensor([9]), gallery, torch.tensor([7, 8, 9]), k=2, backend=backend).tolist() == [3]  # not in the list: k + 1


def test_rank_of_place_ignores_empty_slots(monkeypatch):
    # a backend may pad a short list with -1: the slot is neither a hit nor an image above the target
    import dlgpr.ranking as ranking

    gallery = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # scores 1.0, 0.8, 0.0 against [1, 0]
    monkeypatch.setattr(ranking, "topk_search", lambda q, g, k, backend: (torch.tensor([[2.0, 0.8]]), torch.tensor([[-1, 1]])))
    assert rank_of_place(torch.tensor([[1.0, 0.0]]), torch.tensor([4]), gallery, torch.tensor([4, 8, 9]), k=2).tolist() == [1]
    monkeypatch.setattr(ranking, "topk_search", lambda q, g, k, backend: (torch.tensor([[2.0, 0.0]]), torch.tensor([[-1, 2]])))
    assert rank_of_place(torch.tensor([[0.0, 1.0]]), torch.tensor([4]), gallery, torch.tensor([4, 8, 9]), k=2).tolist() == [3]


def test_unique_rows_keeps_first_occurrence():
    pid = torch.tensor([3, 1, 3, 2, 1])
    view = torch.tensor([0, 0, 0, 1, 1])
    assert unique_rows(pid, view).tolist() == [0, 1, 3, 4]


@pytest.mark.parametrize(
    "device, gallery_size, expected",
    [("cpu", 1_000, "torch"), ("cpu", "large", "faiss"), ("meta", "large", "torch"), ("meta", 1_000, "torch")],
)
def test_auto_backend_is_torch_on_an_accelerator_and_faiss_only_for_large_cpu_galleries(monkeypatch, device, gallery_size, expected):
    import dlgpr.search as search

    called = []
    monkeypatch.setattr(search, "_torch_topk", lambda q, g, k, c: called.append("torch") or (q[:, :k], q[:, :k].long()))
    monkeypatch.setattr(search, "_faiss_topk", lambda q, g, k, d: called.append("faiss") or (q[:, :k], q[:, :k].long()))
    size = search.AUTO_FAISS_MIN_GALLERY if gallery_size == "large" else gallery_size
    # "meta" stands in for an accelerator: the search device is the queries' device; no memory is allocated
    queries, gallery = torch.empty(4, 8, device=device), torch.zeros(size, 8)
    search.topk_search(queries, gallery, k=3, backend="auto")
    assert called == [expected]
