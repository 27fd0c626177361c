"""DQ-Pilot training: SFT on the teacher's turns, then GRPO with pluggable rewards (paper section 4.3).

``SFTModule`` fine-tunes a causal LM or a vision-language model (LoRA through peft, or every
weight of a small model trained from scratch) on the corpus' completions, the loss on the
completion tokens only (the datamodule masks the labels).

``GRPOModule`` is our own loop, top to bottom per batch of prompts:

    rollout()           G completions per prompt, one batched ``generate`` with the KV cache
    score()             rewards (pluggable callables with weights) -> group_advantages()
    grpo_step()         clipped surrogate + k3 KL to the reference policy, token-level mean,
                        ``num_iterations`` optimiser steps per rollout

The reference policy is the same model with the LoRA adapter disabled (without LoRA, a frozen
copy of the starting weights). Nothing in the loop knows what a reward measures: the DQ-Pilot
config passes the retrieval gain and the format reward, the GLOBE recipe its own.

A non-finite reward, advantage or loss aborts the step before any weight changes (logged with
the reason and counted in ``train/aborted_steps``); the run goes on with the next batch. A
simulated user that keeps failing (``dlgpr.rewards.AnswererFailing``) stops the run instead.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from dlgpr.data.geo import GeoSample
from dlgpr.dialogue.hf import HFQuestioner, HFQuestionerConfig
from dlgpr.dialogue.types import ProcessorConsumer, ReportsStats
from dlgpr.losses import group_advantages, grpo_loss, zero_spread_share
from dlgpr.models.prompting import Messages, PromptConfig, PromptEncoder, generate, geo_messages, message_images, placeholder_token_ids
from dlgpr.models.questioner import LoRAConfig, PolicyConfig, apply_lora, export_policy, is_peft, load_policy
from dlgpr.modules.optim import OptimConfig, param_groups, warmup_cosine
from dlgpr.rewards import WeightedReward, check_failure_order, combine_rewards

log = logging.getLogger("dlgpr.modules")

# GRPO batches are corpus turns, not tensors: its transfer_batch_to_device returning them as they
# are is the point, not an accident Lightning needs to warn about
warnings.filterwarnings("ignore", message=r"You have overridden `transfer_batch_to_device`")


class QuestionerModule(LightningModule):
    """What SFT and GRPO share: the policy, its processor and prompt encoder, the optimiser,
    checkpoints and export.

    Args:
        policy: where the policy comes from (a checkpoint, a scratch model, a dlgpr export).
        lora: a fresh LoRA adapter to train; None trains every weight.
        lr: peak learning rate.
        optim: AdamW and the warmup-cosine schedule.
        prompt: how prompts are built; ``python -m dlgpr`` links it into the datamodule's
            ``prompt``, so training prompts are the prompts the policy generates from.
        export_dir: where the policy is written at the end of training (None: ``<log_dir>/policy``).
        seed: seeds a scratch model's initial weights.
    """

    collate_mode = "sft"

    def __init__(
        self,
        policy: PolicyConfig,
        lora: LoRAConfig | None = None,
        lr: float = 1e-4,
        optim: OptimConfig = OptimConfig(weight_decay=0.0, warmup_steps=10),
        prompt: PromptConfig = PromptConfig(),
        export_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.save_hyperparameters()
        self.policy_config = policy
        self.lora = lora
        self.lr = lr
        self.optim = optim
        self.prompt = prompt
        self.export_dir = export_dir
        base, self.processor = load_policy(policy, seed=seed)
        self.encoder = PromptEncoder(self.processor, prompt)
        self.tokenizer = self.encoder.tokenizer
        self.is_vlm = self.encoder.is_vlm
        self.with_images = self.encoder.with_images
        self.model = apply_lora(base, lora)
        # from_pretrained returns eval mode and Lightning keeps modules' modes: train mode, or dropout never applies
        self.model.train()
        # LoRA checkpoints hold the adapter only; the base comes from the policy config
        self.strict_loading = lora is None

    # ---- data ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, ProcessorConsumer):
            dm.set_processor(self.processor, self.with_images, self.collate_mode)

    def questioner(self, max_new_tokens: int = 256, batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
                   top_p: float = 1.0) -> HFQuestioner:
        """This policy as a dialogue-loop questioner (``run_dialogue``), strict format."""
        cfg = HFQuestionerConfig(model="<in memory>", max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                                 temperature=temperature, top_p=top_p, max_prompt_tokens=self.prompt.max_prompt_tokens,
                                 max_description_words=self.prompt.max_description_words,
                                 show_images="auto" if self.with_images else "never")
        return HFQuestioner(self.model, self.processor, cfg)

    # ---- optimisation ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def total_optimizer_steps(self) -> int:
        steps = self.trainer.estimated_stepping_batches
        if steps == float("inf"):
            raise ValueError("set trainer.max_steps or trainer.max_epochs: the learning-rate schedule needs a length")
        return int(steps)

    def configure_optimizers(self) -> Any:
        groups = param_groups(self.trainable_parameters(), self.lr, self.optim.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.optim.betas, eps=self.optim.eps)
        scheduler = warmup_cosine(optimizer, self.total_optimizer_steps(), self.optim)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints and export ----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.lora is not None:
            keep = {f"model.{n}" for n, _ in self.trainable_parameters()}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def export(self, out_dir: str | Path) -> Path:
        """Write the policy (adapter, or full weights) + processor for evaluation or the next stage."""
        return export_policy(self.model, self.processor, out_dir, self.policy_config, self.prompt)

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            out = Path(self.export_dir) if self.export_dir else Path(self.trainer.log_dir or ".") / "policy"
            self.export(out)
            log.info("exported the policy to %s", out)


class SFTModule(QuestionerModule):
    """Supervised fine-tuning on the teacher's ``<think>..</think><question>..</question>`` replies."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, acc, n = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/token_accuracy", acc, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, acc, n = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/token_accuracy", acc, batch_size=n, sync_dist=True)

    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, int]:
        labels = batch["labels"]  # [B, L], -100 outside the completions
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "images")}
        if "images" in batch:  # the embedded image policy reads PIL images through its own tower transform
            inputs["pixel_values"] = self.model.pixel_values(batch["images"]).to(labels.device)
        logits = self.model(**inputs, use_cache=False).logits[:, :-1].float()  # [B, L-1, V]
        target = labels[:, 1:]  # [B, L-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        with torch.no_grad():
            keep = target != -100
            acc = ((logits.argmax(-1) == target) & keep).sum() / keep.sum().clamp(min=1)
        return loss, acc, int(labels.shape[0])


# ---- GRPO -------------------------------------------------------------------------------------------


class Rollout(NamedTuple):
    """G sampled completions per prompt (rows ``p * G + g``)."""

    prompt_ids: Tensor  # [N, L] left-padded prompts, each repeated G times
    prompt_mask: Tensor  # [N, L]
    completion_ids: Tensor  # [N, T]
    completion_mask: Tensor  # [N, T] 1 up to and including the first end-of-turn token
    completions: list[str]
    vision: dict[str, Tensor]  # processor image tensors for the N rows, with mm_token_type_ids [N, L] if any ({} for text-only)
    old_logp: Tensor | None  # [N, T] under the sampling policy (only with several iterations)
    ref_logp: Tensor | None  # [N, T] under the reference policy (None when beta == 0)


class Scored(NamedTuple):
    rewards: Tensor  # [N] weighted total
    parts: dict[str, Tensor]  # [N] per reward function
    advantages: Tensor  # [N]


@dataclass
class GRPOConfig:
    """The GRPO algorithm's settings (DeepSeekMath; trl's names where they exist)."""

    group_size: int = 4
    """G: completions sampled per prompt."""
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    epsilon: float = 0.2
    """Clip range of the ratio."""
    beta: float = 0.04
    """Weight of the k3 KL to the reference policy (0 skips the reference pass)."""
    num_iterations: int = 1
    """Optimiser steps per rollout (mu); above 1 the sampling policy's log-probs are kept."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    advantage_epsilon: float = 1e-4

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size must be >= 2 (advantages compare samples of a group), got {self.group_size}")
        if self.max_new_tokens < 1 or self.num_iterations < 1:
            raise ValueError("grpo.max_new_tokens and grpo.num_iterations must be >= 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.epsilon <= 0 or self.beta < 0 or self.max_grad_norm < 0:
            raise ValueError("grpo: temperature > 0, 0 < top_p <= 1, epsilon > 0, beta >= 0, max_grad_norm >= 0")


class GRPOModule(QuestionerModule):
    """GRPO on prompts from the dialogue corpus (DQ-Pilot) or on geo samples (GLOBE), rewards from
    the config (see the module docstring).

    ``val_world``: for GLOBE, the geo world whose gazetteer turns the greedy validation answers into
    coordinates, so validation logs ``val/acc@<km>km`` at 1 / 25 / 200 / 750 / 2500 km,
    ``val/city_acc``, ``val/country_acc`` and ``val/format_rate`` (None: rewards only).
    """

    collate_mode = "prompts"

    def __init__(
        self,
        policy: PolicyConfig,
        rewards: list[WeightedReward],
        grpo: GRPOConfig = GRPOConfig(),
        lora: LoRAConfig | None = None,
        lr: float = 1e-5,
        optim: OptimConfig = OptimConfig(weight_decay=0.0, warmup_steps=0),
        prompt: PromptConfig = PromptConfig(),
        export_dir: str | None = None,
        seed: int = 0,
        val_world: str | None = None,
    ) -> None:
        if not rewards:
            raise ValueError("GRPOModule needs at least one reward")
        # a failed reply (malformed, blank, unanswerable, unanswered) must total below every
        # well-formed question, or the advantage can favour breaking the format (before loading the policy)
        check_failure_order(rewards)
        super().__init__(policy, lora, lr, optim, prompt, export_dir, seed)
        self.rewards = rewards
        self.grpo = grpo
        self.automatic_optimization = False
        self.aborted_steps = 0
        self.val_world = val_world
        self._val_geo: Any = None
        self._reference: list[torch.nn.Module] = []  # a list keeps it out of state_dict and the optimiser
        if lora is None and grpo.beta > 0:
            ref = copy.deepcopy(self.model).eval().requires_grad_(False)
            self._reference.append(ref)

    def total_optimizer_steps(self) -> int:
        # estimated_stepping_batches counts batches; each rollout makes num_iterations optimiser steps,
        # but a max_steps limit already counts optimiser steps
        steps = super().total_optimizer_steps() * self.grpo.num_iterations
        if self.trainer.max_steps not in (-1, None):
            steps = min(steps, int(self.trainer.max_steps))
        return steps

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # corpus turns (text, PIL images): the rollout encodes them on the policy's device

    def on_fit_start(self) -> None:
        for ref in self._reference:
            ref.to(self.device)

    # ---- 1. rollout -----------------------------------------------------------------------------
    def messages(self, examples: Sequence[Any]) -> list[Messages]:
        """The chat messages of corpus turns (DQ-Pilot) or geo samples (GLOBE: where was this image
        taken?), as the policy is prompted with them."""
        return [geo_messages(ex.image()) if isinstance(ex, GeoSample) else self.encoder.messages(ex.request) for ex in examples]

    @torch.no_grad()
    def rollout(self, examples: Sequence[Any], group_size: int | None = None, greedy: bool = False, for_update: bool = True) -> Rollout:
        """Sample ``group_size`` completions per prompt in one batched ``generate`` (KV cache on).

        ``for_update=False`` (validation) skips the reference and old-policy log-prob passes.
        """
        g = group_size or self.grpo.group_size
        messages = self.messages(examples)
        enc = self.encoder.encode(messages, self.model).to(self.model.get_input_embeddings().weight.device)
        # generation stops at the tokenizer's end-of-turn token, where the completion mask ends
        out = generate(self.model, self.tokenizer, enc, self.grpo.max_new_tokens, do_sample=not greedy, temperature=self.grpo.temperature,
                       top_p=self.grpo.top_p, num_return_sequences=g, eos_token_id=self.tokenizer.eos_token_id)  # [B * G, L + T]
        length = enc["input_ids"].shape[1]
        completion = out[:, length:]  # [N, T]
        is_eos = completion == self.tokenizer.eos_token_id
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], completion.shape[1], dtype=torch.long))
        mask = (torch.arange(completion.shape[1], device=completion.device)[None, :] <= first[:, None]).long()  # [N, T]
        texts = [self.tokenizer.decode(row[: int(m.sum())], skip_special_tokens=True).strip() for row, m in zip(completion, mask)]
        # images actually shown per prompt (a candidate without an image is shown as text)
        images_per_prompt = [len(message_images(msgs)) for msgs in messages]
        vision = _repeat_vision(enc, images_per_prompt, g, self.model)
        prompt_ids = enc["input_ids"].repeat_interleave(g, dim=0)
        prompt_mask = enc["attention_mask"].repeat_interleave(g, dim=0)
        roll = Rollout(prompt_ids, prompt_mask, completion, mask, texts, vision, None, None)
        old = self.completion_logp(self.model, roll) if for_update and self.grpo.num_iterations > 1 else None
        ref = self.reference_logp(roll) if for_update and self.grpo.beta > 0 else None
        return roll._replace(old_logp=old, ref_logp=ref)

    def completion_logp(self, model: torch.nn.Module, roll: Rollout) -> Tensor:
        """``[N, T]`` log-probabilities of the sampled tokens (logits divided by the sampling temperature;
        a VLM's image/video placeholders masked out, as ``generate`` suppresses them)."""
        ids = torch.cat([roll.prompt_ids, roll.completion_ids], dim=1)  # [N, L + T]
        mask = torch.cat([roll.prompt_mask, roll.completion_mask], dim=1)  # [N, L + T]
        t = roll.completion_ids.shape[1]
        vision = dict(roll.vision)
        if "mm_token_type_ids" in vision:  # token-aligned (Qwen2.5-VL's 3D rope positions): completion tokens are text (0)
            types = vision["mm_token_type_ids"]  # [N, L]
            vision["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(roll.completion_ids, dtype=types.dtype)], dim=1)  # [N, L + T]
        out = model(input_ids=ids, attention_mask=mask, **vision, use_cache=False, logits_to_keep=t + 1)
        logits = out.logits[:, -(t + 1) : -1].float() / self.grpo.temperature  # [N, T, V]
        suppressed = placeholder_token_ids(model)
        if suppressed:
            logits[:, :, suppressed] = -torch.inf
        return torch.log_softmax(logits, dim=-1).gather(2, roll.completion_ids[:, :, None]).squeeze(2)  # [N, T]

    @torch.no_grad()
    def reference_logp(self, roll: Rollout) -> Tensor:
        if self._reference:
            return self.completion_logp(self._reference[0], roll)
        if not is_peft(self.model):
            raise RuntimeError("GRPO with beta > 0 needs LoRA (reference = adapter disabled) or a reference copy")
        with self.model.disable_adapter():
            return self.completion_logp(self.model, roll)

    # ---- 2. score -------------------------------------------------------------------------------
    def rewards_of(self, examples: Sequence[Any], completions: Sequence[str]) -> tuple[list[float], dict[str, list[float]]]:
        """Weighted total and per-function rewards of ``completions`` (the G of each prompt contiguous).

        Reward functions get ``(prompts, completions, **batch)`` with one entry per completion:
        ``example`` (the corpus turn), ``target``, ``initial_description``, ``history``; for geo
        samples (GLOBE) the prompt and ``sample`` are the :class:`~dlgpr.data.geo.GeoSample` itself.
        Raises ``FloatingPointError`` / ``ValueError`` on a non-finite or malformed reward.
        """
        g = len(completions) // len(examples)
        rep = [ex for ex in examples for _ in range(g)]
        if rep and all(isinstance(ex, GeoSample) for ex in rep):
            return combine_rewards(self.rewards, rep, completions, sample=rep, example=rep)
        batch = {
            "example": rep,
            "target": [ex.target for ex in rep],
            "initial_description": [ex.request.initial_description for ex in rep],
            "history": [ex.request.history for ex in rep],
        }
        return combine_rewards(self.rewards, [ex.request for ex in rep], completions, **batch)

    def score(self, examples: Sequence[Any], roll: Rollout) -> Scored:
        """Rewards of every completion (:meth:`rewards_of`) and their group advantages."""
        total, parts = self.rewards_of(examples, roll.completions)
        rewards = torch.tensor(total, dtype=torch.float32)
        adv = group_advantages(rewards, len(roll.completions) // len(examples), self.grpo.advantage_epsilon)
        return Scored(rewards, {k: torch.tensor(v) for k, v in parts.items()}, adv)

    # ---- 3. policy update -----------------------------------------------------------------------
    def grpo_step(self, roll: Rollout, advantages: Tensor) -> dict[str, Tensor]:
        """``num_iterations`` clipped-surrogate steps on one rollout; returns the last step's stats."""
        opt = self.optimizers()
        sched = self.lr_schedulers()
        adv = advantages.to(self.device)
        stats: dict[str, Tensor] = {}
        for it in range(self.grpo.num_iterations):
            logp = self.completion_logp(self.model, roll)  # [N, T]
            old = roll.old_logp if roll.old_logp is not None else logp.detach()
            loss, stats = grpo_loss(logp, old, roll.ref_logp, adv, roll.completion_mask, self.grpo.epsilon, self.grpo.beta)
            if not torch.isfinite(loss):
                done = f" after {it} of {self.grpo.num_iterations} inner steps" if it else ""
                raise FloatingPointError(f"non-finite GRPO loss ({float(loss)}){done}")
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            if self.grpo.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable_parameters()], self.grpo.max_grad_norm)
                if not torch.isfinite(norm):
                    opt.zero_grad(set_to_none=True)
                    done = f" after {it} of {self.grpo.num_iterations} inner steps" if it else ""
                    raise FloatingPointError(f"non-finite gradient norm ({float(norm)}){done}")
                stats["grad_norm"] = norm.detach()
            opt.step()
            if sched is not None:
                sched.step()
            stats["loss"] = loss.detach()
        return stats

    def training_step(self, batch: list[Any], batch_idx: int) -> None:
        t0 = time.perf_counter()
        roll = self.rollout(batch)
        t1 = time.perf_counter()
        try:
            scored = self.score(batch, roll)
            t2 = time.perf_counter()
            stats = self.grpo_step(roll, scored.advantages)
        except (FloatingPointError, ValueError) as exc:  # not AnswererFailing: a dead user would fail every batch, the run stops
            self.aborted_steps += 1
            # the message says when earlier inner iterations already stepped (num_iterations > 1)
            log.error("GRPO step %d aborted before this update: %s", self.global_step, exc)
            self.log("train/aborted_steps", float(self.aborted_steps), batch_size=len(batch))
            return None
        t3 = time.perf_counter()
        n = len(batch)
        g = self.grpo.group_size
        r = scored.rewards
        log_values = {
            "train/reward_mean": r.mean(),
            "train/reward_std": r.std() if r.numel() > 1 else torch.zeros(()),
            "train/reward_group_std": r.view(-1, g).std(dim=1).mean(),
            # groups whose G rewards are all equal: zero advantage, no gradient from that prompt
            "train/zero_spread_groups": zero_spread_share(r, g),
            "train/completion_length": roll.completion_mask.sum(1).float().mean(),
            "train/aborted_steps": torch.tensor(float(self.aborted_steps)),
            "time/generation_s": torch.tensor(t1 - t0),
            "time/reward_s": torch.tensor(t2 - t1),
            "time/update_s": torch.tensor(t3 - t2),
        }
        log_values.update({f"train/reward/{k}": v.mean() for k, v in scored.parts.items()})
        log_values.update({f"train/{k}": v.float() for k, v in stats.items()})
        for wr in self.rewards:
            for k, v in (wr.fn.last_stats if isinstance(wr.fn, ReportsStats) else {}).items():
                log_values[f"train/reward_stats/{wr.name}/{k}"] = torch.tensor(float(v))
        self.log_dict({k: v.float().cpu() for k, v in log_values.items()}, batch_size=n)
        self.log("train/reward", r.mean(), prog_bar=True, batch_size=n)
        self.last_timings = {"generation": t1 - t0, "reward": t2 - t1, "update": t3 - t2}
        return None

    def validation_step(self, batch: list[Any], batch_idx: int) -> None:
        """Greedy replies to held-out prompts, scored by the same rewards (``val/reward/<name>``)."""
        roll = self.rollout(batch, group_size=1, greedy=True, for_update=False)
        try:
            total, parts = self.rewards_of(batch, roll.completions)
        except (FloatingPointError, ValueError) as exc:
            log.error("validation batch %d skipped: %s", batch_idx, exc)
            return
        self.log("val/reward", torch.tensor(total).mean(), prog_bar=True, batch_size=len(batch), sync_dist=True)
        for k, v in parts.items():
            self.log(f"val/reward/{k}", torch.tensor(v).mean(), batch_size=len(batch), sync_dist=True)
        self.log("val/completion_length", roll.completion_mask.sum(1).float().mean(), batch_size=len(batch), sync_dist=True)
        if self.val_world is not None and batch and isinstance(batch[0], GeoSample):
            self._geo_validation_update(batch, roll.completions)

    def _geo_validation_update(self, samples: Sequence[GeoSample], completions: Sequence[str]) -> None:
        from dlgpr.geo.answer import parse_answer
        from dlgpr.geo.gazetteer import load_gazetteer
        from dlgpr.geo.metrics import GeoAccumulator

        if self._val_geo is None:
            gazetteer = load_gazetteer("world", self.val_world)
            self._val_geo = (gazetteer, GeoAccumulator(canonical=gazetteer.canonical_country), [0, 0])
        gazetteer, acc, formats = self._val_geo
        answers = [parse_answer(c) for c in completions]
        coords = [gazetteer.resolve(a.city or None, a.country or None) if a.ok else None for a in answers]
        acc.update([m.lat if m else float("nan") for m in coords], [m.lon if m else float("nan") for m in coords],
                   [s.lat for s in samples], [s.lon for s in samples], pred_city=[a.city for a in answers],
                   true_city=[s.city for s in samples], pred_country=[a.country for a in answers], true_country=[s.country for s in samples])
        formats[0] += sum(a.well_formed and a.ok for a in answers)
        formats[1] += len(answers)

    def on_validation_epoch_end(self) -> None:
        if self._val_geo is None:
            return
        _, acc, formats = self._val_geo
        if formats[1]:
            m = acc.compute()
            values = {f"val/acc@{k:g}km": v for k, v in m.accuracy.items()}
            values.update({"val/city_acc": m.city_accuracy, "val/country_acc": m.country_accuracy, "val/format_rate": formats[0] / formats[1]})
            # each rank's share of the validation images; the logged value is the mean over ranks
            self.log_dict({k: torch.tensor(float(v)) for k, v in values.items()}, sync_dist=True)
        acc.reset()
        formats[0] = formats[1] = 0


def _repeat_vision(enc: Any, images_per_prompt: list[int], g: int, model: Any = None) -> dict[str, Tensor]:
    """The processor's image tensors with each prompt's images repeated ``g`` times (rows ``p * G + g``)."""
    if "pixel_values" not in enc or not sum(images_per_prompt):
        return {}
    if getattr(model, "takes_pixel_values", False):  # the image policy: one [3, S, S] image per prompt
        return {"pixel_values": enc["pixel_values"].repeat_interleave(g, dim=0)}
    grid = enc["image_grid_thw"]  # [images, 3]
    patches = grid.prod(dim=1).tolist()  # patches per image
    pix_chunks = list(torch.split(enc["pixel_values"], patches))
    pixel, grids, i = [], [], 0
    for k in images_per_prompt:
        for _ in range(g):
            pixel += pix_chunks[i : i + k]
            grids.append(grid[i : i + k])
        i += k
    out = {"pixel_values": torch.cat(pixel), "image_grid_thw": torch.cat(grids)}
    if "mm_token_type_ids" in enc:  # [B, L] which prompt tokens are image placeholders: rows repeated like the prompts
        out["mm_token_type_ids"] = enc["mm_token_type_ids"].repeat_interleave(g, dim=0)
    return out
