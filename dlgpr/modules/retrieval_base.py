"""What every retriever LightningModule of dlgpr shares: the data contract, the contrastive
temperature, the cross-rank gather, the evaluation steps and the checkpoint tag that
:func:`dlgpr.retrieval.load_retriever` reads."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from dlgpr.data.streaming import Preprocessing
from dlgpr.distributed import gather_with_grad
from dlgpr.models.clip_backbone import CLIPBackbone
from dlgpr.modules.optim import OptimConfig, param_groups, warmup_cosine
from dlgpr.retrieval import CLASS_PATH_KEY

__all__ = ["RetrievalModule"]


class RetrievalModule(LightningModule):
    """Base of the retriever modules. Subclasses set ``self.clip`` (a :class:`CLIPBackbone`),
    implement ``encode_images`` / ``encode_texts`` (unit vectors whose inner product is the
    retrieval score) and ``training_step``; ``eval_extra_views`` names further embedding pairs
    the eval step returns (``image_emb_<view>``, ``text_emb_<view>``) that the retrieval
    callback also scores."""

    clip: CLIPBackbone
    lr: float
    optim: OptimConfig
    gather_across_ranks: bool
    eval_extra_views: tuple[str, ...] = ()

    def _init_training(self, lr: float, optim: OptimConfig, logit_scale: float, learnable: bool, gather_across_ranks: bool) -> None:
        """The settings every retriever module takes: peak lr, optimiser, SDM scale, DDP gather."""
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        self.lr = lr
        self.optim = optim
        self.gather_across_ranks = gather_across_ranks
        log_scale = torch.tensor(float(logit_scale)).log()
        if learnable:
            self.log_logit_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.clamp(max=math.log(100.0)).exp()

    # ---- what the data side needs ----------------------------------------------------------------
    def preprocessing(self) -> Preprocessing:
        b = self.clip
        return Preprocessing(image_size=b.image_size, mean=b.image_mean, std=b.image_std, tokenizer=b.tokenizer())  # type: ignore[arg-type]

    # ---- DDP ------------------------------------------------------------------------------------
    def _gather(self, x: Tensor) -> Tensor:
        """``[B, ...]`` -> ``[world_size * B, ...]`` with gradients (identity on one process)."""
        if not self.gather_across_ranks or self._trainer is None or self.trainer.world_size == 1:
            return x
        # not LightningModule.all_gather(sync_grads=True): on gloo its backward (torch's
        # all_gather autograd, all_to_all of non-contiguous gradients) gave wrong gradients
        return gather_with_grad(x)

    # ---- evaluation -----------------------------------------------------------------------------
    def _embed_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {
            "image_emb": self.encode_images(batch["image"]),  # [B, D]
            "text_emb": self.encode_texts(batch["tokens"]),  # [B, D]
            "place_id": batch["place_id"],  # [B]
            "view": batch["view"],  # [B]
        }

    def encode_images(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def encode_texts(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._embed_batch(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._embed_batch(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {**self._embed_batch(batch), "key": batch["key"]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # lets dlgpr.retrieval.load_retriever find the class without being told
        checkpoint[CLASS_PATH_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    # ---- optimisation ---------------------------------------------------------------------------
    def optimizer_groups(self) -> list[dict]:
        """AdamW parameter groups; the default: every parameter at ``self.lr``."""
        return param_groups(list(self.named_parameters()), self.lr, self.optim.weight_decay)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.optimizer_groups(), lr=self.lr, betas=self.optim.betas, eps=self.optim.eps)
        scheduler = warmup_cosine(optimizer, int(self.trainer.estimated_stepping_batches), self.optim)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
