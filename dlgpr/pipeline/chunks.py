"""Resumable generation of a split's dialogue turns, chunk by chunk of places.

Dialogues are generated in chunks of places, each chunk written to ``work/<split>-NNNNN.jsonl``
atomically, so a killed build resumes at the first missing chunk (an API teacher makes this
matter). A rerun also redoes, whole, the dialogues of a finished chunk that have a failed turn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm.auto import tqdm

from dlgpr.data.schema import PlaceRecord
from dlgpr.data.turns import DialogueTurnRecord
from dlgpr.dialogue.evaluation import build_queries
from dlgpr.dialogue.loop import DialogueQuery
from dlgpr.dialogue.types import Answerer, Questioner
from dlgpr.pipeline.dialogues import CorpusConfig, generate_turns
from dlgpr.ranking import Gallery
from dlgpr.retrieval import TextRetriever

log = logging.getLogger("dlgpr.pipeline")


def _chunk_path(work: Path, split: str, index: int) -> Path:
    return work / f"{split}-{index:05d}.jsonl"


def iter_chunks(queries: Sequence[DialogueQuery], size: int) -> Iterator[tuple[int, Sequence[DialogueQuery]]]:
    for i, start in enumerate(range(0, len(queries), size)):
        yield i, queries[start : start + size]


def build_split_turns(
    records: Sequence[PlaceRecord],
    gallery: Gallery,
    retriever: TextRetriever,
    teacher: Questioner,
    answerer: Answerer,
    config: CorpusConfig,
    work_dir: str | os.PathLike,
    split: str,
    limit: int | None = None,
    progress: bool = False,
) -> tuple[list[DialogueTurnRecord], dict[str, int]]:
    """All turns of ``split``'s places (the first ``limit`` places if given), chunk by chunk.

    A chunk already in ``work_dir`` is read back instead of regenerated (its file is written to a
    temporary name and renamed, so it is either complete or absent).
    """
    queries = build_queries(records)
    if limit is not None:
        queries = queries[:limit]
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    turns: list[DialogueTurnRecord] = []
    totals = {"dialogues": 0, "turns": 0, "failed_turns": 0, "chunks_resumed": 0, "dialogues_redone": 0}
    fingerprint = hashlib.sha256(json.dumps([q.target.place_id for q in queries]).encode()).hexdigest()[:12]
    bar = tqdm(total=len(queries), desc=f"dialogues/{split}", unit="place", disable=not progress)
    for index, chunk in iter_chunks(queries, config.chunk_places):
        path = _chunk_path(work, f"{split}-{fingerprint}", index)
        if path.is_file():
            lines = path.read_text().splitlines()
            stats = json.loads(lines[0])
            chunk_turns = [DialogueTurnRecord.from_json(line) for line in lines[1:]]
            failed_places = {int(p) for p in stats.get("failed_by_place", {})}
            if config.retry_failed and failed_places:
                chunk_turns, stats = _redo_failed_dialogues(chunk, chunk_turns, stats, failed_places, gallery, retriever, teacher, answerer, config)
                _write_chunk(path, stats, chunk_turns)
                totals["dialogues_redone"] += len(failed_places)
            turns += chunk_turns
            for k in ("dialogues", "turns", "failed_turns"):
                totals[k] += stats[k]
            totals["chunks_resumed"] += 1
            bar.update(len(chunk))
            continue
        chunk_turns, stats = generate_turns(chunk, gallery, retriever, teacher, answerer, config)
        _write_chunk(path, stats, chunk_turns)
        turns += chunk_turns
        for k in ("dialogues", "turns", "failed_turns"):
            totals[k] += stats[k]
        log.info("%s: chunk %d (%d places) -> %d turns", split, index, len(chunk), len(chunk_turns))
        bar.update(len(chunk))
    bar.close()
    return turns, totals


def _write_chunk(path: Path, stats: dict[str, Any], turns: Sequence[DialogueTurnRecord]) -> None:
    # temporary name + rename: a chunk file is complete or absent, whenever the process dies
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join([json.dumps(stats)] + [t.to_json().decode() for t in turns]) + "\n")
    os.replace(tmp, path)


def _redo_failed_dialogues(
    chunk: Sequence[DialogueQuery], turns: list[DialogueTurnRecord], stats: dict[str, Any], failed: set[int],
    gallery: Gallery, retriever: TextRetriever, teacher: Questioner, answerer: Answerer, config: CorpusConfig,
) -> tuple[list[DialogueTurnRecord], dict[str, Any]]:
    """The chunk with the dialogues of ``failed`` places generated again, whole: a failed turn
    changed every turn after it, so no turn of such a dialogue is kept."""
    redo = [q for q in chunk if q.target.place_id in failed]
    new_turns, new_stats = generate_turns(redo, gallery, retriever, teacher, answerer, config)
    order = {q.target.place_id: i for i, q in enumerate(chunk)}
    merged = sorted([t for t in turns if t.place_id not in failed] + new_turns, key=lambda t: (order[t.place_id], t.round))
    by_place = {p: n for p, n in stats.get("failed_by_place", {}).items() if int(p) not in failed}
    by_place.update(new_stats["failed_by_place"])
    out = {"dialogues": stats["dialogues"], "turns": len(merged), "failed_turns": sum(by_place.values()), "failed_by_place": by_place}
    return merged, out


__all__ = ["build_split_turns", "iter_chunks"]
