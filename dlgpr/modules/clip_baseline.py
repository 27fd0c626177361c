"""CLIP baseline (the paper's Table 3 "baseline": global alignment L_gs = SDM only)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from dlgpr.losses import sdm_loss
from dlgpr.models.clip_backbone import CLIPBackbone, ClipBackboneConfig
from dlgpr.modules.optim import OptimConfig
from dlgpr.modules.retrieval_base import RetrievalModule


class CLIPBaselineModule(RetrievalModule):
    """Fine-tunes a CLIP with SDM on (image, description) pairs labelled by place.

    Under DDP the embeddings of all ranks are gathered (with gradients) before SDM, so the loss
    sees the global batch of ``world_size x P x K`` pairs exactly as one process would; the
    gradient is then identical to single-process training on the concatenated batch.

    Args:
        backbone: which CLIP and weights (``long_text_length`` gives the Long-CLIP-style row).
        lr: peak learning rate.
        optim: AdamW and schedule settings.
        logit_scale: SDM's similarity scale (IRRA fixes 1/0.02 = 50 to fine-tune a pretrained
            CLIP). A CLIP trained from scratch stays collapsed under 50 (all cosines alike); it
            learns from CLIP's own 1/0.07 with a learnable scale. None: the pretrained weights'
            own scale (open_clip's ``logit_scale``).
        learnable_logit_scale: learn the scale (as its log, clamped to at most 100, like CLIP).
        gather_across_ranks: compute SDM on the global batch under DDP.
    """

    def __init__(
        self,
        backbone: ClipBackboneConfig = ClipBackboneConfig(),
        lr: float = 5e-4,
        optim: OptimConfig = OptimConfig(),
        logit_scale: float | None = 50.0,
        learnable_logit_scale: bool = False,
        gather_across_ranks: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = CLIPBackbone(backbone)
        self._init_training(lr, optim, self.backbone.resolve_logit_scale(logit_scale), learnable_logit_scale, gather_across_ranks)
        self.embed_dim = self.backbone.embed_dim

    @property
    def clip(self) -> CLIPBackbone:  # type: ignore[override]
        return self.backbone

    def encode_images(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_image(images), dim=-1)  # [B, D]

    def encode_texts(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_text(tokens), dim=-1)  # [B, D]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image_emb = self._gather(self.backbone.encode_image(batch["image"]))  # [N, D]
        text_emb = self._gather(self.backbone.encode_text(batch["tokens"]))  # [N, D]
        labels = self._gather(batch["place_id"])  # [N]
        loss, stats = sdm_loss(text_emb, image_emb, labels, logit_scale=self.logit_scale)
        n = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/loss_gs", loss.detach(), batch_size=n)
        self.log_dict({f"train/sdm_{k}": v for k, v in stats.items()}, batch_size=n)
        self.log("train/logit_scale", self.logit_scale.detach(), batch_size=n)
        return loss
