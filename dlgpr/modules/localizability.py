"""GLOBE's localizability reward model: P(localizable | image, reasoning), trained on the distillation's verdicts.

The reward R_loc of GLOBE's GRPO asks a model whether an image can be located given a reasoning.
It learns from the MP16-Reason-style distillation: a sample the four validations kept is a
positive (its reasoning locates the image from what is in it), a rejected one a negative
(``datamodules.geo_reasoning.LocalizabilityDataModule``, split by place).

Two models share one module base (:class:`LocalizabilityBase`: the loss, the class weight, the
held-out AUROC and the inference call the reward uses):

- :class:`LocalizabilityModule` (the embedded world, ``configs/globe_loc_rm.yaml``): CLIP towers
  and an MLP head (``dlgpr.models.localizability``), a few minutes on 2 CPU cores;
- :class:`VLMLocalizabilityModule` (paper scale, ``configs/globe_loc_rm_qwen25vl7b.yaml``):
  Qwen2.5-VL-7B with LoRA asked "is the image locatable given this reasoning? yes/no"; its logit
  is ``logit(yes) - logit(no)`` of the first answer token, so its probability is GLOBE's
  ``P(yes) / (P(yes) + P(no))``.

**Class imbalance.** About 12 % of the geo world's samples are kept. The loss is binary cross
entropy with ``pos_weight = rejected / kept`` of the training split (``pos_weight: auto``): each
class weighs the same in total, so the model does not settle on "never localizable". Its
probability is then that of a balanced prior; ``localizability(..., correct_prior=True)``
subtracts ``log(pos_weight)`` from the logit and gives it at the data's prior instead.

Logged: ``train/loss``, ``val/loss``, ``val/auroc`` (held-out places; :func:`dlgpr.metrics.auroc`),
``val/mean_p_kept`` and ``val/mean_p_rejected`` (mean balanced probability of each class).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from PIL import Image
from torch import Tensor

from dlgpr.data.streaming import ImageTransform, Preprocessing
from dlgpr.metrics import auroc
from dlgpr.models.localizability import LocalizabilityModel, LocalizabilityModelConfig
from dlgpr.models.prompting import PromptConfig, PromptEncoder, tokenizer_of
from dlgpr.models.questioner import LoRAConfig, PolicyConfig, apply_lora, load_policy
from dlgpr.modules.optim import OptimConfig, param_groups, warmup_cosine

__all__ = ["LocalizabilityBase", "LocalizabilityModule", "VLMLocalizabilityModule", "LOCALIZABILITY_QUESTION"]

log = logging.getLogger("dlgpr.modules")

LOCALIZABILITY_QUESTION = (
    "Given this reasoning, can the place where the image was taken be located from what is visible in the image? "
    "Answer yes or no."
)
"""What the VLM reward model is asked after the reasoning (GLOBE asks whether the image is visually locatable given it)."""

EMPTY_REASONING = "(no reasoning)"
"""What a model reads for an empty reasoning (a tokenizer needs some text)."""


class LocalizabilityBase(LightningModule):
    """Loss, class weight, held-out AUROC and inference; a subclass gives :meth:`logits`.

    Args:
        lr: peak learning rate.
        optim: AdamW and the warmup-cosine schedule.
        pos_weight: weight of the kept class in the loss: ``auto`` (rejected / kept of the
            training split, read from the datamodule at fit start) or a number (1: unweighted).
    """

    def __init__(self, lr: float, optim: OptimConfig, pos_weight: float | str = "auto") -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if isinstance(pos_weight, str) and pos_weight != "auto":
            raise ValueError(f"pos_weight must be 'auto' or a number > 0, got {pos_weight!r}")
        if not isinstance(pos_weight, str) and not pos_weight > 0:
            raise ValueError(f"pos_weight must be 'auto' or a number > 0, got {pos_weight!r}")
        self.lr, self.optim, self.pos_weight_setting = lr, optim, pos_weight
        # a buffer: the checkpoint keeps the weight the model was trained with (correct_prior needs it)
        self.register_buffer("pos_weight", torch.tensor(1.0 if pos_weight == "auto" else float(pos_weight)))
        self._val_scores: list[Tensor] = []
        self._val_labels: list[Tensor] = []

    # ---- what a subclass gives ------------------------------------------------------------------
    def logits(self, images: Sequence[Image.Image], texts: Sequence[str]) -> Tensor:
        """``[B]`` logits of "localizable" for images and reasonings."""
        raise NotImplementedError

    def tuned_parameters(self) -> list[dict[str, Any]]:
        """AdamW parameter groups (each with its ``lr``)."""
        return param_groups([(n, p) for n, p in self.named_parameters() if p.requires_grad], self.lr, self.optim.weight_decay)

    # ---- training -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.pos_weight_setting != "auto":
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "class_counts"):
            raise ValueError("pos_weight: auto needs a datamodule with class_counts() (LocalizabilityDataModule); give a number instead")
        dm.setup(stage)
        neg, pos = dm.class_counts("train")
        if pos == 0 or neg == 0:
            raise ValueError(f"the training split holds {pos} kept and {neg} rejected samples: both classes are needed")
        self.pos_weight.fill_(neg / pos)
        log.info("localizability: %d kept, %d rejected in training; pos_weight %.2f", pos, neg, neg / pos)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Class-weighted binary cross entropy.  logits, labels: ``[B]``."""
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=self.pos_weight.float())

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss(self.logits(batch.images, batch.texts), batch.labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.texts))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_scores, self._val_labels = [], []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits = self.logits(batch.images, batch.texts)  # [B]
        self.log("val/loss", self.loss(logits, batch.labels), batch_size=len(batch.texts), sync_dist=True)
        self._val_scores.append(logits.detach().float().cpu())
        self._val_labels.append(batch.labels.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_scores:
            return
        scores, labels = torch.cat(self._val_scores), torch.cat(self._val_labels)  # [M], [M]
        if dist.is_available() and dist.is_initialized():
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (scores, labels))
            scores, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        probs = torch.sigmoid(scores)
        kept = labels > 0.5
        values = {"val/auroc": auroc(scores, labels),
                  "val/mean_p_kept": float(probs[kept].mean()) if kept.any() else math.nan,
                  "val/mean_p_rejected": float(probs[~kept].mean()) if (~kept).any() else math.nan}
        # gathered on every rank already: the same numbers everywhere, no further reduction
        for k, v in values.items():
            self.log(k, torch.tensor(v), prog_bar=k == "val/auroc")
        self.last_validation = values

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.tuned_parameters(), lr=self.lr, betas=self.optim.betas, eps=self.optim.eps)
        steps = self.trainer.estimated_stepping_batches
        if steps == float("inf"):
            raise ValueError("set trainer.max_steps or trainer.max_epochs: the learning-rate schedule needs a length")
        scheduler = warmup_cosine(optimizer, int(steps), self.optim)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- inference (the reward) -----------------------------------------------------------------
    @torch.no_grad()
    def localizability(self, images: Sequence[Image.Image], texts: Sequence[str], correct_prior: bool = False) -> Tensor:
        """``[B]`` P(localizable | image, reasoning) on the CPU: at a balanced prior, or with
        ``correct_prior`` at the training data's (see the module docstring)."""
        was_training = self.training
        self.eval()
        try:
            logits = self.logits(images, texts).float()  # [B]
        finally:
            self.train(was_training)
        if correct_prior:
            logits = logits - torch.log(self.pos_weight.float())
        return torch.sigmoid(logits).cpu()


class LocalizabilityModule(LocalizabilityBase):
    """The small reward model of the embedded world: CLIP towers + MLP head (``dlgpr.models.localizability``).

    Args:
        model: towers and head.
        lr: the head's learning rate.
        tower_lr: the towers' learning rate (0 freezes them).
        optim: AdamW and the schedule.
        pos_weight: see :class:`LocalizabilityBase`.
    """

    def __init__(self, model: LocalizabilityModelConfig = LocalizabilityModelConfig(), lr: float = 1e-3, tower_lr: float = 1e-5,
                 optim: OptimConfig = OptimConfig(weight_decay=0.01, warmup_steps=20), pos_weight: float | str = "auto") -> None:
        super().__init__(lr, optim, pos_weight)
        if tower_lr < 0:
            raise ValueError(f"tower_lr must be >= 0, got {tower_lr}")
        self.save_hyperparameters()
        self.tower_lr = tower_lr
        self.model = LocalizabilityModel(model)
        b = self.model.backbone
        self.model.backbone.requires_grad_(tower_lr > 0)
        b.model.logit_scale.requires_grad_(False)
        self.transform = ImageTransform(Preprocessing(image_size=b.image_size, mean=b.image_mean, std=b.image_std))
        self.tokenizer = b.tokenizer()

    def tuned_parameters(self) -> list[dict[str, Any]]:
        head = [(f"head.{n}", p) for n, p in self.model.head.named_parameters()]
        groups = param_groups(head, self.lr, self.optim.weight_decay)
        if self.tower_lr > 0:
            towers = [(n, p) for n, p in self.model.backbone.named_parameters() if p.requires_grad]
            groups += param_groups(towers, self.tower_lr, self.optim.weight_decay)
        return groups

    def logits(self, images: Sequence[Image.Image], texts: Sequence[str]) -> Tensor:
        pixels = torch.stack([self.transform(im) for im in images]).to(self.device)  # [B, 3, S, S]
        tokens = self.tokenizer([t if t.strip() else EMPTY_REASONING for t in texts]).to(self.device)  # [B, L]
        return self.model(pixels, tokens)  # [B]


class VLMLocalizabilityModule(LocalizabilityBase):
    """The paper-scale reward model: a (vision-)language model, LoRA, a yes/no readout.

    The model reads the image and the reasoning, then :data:`LOCALIZABILITY_QUESTION`; the logit
    is ``logit(yes_word) - logit(no_word)`` of the first answer token (each word's first token),
    trained with the class-weighted cross entropy of the base. Policies load through the
    questioner's loader (``dlgpr.models.questioner.load_policy``: a hub id, a local folder or a
    dlgpr export) and prompts through its encoder (left-padded, images as the processor places them).

    Args:
        policy: the model (Qwen2.5-VL-7B-Instruct at paper scale).
        lora: the adapter to train (GLOBE: r 16, alpha 64, every linear layer of the language
            model; the vision tower frozen); None trains every weight.
        lr, optim, pos_weight: see :class:`LocalizabilityBase`.
        question: what the model is asked after the reasoning.
        yes_word, no_word: the answers read out.
        max_prompt_tokens: longer prompts are cut on the left (never into image tokens).
        seed: seeds a scratch model's weights.
    """

    def __init__(self, policy: PolicyConfig, lora: LoRAConfig | None = None, lr: float = 1e-4,
                 optim: OptimConfig = OptimConfig(weight_decay=0.0, warmup_steps=20), pos_weight: float | str = "auto",
                 question: str = LOCALIZABILITY_QUESTION, yes_word: str = "yes", no_word: str = "no",
                 max_prompt_tokens: int = 2048, seed: int = 0) -> None:
        super().__init__(lr, optim, pos_weight)
        self.save_hyperparameters()
        self.question = question
        base, self.processor = load_policy(policy, seed=seed)
        self.encoder = PromptEncoder(self.processor, PromptConfig(show_images="auto", max_prompt_tokens=max_prompt_tokens))
        tok = tokenizer_of(self.processor)
        ids = [tok.encode(w, add_special_tokens=False) for w in (yes_word, no_word)]
        if not ids[0] or not ids[1] or ids[0][0] == ids[1][0]:
            raise ValueError(f"yes_word {yes_word!r} and no_word {no_word!r} must start with different tokens, got {ids}")
        self.yes_id, self.no_id = ids[0][0], ids[1][0]
        self.model = apply_lora(base, lora)
        self.model.train()
        self.lora = lora
        # a LoRA checkpoint holds the adapter (and the class weight) only; the base comes from the policy config
        self.strict_loading = lora is None

    def messages(self, image: Image.Image, text: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"type": "image", "image": image}] if self.encoder.with_images else []
        parts.append({"type": "text", "text": f"Reasoning: {text.strip() or EMPTY_REASONING}\n\n{self.question}"})
        return [{"role": "user", "content": parts}]

    def logits(self, images: Sequence[Image.Image], texts: Sequence[str]) -> Tensor:
        enc = self.encoder([self.messages(im, t) for im, t in zip(images, texts)])
        enc = enc.to(self.model.get_input_embeddings().weight.device)
        out = self.model(**enc, use_cache=False, logits_to_keep=1)
        last = out.logits[:, -1].float()  # [B, V]: the first answer token (prompts are left-padded)
        return last[:, self.yes_id] - last[:, self.no_id]  # [B]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.lora is not None:
            keep = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad} | {"pos_weight"}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
