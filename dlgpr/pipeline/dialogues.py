"""The DQ-Pilot dialogue corpus (paper section 3.2 step 3-4; docs/METHOD.md "PRG, SA, DDI and the corpus split", "Data layouts").

For every place of a split, a teacher questioner holds a ``rounds``-round dialogue over a
*compact candidate set*: the target view, a positive view of the same place and the
``num_hard_negatives`` places the trained retriever ranks highest for the target's description.
Each turn is recorded with its history, the teacher's ``<think>`` and question, the simulated
user's answer, and three numbers:

* PRG of the turn: the gain in the target's positions over the whole gallery when the answer is
  appended to the query (``dlgpr.metrics.prg``), measured with the same retriever;
* SA of the candidate set (``dlgpr.metrics.semantic_ambiguity``, the retriever's text encoder);
* DDI = w_sa * SA + w_rid * (1 - PRG).

Turns with PRG < tau_1 are dropped; the rest are split at a DDI threshold into low- and
high-DDI turns, and two disjoint stages are drawn: ``sft`` (mostly low-DDI) and ``grpo`` (mostly
high-DDI). A ``val`` stage holds the turns of another split's places (all kept). Each stage is
written as dialogue-turn shards ``<stage>-NNNNN.tar`` with one ``<key>.json`` per turn, plus a
``manifest.json``.

Dialogues are generated in chunks of places, each chunk written to ``work/<split>-NNNNN.jsonl``
atomically, so a killed build resumes at the first missing chunk (an API teacher makes this
matter). The teacher is any :class:`~dlgpr.dialogue.types.Questioner`: the oracle teacher on
SynthCities, an OpenAI-compatible model on real data, through the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from tqdm.auto import tqdm

from dlgpr.data.reader import BadSampleLog
from dlgpr.data.schema import PlaceRecord, RecordError
from dlgpr.data.reader import iter_records
from dlgpr.data.shards import DeterministicTar, iter_tar_members, read_manifest
from dlgpr.dialogue.evaluation import build_queries
from dlgpr.dialogue.loop import DialogueQuery, Gallery, run_dialogue
from dlgpr.dialogue.prompts import PROMPT_VERSION
from dlgpr.dialogue.types import Answerer, Candidate, QuestionRequest, Questioner, Turn, format_question
from dlgpr.metrics import ddi, semantic_ambiguity
from dlgpr.models.prompting import flatten_text, questioner_messages
from dlgpr.retrieval import TextRetriever
from dlgpr.search import topk_search

log = logging.getLogger("dlgpr.pipeline")

DIALOGUE_FORMAT = "dqcities-dialogues"
DIALOGUE_SCHEMA_VERSION = "1.0"
STAGES = ("sft", "grpo", "val")
MANIFEST_NAME = "manifest.json"


@dataclass
class DialogueTurnRecord:
    """One teacher turn of the corpus (the json member of a dialogue-turn shard)."""

    key: str
    """``d<place_id:09d>_r<round>``: unique per (place, round)."""
    place_id: int
    round: int
    """1-based round of the question."""
    initial_description: str
    """The user's vague first description d_0."""
    history: list[dict[str, str]]
    """Earlier answered turns ``[{question, answer}]`` (failed turns left out)."""
    candidates: list[str]
    """Gallery keys of the candidate set, in the order the questioner saw them."""
    think: str
    question: str
    answer: str
    prg: float
    sa: float
    ddi: float
    stage: str = ""
    """``sft``, ``grpo`` or ``val`` once sampled; empty in the chunk files."""

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise RecordError("key must be a non-empty string")
        if not isinstance(self.place_id, int) or isinstance(self.place_id, bool):
            raise RecordError(f"{self.key}: place_id must be an int")
        if not isinstance(self.round, int) or self.round < 1:
            raise RecordError(f"{self.key}: round must be an int >= 1")
        for name in ("initial_description", "question", "answer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise RecordError(f"{self.key}: {name} must be a non-empty string")
        if not isinstance(self.think, str):
            raise RecordError(f"{self.key}: think must be a string")
        if not isinstance(self.candidates, list) or not self.candidates or not all(isinstance(c, str) for c in self.candidates):
            raise RecordError(f"{self.key}: candidates must be a non-empty list of keys")
        if not isinstance(self.history, list) or not all(
            isinstance(h, dict) and isinstance(h.get("question"), str) and isinstance(h.get("answer"), str) for h in self.history
        ):
            raise RecordError(f"{self.key}: history must be a list of {{question, answer}} strings")
        for name in ("prg", "sa", "ddi"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise RecordError(f"{self.key}: {name} must be a finite number")
            setattr(self, name, float(v))
        if self.stage not in ("", *STAGES):
            raise RecordError(f"{self.key}: stage must be one of {STAGES}")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> "DialogueTurnRecord":
        try:
            d = json.loads(data) if isinstance(data, (bytes, str)) else dict(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordError(f"not JSON: {exc}") from None
        if not isinstance(d, dict):
            raise RecordError("a turn record must be a JSON object")
        missing = [f for f in ("key", "place_id", "round", "initial_description", "history", "candidates", "think",
                               "question", "answer", "prg", "sa", "ddi") if f not in d]
        if missing:
            raise RecordError(f"{d.get('key', '<no key>')}: missing field(s) {missing}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def turn_key(place_id: int, round_: int) -> str:
    return f"d{place_id:09d}_r{round_}"


# ---- configuration ---------------------------------------------------------------------------------


@dataclass
class CorpusConfig:
    """How the corpus is built and split (paper: 20k SFT turns ~70% low-DDI, 10k GRPO ~70% high-DDI)."""

    rounds: int = 5
    """Teacher rounds per dialogue."""
    num_hard_negatives: int = 2
    """Places the retriever confuses with the target, added to the candidate set."""
    prg_threshold: float = 0.0
    """tau_1: turns whose PRG is below it are dropped (**choice**: 0 drops the turns that hurt)."""
    sa_alpha: float = 0.5
    """alpha of SA (weight of the hard-negative similarity)."""
    w_sa: float = 0.5
    w_rid: float = 0.5
    ddi_threshold: float | None = None
    """Low-DDI turns are those with DDI <= it; None: the median DDI of the kept turns."""
    sft_size: int | None = None
    """Turns in the SFT stage; None: the largest sizes in ``size_ratio`` the split allows."""
    grpo_size: int | None = None
    """Turns in the GRPO stage; None: as for ``sft_size``."""
    size_ratio: float = 2.0
    """SFT : GRPO size ratio when the sizes are left to the builder (the paper's 20k : 10k)."""
    sft_low_fraction: float = 0.7
    """Share of low-DDI turns in the SFT stage."""
    grpo_high_fraction: float = 0.7
    """Share of high-DDI turns in the GRPO stage."""
    stage_sampling: Literal["ddi", "random"] = "ddi"
    """How the stages are drawn from the kept turns: ``ddi`` (the method: the DDI mixes above) or
    ``random`` (the paper's Table 4 "random sampling" row: disjoint stages of the same sizes drawn
    at random from the kept turns, whatever their DDI)."""
    chunk_places: int = 200
    """Places per resumable work chunk."""
    retry_failed: bool = True
    """A rerun redoes, whole, the dialogues of a finished chunk that have a failed turn (an API
    error after the client's retries, a reply out of format); the chunk's other dialogues are kept."""
    max_turns_per_shard: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.num_hard_negatives < 0 or self.chunk_places < 1 or self.max_turns_per_shard < 1:
            raise ValueError("rounds, chunk_places and max_turns_per_shard must be >= 1 and num_hard_negatives >= 0")
        for name in ("sa_alpha", "sft_low_fraction", "grpo_high_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"corpus.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("sft_size", "grpo_size"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"corpus.{name} must be >= 0")
        if self.size_ratio <= 0:
            raise ValueError(f"corpus.size_ratio must be > 0, got {self.size_ratio}")
        if self.stage_sampling not in ("ddi", "random"):
            raise ValueError(f"corpus.stage_sampling must be 'ddi' or 'random', got {self.stage_sampling!r}")


# ---- candidate sets --------------------------------------------------------------------------------


def compact_candidate_sets(
    queries: Sequence[DialogueQuery], gallery: Gallery, retriever: TextRetriever, num_hard_negatives: int, seed: int = 0
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Gallery rows of each query's compact candidate set, in a seeded shuffled order.

    The set is the target's first view, another view of the target (when there is one) and the
    best-ranked view of each of the ``num_hard_negatives`` other places the retriever scores
    highest for the target's description. Also returns, per query, the rows by role
    (``{"target", "positive", "negatives"}``) for SA.
    """
    by_place: dict[int, list[int]] = {}
    for row, pid in enumerate(gallery.place_ids.tolist()):
        by_place.setdefault(pid, []).append(row)
    emb = retriever.embed_texts([q.target.description for q in queries]).float()  # [Q, D]
    sets, roles = [], []
    depth = min(len(gallery), 8 * (num_hard_negatives + 1) + 8)
    _, top = topk_search(emb, gallery.embeddings.float(), depth, backend="torch")  # [Q, depth]: one batched search
    place_of = gallery.place_ids.tolist()
    for i, q in enumerate(queries):
        rows = by_place.get(q.target.place_id, [])
        if not rows:
            raise ValueError(f"place {q.target.place_id} has no image in the gallery")
        target, positive = rows[0], (rows[1] if len(rows) > 1 else rows[0])
        negatives: list[int] = []
        taken = {q.target.place_id}
        for r in top[i].tolist():
            if place_of[r] not in taken:  # the best-ranked image of each other place
                taken.add(place_of[r])
                negatives.append(r)
            if len(negatives) == num_hard_negatives:
                break
        shown = [target] + ([positive] if positive != target else []) + negatives
        random.Random(f"candidates/{seed}/{q.target.place_id}").shuffle(shown)
        sets.append(shown)
        roles.append({"target": target, "positive": positive, "negatives": negatives})
    return sets, roles


def candidate_set_ambiguity(roles: Sequence[dict[str, Any]], gallery: Gallery, retriever: TextRetriever, alpha: float) -> torch.Tensor:
    """``[Q]`` SA of each candidate set from the descriptions of its members (one batched encode)."""
    m = max((len(r["negatives"]) for r in roles), default=0)
    if m == 0:
        return torch.zeros(len(roles))
    texts: list[str] = []
    for r in roles:
        negs = r["negatives"] or [r["target"]]
        negs = negs + [negs[-1]] * (m - len(negs))  # pad by repeating (the mean is unchanged for one missing)
        texts += [gallery.descriptions[r["target"]], gallery.descriptions[r["positive"]], *(gallery.descriptions[n] for n in negs)]
    emb = retriever.embed_texts(texts).float().view(len(roles), m + 2, -1)  # [Q, 2 + M, D]
    return semantic_ambiguity(emb[:, 0], emb[:, 1], emb[:, 2:], alpha=alpha)


# ---- generation ----------------------------------------------------------------------------------


def generate_turns(
    queries: Sequence[DialogueQuery],
    gallery: Gallery,
    retriever: TextRetriever,
    teacher: Questioner,
    answerer: Answerer,
    config: CorpusConfig,
) -> tuple[list[DialogueTurnRecord], dict[str, int]]:
    """Run the teacher's dialogues for ``queries`` and record every answered turn with PRG, SA and DDI."""
    sets, roles = compact_candidate_sets(queries, gallery, retriever, config.num_hard_negatives, config.seed)
    sa = candidate_set_ambiguity(roles, gallery, retriever, config.sa_alpha)  # [Q]
    result = run_dialogue(retriever, teacher, answerer, queries, gallery, rounds=config.rounds,
                          top_k=max(len(s) for s in sets), candidate_sets=sets)
    prg = result.prg_per_round().float()  # [Q, T]
    stats: dict[str, Any] = {"dialogues": len(queries), "failed_turns": 0, "turns": 0, "failed_by_place": {}}
    out: list[DialogueTurnRecord] = []
    difficulty = ddi(sa[:, None].expand_as(prg), prg, config.w_sa, config.w_rid)  # [Q, T]
    for i, q in enumerate(queries):
        answered: list[dict[str, str]] = []
        for t, turn in enumerate(result.turns[i], start=1):
            if turn.failed:
                stats["failed_turns"] += 1
                key = str(q.target.place_id)  # JSON object keys are strings
                stats["failed_by_place"][key] = stats["failed_by_place"].get(key, 0) + 1
                continue
            d = float(difficulty[i, t - 1])
            out.append(DialogueTurnRecord(
                key=turn_key(q.target.place_id, t), place_id=q.target.place_id, round=t,
                initial_description=q.initial_description, history=list(answered),
                candidates=[gallery.keys[j] for j in sets[i]], think=turn.think, question=turn.question,
                answer=turn.answer, prg=float(prg[i, t - 1]), sa=float(sa[i]), ddi=d,
            ))
            answered.append({"question": turn.question, "answer": turn.answer})
            stats["turns"] += 1
    return out, stats


# ---- sampling into stages ------------------------------------------------------------------------


def split_by_ddi(turns: Sequence[DialogueTurnRecord], config: CorpusConfig) -> tuple[dict[str, list[DialogueTurnRecord]], dict[str, Any]]:
    """Drop PRG < tau_1, split at the DDI threshold, draw the disjoint ``sft`` and ``grpo`` stages.

    With ``stage_sampling="random"`` the stages have the sizes the DDI draw gives, but their
    turns are drawn at random from all kept turns (the ablation of the DDI selection).
    Returns the stages (records with ``stage`` set) and the numbers behind them.
    """
    kept = [t for t in turns if t.prg >= config.prg_threshold]
    ddis = sorted(t.ddi for t in kept)
    thr = config.ddi_threshold if config.ddi_threshold is not None else (ddis[(len(ddis) - 1) // 2] if ddis else 0.0)
    rng = random.Random(f"ddi-split/{config.seed}")
    low = [t for t in kept if t.ddi <= thr]
    high = [t for t in kept if t.ddi > thr]
    rng.shuffle(low)
    rng.shuffle(high)
    fs, fg = config.sft_low_fraction, config.grpo_high_fraction
    if config.sft_size is None and config.grpo_size is None:
        # the largest (S, R) with S = ratio * R that both pools can supply
        r = config.size_ratio
        need_low, need_high = fs * r + (1 - fg), (1 - fs) * r + fg
        n_grpo = int(min(len(low) / need_low if need_low else math.inf, len(high) / need_high if need_high else math.inf))
        n_sft = int(r * n_grpo)
    else:
        n_sft = config.sft_size if config.sft_size is not None else 0
        n_grpo = config.grpo_size if config.grpo_size is not None else 0
    sft_low = min(round(fs * n_sft), len(low))
    sft_high = min(n_sft - round(fs * n_sft), len(high))
    grpo_high = min(round(fg * n_grpo), len(high) - sft_high)
    grpo_low = min(n_grpo - round(fg * n_grpo), len(low) - sft_low)
    sft = low[:sft_low] + high[:sft_high]
    grpo = high[sft_high : sft_high + grpo_high] + low[sft_low : sft_low + grpo_low]
    if len(sft) < n_sft or len(grpo) < n_grpo:
        log.warning("DDI split: asked for %d SFT / %d GRPO turns, the kept turns supply %d / %d", n_sft, n_grpo, len(sft), len(grpo))
    if config.stage_sampling == "random":  # the same sizes, turns drawn whatever their DDI
        pool = sorted(kept, key=lambda t: t.key)
        random.Random(f"random-stages/{config.seed}").shuffle(pool)
        sft, grpo = pool[: len(sft)], pool[len(sft) : len(sft) + len(grpo)]
        sft_low, grpo_low = sum(t.ddi <= thr for t in sft), sum(t.ddi <= thr for t in grpo)
        sft_high, grpo_high = len(sft) - sft_low, len(grpo) - grpo_low
    stages = {
        "sft": sorted((_with_stage(t, "sft") for t in sft), key=lambda t: t.key),
        "grpo": sorted((_with_stage(t, "grpo") for t in grpo), key=lambda t: t.key),
    }
    info = {
        "stage_sampling": config.stage_sampling,
        "turns": len(turns), "kept_after_prg_filter": len(kept), "ddi_threshold": thr, "low_ddi": len(low), "high_ddi": len(high),
        "sft": {"turns": len(sft), "low_ddi": sft_low, "high_ddi": sft_high},
        "grpo": {"turns": len(grpo), "low_ddi": grpo_low, "high_ddi": grpo_high},
    }
    return stages, info


def _with_stage(t: DialogueTurnRecord, stage: str) -> DialogueTurnRecord:
    return DialogueTurnRecord(**{**asdict(t), "stage": stage})


# ---- shards and manifest -------------------------------------------------------------------------


def write_turn_shards(out_dir: str | os.PathLike, stage: str, turns: Sequence[DialogueTurnRecord], max_per_shard: int) -> list[dict[str, Any]]:
    """Write ``<stage>-NNNNN.tar`` shards (byte-deterministic); returns their manifest entries."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{stage}-*.tar"):
        old.unlink()
    entries = []
    for start in range(0, len(turns), max_per_shard):
        chunk = turns[start : start + max_per_shard]
        tar = DeterministicTar(out / f"{stage}-{len(entries):05d}.tar")
        for t in chunk:
            tar.add(f"{t.key}.json", t.to_json())
        digest = tar.close()
        entries.append({"path": tar.path.name, "stage": stage, "turns": len(chunk), "places": len({t.place_id for t in chunk}), "sha256": digest})
    return entries


def write_dialogue_manifest(out_dir: str | os.PathLike, shards: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
    counts: dict[str, dict[str, int]] = {}
    for s in shards:
        c = counts.setdefault(s["stage"], {"turns": 0, "shards": 0})
        c["turns"] += s["turns"]
        c["shards"] += 1
    manifest = {"format": DIALOGUE_FORMAT, "schema_version": DIALOGUE_SCHEMA_VERSION, "counts": counts, "shards": shards, "extra": extra}
    path = Path(out_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_dialogue_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The corpus manifest; a one-line error names what is wrong."""
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {data_dir}: build the corpus with `python scripts/build_dialogues.py`")
    try:
        m = json.loads(path.read_text())
        shards = m["shards"]
        version = str(m["schema_version"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: malformed manifest ({exc.__class__.__name__}: {exc})") from None
    if m.get("format") != DIALOGUE_FORMAT:
        raise ValueError(f"{path}: format is {m.get('format')!r}, not a dialogue corpus ({DIALOGUE_FORMAT!r})")
    if version.split(".")[0] != DIALOGUE_SCHEMA_VERSION.split(".")[0]:
        raise ValueError(f"{path}: schema_version {version} is not readable by {DIALOGUE_SCHEMA_VERSION}")
    for s in shards:
        if s.get("stage") not in STAGES:
            raise ValueError(f"{path}: shard {s.get('path')} has unknown stage {s.get('stage')!r}")
    return m


def read_turns(data_dir: str | os.PathLike, stages: Sequence[str], bad: BadSampleLog | None = None) -> list[DialogueTurnRecord]:
    """Every turn of ``stages`` in manifest order; unreadable members are skipped and counted in ``bad``."""
    bad = bad if bad is not None else BadSampleLog()
    manifest = read_dialogue_manifest(data_dir)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the corpus has {STAGES}")
    out = []
    for shard in manifest["shards"]:
        if shard["stage"] not in stages:
            continue
        path = Path(data_dir) / shard["path"]
        try:
            members = list(iter_tar_members(path))
        except (OSError, EOFError, tarfile.TarError) as exc:  # missing, unreadable or not a tar
            bad.add(shard["path"], "bad_shard", shard.get("turns", 1), reason=f"{path}: {exc}")
            continue
        for name, data in members:
            if not name.endswith(".json"):
                continue
            try:
                out.append(DialogueTurnRecord.from_json(data))
            except RecordError as exc:
                bad.add(shard["path"], "bad_json", reason=str(exc))
    bad.report(f"{data_dir} ({', '.join(stages)})")
    return out


# ---- the build -----------------------------------------------------------------------------------


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


def build_corpus(
    retriever: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    teacher: Questioner,
    answerer: Answerer,
    corpus: CorpusConfig,
    train_split: str = "train",
    val_split: str | None = "val",
    limit: int | None = None,
    val_limit: int | None = None,
    tokenizer_vocab_size: int = 4096,
    max_description_words: int = 60,
    progress: bool = False,
    work_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Dialogues of every place of ``train_split`` (and ``val_split``), PRG/SA/DDI, the DDI split,
    dialogue-turn shards and manifest in ``out_dir`` (resumable through ``work_dir``, by default
    ``out_dir/work``). The chunks depend on the retriever, the teacher, the user and the
    generation settings, not on how the stages are drawn: a corpus that differs only in
    ``stage_sampling`` (or the sizes and mixes of the stages) can share another's ``work_dir``.

    A teacher with ``bind_records`` (the API teacher's evidence base) gets the place records first.
    Returns the summary stored in the manifest's ``extra``.
    """
    from dlgpr.dialogue.evaluation import encode_split_gallery  # heavy imports, only for a build
    from dlgpr.models.questioner import train_corpus_tokenizer
    from dlgpr.retrieval import ModuleTextRetriever, load_retriever

    start = time.perf_counter()
    out = Path(out_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = load_retriever(retriever, map_location=device)
    text_retriever = ModuleTextRetriever(module)
    summary: dict[str, Any] = {"retriever": str(retriever), "data_dir": str(data_dir), "prompt_version": PROMPT_VERSION,
                               "teacher": type(teacher).__name__, "corpus": asdict(corpus)}
    all_records: dict[str, PlaceRecord] = {}
    split_turns: dict[str, list[DialogueTurnRecord]] = {}
    for split, lim in ((train_split, limit), (val_split, val_limit)):
        if split is None:
            continue
        records = split_records(data_dir, split)
        if not records:
            raise ValueError(f"{data_dir}: split {split!r} has no place")
        all_records.update({r.key: r for r in records})
        if hasattr(teacher, "bind_records"):
            teacher.bind_records(records)
        gallery = encode_split_gallery(module, data_dir, split)
        work = Path(work_dir) if work_dir is not None else out / "work"
        turns, stats = build_split_turns(records, gallery, text_retriever, teacher, answerer, corpus, work, split, lim, progress)
        split_turns[split] = turns
        summary[f"{split}_generation"] = {**stats, **summarize_turns(turns)}
        log.info("%s: %d dialogues, %d turns (%d failed)", split, stats["dialogues"], stats["turns"], stats["failed_turns"])
    stages, info = split_by_ddi(split_turns[train_split], corpus)
    summary["split"] = info
    shards = []
    for stage, turns in stages.items():
        shards += write_turn_shards(out, stage, turns, corpus.max_turns_per_shard)
    if val_split is not None:
        val = sorted((_with_stage(t, "val") for t in split_turns[val_split] if t.prg >= corpus.prg_threshold), key=lambda t: t.key)
        shards += write_turn_shards(out, "val", val, corpus.max_turns_per_shard)
        summary["val"] = {"turns": len(val)}
    if tokenizer_vocab_size:
        texts = tokenizer_texts([t for ts in split_turns.values() for t in ts], all_records, max_description_words)
        tok = train_corpus_tokenizer(texts, tokenizer_vocab_size)
        tok.save_pretrained(str(out / "tokenizer"))
        summary["tokenizer"] = {"vocab_size": len(tok), "dir": str(out / "tokenizer")}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_dialogue_manifest(out, shards, summary)
    return summary


def summarize_turns(turns: Sequence[DialogueTurnRecord]) -> dict[str, Any]:
    """Mean PRG per round, share of turns with PRG > 0, DDI quartiles (for the manifest)."""
    by_round: dict[int, list[float]] = {}
    for t in turns:
        by_round.setdefault(t.round, []).append(t.prg)
    ddis = sorted(t.ddi for t in turns)
    q = (lambda f: ddis[min(len(ddis) - 1, int(f * len(ddis)))]) if ddis else (lambda f: 0.0)
    return {
        "turns": len(turns),
        "mean_prg_by_round": {r: sum(v) / len(v) for r, v in sorted(by_round.items())},
        "positive_prg_share": sum(t.prg > 0 for t in turns) / max(len(turns), 1),
        "ddi_quartiles": [q(0.25), q(0.5), q(0.75)],
    }


__all__ = [
    "CorpusConfig", "DialogueTurnRecord", "STAGES", "build_corpus", "build_split_turns", "split_records", "tokenizer_texts", "candidate_set_ambiguity", "compact_candidate_sets",
    "generate_turns", "read_dialogue_manifest", "read_turns", "split_by_ddi", "summarize_turns", "turn_key",
    "write_dialogue_manifest", "write_turn_shards",
]
