"""CMPLModule: trains the CMPL retriever with the objective of the paper's Eq. 6."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from dlgpr.losses import CMPLLoss
from dlgpr.models.clip_backbone import CLIPBackbone, ClipBackboneConfig
from dlgpr.models.cmpl import CMPL, CMPLConfig, CMPLFeatures
from dlgpr.modules.optim import OptimConfig, param_groups
from dlgpr.modules.retrieval_base import RetrievalModule

__all__ = ["CMPLModule"]


class CMPLModule(RetrievalModule):
    """CLIP + CMPL heads trained with L = lambda_gs L_gs + lambda_h sum_l (L_ls + L_hi) + L_vpr.

    Batch semantics under DDP (``gather_across_ranks``, the default): every term is computed on
    the global batch of ``world_size x P x K`` pairs, as one process would see it, because each
    needs the other ranks' samples: SDM (L_gs, L_ls) normalises over all candidates of a row,
    HI mines the hardest other-place match among them, and multi-similarity (L_vpr) mines pairs
    by place across the batch. The embeddings are all-gathered with gradients before the loss.

    Args:
        backbone: which CLIP and weights; ``long_text_length`` extends the text context.
        cmpl: taps, queries, SFM keep ratio, extractor width and the retrieval score weights.
        loss: Eq. 6 weights and the HI / multi-similarity settings.
        lr: peak learning rate of the backbone.
        head_lr: peak learning rate of the new heads (queries, adapters, extractor, scale);
            None: ``lr``.
        optim: AdamW and schedule settings.
        logit_scale: SDM scale for L_gs and L_ls (IRRA: 50 for a pretrained CLIP; a random
            CLIP needs a learnable scale from 1/0.07); None: the pretrained weights' own scale
            (open_clip's ``logit_scale``, e.g. the one learnt with dlgpr's ``synthcities`` towers).
        learnable_logit_scale: learn the scale (clamped to at most 100).
        gather_across_ranks: see above.
    """

    eval_extra_views = ("global",)

    def __init__(
        self,
        backbone: ClipBackboneConfig = ClipBackboneConfig(),
        cmpl: CMPLConfig = CMPLConfig(),
        loss: CMPLLoss = CMPLLoss(),
        lr: float = 5e-4,
        head_lr: float | None = None,
        optim: OptimConfig = OptimConfig(),
        logit_scale: float | None = 50.0,
        learnable_logit_scale: bool = False,
        gather_across_ranks: bool = True,
    ) -> None:
        super().__init__()
        if head_lr is not None and head_lr <= 0:
            raise ValueError(f"head_lr must be > 0, got {head_lr}")
        self.save_hyperparameters()
        self.model = CMPL(backbone, cmpl)
        self._init_training(lr, optim, self.model.backbone.resolve_logit_scale(logit_scale), learnable_logit_scale, gather_across_ranks)
        self.loss_fn = loss
        self.head_lr = head_lr if head_lr is not None else lr
        self.embed_dim = self.model.retrieval_dim
        self.embed_dims = {"image_emb_global": self.model.embed_dim, "text_emb_global": self.model.embed_dim}

    @property
    def clip(self) -> CLIPBackbone:  # type: ignore[override]
        return self.model.backbone

    # ---- retrieval ------------------------------------------------------------------------------
    def encode_images(self, images: Tensor) -> Tensor:
        return self.model.encode_gallery(images)  # [B, retrieval_dim]

    def encode_texts(self, tokens: Tensor) -> Tensor:
        return self.model.encode_queries(tokens)  # [B, retrieval_dim]

    def _embed_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        image, text = self.model.image_features(batch["image"]), self.model.text_features(batch["tokens"])
        return {
            "image_emb": self.model.retrieval_embedding(image),  # [B, retrieval_dim] the CMPL score
            "text_emb": self.model.retrieval_embedding(text),
            "image_emb_global": F.normalize(image.global_.float(), dim=-1),  # [B, D] global similarity alone
            "text_emb_global": F.normalize(text.global_.float(), dim=-1),
            "place_id": batch["place_id"],
            "view": batch["view"],
        }

    # ---- training -------------------------------------------------------------------------------
    def _gather_features(self, f: CMPLFeatures) -> CMPLFeatures:
        return CMPLFeatures(self._gather(f.global_), [self._gather(x) for x in f.local])

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 6 on a batch (``image`` [B, 3, H, W], ``tokens`` [B, L], ``place_id`` [B]),
        gathered across ranks under DDP. Returns ``(loss, stats)``."""
        out = self.model(batch["image"], batch["tokens"])
        image, text = out["image"], out["text"]
        vpr = self.model.retrieval_embedding(image) if self.loss_fn.lambda_vpr > 0 else None  # [B, E]
        image, text = self._gather_features(image), self._gather_features(text)
        labels = self._gather(batch["place_id"])  # [N]
        vpr = self._gather(vpr) if vpr is not None else None
        return self.loss_fn(text.global_, image.global_, labels, text.local, image.local, vpr, logit_scale=self.logit_scale)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, stats = self.compute_loss(batch)
        n = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/loss_{k}": v for k, v in stats.items()}, batch_size=n)
        self.log("train/logit_scale", self.logit_scale.detach(), batch_size=n)
        return loss

    def optimizer_groups(self) -> list[dict]:
        named = list(self.named_parameters())
        backbone = [(n, p) for n, p in named if n.startswith("model.backbone.")]
        heads = [(n, p) for n, p in named if not n.startswith("model.backbone.")]
        wd = self.optim.weight_decay
        return param_groups(backbone, self.lr, wd) + param_groups(heads, self.head_lr, wd)

