"""Streaming datasets over DQ-Cities shards (torch ``IterableDataset``s, no Lightning).

Work is split by shard: every (rank, worker) consumer reads its own shards, so each sample is
read by exactly one consumer per epoch (DDP x ``num_workers``), and a shard's bytes are read
once. Two streams:

* :class:`RecordStream` (evaluation, prediction): every sample once, in manifest order; shards
  are dealt round-robin over the ``world_size * num_workers`` consumers.
* :class:`PlaceBatchStream` (training): place-batched batches of ``P`` distinct places x ``K``
  views (GSV-Cities' sampling, what SDM and multi-similarity need). Shards are shuffled per epoch
  and dealt to ranks and workers balanced by place count; each worker fills a shuffle buffer of
  places and draws batches from it. All ranks yield the same number of batches (DDP needs it):
  the count is computed from the manifest alone, places that do not fill a last batch are left
  for another epoch (``drop_last`` at place level), and a worker that lost samples to bad data
  tops up from a second pass over its shards rather than yield fewer batches.

The epoch, rank and world size are set on the dataset by :class:`EpochLoader` each time an
epoch starts, before workers are forked; the shuffle is a pure function of ``(seed, epoch)``.
"""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2

from dlgpr.data.reader import BadSampleLog, Sample, iter_shard
from dlgpr.data.shards import ShardInfo

log = logging.getLogger("dlgpr.data")

Tokenizer = Callable[[list[str]], Tensor]


@dataclass
class Preprocessing:
    """What a model needs from the data: input size, pixel normalisation and its tokenizer.

    A LightningModule exposes ``preprocessing()`` returning this; the datamodule applies it in
    the loader workers. ``tokenizer`` must be picklable (it travels to worker processes).
    """

    image_size: int = 64
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    tokenizer: Tokenizer | None = None


@dataclass
class AugmentConfig:
    """Training-time image augmentation. No horizontal flip: descriptions state left and right."""

    enabled: bool = True
    """Apply the augmentation to training batches (evaluation never augments)."""
    crop_scale_min: float = 0.6
    """Smallest area fraction kept by the random resized crop."""
    color_jitter: float = 0.1
    """Brightness and contrast jitter strength (0 disables)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"augment.crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.color_jitter < 0:
            raise ValueError(f"augment.color_jitter must be >= 0, got {self.color_jitter}")


@dataclass
class TextAugmentConfig:
    """Training-time text augmentation towards the queries a dialogue sends.

    In a dialogue the retriever reads ``d_t = concat(d_0, a_1..a_t)``: a vague caption and a few
    short answers, not a 150-word description. With probability ``query_prob`` a training text
    is replaced by the place's initial caption followed by 1..``max_sentences`` sentences of its
    description, drawn at random (the answers a user could have given).
    """

    query_prob: float = 0.0
    """Fraction of training texts replaced by a dialogue-style query (0 keeps full descriptions)."""
    max_sentences: int = 5
    """Most description sentences appended to the caption (the paper's 5 rounds)."""
    rephrase_prob: float = 0.0
    """Probability that each sentence of a dialogue-style query is re-shaped the way a short
    answer differs from a description sentence: a fragment of it (a run of 2-8 of its words), its
    words in another order, or the sentence with about a third of its words left out (one of the
    three at random). Users do not answer in the description's sentences; this keeps the text
    tower reading the words that name what is there rather than one phrasing. Language-generic:
    it uses nothing but the description's words."""

    answer_prob: float = 0.0
    """Probability that a dialogue-style query appends the place's answers instead of description
    sentences: for records that carry attributes (SynthCities), 1..``max_sentences`` of the
    simulated user's answer sentences about attributes drawn at random (records without
    attributes keep description sentences). A diagnostic of how much the answers' phrasing limits
    the dialogue; it trains on the evaluation user's own wording, so it is off by default."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.answer_prob <= 1.0:
            raise ValueError(f"text_augment.answer_prob must be in [0, 1], got {self.answer_prob}")
        if not 0.0 <= self.query_prob <= 1.0:
            raise ValueError(f"text_augment.query_prob must be in [0, 1], got {self.query_prob}")
        if self.max_sentences < 1:
            raise ValueError(f"text_augment.max_sentences must be >= 1, got {self.max_sentences}")
        if not 0.0 <= self.rephrase_prob <= 1.0:
            raise ValueError(f"text_augment.rephrase_prob must be in [0, 1], got {self.rephrase_prob}")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def rephrase_sentence(sentence: str, rng: random.Random) -> str:
    """One sentence re-shaped like a short answer (see ``TextAugmentConfig.rephrase_prob``): a
    fragment of 2-8 consecutive words, the words shuffled, or about a third of them dropped."""
    words = sentence.rstrip(".!?").split()
    if len(words) < 3:
        return sentence
    mode = rng.randrange(3)
    if mode == 0:  # a fragment
        n = rng.randint(2, min(8, len(words)))
        start = rng.randrange(len(words) - n + 1)
        out = words[start:start + n]
    elif mode == 1:  # another order
        out = words[:]
        rng.shuffle(out)
    else:  # words left out
        out = [w for w in words if rng.random() >= 1 / 3] or [rng.choice(words)]
    text = " ".join(out)
    return text[:1].upper() + text[1:] + "."


def dialogue_style_query(caption: str, description: str, rng: random.Random, max_sentences: int, rephrase_prob: float = 0.0) -> str:
    """The caption plus 1..``max_sentences`` random sentences of ``description``, in drawn order,
    each re-shaped with probability ``rephrase_prob`` (``rephrase_sentence``)."""
    sentences = [s for s in _SENTENCE_END.split(description.strip()) if s]
    if not sentences:
        return caption
    k = rng.randint(1, min(max_sentences, len(sentences)))
    chosen = rng.sample(sentences, k)
    if rephrase_prob > 0:
        chosen = [rephrase_sentence(x, rng) if rng.random() < rephrase_prob else x for x in chosen]
    return " ".join([caption.strip(), *chosen]).strip()


def answer_style_query(caption: str, attributes: dict[str, Any], rng: random.Random, max_sentences: int) -> str:
    """The caption plus the simulated user's answers about 1..``max_sentences`` attributes of
    ``attributes`` drawn at random (see ``TextAugmentConfig.answer_prob``)."""
    from dlgpr.data.synth.dialogue import SLOT_QUESTIONS, answer_sentence

    slots = [slot for slot in SLOT_QUESTIONS if slot in attributes]
    if not slots:
        return caption
    chosen = rng.sample(slots, rng.randint(1, min(max_sentences, len(slots))))
    return " ".join([caption.strip(), *(answer_sentence(slot, attributes[slot], attributes) for slot in chosen)]).strip()


@dataclass
class BatchMiningConfig:
    """Places of a training batch that resemble each other, so the loss must tell them apart.

    With random batches of a few dozen places, two or three salient attributes (a facade colour,
    a pavement) already separate every place from the others, and nothing asks the towers to
    read the small elements a dialogue asks about. With ``hard_fraction > 0`` that share of a
    batch's places is drawn as ``groups`` clusters of lexical near neighbours: an anchor place
    drawn at random from the shuffle buffer, then the buffer's places whose descriptions share
    the most idf-weighted words with the anchor's (idf over the buffer). Text only: it works for
    any dataset with descriptions, as BM25-mined negatives do for passage retrieval."""

    hard_fraction: float = 0.0
    """Share of each batch's places drawn as near neighbours (0 keeps random batches)."""
    groups: int = 4
    """Anchors per batch; each brings ``hard_fraction x places_per_batch / groups`` places."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"batch_mining.hard_fraction must be in [0, 1], got {self.hard_fraction}")
        if self.groups < 1:
            raise ValueError(f"batch_mining.groups must be >= 1, got {self.groups}")


_WORD = re.compile(r"[a-z]+")


def lexical_neighbour_order(descriptions: Sequence[str], order: list[int], places: int, config: BatchMiningConfig) -> list[int]:
    """``order`` (a random permutation of buffer positions) with the mined near neighbours first.

    The first ``config.groups`` positions of ``order`` are anchors; each is followed by the
    positions whose descriptions share the highest idf-weighted word mass with the anchor's
    (``round(hard_fraction x places / groups)`` per anchor, the anchor included, ties by
    ``order``). Positions already taken are skipped; the rest of ``order`` follows unchanged.
    """
    if config.hard_fraction <= 0 or not descriptions:
        return order
    words = [set(_WORD.findall(d.lower())) for d in descriptions]
    df: dict[str, int] = {}
    for ws in words:
        for w in ws:
            df[w] = df.get(w, 0) + 1
    n = len(words)
    idf = {w: math.log(n / c) for w, c in df.items()}
    per = max(1, round(config.hard_fraction * places / config.groups))
    rank_in_order = {pos: i for i, pos in enumerate(order)}
    mined: list[int] = []
    for anchor in order[: config.groups]:
        score = [sum(idf[w] for w in words[anchor] & ws) for ws in words]
        near = sorted(range(n), key=lambda j: (-score[j], rank_in_order[j]))
        mined += near[:per]
    seen: set[int] = set()
    return [i for i in mined + order if not (i in seen or seen.add(i))]


class ImageTransform:
    """PIL image -> normalised float tensor ``[3, S, S]`` (picklable for loader workers)."""

    def __init__(self, prep: Preprocessing, augment: AugmentConfig | None = None) -> None:
        size = prep.image_size
        ops: list[Any] = [v2.ToImage()]
        if augment is not None and augment.enabled:
            ops.append(v2.RandomResizedCrop(size, scale=(augment.crop_scale_min, 1.0), ratio=(0.9, 1.1), antialias=True))
            if augment.color_jitter > 0:
                ops.append(v2.ColorJitter(brightness=augment.color_jitter, contrast=augment.color_jitter))
        else:
            ops += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(prep.mean), list(prep.std))]
        self.transform = v2.Compose(ops)

    def __call__(self, image: Image.Image) -> Tensor:
        return self.transform(image)  # [3, S, S]


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def worker_context() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def deal_balanced(weights: Sequence[int], bins: int) -> list[list[int]]:
    """Deal items (in the given order) to ``bins``, each to the currently lightest bin.

    Returns item indices per bin. Deterministic: ties go to the lowest bin index.
    """
    loads = [0] * bins
    out: list[list[int]] = [[] for _ in range(bins)]
    for i, w in enumerate(weights):
        b = min(range(bins), key=lambda j: (loads[j], j))
        out[b].append(i)
        loads[b] += w
    return out


def collate_records(samples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> dict[str, Any]:
    """Stack per-sample dicts into a batch; tokenize the descriptions when a tokenizer is set."""
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),  # [B, 3, S, S]
        "place_id": torch.tensor([s["place_id"] for s in samples], dtype=torch.long),  # [B]
        "view": torch.tensor([s["view"] for s in samples], dtype=torch.long),  # [B]
        "text": [s["text"] for s in samples],
        "caption": [s["caption"] for s in samples],
        "key": [s["key"] for s in samples],
    }
    if tokenizer is not None:
        batch["tokens"] = tokenizer(batch["text"])  # [B, L]
    return batch


class RecordCollator:
    """Picklable ``collate_fn`` for :class:`RecordStream`."""

    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_records(samples, self.tokenizer)


def _sample_dict(sample: Sample, image: Tensor) -> dict[str, Any]:
    r = sample.record
    return {"image": image, "place_id": r.place_id, "view": r.view, "text": r.description, "caption": r.initial_caption, "key": r.key, "attributes": r.attributes}


@dataclass
class _StreamState:
    epoch: int = 0
    rank: int = 0
    world_size: int = 1


class _ShardStream(IterableDataset):
    def __init__(self, data_dir: str | Path, shards: Sequence[ShardInfo], transform: ImageTransform, name: str, seed: int = 0) -> None:
        super().__init__()
        if not shards:
            raise ValueError(f"{name}: no shards to read in {data_dir}")
        self.data_dir = Path(data_dir)
        self.shards = list(shards)
        self.transform = transform
        self.name = name
        self.seed = seed
        self.state = _StreamState()
        self.last_bad: BadSampleLog | None = None  # in-process runs (num_workers=0) keep it for inspection

    def set_epoch(self, epoch: int) -> None:
        self.state.epoch = int(epoch)

    def set_distributed(self, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.state.rank, self.state.world_size = rank, world_size

    def _read(self, shard: ShardInfo, bad: BadSampleLog) -> Iterator[Sample]:
        return iter_shard(self.data_dir / shard.path, bad, expected_samples=shard.samples)

    def _context(self) -> str:
        worker, _ = worker_context()
        return f"{self.name} (rank {self.state.rank}, worker {worker}, epoch {self.state.epoch})"


class RecordStream(_ShardStream):
    """Every sample of the shards exactly once across all ranks and workers, in manifest order.

    Shards are dealt to ranks, then to workers, round-robin. Where there are fewer shards than
    ranks (or than a rank's workers), those consumers read the same shards and keep every n-th
    sample instead, so no rank is left without data: a rank with an empty validation loader
    would skip the epoch-end gather the others wait in.
    """

    def consumer_plan(self, rank: int, world_size: int, worker: int, num_workers: int) -> tuple[list[ShardInfo], int, int]:
        """``(shards, stride, offset)``: read ``shards`` in order, keep samples ``i % stride == offset``."""
        stride, offset = 1, 0
        if len(self.shards) >= world_size:
            shards = self.shards[rank::world_size]
        else:
            shards, stride, offset = list(self.shards), world_size, rank
        if len(shards) >= num_workers and stride == 1:
            shards = shards[worker::num_workers]
        else:
            stride, offset = stride * num_workers, offset * num_workers + worker
        return shards, stride, offset

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_context()
        bad = BadSampleLog()
        self.last_bad = bad
        shards, stride, offset = self.consumer_plan(self.state.rank, self.state.world_size, worker, num_workers)
        i = 0
        for shard in shards:
            for sample in self._read(shard, bad):
                if i % stride == offset:
                    yield _sample_dict(sample, self.transform(sample.image))
                i += 1
        bad.report(self._context())


@dataclass
class _PlaceUnit:
    place_id: int
    samples: list[Sample] = field(default_factory=list)


class PlaceBatchStream(_ShardStream):
    """Batches of ``places_per_batch`` distinct places x ``views_per_place`` views each.

    A place with fewer good views than asked repeats some of them (sampled with replacement).
    ``len()`` is the number of batches every rank yields this epoch.
    """

    def __init__(
        self,
        data_dir: str | Path,
        shards: Sequence[ShardInfo],
        transform: ImageTransform,
        places_per_batch: int,
        views_per_place: int,
        shuffle_buffer: int = 256,
        num_workers: int = 0,
        tokenizer: Tokenizer | None = None,
        name: str = "train",
        seed: int = 0,
        shard_interleave: int = 4,
        text_augment: TextAugmentConfig | None = None,
        batch_mining: BatchMiningConfig | None = None,
    ) -> None:
        super().__init__(data_dir, shards, transform, name, seed)
        self.text_augment = text_augment
        self.batch_mining = batch_mining
        if shard_interleave < 1:
            raise ValueError("shard_interleave must be >= 1")
        self.shard_interleave = shard_interleave
        if places_per_batch < 1 or views_per_place < 1:
            raise ValueError("places_per_batch and views_per_place must be >= 1")
        self.places_per_batch = places_per_batch
        self.views_per_place = views_per_place
        self.shuffle_buffer = max(shuffle_buffer, places_per_batch)
        self.num_workers = num_workers
        self.tokenizer = tokenizer

    # ---- planning: a pure function of the manifest, (seed, epoch), rank layout -----------------
    def plan(self, epoch: int, world_size: int, num_workers: int) -> tuple[list[list[list[ShardInfo]]], list[list[int]]]:
        """Shards and batch quota of every (rank, worker) for ``epoch``.

        Returns ``(shards[rank][worker], quota[rank][worker])`` with equal quota sums per rank.
        """
        workers = max(num_workers, 1)
        order = list(range(len(self.shards)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        shards = [self.shards[i] for i in order]
        per_rank = deal_balanced([s.places for s in shards], world_size)
        layout: list[list[list[ShardInfo]]] = []
        quotas: list[list[int]] = []
        for r in range(world_size):
            rank_shards = [shards[i] for i in per_rank[r]]
            per_worker = deal_balanced([s.places for s in rank_shards], workers)
            layout.append([[rank_shards[i] for i in idx] for idx in per_worker])
            quotas.append([sum(s.places for s in ws) // self.places_per_batch for ws in layout[r]])
        target = min(sum(q) for q in quotas)
        if target == 0:
            raise ValueError(
                f"{self.name}: {len(self.shards)} shard(s) with {sum(s.places for s in self.shards)} places give some rank no batch of "
                f"{self.places_per_batch} places at world size {world_size}; write smaller shards or lower places_per_batch"
            )
        for q in quotas:  # trim the richest workers until every rank yields `target` batches
            while sum(q) > target:
                j = max(range(len(q)), key=lambda i: (q[i], i))
                q[j] -= 1
        return layout, quotas

    def __len__(self) -> int:
        rank, world_size = self.state.rank, self.state.world_size
        if (rank, world_size) == (0, 1):
            rank, world_size = distributed_context()
        _, quotas = self.plan(self.state.epoch, world_size, self.num_workers)
        return sum(quotas[rank])

    # ---- iteration -----------------------------------------------------------------------------
    def _shard_units(self, shard: ShardInfo, bad: BadSampleLog) -> Iterator[_PlaceUnit]:
        unit: _PlaceUnit | None = None
        for sample in self._read(shard, bad):
            if unit is None or sample.record.place_id != unit.place_id:
                if unit is not None:
                    yield unit
                unit = _PlaceUnit(sample.record.place_id)
            unit.samples.append(sample)
        if unit is not None:
            yield unit

    def _units(self, shards: list[ShardInfo], rng: random.Random, bad: BadSampleLog) -> Iterator[_PlaceUnit]:
        """Places of ``shards`` (in a shuffled order), ``shard_interleave`` shards read round-robin.

        Interleaving mixes shards that were written in some order (a city at a time, say) before
        the places even reach the shuffle buffer.
        """
        pending = list(shards)
        rng.shuffle(pending)
        open_: list[Iterator[_PlaceUnit]] = []
        while pending or open_:
            while pending and len(open_) < self.shard_interleave:
                open_.append(self._shard_units(pending.pop(0), bad))
            for it in list(open_):
                unit = next(it, None)
                if unit is None:
                    open_.remove(it)
                else:
                    yield unit

    def _batch(self, units: list[_PlaceUnit], rng: random.Random) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        for unit in units:
            k = self.views_per_place
            views = rng.sample(unit.samples, k) if len(unit.samples) >= k else rng.choices(unit.samples, k=k)
            items += [_sample_dict(s, self.transform(s.image)) for s in views]
        aug = self.text_augment
        if aug is not None and aug.query_prob > 0:
            for item in items:
                if rng.random() < aug.query_prob:
                    attributes = item.get("attributes")
                    if aug.answer_prob > 0 and attributes and rng.random() < aug.answer_prob:
                        item["text"] = answer_style_query(item["caption"], attributes, rng, aug.max_sentences)
                    else:
                        item["text"] = dialogue_style_query(item["caption"], item["text"], rng, aug.max_sentences, aug.rephrase_prob)
        return collate_records(items, self.tokenizer)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_context()
        if num_workers != max(self.num_workers, 1):
            raise RuntimeError(f"{self.name}: built for num_workers={self.num_workers} but runs with {num_workers}")
        st = self.state
        layout, quotas = self.plan(st.epoch, st.world_size, self.num_workers)
        shards, quota = layout[st.rank][worker], quotas[st.rank][worker]
        torch.manual_seed(self.seed * 1_000_003 + st.epoch * 7919 + st.rank * 131 + worker)  # augmentation RNG
        rng = random.Random(self.seed * 1_000_003 + st.epoch * 7919 + st.rank * 131 + worker)
        bad = BadSampleLog()
        self.last_bad = bad
        p = self.places_per_batch
        passes, units_this_pass = 0, 0
        stream = self._units(shards, rng, bad)
        buffer: list[_PlaceUnit] = []
        for _ in range(quota):
            while len(buffer) < self.shuffle_buffer:
                try:
                    buffer.append(next(stream))
                    units_this_pass += 1
                except StopIteration:
                    if len(buffer) >= p:
                        break
                    if units_this_pass == 0:
                        raise RuntimeError(f"{self._context()}: no readable sample in shards {[s.path for s in shards]}") from None
                    passes += 1  # bad data cost us places: top up from another pass over our shards
                    units_this_pass = 0
                    stream = self._units(shards, rng, bad)
            # draw p distinct places (a second pass can put a place in the buffer twice)
            chosen: list[int] = []
            taken: set[int] = set()
            order = rng.sample(range(len(buffer)), len(buffer))
            if self.batch_mining is not None and self.batch_mining.hard_fraction > 0:
                order = lexical_neighbour_order([u.samples[0].record.description for u in buffer], order, p, self.batch_mining)
            for i in order:
                if buffer[i].place_id not in taken:
                    chosen.append(i)
                    taken.add(buffer[i].place_id)
                    if len(chosen) == p:
                        break
            units = [buffer[i] for i in chosen]
            for i in sorted(chosen, reverse=True):
                buffer.pop(i)
            yield self._batch(units, rng)
        if passes:
            log.warning("%s: bad data left too few places; %d extra pass(es) over the shards filled the epoch", self._context(), passes)
        bad.report(self._context())


class EpochLoader(DataLoader):
    """DataLoader that tells its stream the epoch, rank and world size before each epoch.

    ``epoch_fn`` returns the current epoch (the datamodule passes the trainer's, so a resumed
    run reshuffles as the uninterrupted one would); without it the loader counts its epochs.
    """

    def __init__(self, dataset: _ShardStream, *args: Any, epoch_fn: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self._epoch_fn = epoch_fn
        self._epochs_started = 0

    def __iter__(self):  # type: ignore[override]
        ds = self.dataset
        assert isinstance(ds, _ShardStream)
        ds.set_epoch(self._epoch_fn() if self._epoch_fn is not None else self._epochs_started)
        ds.set_distributed(*distributed_context())
        self._epochs_started += 1
        return super().__iter__()
