"""The distillation's verdicts as a classification set: (image, reasoning) -> localizable (GLOBE's R_loc).

A geo-reasoning build (``scripts/build_geo_reasoning.py``, ``dlgpr.pipeline.geo_reasoning``)
writes every sample it validated, kept or rejected. Each becomes one example: the image, the
reasoning the build chose for it (the most confident teacher's), and the label 1 when the sample
was kept (it passed all four validations: the reasoning locates the image and names what is in
it), 0 when rejected.

The held-out split is by place: all images of a place (``place_id``; a sample without one is its
own place) are on the same side, so no place is seen in training and scored in validation.
Batches are :class:`LocalizabilityBatch`: decoded PIL images and texts, which each reward model
encodes its own way (a CLIP tokenizer and transform, or a VLM's processor).
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dlgpr.pipeline.geo_reasoning import iter_reasoning_samples

log = logging.getLogger("dlgpr.data")

__all__ = ["LocalizabilityExample", "LocalizabilityBatch", "LocalizabilityDataModule", "split_by_place"]


@dataclass(frozen=True)
class LocalizabilityExample:
    key: str
    place: str
    """The place's id as text (``place_id``, else the key): the unit of the held-out split."""
    reasoning: str
    jpeg: bytes
    label: int
    """1: kept by the distillation (localizable with this reasoning); 0: rejected."""


class LocalizabilityBatch(NamedTuple):
    images: list[Image.Image]
    texts: list[str]
    labels: Tensor  # [B] float 0/1
    keys: list[str]


def split_by_place(places: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The held-out places: a seeded ``val_fraction`` share of the distinct places (at least one
    when there are two or more)."""
    distinct = sorted(set(places))
    random.Random(seed).shuffle(distinct)
    n = round(val_fraction * len(distinct))
    if val_fraction > 0 and len(distinct) > 1:
        n = min(max(n, 1), len(distinct) - 1)
    return set(distinct[:n])


class _Examples(Dataset):
    def __init__(self, examples: Sequence[LocalizabilityExample]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> LocalizabilityExample:
        return self.examples[i]


def collate(examples: Sequence[LocalizabilityExample]) -> LocalizabilityBatch:
    images = []
    for ex in examples:
        with Image.open(io.BytesIO(ex.jpeg)) as im:
            images.append(im.convert("RGB"))
    return LocalizabilityBatch(images, [ex.reasoning for ex in examples],
                               torch.tensor([float(ex.label) for ex in examples]), [ex.key for ex in examples])


class LocalizabilityDataModule(LightningDataModule):
    """Kept vs rejected samples of a geo-reasoning build, split by place.

    Args:
        data_dir: the build's folder (``manifest.json``, ``shards/``).
        val_fraction: share of the places held out (validation: loss and AUROC).
        seed: which places are held out.
        batch_size: training examples per batch (shuffled every epoch).
        val_batch_size: validation examples per batch.
        num_workers: loader worker processes (0: decode in the main process; the images are small).
        limit: only the first ``limit`` samples of the build (a quick run).
    """

    def __init__(self, data_dir: str = "data/geo_reasoning/synthcities", val_fraction: float = 0.2, seed: int = 0,
                 batch_size: int = 64, val_batch_size: int = 128, num_workers: int = 0, limit: int | None = None) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if batch_size < 1 or val_batch_size < 1 or num_workers < 0 or (limit is not None and limit < 1):
            raise ValueError("batch_size and val_batch_size must be >= 1, num_workers >= 0, limit >= 1 or None")
        self.save_hyperparameters()
        self.data_dir, self.val_fraction, self.seed = data_dir, val_fraction, seed
        self.batch_size, self.val_batch_size, self.num_workers, self.limit = batch_size, val_batch_size, num_workers, limit
        self.train: list[LocalizabilityExample] = []
        self.val: list[LocalizabilityExample] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train or self.val:
            return
        examples = []
        for meta, jpeg in iter_reasoning_samples(self.data_dir, kept_only=False):
            place = str(meta["place_id"]) if meta.get("place_id") is not None else str(meta["key"])
            examples.append(LocalizabilityExample(str(meta["key"]), place, str(meta.get("reasoning") or ""), jpeg, int(bool(meta["kept"]))))
            if self.limit is not None and len(examples) >= self.limit:
                break
        if not examples:
            raise ValueError(f"{self.data_dir}: the build holds no sample")
        held_out = split_by_place([ex.place for ex in examples], self.val_fraction, self.seed)
        self.train = [ex for ex in examples if ex.place not in held_out]
        self.val = [ex for ex in examples if ex.place in held_out]
        for name, part in (("train", self.train), ("val", self.val)):
            neg, pos = self.class_counts(name)
            log.info("localizability %s: %d examples of %d places, %d kept (%.1f %%)", name, len(part),
                     len({ex.place for ex in part}), pos, 100.0 * pos / max(len(part), 1))

    def class_counts(self, split: str = "train") -> tuple[int, int]:
        """``(rejected, kept)`` examples of a split (after :meth:`setup`)."""
        part = {"train": self.train, "val": self.val}[split]
        pos = sum(ex.label for ex in part)
        return len(part) - pos, pos

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(_Examples(self.train), batch_size=self.batch_size, shuffle=True, generator=g, collate_fn=collate,
                          num_workers=self.num_workers, drop_last=len(self.train) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Examples(self.val), batch_size=self.val_batch_size, shuffle=False, collate_fn=collate,
                          num_workers=self.num_workers)
