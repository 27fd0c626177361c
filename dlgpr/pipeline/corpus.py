"""The DQ-Pilot dialogue corpus build (paper section 3.2 step 3-4; docs/METHOD.md "PRG, SA, DDI and the corpus split", "Data layouts").

For every place of a split, a teacher questioner holds a dialogue over a compact candidate set
and every turn gets PRG, SA and DDI (``dlgpr.pipeline.dialogues``), generated chunk by chunk so
a killed build resumes (``dlgpr.pipeline.chunks``). Turns with PRG < tau_1 are dropped and the
rest drawn into the ``sft`` (mostly low-DDI) and ``grpo`` (mostly high-DDI) stages
(``dlgpr.pipeline.ddi_split``). A ``val`` stage holds the turns of another split's places (all
kept). Each stage is written as dialogue-turn shards ``<stage>-NNNNN.tar`` with one
``<key>.json`` per turn, plus a ``manifest.json`` (``dlgpr.data.turns``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from dlgpr.data.reader import iter_records
from dlgpr.data.schema import PlaceRecord
from dlgpr.data.shards import read_manifest
from dlgpr.data.turns import Candidate, DialogueTurnRecord, QuestionRequest, Turn, write_dialogue_manifest, write_turn_shards
from dlgpr.dialogue.prompts import PROMPT_VERSION
from dlgpr.dialogue.types import Answerer, Questioner, RecordsUser
from dlgpr.models.reply_format import format_question
from dlgpr.models.prompting import flatten_text, questioner_messages
from dlgpr.pipeline.chunks import build_split_turns
from dlgpr.pipeline.ddi_split import split_by_ddi, summarize_turns
from dlgpr.pipeline.dialogues import CorpusConfig

log = logging.getLogger("dlgpr.pipeline")


def split_records(data_dir: str | os.PathLike, split: str) -> list[PlaceRecord]:
    """Every place record of ``split`` in a DQ-Cities (or SynthCities) shard folder."""
    data = Path(data_dir)
    return [r for s in read_manifest(data).split_shards(split) for r in iter_records(data / s.path)]


def tokenizer_texts(turns: Sequence[DialogueTurnRecord], records: dict[str, PlaceRecord], max_description_words: int) -> list[str]:
    """The text a questioner reads and writes: rendered prompts and the teacher's replies."""
    out = []
    for t in turns:
        req = QuestionRequest(
            query_id=t.place_id, round=t.round, initial_description=t.initial_description,
            history=tuple(Turn(h["question"], h["answer"]) for h in t.history),
            candidates=tuple(Candidate(k, records[k].place_id, records[k].description) for k in t.candidates if k in records),
        )
        messages = flatten_text(questioner_messages(req, max_description_words=max_description_words))
        out += [m["content"] for m in messages] + [format_question(t.think, t.question)]
    return out


@dataclass
class CorpusBuildConfig:
    """Where a corpus build reads and writes, which places it covers, and the corpus settings."""

    retriever: str
    """Checkpoint of the trained retriever (hard negatives, PRG, SA)."""
    data_dir: str | os.PathLike
    """Place shards (DQ-Cities or SynthCities)."""
    out_dir: str | os.PathLike
    """Where the dialogue-turn shards, manifest, tokenizer and (by default) work chunks go."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Rounds, candidate set, PRG filter, DDI split and stage sizes."""
    train_split: str = "train"
    """Places whose dialogues make the sft and grpo stages."""
    val_split: str | None = "val"
    """Places whose dialogues make the val stage (None: no val stage)."""
    limit: int | None = None
    """First N places of ``train_split`` only (a small run)."""
    val_limit: int | None = None
    """First N places of ``val_split`` only."""
    tokenizer_vocab_size: int = 4096
    """Vocabulary of the corpus tokenizer (0: do not train one)."""
    max_description_words: int = 60
    """Candidate descriptions cut to this many words in the tokenizer's texts (the questioner's prompt cut)."""
    progress: bool = False
    """A progress bar per split."""
    work_dir: str | os.PathLike | None = None
    """Where the resumable dialogue chunks live (None: ``<out_dir>/work``)."""


def build_corpus(config: CorpusBuildConfig, teacher: Questioner, answerer: Answerer) -> dict[str, Any]:
    """Dialogues of every place of ``train_split`` (and ``val_split``), PRG/SA/DDI, the DDI split,
    dialogue-turn shards and manifest in ``out_dir`` (resumable through ``work_dir``, by default
    ``out_dir/work``). The chunks depend on the retriever, the teacher, the user and the
    generation settings, not on how the stages are drawn: a corpus that differs only in
    ``stage_sampling`` (or the sizes and mixes of the stages) can share another's ``work_dir``.

    A teacher with ``bind_records`` (the API teacher's evidence base) gets the place records first.
    Returns the summary stored in the manifest's ``extra``.
    """
    from dlgpr.models.questioner import train_corpus_tokenizer  # heavy imports, only for a build
    from dlgpr.retrieval import ModuleTextRetriever, encode_gallery, load_retriever

    c, corpus = config, config.corpus
    start = time.perf_counter()
    out = Path(c.out_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = load_retriever(c.retriever, map_location=device)
    text_retriever = ModuleTextRetriever(module)
    summary: dict[str, Any] = {"retriever": str(c.retriever), "data_dir": str(c.data_dir), "prompt_version": PROMPT_VERSION,
                               "teacher": type(teacher).__name__, "corpus": asdict(corpus)}
    all_records: dict[str, PlaceRecord] = {}
    split_turns: dict[str, list[DialogueTurnRecord]] = {}
    for split, lim in ((c.train_split, c.limit), (c.val_split, c.val_limit)):
        if split is None:
            continue
        records = split_records(c.data_dir, split)
        if not records:
            raise ValueError(f"{c.data_dir}: split {split!r} has no place")
        all_records.update({r.key: r for r in records})
        if isinstance(teacher, RecordsUser):
            teacher.bind_records(records)
        gallery = encode_gallery(module, c.data_dir, split)
        work = Path(c.work_dir) if c.work_dir is not None else out / "work"
        turns, stats = build_split_turns(records, gallery, text_retriever, teacher, answerer, corpus, work, split, lim, c.progress)
        split_turns[split] = turns
        summary[f"{split}_generation"] = {**stats, **summarize_turns(turns)}
        log.info("%s: %d dialogues, %d turns (%d failed)", split, stats["dialogues"], stats["turns"], stats["failed_turns"])
    stages, info = split_by_ddi(split_turns[c.train_split], corpus)
    summary["split"] = info
    shards = []
    for stage, turns in stages.items():
        shards += write_turn_shards(out, stage, turns, corpus.max_turns_per_shard)
    if c.val_split is not None:
        val = sorted((t.with_stage("val") for t in split_turns[c.val_split] if t.prg >= corpus.prg_threshold), key=lambda t: t.key)
        shards += write_turn_shards(out, "val", val, corpus.max_turns_per_shard)
        summary["val"] = {"turns": len(val)}
    if c.tokenizer_vocab_size:
        texts = tokenizer_texts([t for ts in split_turns.values() for t in ts], all_records, c.max_description_words)
        tok = train_corpus_tokenizer(texts, c.tokenizer_vocab_size)
        tok.save_pretrained(str(out / "tokenizer"))
        summary["tokenizer"] = {"vocab_size": len(tok), "dir": str(out / "tokenizer")}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_dialogue_manifest(out, shards, summary)
    return summary


__all__ = ["CorpusBuildConfig", "build_corpus", "split_records", "tokenizer_texts"]
