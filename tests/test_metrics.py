import pytest
import torch

from dlgpr.metrics import first_positive_rank, recall_at_k


def test_first_positive_rank_hand_example():
    gallery_labels = torch.tensor([7, 7, 3, 9, 3])
    topk = torch.tensor([[2, 0, 1], [3, 4, 0], [3, 3, 3], [0, -1, -1]])
    query_labels = torch.tensor([7, 7, 5, 7])
    ranks = first_positive_rank(topk, query_labels, gallery_labels)
    assert ranks.tolist() == [2, 3, 4, 1]  # third query: no positive in top 3 -> k + 1


def test_first_positive_rank_ignores_empty_slots():
    # -1 slots must not alias gallery index 0
    ranks = first_positive_rank(torch.tensor([[-1, 1]]), torch.tensor([4]), torch.tensor([4, 8]))
    assert ranks.tolist() == [3]


def test_recall_at_k():
    r = recall_at_k(torch.tensor([1, 2, 5, 11]), [1, 5, 10])
    assert r == {1: 0.25, 5: 0.75, 10: 0.75}
    with pytest.raises(ValueError):
        recall_at_k(torch.tensor([], dtype=torch.long), [1])
