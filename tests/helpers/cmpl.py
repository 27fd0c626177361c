"""A tiny CMPLModule (32 px images, short texts) and one fixed batch with two texts per place."""

from __future__ import annotations

import torch

from dlgpr.models.clip_backbone import ClipBackboneConfig
from dlgpr.models.cmpl import CMPLConfig
from dlgpr.modules.cmpl import CMPLModule


def tiny_module(**kw) -> CMPLModule:
    torch.manual_seed(0)
    return CMPLModule(
        backbone=ClipBackboneConfig(image_size=32, context_length=24, long_text_length=40),
        cmpl=CMPLConfig(taps=[2, 4], num_queries=4, local_dim=32),
        logit_scale=14.29, learnable_logit_scale=True, **kw,
    )


def fixed_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    tok = tiny_module().preprocessing().tokenizer
    texts = ["red brick bank", "red brick bank, green awning", "yellow house", "yellow house, blue door",
             "grey tower", "grey tower with a clock", "white shop", "white shop, striped awning"]
    return {"image": torch.randn(8, 3, 32, 32, generator=g), "tokens": tok(texts), "place_id": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}


def tiny_checkpoint(path, **kw) -> CMPLModule:
    """Save :func:`tiny_module` (untrained) as a Lightning checkpoint that ``dlgpr.retrieval.load_retriever`` reads."""
    from lightning.pytorch import Trainer

    module = tiny_module(**kw)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return module
