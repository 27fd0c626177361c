"""The small localizability model of GLOBE's R_loc on the embedded world: P(localizable | image, reasoning).

A CLIP backbone (by default dlgpr's ``dlgpr-mini`` pretrained on a SynthCities world, the image
tower the retriever starts from) embeds the image and the reasoning; a small MLP reads the two
unit embeddings, their product and their difference and gives one logit. ``forward`` returns the
logit, never a loss (the module, ``dlgpr.modules.localizability``, owns the loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlgpr.models.clip_backbone import CLIPBackbone, ClipBackboneConfig

__all__ = ["LocalizabilityModelConfig", "LocalizabilityModel"]


@dataclass
class LocalizabilityModelConfig:
    """The towers and the head of the small reward model."""

    backbone: ClipBackboneConfig = field(default_factory=lambda: ClipBackboneConfig(model_name="dlgpr-mini", pretrained="synthcities"))
    """Image and text towers (their weights train at the module's ``tower_lr``)."""
    hidden: int = 256
    """Width of the head's hidden layer."""
    dropout: float = 0.1
    """Dropout before the head's output layer."""

    def __post_init__(self) -> None:
        if self.hidden < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"hidden must be >= 1 and dropout in [0, 1), got {self.hidden}, {self.dropout}")


class LocalizabilityModel(nn.Module):
    """``(images [B, 3, S, S], tokens [B, L]) -> logits [B]`` (CLIP towers + MLP head)."""

    def __init__(self, config: LocalizabilityModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or LocalizabilityModelConfig()
        self.backbone = CLIPBackbone(cfg.backbone)
        d = self.backbone.embed_dim
        self.head = nn.Sequential(nn.LayerNorm(4 * d), nn.Linear(4 * d, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.hidden, 1))

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        v = F.normalize(self.backbone.encode_image(images).float(), dim=-1)  # [B, D]
        t = F.normalize(self.backbone.encode_text(tokens).float(), dim=-1)  # [B, D]
        x = torch.cat([v, t, v * t, v - t], dim=-1)  # [B, 4D]
        return self.head(x).squeeze(-1)  # [B]
