import pytest
import torch

from dlgpr.metrics import recall_at_k


def test_recall_at_k():
    r = recall_at_k(torch.tensor([1, 2, 5, 11]), [1, 5, 10])
    assert r == {1: 0.25, 5: 0.75, 10: 0.75}
    with pytest.raises(ValueError):
        recall_at_k(torch.tensor([], dtype=torch.long), [1])
