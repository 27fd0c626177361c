"""A deterministic bag-of-words retriever for dialogue tests (no training, exact behaviour)."""

from __future__ import annotations

import hashlib
import re

import torch
import torch.nn.functional as F

_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"the", "a", "an", "is", "of", "and", "to", "on", "in", "it", "there", "with", "its", "has", "are", "i", "think", "was", "building", "place"}


def _bucket(word: str, dim: int) -> int:
    return int.from_bytes(hashlib.blake2s(word.encode(), digest_size=4).digest(), "little") % dim


class LexicalRetriever:
    """Hashed bag of words (binary, stop words dropped), L2-normalised: ``embed_texts -> [N, dim]``."""

    def __init__(self, dim: int = 2048) -> None:
        self.dim = dim
        self.calls = 0

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            for w in set(_WORD.findall(t.lower())) - _STOP:
                out[i, _bucket(w, self.dim)] = 1.0
        return F.normalize(out, dim=1)
