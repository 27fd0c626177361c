"""LightningDataModule over DQ-Cities shards (real, or the embedded SynthCities world).

Training batches are place-batched (``places_per_batch`` x ``views_per_place``, as in
GSV-Cities); validation/test/predict stream every image of the split once, each with its
description, across all ranks and workers (see ``dlgpr.data.streaming``).

The model decides the input size, pixel normalisation and tokenizer: when attached to a
trainer, the datamodule asks ``trainer.lightning_module.preprocessing()`` in ``setup``;
standalone, call :meth:`DQCitiesDataModule.set_preprocessing`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Literal

from lightning.pytorch import LightningDataModule

from dlgpr.data.reader import iter_records
from dlgpr.data.schema import PlaceRecord
from dlgpr.data.shards import MANIFEST_NAME, Manifest, ShardInfo, read_manifest
from dlgpr.data.streaming import (
    AugmentConfig,
    BatchMiningConfig,
    TextAugmentConfig,
    EpochLoader,
    ImageTransform,
    PlaceBatchStream,
    Preprocessing,
    RecordCollator,
    RecordStream,
)
from dlgpr.data.synth import SynthCitiesConfig, ensure_synthcities

log = logging.getLogger("dlgpr.data")

# Our streams give every worker its own shards and quota, so their __len__ is exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")

Split = Literal["train", "val", "test"]


class DQCitiesDataModule(LightningDataModule):
    """DQ-Cities shards in ``data_dir``.

    Args:
        data_dir: folder with ``manifest.json`` and the shards.
        synthetic: SynthCities world to generate into ``data_dir`` on first use (rank 0,
            ``prepare_data``); ``None`` for real data, which must already be built.
        places_per_batch: P, distinct places per training batch.
        views_per_place: K, views of each place per training batch.
        eval_batch_size: images per validation/test/predict batch.
        num_workers: loader worker processes per rank.
        shuffle_buffer: places held by each training worker's shuffle buffer.
        shard_interleave: shards each training worker reads round-robin (mixes shards written
            in some order, e.g. a city at a time, before they reach the buffer).
        augment: training-time image augmentation.
        text_augment: training-time text augmentation (dialogue-style queries).
        batch_mining: training batches of lexically similar places (off by default).
        predict_split: split streamed by ``predict``.
        seed: data order seed; ``None`` follows the run's ``seed_everything``.
    """

    def __init__(
        self,
        data_dir: str = "data/synthcities",
        synthetic: SynthCitiesConfig | None = None,
        places_per_batch: int = 16,
        views_per_place: int = 4,
        eval_batch_size: int = 256,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        shard_interleave: int = 4,
        augment: AugmentConfig = AugmentConfig(),
        text_augment: TextAugmentConfig = TextAugmentConfig(),
        batch_mining: BatchMiningConfig = BatchMiningConfig(),
        predict_split: Split = "test",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if places_per_batch < 1 or views_per_place < 1 or eval_batch_size < 1:
            raise ValueError("places_per_batch, views_per_place and eval_batch_size must be >= 1")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.data_dir = Path(data_dir)
        self.synthetic = synthetic
        self.places_per_batch = places_per_batch
        self.views_per_place = views_per_place
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.shard_interleave = shard_interleave
        self.augment = augment
        self.text_augment = text_augment
        self.batch_mining = batch_mining
        self.predict_split = predict_split
        self.seed = seed
        self.manifest: Manifest | None = None
        self.preprocessing: Preprocessing | None = None

    # ---- data preparation ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        manifest_path = self.data_dir / MANIFEST_NAME
        if self.synthetic is None:
            if not manifest_path.is_file():
                raise FileNotFoundError(
                    f"data_dir {self.data_dir} has no {MANIFEST_NAME}: build DQ-Cities there with "
                    f"`python scripts/build_dqcities.py` or SynthCities with "
                    f"`python scripts/make_synthcities.py --out_dir {self.data_dir}`, or set data.synthetic"
                )
            return
        if manifest_path.is_file():
            existing = read_manifest(self.data_dir)
            if existing.extra.get("generator") != "synthcities":
                # never overwrite a real dataset with a synthetic one
                log.warning("%s holds a non-synthetic dataset (%s); using it as is", self.data_dir, existing.name)
                return
        ensure_synthcities(self.data_dir, self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is None and not (self.data_dir / MANIFEST_NAME).is_file():
            self.prepare_data()  # standalone use; under a trainer Lightning already ran it on rank 0
        self.manifest = read_manifest(self.data_dir)
        if self.preprocessing is None:
            model = self.trainer.lightning_module if self.trainer is not None else None
            prep = getattr(model, "preprocessing", None)
            self.preprocessing = prep() if callable(prep) else Preprocessing()

    def set_preprocessing(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    # ---- loaders -------------------------------------------------------------------------------
    def _seed(self) -> int:
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def shards(self, split: str) -> list[ShardInfo]:
        """The manifest's shards of ``split`` (an error if there are none)."""
        assert self.manifest is not None, "call setup() first"
        shards = self.manifest.split_shards(split)
        if not shards:
            raise ValueError(f"{self.data_dir}: the manifest lists no shard of split {split!r}")
        return shards

    def train_dataset(self) -> PlaceBatchStream:
        assert self.preprocessing is not None, "call setup() first"
        return PlaceBatchStream(
            self.data_dir,
            self.shards("train"),
            ImageTransform(self.preprocessing, self.augment),
            places_per_batch=self.places_per_batch,
            views_per_place=self.views_per_place,
            shuffle_buffer=self.shuffle_buffer,
            shard_interleave=self.shard_interleave,
            num_workers=self.num_workers,
            tokenizer=self.preprocessing.tokenizer,
            seed=self._seed(),
            text_augment=self.text_augment,
            batch_mining=self.batch_mining,
        )

    def eval_dataset(self, split: str) -> RecordStream:
        assert self.preprocessing is not None, "call setup() first"
        return RecordStream(self.data_dir, self.shards(split), ImageTransform(self.preprocessing), name=split, seed=self._seed())

    def records(self, split: str) -> list[PlaceRecord]:
        """Every record of ``split`` in manifest order, without decoding images."""
        out: list[PlaceRecord] = []
        for shard in self.shards(split):
            out += iter_records(self.data_dir / shard.path)
        return out

    def train_dataloader(self) -> EpochLoader:
        return EpochLoader(
            self.train_dataset(),
            batch_size=None,  # the stream yields whole place-batched batches
            num_workers=self.num_workers,
            persistent_workers=False,  # workers re-read the epoch's plan at each epoch
            epoch_fn=self._epoch,
        )

    def eval_dataloader(self, split: str) -> EpochLoader:
        """Every image of ``split`` once (what val/test/predict loaders are made of)."""
        assert self.preprocessing is not None
        return EpochLoader(
            self.eval_dataset(split),
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            collate_fn=RecordCollator(self.preprocessing.tokenizer),
            epoch_fn=self._epoch,
        )

    def val_dataloader(self) -> EpochLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> EpochLoader:
        return self.eval_dataloader("test")

    def predict_dataloader(self) -> EpochLoader:
        return self.eval_dataloader(self.predict_split)
