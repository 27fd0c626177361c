"""The one rank rule of the project: ranks that are unbiased when scores tie (docs/METHOD.md, "Ranks").

A query's positives are the gallery images of its place. Scores closer than ``TIE_EPS`` are
tied. The rank of a positive is its *expected* 1-based position when the images of each group
of tied scores are put in a uniformly random order. For a positive tied with ``n`` images of
other places and no other positive this is ``1 + #higher + n / 2``; when ``m`` positives share a
tie group with ``n`` other images, the j-th of them (j = 1..m) is expected at
``#higher + j + j * n / (m + 1)`` (the j-th smallest of m random positions among n + m). The
rank of a query is that of its best positive, ``1 + #higher + n / (m + 1)``. So a retriever that
scores every image alike ranks at chance, ``(G + 1) / (P + 1)`` for P positives among G images,
instead of first.

Every place that ranks imports this module: the static evaluation (:func:`rank_of_place`, the
retrieval callback, single process or gathered over DDP ranks), the dialogue loop over a
:class:`Gallery` (:func:`exact_search` over the whole gallery, or :func:`backend_search` from a
search backend's top lists) and the PRG reward (:func:`gallery_positive_ranks`). Ranks depend on
the scores only, never on the order of the gallery rows or on how a backend orders equal scores.

A top-k list (torch or faiss) cannot tell how many images tie with a positive beyond its end, so
ranks from lists take the positives' scores from the embeddings and count only what the list
decides; a query whose tie group reaches the end of its list is counted again over the whole
gallery.

Devices: every search runs where :func:`dlgpr.search.search_device` says (the queries' GPU when
the retriever is on one, else where the gallery is); a :class:`Gallery` is copied there once
(:meth:`Gallery.search_embeddings`). Ranks, scores and indices come back on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import Tensor

from dlgpr.data.schema import PlaceRecord
from dlgpr.data.turns import Candidate
from dlgpr.search import Backend, search_device, topk_search

__all__ = [
    "TIE_EPS", "EXACT_BLOCK_ELEMENTS", "expected_ranks", "positive_rows", "positive_scores", "exact_positive_ranks", "ranks_from_lists", "best_rank",
    "list_positive_ranks", "rank_of_place", "unique_rows", "Gallery", "exact_search", "backend_search", "gallery_positive_ranks",
]

TIE_EPS = 1e-6
"""Scores closer than this are tied (float noise between batch compositions is below it)."""

EXACT_BLOCK_ELEMENTS = 1 << 25
"""Scores per block of :func:`exact_positive_ranks` (``queries x gallery``; 128 MiB in float32):
the block's rows shrink as the gallery grows, so its memory does not grow with it."""


def expected_ranks(pos_scores: Tensor, valid: Tensor, higher_negatives: Tensor, tied_negatives: Tensor, eps: float = TIE_EPS) -> Tensor:
    """Expected ranks of a query's positives under a random order of tied scores.

    Args:
        pos_scores: ``[Q, P]`` scores of the positives (any value in padding).
        valid: ``[Q, P]`` bool, False in padding.
        higher_negatives: ``[Q, P]`` images of *other* places scored above each positive by more than ``eps``.
        tied_negatives: ``[Q, P]`` images of other places within ``eps`` of each positive.

    Returns:
        ``[Q, P]`` float64 ranks, ascending, 0 in padding (after the real ranks).
    """
    s = pos_scores.double()  # [Q, P]
    other = s[:, None, :]  # [Q, 1, P]: positive p'
    this = s[:, :, None]  # [Q, P, 1]: positive p
    v_other = valid[:, None, :]  # [Q, 1, P]
    above = (other > this + eps) & v_other  # [Q, P, P]: p' strictly above p
    tied = ((other - this).abs() <= eps) & v_other  # [Q, P, P]: p' tied with p (p itself included)
    index = torch.arange(s.shape[1], device=s.device)
    first = (other > this) | ((other == this) & (index[None, None, :] < index[None, :, None]))  # [Q, P, P]: p' before p
    m = tied.sum(dim=-1).double()  # [Q, P] positives in p's tie group
    j = 1.0 + (tied & first).sum(dim=-1).double()  # [Q, P] p's place among them
    higher = higher_negatives.double() + above.sum(dim=-1).double()  # [Q, P]
    r = higher + j + j * tied_negatives.double() / (m + 1.0)  # [Q, P]
    r = torch.where(valid, r, torch.full_like(r, float("inf"))).sort(dim=1).values
    n_valid = valid.sum(dim=1, keepdim=True)  # [Q, 1]
    return torch.where(index[None, :] < n_valid, r, torch.zeros_like(r))


def positive_rows(query_labels: Tensor, gallery_labels: Tensor, max_positives: int | None = None) -> Tensor:
    """``[Q, P]`` gallery rows of each query's place (ascending), ``-1`` in padding.

    ``P`` is the largest number of images any query's place has (at least 1), or ``max_positives``.
    """
    g_labels = gallery_labels.long().cpu()
    q_labels = query_labels.long().cpu()
    sorted_labels, order = g_labels.sort(stable=True)  # [G]
    start = torch.searchsorted(sorted_labels, q_labels, right=False)  # [Q]
    count = torch.searchsorted(sorted_labels, q_labels, right=True) - start  # [Q]
    p = int(max_positives) if max_positives is not None else max(1, int(count.max()) if count.numel() else 1)
    offs = torch.arange(p)  # [P]
    valid = offs[None, :] < count[:, None]  # [Q, P]
    at = (start[:, None] + offs[None, :]).clamp(max=max(len(order) - 1, 0))  # [Q, P]
    rows = order[at] if len(order) else torch.zeros_like(at)
    return torch.where(valid, rows, torch.full_like(rows, -1))


def positive_scores(queries: Tensor, gallery: Tensor, rows: Tensor, chunk: int = 1024) -> Tensor:
    """``[Q, P]`` inner products of each query with its positives' rows (0 in padding), chunked.

    A gather of ``P`` rows per query, not a search: computed where the gallery is, returned on the CPU.
    """
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk].float()  # [c, D]
        r = rows[start : start + chunk].to(gallery.device)  # [c, P]
        g = gallery[r.clamp(min=0)].float()  # [c, P, D]
        s = torch.einsum("cd,cpd->cp", q.to(g.device), g)  # [c, P]
        out.append(torch.where(r >= 0, s, torch.zeros_like(s)).cpu())
    return torch.cat(out) if out else torch.zeros(0, rows.shape[1])


def count_above(values: Tensor, thresholds: Tensor) -> Tensor:
    """``[c, T]`` how many entries of each row of ``values [c, G]`` are strictly above each of the
    row's ``thresholds [c, T]``.

    One pass over ``values`` whatever ``T``: a binary search of each value among its row's sorted
    thresholds, then a histogram of the results. Exact (the same comparisons as ``values > t``,
    repeated thresholds included); extra memory one int32 per value.
    """
    c, t = thresholds.shape
    sorted_t, order = thresholds.sort(dim=1)  # [c, T]
    below = torch.searchsorted(sorted_t.contiguous(), values.contiguous(), out_int32=True)  # [c, G]: thresholds < each value
    below += torch.arange(c, dtype=torch.int32, device=values.device)[:, None] * (t + 1)  # one histogram per row
    hist = torch.bincount(below.view(-1), minlength=c * (t + 1)).view(c, t + 1)  # [c, T+1]
    del below
    # a value is above sorted_t[j] iff at least j + 1 thresholds are below it
    at_least = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # [c, T]
    return torch.empty_like(at_least).scatter_(1, order, at_least)


def exact_positive_ranks(
    queries: Tensor, gallery: Tensor, rows: Tensor, k: int = 0, chunk: int = 1024, eps: float = TIE_EPS,
    max_block: int = EXACT_BLOCK_ELEMENTS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Expected ranks of every positive over the whole gallery, and the top-``k`` lists, chunked.

    Runs on :func:`~dlgpr.search.search_device` (queries and gallery are moved there). One
    ``[c, G]`` score block at a time, ``c <= min(chunk, max_block // G)`` queries (at least one;
    the blocks of a call are as equal as they can be, since a one-row block is a matrix-vector
    product that rounds scores differently): the counts of every positive come from one pass over
    the block (:func:`count_above`), so the extra memory is about ``8 c G`` bytes (the float32
    scores and an int32 per score), at most about ``8 max_block`` (or ``8 G`` for a gallery larger
    than ``max_block``), whatever the number of positives.

    Args:
        queries: ``[Q, D]``; gallery: ``[G, D]``; rows: ``[Q, P]`` positive rows (``-1`` padding).
        k: length of the top lists also returned (0: none).

    Returns:
        ``ranks [Q, P]`` (float64, ascending, 0 in padding), ``scores [Q, k]``, ``idx [Q, k]`` (CPU).
    """
    k = min(int(k), gallery.shape[0])
    device = search_device(queries, gallery)
    g = gallery.to(device).float()
    n_g = g.shape[0]
    n_q = queries.shape[0]
    n_blocks = -(-n_q // max(1, min(int(chunk), int(max_block) // max(n_g, 1))))
    bounds = [b * n_q // n_blocks for b in range(n_blocks + 1)] if n_q else [0]  # blocks within a row of each other: no 1-row tail
    out_r, out_s, out_i = [], [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        sim = queries[start:stop].to(device).float() @ g.T  # [c, G]
        if k:
            s, i = sim.topk(k, dim=1)  # [c, k]
            out_s.append(s.cpu())
            out_i.append(i.cpu())
        r = rows[start:stop].to(device)  # [c, P]
        valid = r >= 0  # [c, P]
        ps = sim.gather(1, r.clamp(min=0))  # [c, P]: the same numbers the counts compare
        # x > ps + eps is "above"; x < ps - eps, i.e. not x > the float just below ps - eps, is "below"
        just_below = torch.nextafter(ps - eps, torch.tensor(float("-inf"), device=device))  # [c, P]
        counts = count_above(sim, torch.cat([ps + eps, just_below], dim=1))  # [c, 2P]
        del sim
        above = counts[:, : r.shape[1]]  # [c, P]
        near = counts[:, r.shape[1] :] - above  # [c, P]: not below, not above

        # the counts include the positives themselves: take them out, expected_ranks adds them back
        pos_above = ((ps[:, None, :] > ps[:, :, None] + eps) & valid[:, None, :]).sum(dim=-1)  # [c, P]
        pos_near = (((ps[:, None, :] - ps[:, :, None]).abs() <= eps) & valid[:, None, :]).sum(dim=-1)  # [c, P]
        out_r.append(expected_ranks(ps.cpu(), valid.cpu(), (above - pos_above).cpu(), (near - pos_near).cpu(), eps))
    ranks = torch.cat(out_r) if out_r else torch.zeros(0, rows.shape[1], dtype=torch.float64)
    empty = torch.zeros(queries.shape[0], k)  # no query (no list: k = 0)
    scores = torch.cat(out_s) if out_s else empty
    idx = torch.cat(out_i) if out_i else empty.long()
    return ranks, scores, idx


def ranks_from_lists(
    list_scores: Tensor, list_is_positive: Tensor, list_valid: Tensor, pos_scores: Tensor, valid: Tensor, gallery_size: int,
    eps: float = TIE_EPS,
) -> tuple[Tensor, Tensor]:
    """Expected ranks of the positives from top-``k`` lists of a search backend.

    A positive is decided when every image within ``eps`` of it or above it is in the list (the
    list holds the whole gallery, or its last score is below the positive's tie band); a positive
    scored below the band of the list's last score is beyond the list (rank ``k + 1``). A
    positive whose tie band reaches the list's end is not decided: the caller counts that query
    over the gallery.

    Args:
        list_scores: ``[Q, k]`` scores of the listed images, best first.
        list_is_positive: ``[Q, k]`` whether each listed image is of the query's place.
        list_valid: ``[Q, k]`` False for empty slots (a backend may pad with -1).
        pos_scores: ``[Q, P]`` the positives' own scores (from the embeddings, not the list).
        valid: ``[Q, P]`` False in padding.
        gallery_size: G.

    Returns:
        ``ranks [Q, P]`` (float64, ascending, 0 in padding; ``k + 1`` beyond the list) and
        ``undecided [Q]`` (bool).
    """
    q, k = list_scores.shape
    neg = list_valid & ~list_is_positive  # [Q, k]
    ls = list_scores.double()[:, None, :]  # [Q, 1, k]
    ps = pos_scores.double()[:, :, None]  # [Q, P, 1]
    higher = ((ls > ps + eps) & neg[:, None, :]).sum(dim=-1)  # [Q, P]
    tied = (((ls - ps).abs() <= eps) & neg[:, None, :]).sum(dim=-1)  # [Q, P]
    n_listed = list_valid.sum(dim=1)  # [Q]
    last = torch.where(list_valid, list_scores.double(), torch.full_like(list_scores, float("inf"), dtype=torch.float64)).min(dim=1).values  # [Q]
    whole = (n_listed >= gallery_size)[:, None]  # [Q, 1]
    ps2 = pos_scores.double()  # [Q, P]
    inside = whole | (last[:, None] < ps2 - eps)  # [Q, P] all of the band and above is listed
    beyond = ~whole & (ps2 + eps < last[:, None])  # [Q, P] at least k images strictly above
    ranks = expected_ranks(pos_scores, valid, higher, tied, eps)  # ascending
    # the decision per positive, in ascending rank order (scores sort the other way)
    order = torch.where(valid, ps2, torch.full_like(ps2, float("-inf"))).sort(dim=1, descending=True, stable=True).indices  # [Q, P]
    inside_sorted, beyond_sorted = inside.gather(1, order), beyond.gather(1, order)
    valid_sorted = valid.gather(1, order)
    ranks = torch.where(valid_sorted & beyond_sorted, torch.full_like(ranks, float(k + 1)), ranks)
    undecided = (valid_sorted & ~inside_sorted & ~beyond_sorted).any(dim=1)  # [Q]
    return ranks, undecided


def best_rank(ranks: Tensor, valid_count: Tensor, missing: float) -> Tensor:
    """``[Q]`` rank of each query's best positive from ascending ``ranks [Q, P]``; ``missing`` where it has none."""
    first = ranks[:, 0] if ranks.shape[1] else torch.zeros(ranks.shape[0], dtype=torch.float64)
    return torch.where(valid_count > 0, first, torch.full_like(first, float(missing)))


def list_positive_ranks(
    queries: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor, rows: Tensor, list_scores: Tensor, list_idx: Tensor
) -> Tensor:
    """``[Q, P]`` expected ranks of each query's positives from a backend's top lists ``[Q, depth]``.

    The lists decide the positives they cover (:func:`ranks_from_lists`), the positives' scores
    come from the embeddings, and a query whose tie group reaches the end of its list is counted
    over the whole gallery. Positives deeper than the list get ``depth + 1``; 0 in padding.
    ``list_idx`` -1 marks an empty slot; labels and lists on the CPU, the embeddings anywhere (the
    recount runs on the search device). Returned on the CPU.
    """
    listed = list_idx >= 0  # [Q, depth]
    is_pos = (gallery_labels[list_idx.clamp(min=0)] == query_labels[:, None]) & listed  # [Q, depth]
    valid = rows >= 0  # [Q, P]
    ps = positive_scores(queries, gallery, rows)  # [Q, P]
    ranks, undecided = ranks_from_lists(list_scores.float(), is_pos, listed, ps, valid, gallery.shape[0])
    if undecided.any():
        todo = undecided.nonzero().flatten()
        ranks[todo] = exact_positive_ranks(queries[todo], gallery, rows[todo])[0]
    return ranks


def rank_of_place(
    queries: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    k: int,
    backend: Backend = "auto",
) -> Tensor:
    """Expected 1-based rank of the best gallery image of each query's place (the static evaluation).

    Ties are neither in the target's favour nor against it: tied images count half (the expected
    position under a random order of ties), so the rank does not depend on how the backend orders
    equal scores, nor on the order of the gallery rows (which differs between one process and a
    DDP gather), and a retriever that scores everything alike ranks at chance. The backend's top
    ``k`` lists decide most queries (:func:`list_positive_ranks`). Searched on
    :func:`~dlgpr.search.search_device`; the ranks come back on the CPU.

    Args:
        queries: ``[Q, D]`` normalised query embeddings.
        query_labels: ``[Q]`` place id of each query.
        gallery: ``[G, D]`` normalised gallery embeddings.
        gallery_labels: ``[G]`` place id of each gallery image.
        k: depth of the search; queries whose place is ranked deeper (or absent) get ``k + 1``.

    Returns:
        ``[Q]`` float64 ranks (whole or half-integers when scores tie).
    """
    rows = positive_rows(query_labels, gallery_labels)  # [Q, P]
    if k < 1 or queries.shape[0] == 0 or gallery.shape[0] == 0:
        return torch.full((queries.shape[0],), float(max(k, 0) + 1), dtype=torch.float64)
    scores, idx = topk_search(queries, gallery, k, backend=backend)  # [Q, k]
    ranks = list_positive_ranks(queries, query_labels.cpu(), gallery, gallery_labels.cpu(), rows, scores.float().cpu(), idx.cpu())
    best = best_rank(ranks, (rows >= 0).sum(dim=1), k + 1)  # [Q]
    return best.clamp(max=float(k + 1))


def unique_rows(*ids: Tensor) -> Tensor:
    """Indices of the first occurrence of each distinct id tuple (DDP padding can repeat samples).

    ids: one or more ``[N]`` integer tensors forming a composite key. Returns sorted ``[U]`` indices.
    """
    key = torch.stack([i.long() for i in ids], dim=1)  # [N, C]
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # [N]
    first = torch.full((int(inverse.max()) + 1,), key.shape[0], dtype=torch.long) if key.numel() else torch.zeros(0, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(key.shape[0]), reduce="amin")  # [U]
    return first.sort().values


# ---- the searched gallery of the dialogue loop and the PRG reward --------------------------------


@dataclass
class Gallery:
    """The searched images, encoded once: ``embeddings [G, D]`` (normalised), ``place_ids [G]``.

    ``embeddings`` stay where they were built (the CPU for :func:`dlgpr.retrieval.encode_gallery`);
    searches use :meth:`search_embeddings`, a float32 copy on the search device made once.
    """

    embeddings: Tensor
    place_ids: Tensor
    keys: list[str]
    descriptions: list[str]
    attributes: list[dict[str, Any]]
    image_fn: Callable[[int], Image.Image] | None = None
    _copies: dict[torch.device, tuple[Tensor, Tensor]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.embeddings.shape[0]
        if not (len(self.place_ids) == len(self.keys) == len(self.descriptions) == len(self.attributes) == n):
            raise ValueError("gallery fields must all have one entry per image")
        ids, counts = torch.unique(self.place_ids, return_counts=True)
        self._positives = dict(zip(ids.tolist(), counts.tolist()))

    @classmethod
    def from_records(cls, records: Sequence[PlaceRecord], embeddings: Tensor, image_fn: Callable[[int], Image.Image] | None = None) -> "Gallery":
        return cls(
            embeddings=embeddings,
            place_ids=torch.tensor([r.place_id for r in records], dtype=torch.long),
            keys=[r.key for r in records],
            descriptions=[r.description for r in records],
            attributes=[r.attributes for r in records],
            image_fn=image_fn,
        )

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def embeddings_on(self, device: torch.device | str) -> Tensor:
        """``embeddings`` in float32 on ``device``: copied there on first use and kept (a dialogue
        or a reward searches every round); the embeddings themselves when they already are."""
        device = torch.device(device)
        if device.type != "cpu" and device.index is None:
            device = torch.empty(0, device=device).device  # "cuda" -> "cuda:<current>"
        src = self.embeddings
        if src.device == device and src.dtype == torch.float32:
            return src
        kept = self._copies.get(device)
        if kept is None or kept[0] is not src:  # first use, or the embeddings were replaced
            kept = (src, src.detach().to(device=device, dtype=torch.float32))
            self._copies[device] = kept
        return kept[1]

    def search_embeddings(self, queries: Tensor) -> Tensor:
        """The embeddings to search ``queries`` against: on :func:`~dlgpr.search.search_device`, float32."""
        return self.embeddings_on(search_device(queries, self.embeddings))

    def num_positives(self, place_id: int) -> int:
        return self._positives.get(int(place_id), 0)

    def candidate(self, index: int, score: float) -> Candidate:
        fn = self.image_fn
        return Candidate(
            key=self.keys[index],
            place_id=int(self.place_ids[index]),
            description=self.descriptions[index],
            attributes=self.attributes[index],
            score=score,
            image=(lambda: fn(index)) if fn is not None else None,
            embedding=self.embeddings[index],
        )


def exact_search(emb: Tensor, gallery: Gallery, rows: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-``k`` candidates and exact positive ranks over the whole gallery.

    ``emb [Q, D]`` normalised queries, ``rows [Q, P]`` their positives (:func:`positive_rows`).
    Returns ``scores [Q, k]``, ``idx [Q, k]``, ``best [Q]``, ``positive ranks [Q, P]``, on the CPU;
    searched on the search device (:meth:`Gallery.search_embeddings`).
    """
    ranks, scores, idx = exact_positive_ranks(emb.float(), gallery.search_embeddings(emb), rows, k)
    best = best_rank(ranks, (rows >= 0).sum(dim=1), len(gallery) + 1)
    return scores, idx, best, ranks


def backend_search(
    emb: Tensor, gallery: Gallery, rows: Tensor, labels: Tensor, depth: int, backend: Backend = "auto"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-``depth`` lists of a search backend and the positive ranks they decide (:func:`list_positive_ranks`).

    ``emb [Q, D]`` normalised queries of places ``labels [Q]`` with positives ``rows [Q, P]``.
    Returns ``scores [Q, depth]``, ``idx [Q, depth]``, ``best [Q]`` (``depth + 1`` beyond the
    lists), ``positive ranks [Q, P]``, on the CPU; searched on the search device
    (:meth:`Gallery.search_embeddings`), as is the recount of undecided queries.
    """
    g = gallery.search_embeddings(emb)  # [G, D]
    scores, idx = topk_search(emb, g, depth, backend=backend)  # [Q, depth]
    idx, scores = idx.cpu(), scores.cpu()
    ranks = list_positive_ranks(emb.float(), labels.cpu(), g, gallery.place_ids, rows, scores, idx)
    return scores, idx, best_rank(ranks, (rows >= 0).sum(dim=1), idx.shape[1] + 1), ranks


def gallery_positive_ranks(emb: Tensor, gallery: Gallery, place_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Exact ranks of every image of each query's place over the whole gallery.

    ``emb [Q, D]`` normalised query embeddings. Returns ``positive ranks [Q, P]`` (ascending,
    0 = padding past the place's image count) and ``num_positives [Q]``: what ``metrics.prg`` takes,
    on the CPU; searched on the search device (:meth:`Gallery.search_embeddings`).
    """
    labels = torch.as_tensor(list(place_ids), dtype=torch.long)
    rows = positive_rows(labels, gallery.place_ids)  # [Q, P]
    ranks, _, _ = exact_positive_ranks(emb.float(), gallery.search_embeddings(emb), rows)
    return ranks, (rows >= 0).sum(dim=1)
