"""CLIP backbone: a thin wrapper around open_clip.

Any open_clip architecture works (``ViT-B-16`` with ``pretrained="openai"`` is the paper's
backbone). dlgpr registers its own small architectures from ``model_configs/*.json`` (e.g.
``dlgpr-tiny``: a 4-layer ViT on 64 px with 8 px patches and a 4-layer text tower, 128-d
embeddings) so tests and the embedded default build a CLIP from its config without any
download. ``pretrained`` is an open_clip tag (downloaded to ``cache_dir`` by open_clip), a
local checkpoint path, or ``None`` for random initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import open_clip
from torch import Tensor, nn

_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

__all__ = ["ClipBackboneConfig", "CLIPBackbone", "ClipTokenizer"]


@dataclass
class ClipBackboneConfig:
    """Which CLIP to build and from which weights."""

    model_name: str = "dlgpr-tiny"
    """open_clip architecture name (``ViT-B-16``, ...) or one of dlgpr's ``model_configs``."""
    pretrained: str | None = None
    """open_clip pretrained tag (``openai``), a local checkpoint file, or None for random weights."""
    image_size: int | None = None
    """Input resolution override; None keeps the architecture's own."""
    context_length: int | None = None
    """Text context override for randomly initialised towers; None keeps the architecture's own."""
    cache_dir: str | None = None
    """Where open_clip keeps downloaded weights (None: its default)."""

    def __post_init__(self) -> None:
        if self.model_name not in open_clip.list_models():
            raise ValueError(f"model_name {self.model_name!r} is not an open_clip architecture (see open_clip.list_models())")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {self.context_length}")
        if self.pretrained and self.context_length is not None:
            raise ValueError(
                "context_length cannot be overridden on pretrained weights here: the positional "
                "embedding would not load; extend it by interpolation (CMPL long-text) instead"
            )


class ClipTokenizer:
    """Picklable callable ``list[str] -> LongTensor [B, context_length]`` (for DataLoader workers)."""

    def __init__(self, model_name: str, context_length: int) -> None:
        self.model_name = model_name
        self.context_length = context_length
        self._tok = open_clip.get_tokenizer(model_name, context_length=context_length)

    def __call__(self, texts: list[str]) -> Tensor:
        return self._tok(list(texts), context_length=self.context_length)  # [B, L]


class CLIPBackbone(nn.Module):
    """Image and text towers of a CLIP model.

    ``encode_image``: ``[B, 3, H, W]`` normalised pixels -> ``[B, D]``; ``encode_text``:
    ``[B, L]`` token ids -> ``[B, D]``. Embeddings are returned unnormalised.
    """

    def __init__(self, config: ClipBackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ClipBackboneConfig()
        model = open_clip.create_model(
            config.model_name,
            pretrained=config.pretrained,
            force_image_size=config.image_size,
            force_context_length=config.context_length,
            cache_dir=config.cache_dir,
        )
        if not isinstance(model, open_clip.CLIP):
            raise ValueError(f"{config.model_name} is not a two-tower CLIP model (got {type(model).__name__})")
        # The contrastive temperature belongs to the loss (SDM fixes it); keep open_clip's
        # learnable logit_scale out of the optimizer so it does not drift unused.
        model.logit_scale.requires_grad_(False)
        self.model = model
        self.context_length = int(model.context_length)
        vision_size = model.visual.image_size
        self.image_size = int(vision_size[0] if isinstance(vision_size, (tuple, list)) else vision_size)
        self.image_mean = tuple(float(v) for v in getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        self.image_std = tuple(float(v) for v in getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        self.embed_dim = int(model.text_projection.shape[1]) if model.text_projection is not None else int(model.transformer.width)

    def tokenizer(self) -> ClipTokenizer:
        return ClipTokenizer(self.config.model_name, self.context_length)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)  # [B, D]

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.model.encode_text(tokens)  # [B, D]

    def forward(self, images: Tensor | None = None, tokens: Tensor | None = None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if images is not None:
            out["image_emb"] = self.encode_image(images)  # [B, D]
        if tokens is not None:
            out["text_emb"] = self.encode_text(tokens)  # [B, D]
        return out
