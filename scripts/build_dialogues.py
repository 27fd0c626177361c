"""Build the DQ-Pilot dialogue corpus (dialogue-turn shards + manifest) from place shards.

    python scripts/build_dialogues.py --config configs/build/dialogues_synthcities.yaml

For every place of ``train_split`` (and of ``val_split`` for the validation stage) the teacher
asks ``corpus.rounds`` questions over the compact candidate set (target, positive view, hard
negatives from the retriever); each turn gets PRG, SA and DDI; turns with PRG < tau_1 are
dropped and the rest split by DDI into the ``sft`` and ``grpo`` stages
(``dlgpr.pipeline.dialogues``). Also trains the byte-level BPE tokenizer of the from-scratch
questioner on the corpus' prompts and replies (``<out_dir>/tokenizer``).

Resumable: generated chunks live in ``<out_dir>/work`` and are reused by a rerun; the shards and
the manifest are rewritten at the end from all chunks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from jsonargparse import auto_cli

from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.evaluation import encode_split_gallery
from dlgpr.dialogue.prompts import PROMPT_VERSION, flatten_text, questioner_messages
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.dialogue.types import Answerer, Candidate, QuestionRequest, Questioner, Turn, format_question
from dlgpr.data.schema import PlaceRecord
from dlgpr.data.shards import read_manifest
from dlgpr.data.reader import iter_records
from dlgpr.models.questioner import train_corpus_tokenizer
from dlgpr.pipeline.dialogues import (
    CorpusConfig,
    DialogueTurnRecord,
    build_split_turns,
    split_by_ddi,
    summarize_turns,
    write_dialogue_manifest,
    write_turn_shards,
)
from dlgpr.retrieval import ModuleTextRetriever, load_retriever


def _records(data_dir: Path, split: str) -> list[PlaceRecord]:
    return [r for s in read_manifest(data_dir).split_shards(split) for r in iter_records(data_dir / s.path)]


def tokenizer_texts(turns: list[DialogueTurnRecord], records: dict[str, PlaceRecord], max_description_words: int) -> list[str]:
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


def build(
    retriever: str = "lightning_logs/dqpilot/retriever/checkpoints/last.ckpt",
    data_dir: str = "data/synthcities",
    out_dir: str = "data/dialogues/synthcities",
    teacher: Questioner = OracleTeacherQuestioner(),
    answerer: Answerer = OracleAnswerer(),
    corpus: CorpusConfig = CorpusConfig(),
    train_split: str = "train",
    val_split: str | None = "val",
    limit: int | None = None,
    val_limit: int | None = None,
    tokenizer_vocab_size: int = 4096,
    max_description_words: int = 60,
) -> dict:
    """Args:
        retriever: checkpoint of the trained retriever (hard negatives, PRG, SA).
        data_dir: place shards (DQ-Cities or SynthCities).
        out_dir: where the dialogue-turn shards, manifest, tokenizer and work chunks go.
        teacher: the questioner that writes the corpus (oracle teacher on SynthCities; an
            ``ApiQuestioner`` on real data).
        answerer: the simulated user.
        corpus: rounds, candidate set, PRG filter, DDI split and stage sizes.
        train_split: places whose dialogues make the sft and grpo stages.
        val_split: places whose dialogues make the val stage (None: no val stage).
        limit / val_limit: first N places only (a small run).
        tokenizer_vocab_size: vocabulary of the corpus tokenizer (0: do not train one).
        max_description_words: candidate descriptions cut to this many words in the tokenizer's texts
            (the same cut the questioner's prompts use).
    """
    start = time.perf_counter()
    out = Path(out_dir)
    data = Path(data_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = load_retriever(retriever, map_location=device)
    text_retriever = ModuleTextRetriever(module)
    summary: dict = {"retriever": retriever, "data_dir": data_dir, "prompt_version": PROMPT_VERSION, "teacher": type(teacher).__name__,
                     "corpus": {k: getattr(corpus, k) for k in corpus.__dataclass_fields__}}
    all_records: dict[str, PlaceRecord] = {}
    split_turns: dict[str, list[DialogueTurnRecord]] = {}
    for split, lim in ((train_split, limit), (val_split, val_limit)):
        if split is None:
            continue
        records = _records(data, split)
        all_records.update({r.key: r for r in records})
        gallery = encode_split_gallery(module, data, split)
        turns, stats = build_split_turns(records, gallery, text_retriever, teacher, answerer, corpus, out / "work", split, lim)
        split_turns[split] = turns
        summary[f"{split}_generation"] = {**stats, **summarize_turns(turns)}
        print(f"{split}: {stats['dialogues']} dialogues, {stats['turns']} turns ({stats['failed_turns']} failed), "
              f"mean PRG by round {summarize_turns(turns)['mean_prg_by_round']}")
    stages, info = split_by_ddi(split_turns[train_split], corpus)
    summary["split"] = info
    shards = []
    for stage, turns in stages.items():
        shards += write_turn_shards(out, stage, turns, corpus.max_turns_per_shard)
    if val_split is not None:
        val = sorted((DialogueTurnRecord(**{**t.__dict__, "stage": "val"}) for t in split_turns[val_split]
                      if t.prg >= corpus.prg_threshold), key=lambda t: t.key)
        shards += write_turn_shards(out, "val", val, corpus.max_turns_per_shard)
        summary["val"] = {"turns": len(val)}
    if tokenizer_vocab_size:
        texts = tokenizer_texts([t for ts in split_turns.values() for t in ts], all_records, max_description_words)
        tok = train_corpus_tokenizer(texts, tokenizer_vocab_size)
        tok.save_pretrained(str(out / "tokenizer"))
        summary["tokenizer"] = {"vocab_size": len(tok), "dir": str(out / "tokenizer")}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_dialogue_manifest(out, shards, summary)
    print(json.dumps({"split": info, "seconds": summary["seconds"]}, indent=1))
    print(f"wrote {out / 'manifest.json'}")
    return summary


if __name__ == "__main__":
    auto_cli(build, as_positional=False)
