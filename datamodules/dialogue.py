"""Dialogue turns for DQ-Pilot SFT and GRPO (docs/METHOD.md, "PRG, SA, DDI and the corpus split").

:class:`DialogueDataModule` reads the dialogue-turn shards written by
``scripts/build_dialogues.py`` and the place shards they refer to (candidate descriptions and
images, the target's ground truth for the simulated user). Each turn becomes a
:class:`TurnExample`: the :class:`~dlgpr.data.turns.QuestionRequest` the questioner sees
(initial description, history, candidates), the teacher's completion and the target.

Order: :class:`CurriculumSampler` walks the turns by DDI (easy to hard, or shuffled within DDI
buckets, or stratified so that every prefix has the stage's DDI mix, or at random for the
ablation), deterministic given the seed and the epoch; under DDP
every rank takes its own disjoint slice of the same order (it is a ``DistributedSampler``, so
Lightning leaves it in place and calls ``set_epoch``).

Batches depend on the stage, set by the module through :meth:`DialogueDataModule.set_processor`:

* ``sft``: :class:`SFTCollator` renders the chat prompt (instruction + candidates + history)
  with the model's chat template, appends the completion ``<think>..</think><question>..</question>``
  and the end-of-turn token, and masks the labels so that only the completion carries loss;
* ``prompts``: a list of :class:`TurnExample` (GRPO samples its own completions).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dlgpr.data.curriculum import CurriculumMode, curriculum_order, rank_slice
from dlgpr.data.jpeg import decode_jpeg, read_shard_jpegs
from dlgpr.data.reader import BadSampleLog, iter_records
from dlgpr.data.schema import PlaceRecord
from dlgpr.data.shards import read_manifest
from dlgpr.data.streaming import distributed_context
from dlgpr.data.turns import Candidate, DialogueTurnRecord, QuestionRequest, Target, Turn, read_turns
from dlgpr.models.prompting import TOKEN_ALIGNED_KEYS, PromptConfig, PromptEncoder
from dlgpr.models.reply_format import format_question

log = logging.getLogger("dlgpr.data")

IGNORE_INDEX = -100
TOKEN_TYPE_KEYS = ("token_type_ids", "mm_token_type_ids")
"""Processor outputs with one entry per prompt token: padded with the batch, not concatenated."""
CollateMode = Literal["sft", "prompts"]


@dataclass(frozen=True)
class TurnExample:
    """One corpus turn, ready for a questioner."""

    turn: DialogueTurnRecord
    request: QuestionRequest
    target: Target

    @property
    def completion(self) -> str:
        """The teacher's reply in the DQ-Pilot format (the SFT target)."""
        return format_question(self.turn.think, self.turn.question)


class PlaceIndex:
    """Place records by key and by place id (first view), with JPEG bytes when images are needed."""

    def __init__(self, data_dir: str | Path, splits: Sequence[str], with_images: bool) -> None:
        self.data_dir = Path(data_dir)
        manifest = read_manifest(self.data_dir)
        self.records: dict[str, PlaceRecord] = {}
        self.first_view: dict[int, PlaceRecord] = {}
        self.jpegs: dict[str, bytes] = {}
        for shard in manifest.shards:
            if shard.split not in splits:
                continue
            for r in iter_records(self.data_dir / shard.path):
                self.records[r.key] = r
                if r.place_id not in self.first_view or r.view < self.first_view[r.place_id].view:
                    self.first_view[r.place_id] = r
            if with_images:
                self.jpegs.update(read_shard_jpegs(self.data_dir, [shard.path]))

    def image(self, key: str) -> Image.Image:
        return decode_jpeg(self.jpegs[key])

    def example(self, turn: DialogueTurnRecord, with_images: bool) -> TurnExample | None:
        """The turn as a questioner request; None when a candidate or the target is unknown."""
        if turn.place_id not in self.first_view or any(k not in self.records for k in turn.candidates):
            return None
        candidates = tuple(
            Candidate(
                key=k, place_id=self.records[k].place_id, description=self.records[k].description,
                image=(lambda k=k: self.image(k)) if with_images and k in self.jpegs else None,
            )
            for k in turn.candidates
        )
        history = tuple(Turn(question=h["question"], answer=h["answer"]) for h in turn.history)
        request = QuestionRequest(query_id=turn.place_id, round=turn.round, initial_description=turn.initial_description,
                                  history=history, candidates=candidates)
        first = self.first_view[turn.place_id]
        return TurnExample(turn=turn, request=request, target=Target(first.place_id, first.description, first.attributes))


class TurnDataset(Dataset):
    def __init__(self, examples: Sequence[TurnExample]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> TurnExample:
        return self.examples[i]


class CurriculumSampler(DistributedSampler):
    """This rank's turns in DDI curriculum order for the current epoch (see ``dlgpr.data.curriculum``)."""

    def __init__(self, difficulty: Sequence[float], mode: CurriculumMode, seed: int, num_buckets: int = 3,
                 rank: int = 0, world_size: int = 1) -> None:
        # DistributedSampler's own fields (Lightning checks the type, then calls set_epoch)
        self.num_replicas, self.rank, self.epoch, self.seed = world_size, rank, 0, seed
        self.shuffle, self.drop_last = mode != "easy_to_hard", True
        self.difficulty = list(difficulty)
        self.mode = mode
        self.num_buckets = num_buckets
        self.num_samples = len(self.difficulty) // world_size
        self.total_size = self.num_samples * world_size

    def order(self) -> list[int]:
        return rank_slice(curriculum_order(self.difficulty, self.mode, self.seed, self.epoch, self.num_buckets), self.rank, self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.num_samples


class SFTCollator:
    """Tokenize prompt + completion; labels are the completion tokens (and end-of-turn), the rest -100.

    The prompt is encoded by the policy's :class:`~dlgpr.models.prompting.PromptEncoder` (the
    one the questioner and the GRPO rollout generate from, left truncation included) and the
    completion tokenized separately and appended, which is exactly how generation sees them
    (the completion starts after the rendered generation prompt). Returns ``input_ids``,
    ``attention_mask``, ``labels`` [B, L] (right-padded), plus ``pixel_values`` /
    ``image_grid_thw`` for a vision-language processor.
    """

    def __init__(self, processor: Any, with_images: bool, prompt: PromptConfig = PromptConfig()) -> None:
        shown = PromptConfig("always" if with_images else "never", prompt.max_description_words, prompt.max_prompt_tokens)
        self.encoder = PromptEncoder(processor, shown)
        self.tokenizer = self.encoder.tokenizer
        self.prompt = prompt

    @property
    def num_truncated(self) -> int:
        return self.encoder.num_truncated

    def _encode_one(self, ex: TurnExample) -> dict[str, Any]:
        enc = self.encoder([self.encoder.messages(ex.request)])  # one prompt: no padding
        prompt = enc["input_ids"][0].tolist()
        extra: dict[str, torch.Tensor] = {}
        aligned: dict[str, list[int]] = {}
        if self.encoder.is_vlm:
            extra = {k: v for k, v in enc.items() if k not in TOKEN_ALIGNED_KEYS}
            aligned = {k: enc[k][0].tolist() for k in TOKEN_TYPE_KEYS if k in enc}
        completion = self.tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return {"prompt": prompt, "completion": completion, "extra": extra, "aligned": aligned}

    def __call__(self, examples: list[TurnExample]) -> dict[str, Any]:
        encoded = [self._encode_one(ex) for ex in examples]
        length = max(len(e["prompt"]) + len(e["completion"]) for e in encoded)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(encoded), length), pad, dtype=torch.long)  # [B, L]
        labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)  # [B, L]
        mask = torch.zeros(len(encoded), length, dtype=torch.long)  # [B, L]
        for i, e in enumerate(encoded):
            seq = e["prompt"] + e["completion"]
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(e["prompt"]) : len(seq)] = torch.tensor(e["completion"])
            mask[i, : len(seq)] = 1
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for key in encoded[0]["aligned"]:
            # token-aligned like input_ids (Qwen2.5-VL's mm_token_type_ids): the completion and padding are text (0)
            types = torch.zeros(len(encoded), length, dtype=torch.long)  # [B, L]
            for i, e in enumerate(encoded):
                types[i, : len(e["prompt"])] = torch.tensor(e["aligned"][key])
            batch[key] = types
        for key in encoded[0]["extra"]:
            batch[key] = torch.cat([e["extra"][key] for e in encoded])  # images of the batch in order
        return batch


def prompts_collate(examples: list[TurnExample]) -> list[TurnExample]:
    return examples


@dataclass
class CurriculumConfig:
    """The order of the training turns (see ``dlgpr.data.curriculum``)."""

    mode: CurriculumMode = "easy_to_hard"
    """``easy_to_hard``, ``buckets``, ``stratified`` (every prefix has the stage's DDI mix: for runs
    that stop within an epoch, as GRPO under ``max_steps``) or ``random`` (the order-shuffle ablation)."""
    num_buckets: int = 3
    """DDI buckets of the ``buckets`` curriculum, strata of the ``stratified`` one."""
    seed: int | None = None
    """Order seed; None follows ``seed_everything``."""

    def __post_init__(self) -> None:
        if self.mode not in ("easy_to_hard", "buckets", "stratified", "random"):
            raise ValueError(f"curriculum.mode must be easy_to_hard, buckets, stratified or random, got {self.mode!r}")
        if self.num_buckets < 1:
            raise ValueError(f"curriculum.num_buckets must be >= 1, got {self.num_buckets}")


class DialogueDataModule(LightningDataModule):
    """Dialogue-turn shards in ``data_dir`` over the place shards in ``place_data_dir``.

    Args:
        data_dir: the corpus (``manifest.json`` + ``<stage>-NNNNN.tar``).
        place_data_dir: the DQ-Cities / SynthCities shards the turns' keys refer to.
        train_stages: corpus stages trained on (``[sft]``; ``[grpo]``; ``[sft, grpo]`` = the whole corpus).
        val_stage: stage validated on (None: no validation).
        curriculum: the training order (:class:`CurriculumConfig`).
        batch_size: turns per training batch (prompts per GRPO step).
        val_batch_size: turns per validation batch.
        max_val_turns: validation turns used (the first ones in key order); None: all.
        num_workers: loader worker processes.
        prompt: how SFT prompts are built; under ``python -m dlgpr`` it is linked from the model's
            ``prompt`` (the prompts the policy generates from), not set here.
    """

    def __init__(
        self,
        data_dir: str = "data/dialogues/synthcities",
        place_data_dir: str = "data/synthcities",
        train_stages: list[str] = ["sft"],  # noqa: B006 (jsonargparse reads the default)
        val_stage: str | None = "val",
        curriculum: CurriculumConfig = CurriculumConfig(),
        batch_size: int = 8,
        val_batch_size: int = 16,
        max_val_turns: int | None = 256,
        num_workers: int = 0,
        prompt: PromptConfig = PromptConfig(),
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1 or num_workers < 0:
            raise ValueError("batch_size and val_batch_size must be >= 1 and num_workers >= 0")
        self.data_dir = Path(data_dir)
        self.place_data_dir = Path(place_data_dir)
        self.train_stages = list(train_stages)
        self.val_stage = val_stage
        self.curriculum = curriculum
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.max_val_turns = max_val_turns
        self.num_workers = num_workers
        self.prompt = prompt
        self.processor: Any = None
        self.with_images = False
        self.mode: CollateMode = "sft"
        self.train_examples: list[TurnExample] = []
        self.val_examples: list[TurnExample] = []
        self.bad = BadSampleLog()

    def set_processor(self, processor: Any, with_images: bool, mode: CollateMode) -> None:
        """Called by the module: the policy's tokenizer or processor, whether it is shown images,
        and whether batches are tokenized (sft) or raw (prompts)."""
        if mode not in ("sft", "prompts"):
            raise ValueError(f"mode must be 'sft' or 'prompts', got {mode!r}")
        self.processor, self.with_images, self.mode = processor, with_images, mode

    def setup(self, stage: str | None = None) -> None:
        """Nothing to do before the module has said whether it shows images (see ``load``)."""

    def load(self) -> None:
        """Read the turns and the places they refer to (once; the loaders call it)."""
        if self.train_examples:
            return
        splits = ("train", "val", "test")
        places = PlaceIndex(self.place_data_dir, splits, with_images=self.with_images)
        self.train_examples = self._examples(read_turns(self.data_dir, self.train_stages, self.bad), places, "train")
        if not self.train_examples:
            raise ValueError(f"{self.data_dir}: no usable turn in stage(s) {self.train_stages}")
        if self.val_stage is not None:
            val = sorted(read_turns(self.data_dir, [self.val_stage], self.bad), key=lambda t: t.key)
            self.val_examples = self._examples(val[: self.max_val_turns] if self.max_val_turns else val, places, "val")

    def _examples(self, turns: Sequence[DialogueTurnRecord], places: PlaceIndex, what: str) -> list[TurnExample]:
        out = []
        for t in turns:
            ex = places.example(t, self.with_images)
            if ex is None:
                self.bad.add(str(self.data_dir), "unknown_place", reason=f"{t.key}: a candidate or the target is not in {self.place_data_dir}")
            else:
                out.append(ex)
        self.bad.report(f"{self.data_dir} {what} turns")
        return out

    def _seed(self) -> int:
        seed = self.curriculum.seed
        return seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _collate(self) -> Any:
        if self.mode == "prompts":
            return prompts_collate
        if self.processor is None:
            raise RuntimeError("DialogueDataModule needs set_processor() before SFT batches can be made (the module calls it in setup)")
        return SFTCollator(self.processor, self.with_images, self.prompt)

    def train_sampler(self) -> CurriculumSampler:
        self.load()
        rank, world = distributed_context()
        c = self.curriculum
        return CurriculumSampler([ex.turn.ddi for ex in self.train_examples], c.mode, self._seed(), c.num_buckets, rank, world)

    def train_dataloader(self) -> DataLoader:
        sampler = self.train_sampler()
        self._warn_if_the_run_sees_part_of_an_ordered_stage(len(sampler))
        return DataLoader(TurnDataset(self.train_examples), batch_size=self.batch_size, sampler=sampler,
                          collate_fn=self._collate(), num_workers=self.num_workers, drop_last=True)

    def _warn_if_the_run_sees_part_of_an_ordered_stage(self, per_rank: int) -> None:
        """An ordered curriculum cut short by ``max_steps`` trains on one end of the DDI range only."""
        trainer = getattr(self, "trainer", None)
        max_steps = getattr(trainer, "max_steps", -1) if trainer is not None else -1
        if self.curriculum.mode not in ("easy_to_hard", "buckets") or max_steps in (None, -1):
            return
        batches = per_rank // self.batch_size
        if max_steps < batches:  # stops within the first epoch
            log.warning(
                "curriculum %r with max_steps %d sees the first %d of %d turns per rank: the run never reaches the "
                "hardest turns of stage(s) %s; use curriculum: stratified to keep the stage's DDI mix",
                self.curriculum.mode, max_steps, max_steps * self.batch_size, per_rank, self.train_stages,
            )

    def val_dataloader(self) -> DataLoader:
        self.load()
        rank, world = distributed_context()
        # each rank validates a disjoint, equally long slice (in key order)
        examples = self.val_examples[rank : len(self.val_examples) - len(self.val_examples) % world : world] if world > 1 else self.val_examples
        return DataLoader(TurnDataset(examples), batch_size=self.val_batch_size, shuffle=False, collate_fn=self._collate(),
                          num_workers=self.num_workers)

