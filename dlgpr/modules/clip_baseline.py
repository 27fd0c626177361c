"""CLIP baseline (the paper's Table 3 "baseline": global alignment L_gs = SDM only)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from dlgpr.data.streaming import Preprocessing
from dlgpr.losses import sdm_loss
from dlgpr.models.clip_backbone import CLIPBackbone, ClipBackboneConfig
from dlgpr.retrieval import CLASS_PATH_KEY
from dlgpr.modules.optim import OptimConfig, param_groups, warmup_cosine


class CLIPBaselineModule(LightningModule):
    """Fine-tunes a CLIP with SDM on (image, description) pairs labelled by place.

    Under DDP the embeddings of all ranks are gathered (with gradients) before SDM, so the loss
    sees the global batch of ``world_size x P x K`` pairs exactly as one process would; the
    gradient is then identical to single-process training on the concatenated batch.

    Args:
        backbone: which CLIP and weights.
        lr: peak learning rate.
        optim: AdamW and schedule settings.
        logit_scale: SDM's similarity scale (IRRA fixes 1/0.02 = 50 to fine-tune a pretrained
            CLIP). A CLIP trained from scratch stays collapsed under 50 (all cosines alike); it
            learns from CLIP's own 1/0.07 with a learnable scale.
        learnable_logit_scale: learn the scale (as its log, clamped to at most 100, like CLIP).
        gather_across_ranks: compute SDM on the global batch under DDP.
    """

    def __init__(
        self,
        backbone: ClipBackboneConfig = ClipBackboneConfig(),
        lr: float = 5e-4,
        optim: OptimConfig = OptimConfig(),
        logit_scale: float = 50.0,
        learnable_logit_scale: bool = False,
        gather_across_ranks: bool = True,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        self.save_hyperparameters()
        self.backbone = CLIPBackbone(backbone)
        self.embed_dim = self.backbone.embed_dim
        self.lr = lr
        self.optim = optim
        log_scale = torch.tensor(float(logit_scale)).log()
        if learnable_logit_scale:
            self.log_logit_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.gather_across_ranks = gather_across_ranks

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.clamp(max=math.log(100.0)).exp()

    # ---- what the data side needs ----------------------------------------------------------------
    def preprocessing(self) -> Preprocessing:
        b = self.backbone
        return Preprocessing(image_size=b.image_size, mean=b.image_mean, std=b.image_std, tokenizer=b.tokenizer())  # type: ignore[arg-type]

    # ---- encoders (normalised embeddings) -------------------------------------------------------
    def encode_images(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_image(images), dim=-1)  # [B, D]

    def encode_texts(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_text(tokens), dim=-1)  # [B, D]

    # ---- steps ----------------------------------------------------------------------------------
    def _gather(self, x: Tensor) -> Tensor:
        if not self.gather_across_ranks or self.trainer.world_size == 1:
            return x
        return self.all_gather(x, sync_grads=True).flatten(0, 1)  # [W * B, ...]

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

    def _embed_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {
            "image_emb": self.encode_images(batch["image"]),  # [B, D]
            "text_emb": self.encode_texts(batch["tokens"]),  # [B, D]
            "place_id": batch["place_id"],  # [B]
            "view": batch["view"],  # [B]
        }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._embed_batch(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._embed_batch(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {**self._embed_batch(batch), "key": batch["key"]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # lets dlgpr.retrieval.load_retriever find the class without being told
        checkpoint[CLASS_PATH_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def configure_optimizers(self) -> Any:
        groups = param_groups(list(self.named_parameters()), self.lr, self.optim.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.optim.betas, eps=self.optim.eps)
        scheduler = warmup_cosine(optimizer, int(self.trainer.estimated_stepping_batches), self.optim)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
