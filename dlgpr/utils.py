"""Small helpers shared across the package."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and give it back the mode it had, even on an error.

    Inference inside training (a rollout, a gallery encode, a reward's re-ranking) must not leave
    dropout off, nor turn it on in a module that was frozen in eval mode.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
