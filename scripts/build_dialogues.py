"""Build the DQ-Pilot dialogue corpus (dialogue-turn shards + manifest) from place shards.

    python scripts/build_dialogues.py --config configs/build/dialogues_synthcities.yaml

For every place of ``train_split`` (and of ``val_split`` for the validation stage) the teacher
asks ``corpus.rounds`` questions over the compact candidate set (target, positive view, hard
negatives from the retriever); each turn gets PRG, SA and DDI; turns with PRG < tau_1 are
dropped and the rest split by DDI into the ``sft`` and ``grpo`` stages
(``dlgpr.pipeline.corpus``). Also trains the byte-level BPE tokenizer of the from-scratch
questioner on the corpus' prompts and replies (``<out_dir>/tokenizer``).

Resumable: generated chunks live in ``<out_dir>/work`` (or ``work_dir``) and are reused by a
rerun; the shards and the manifest are rewritten at the end from all chunks. A corpus that only
draws its stages differently (``corpus.stage_sampling: random``, the paper's Table 4 "random
sampling" row) reuses the dialogues of the DDI corpus through ``work_dir``:

    python scripts/build_dialogues.py --config configs/build/dialogues_synthcities_random.yaml
"""

from __future__ import annotations

import json

from jsonargparse import auto_cli

from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.dialogue.types import Answerer, Questioner
from dlgpr.pipeline.corpus import CorpusBuildConfig, build_corpus
from dlgpr.pipeline.dialogues import CorpusConfig


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
    progress: bool = True,
    work_dir: str | None = None,
) -> dict:
    """Args:
        retriever: checkpoint of the trained retriever (hard negatives, PRG, SA).
        data_dir: place shards (DQ-Cities or SynthCities).
        out_dir: where the dialogue-turn shards, manifest, tokenizer and work chunks go.
        teacher: the questioner that writes the corpus (oracle teacher on SynthCities; an
            ``EvidenceTeacherQuestioner`` on real data, see scripts/build_dqcities.py).
        answerer: the simulated user.
        corpus: rounds, candidate set, PRG filter, DDI split and stage sizes.
        train_split: places whose dialogues make the sft and grpo stages.
        val_split: places whose dialogues make the val stage (None: no val stage).
        limit / val_limit: first N places only (a small run).
        tokenizer_vocab_size: vocabulary of the corpus tokenizer (0: do not train one).
        max_description_words: candidate descriptions cut to this many words in the tokenizer's texts
            (the same cut the questioner's prompts use).
        progress: a progress bar per split.
        work_dir: where the resumable dialogue chunks live (default ``<out_dir>/work``); another
            corpus' chunks can be reused when only the stage sampling differs.
    """
    config = CorpusBuildConfig(
        retriever=retriever, data_dir=data_dir, out_dir=out_dir, corpus=corpus, train_split=train_split, val_split=val_split,
        limit=limit, val_limit=val_limit, tokenizer_vocab_size=tokenizer_vocab_size, max_description_words=max_description_words,
        progress=progress, work_dir=work_dir,
    )
    summary = build_corpus(config, teacher, answerer)
    for split in (train_split, val_split):
        if split is not None:
            g = summary[f"{split}_generation"]
            print(f"{split}: {g['dialogues']} dialogues, {g['turns']} turns ({g['failed_turns']} failed), "
                  f"mean PRG by round {g['mean_prg_by_round']}")
    print(json.dumps({"split": summary["split"], "seconds": summary["seconds"]}, indent=1))
    print(f"wrote {out_dir}/manifest.json")
    return summary


if __name__ == "__main__":
    auto_cli(build, as_positional=False)
