"""Scripted ``model.generate`` for tests of Hugging Face generation paths (questioners, geo predictors)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch


def script_generate(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module, tokenizer: Any, reply: Callable[[str], str]) -> None:
    """Make ``model.generate`` answer ``reply(prompt text)`` per row, then eos and right padding as HF does."""

    def generate(input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        rows = [
            tokenizer(reply(tokenizer.decode(ids[mask.bool()])), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for ids, mask in zip(input_ids, attention_mask)
        ]
        width = max(map(len, rows))
        new = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(model, "generate", generate)
