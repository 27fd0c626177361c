"""Data of the embedded GLOBE policy: its pretraining on descriptions, CoT SFT, and GRPO prompts.

One datamodule, three tasks (``task``):

* ``caption``: the policy's "pretraining", as a vision-language model is pretrained before GLOBE:
  each image of the geo world's train split with the prompt "Describe this street view." and its
  place's description (first ``max_caption_words`` words) as the completion; validation on the
  val split.
* ``cot``: CoT SFT on the distilled reasoning, the samples the geo-reasoning build kept:
  ``<think>reasoning</think><answer>city, country</answer>``; a ``val_fraction`` share of the
  kept places is held out for the validation loss.
* ``grpo``: the geo world's train images as :class:`~dlgpr.data.geo.GeoSample` lists (the GRPO
  rollout prompts them and the rewards read them as ``sample``); validation on the val split.

The two SFT tasks collate to ``input_ids``, ``attention_mask``, ``labels`` (the completion and
its end-of-turn token; -100 elsewhere) and ``images`` (PIL, one per row, which the policy turns
into its own ``pixel_values``). Prompts are encoded by the policy's
:class:`~dlgpr.models.prompting.PromptEncoder`, the one generation uses.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader

from datamodules.geo_reasoning import split_by_place
from dlgpr.data.geo import GeoSample, read_synthcities_geo
from dlgpr.geo.answer import format_answer
from dlgpr.models.prompting import CAPTION_QUESTION, GEO_QUESTION, PromptConfig, PromptEncoder, geo_messages
from dlgpr.pipeline.geo_reasoning import iter_reasoning_samples

log = logging.getLogger("dlgpr.data")

__all__ = ["GeoPolicyDataModule", "ImageTextExample", "cot_completion", "geo_policy_texts"]

TASKS = ("caption", "cot", "grpo")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ImageTextExample:
    key: str
    place: str
    jpeg: bytes
    question: str
    completion: str

    def image(self) -> Image.Image:
        with Image.open(io.BytesIO(self.jpeg)) as im:
            return im.convert("RGB")


def cot_completion(reasoning: str, city: str, country: str) -> str:
    """The SFT target of one kept sample, in GLOBE's reply format."""
    return format_answer(city, country, reasoning, style="comma")


def _words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def caption_examples(world_dir: str, split: str, max_words: int) -> list[ImageTextExample]:
    return [ImageTextExample(s.key, str(s.place_id), s.image_data(), CAPTION_QUESTION, _words(s.record.description, max_words))
            for s in read_synthcities_geo(world_dir, split) if s.record is not None]


def cot_examples(reasoning_dir: str) -> list[ImageTextExample]:
    out = []
    for meta, jpeg in iter_reasoning_samples(reasoning_dir, kept_only=True):
        answer = meta.get("answer") or {}
        city, country = answer.get("city") or meta["city"], answer.get("country") or meta["country"]
        place = str(meta["place_id"]) if meta.get("place_id") is not None else str(meta["key"])
        out.append(ImageTextExample(str(meta["key"]), place, jpeg, GEO_QUESTION, cot_completion(meta.get("reasoning") or "", city, country)))
    return out


def geo_policy_texts(world_dir: str, reasoning_dir: str, max_caption_words: int = 48) -> list[str]:
    """The texts the policy's corpus tokenizer is trained on: prompts, descriptions, reasonings and answers."""
    from dlgpr.models.prompting import GEO_SYSTEM

    texts = [GEO_SYSTEM, GEO_QUESTION, CAPTION_QUESTION]
    texts += [ex.completion for ex in caption_examples(world_dir, "train", max_caption_words)]
    texts += [ex.completion for ex in cot_examples(reasoning_dir)]
    return texts


class SFTImageCollator:
    """Prompt (chat template, generation prompt) + completion + end-of-turn; labels on the completion only."""

    def __init__(self, processor: Any, prompt: PromptConfig) -> None:
        self.encoder = PromptEncoder(processor, PromptConfig("never", prompt.max_description_words, prompt.max_prompt_tokens))
        self.tokenizer = self.encoder.tokenizer

    def __call__(self, examples: Sequence[ImageTextExample]) -> dict[str, Any]:
        images = [ex.image() for ex in examples]
        rows = []
        for ex, im in zip(examples, images):
            prompt = self.encoder([geo_messages(im, ex.question)])["input_ids"][0].tolist()
            completion = self.tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            rows.append((prompt, completion))
        length = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)  # [B, L] right-padded
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)  # [B, L]
        mask = torch.zeros(len(rows), length, dtype=torch.long)  # [B, L]
        for i, (p, c) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
            mask[i, : len(p) + len(c)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "images": images}


def _samples(spec: str | None, world_dir: str, split: str, limit: int | None) -> list[GeoSample]:
    from itertools import islice

    from dlgpr.data.geo import parse_dataset_spec, read_geo_dataset

    stream = read_synthcities_geo(world_dir, split) if spec is None else read_geo_dataset(parse_dataset_spec(spec))
    return list(islice(stream, limit))


def samples_collate(samples: list[GeoSample]) -> list[GeoSample]:
    return samples


class GeoPolicyDataModule(LightningDataModule):
    """The embedded GLOBE policy's data (module docstring).

    Args:
        task: ``caption`` (pretraining), ``cot`` (SFT on the kept reasoning) or ``grpo`` (prompts).
        world_dir: the geo world (``data/synthcities-geo``).
        reasoning_dir: the geo-reasoning build (``cot``).
        max_caption_words: descriptions are cut to this many words (``caption``).
        val_fraction: share of the kept places held out (``cot``).
        batch_size: examples (SFT) or prompts (GRPO) per batch.
        val_batch_size: validation examples per batch.
        max_val_samples: at most this many validation examples (a seeded choice; None: all).
        limit: only the first ``limit`` training examples (a quick run).
        seed: shuffling and held-out places.
        train_dataset, val_dataset: ``grpo`` prompts from any geo dataset instead of the world's
            splits, as spec strings of :func:`~dlgpr.data.geo.parse_dataset_spec`
            (``mp16:/data/mp16-reason``, ``csv:/data/val.csv``); None: the world's train / val.
        prompt: linked from the model's by ``python -m dlgpr`` (prompt limits).
    """

    def __init__(self, task: str = "caption", world_dir: str = "data/synthcities-geo", reasoning_dir: str = "data/geo_reasoning/synthcities",
                 max_caption_words: int = 48, val_fraction: float = 0.1, batch_size: int = 16, val_batch_size: int = 32,
                 max_val_samples: int | None = 96, limit: int | None = None, seed: int = 0, train_dataset: str | None = None,
                 val_dataset: str | None = None, prompt: PromptConfig = PromptConfig()) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if batch_size < 1 or val_batch_size < 1 or max_caption_words < 1 or not 0 < val_fraction < 1:
            raise ValueError("batch sizes and max_caption_words must be >= 1, val_fraction in (0, 1)")
        if (max_val_samples is not None and max_val_samples < 1) or (limit is not None and limit < 1):
            raise ValueError("max_val_samples and limit must be >= 1 or None")
        self.task, self.world_dir, self.reasoning_dir = task, world_dir, reasoning_dir
        self.max_caption_words, self.val_fraction = max_caption_words, val_fraction
        self.batch_size, self.val_batch_size, self.max_val_samples, self.limit, self.seed = batch_size, val_batch_size, max_val_samples, limit, seed
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.prompt = prompt
        self.processor: Any = None
        self.train: list[Any] = []
        self.val: list[Any] = []

    def set_processor(self, processor: Any, with_images: bool, mode: str) -> None:
        if (mode == "prompts") != (self.task == "grpo"):
            raise ValueError(f"task {self.task!r} does not fit a module that wants {mode!r} batches")
        self.processor = processor

    def setup(self, stage: str | None = None) -> None:
        if self.train:
            return
        if self.task == "caption":
            self.train = caption_examples(self.world_dir, "train", self.max_caption_words)
            self.val = caption_examples(self.world_dir, "val", self.max_caption_words)
        elif self.task == "cot":
            kept = cot_examples(self.reasoning_dir)
            held = split_by_place([ex.place for ex in kept], self.val_fraction, self.seed)
            self.train = [ex for ex in kept if ex.place not in held]
            self.val = [ex for ex in kept if ex.place in held]
        else:
            self.train = _samples(self.train_dataset, self.world_dir, "train", self.limit)
            self.val = _samples(self.val_dataset, self.world_dir, "val", None)
        if self.limit is not None:
            self.train = self.train[: self.limit]
        if self.max_val_samples is not None and len(self.val) > self.max_val_samples:
            self.val = random.Random(self.seed).sample(self.val, self.max_val_samples)
        log.info("geo policy %s: %d training, %d validation examples", self.task, len(self.train), len(self.val))

    def _collate(self) -> Any:
        if self.task == "grpo":
            return samples_collate
        if self.processor is None:
            raise RuntimeError("set_processor was not called (the module does it in setup)")
        return SFTImageCollator(self.processor, self.prompt)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, generator=g, collate_fn=self._collate(), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.val_batch_size, shuffle=False, collate_fn=self._collate())
