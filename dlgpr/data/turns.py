"""Dialogue-turn records: what the dialogue loop, questioners and answerers exchange in memory
(:class:`Candidate`, :class:`Turn`, :class:`QuestionRequest`, :class:`Question`, :class:`Target`,
:class:`AnswerRequest`, :class:`Answer`), and the stored schema of the DQ-Pilot corpus with its
shard reader and writer.

A corpus folder holds ``<stage>-NNNNN.tar`` shards (stages ``sft``, ``grpo``, ``val``), one
``<key>.json`` member per :class:`DialogueTurnRecord`, and a ``manifest.json`` with the shard
list, the counts per stage and the build summary (``extra``). The builder
(``dlgpr.pipeline.corpus``) writes them; the questioner's datamodule reads them.
"""

from __future__ import annotations

import enum
import json
import math
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image
from torch import Tensor

from dlgpr.data.reader import BadSampleLog
from dlgpr.data.schema import RecordError
from dlgpr.data.shards import DeterministicTar, iter_tar_members

LENIENT_FORMAT = "lenient_format"
"""``Question.error`` of a question read from a reply outside the strict format (it is still asked)."""


@dataclass(frozen=True)
class Candidate:
    """A gallery image shown to the questioner (one of the top-k of the previous round)."""

    key: str
    place_id: int
    description: str
    """Fine-grained description of the image (what a text-only questioner reads)."""
    attributes: dict[str, Any] = field(default_factory=dict)
    """SynthCities ground truth of the place (only the oracle teacher may read it)."""
    score: float = 0.0
    """Retrieval similarity of this candidate for the current query."""
    image: Callable[[], Image.Image] | None = None
    """Loads the image (for vision-language questioners); None when the gallery keeps no images."""
    embedding: Tensor | None = None
    """The retriever's image embedding ``[D]`` (PlugIR clusters candidates on it)."""


class TurnFailure(str, enum.Enum):
    """Why a turn failed; the value is the string stored in ``Turn.failure`` and in the records."""

    QUESTION_FORMAT = "question_format"
    """The reply was not a question in the expected format (or a blank one)."""
    QUESTION_ERROR = "question_error"
    """The questioner failed otherwise (an API error)."""
    ANSWER_ERROR = "answer_error"
    """The answerer failed."""
    EMPTY_ANSWER = "empty_answer"
    """The answerer returned nothing."""

    @classmethod
    def of_question(cls, question: Question) -> TurnFailure:
        """The failure of a question the loop cannot ask: a reply the parser refused (or a blank
        question) is a format failure, any other error (an API failure) a questioner error."""
        return cls.QUESTION_FORMAT if question.error in ("", cls.QUESTION_FORMAT.value, LENIENT_FORMAT) else cls.QUESTION_ERROR


@dataclass(frozen=True)
class Turn:
    """One question/answer exchange. ``failed`` turns add nothing to the query."""

    question: str
    answer: str
    think: str = ""
    failed: bool = False
    failure: str = ""
    """Why the turn failed: a :class:`TurnFailure` value, ``""`` for a turn that did not."""


@dataclass(frozen=True)
class QuestionRequest:
    """What a questioner sees for one query in one round."""

    query_id: int
    round: int
    """The round whose question is asked (1-based)."""
    initial_description: str
    history: tuple[Turn, ...]
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class Question:
    """A questioner's output. ``ok=False`` marks a failure (wrong format, API error)."""

    text: str
    think: str = ""
    raw: str = ""
    ok: bool = True
    error: str = ""


@dataclass(frozen=True)
class Target:
    """The place the simulated user has in mind (ground truth the answerer may read)."""

    place_id: int
    description: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnswerRequest:
    query_id: int
    round: int
    question: str
    target: Target
    history: tuple[Turn, ...]


@dataclass(frozen=True)
class Answer:
    text: str
    ok: bool = True
    error: str = ""


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

    def with_stage(self, stage: str) -> "DialogueTurnRecord":
        """A copy of the record assigned to ``stage``."""
        return DialogueTurnRecord(**{**asdict(self), "stage": stage})

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


__all__ = [
    "DIALOGUE_FORMAT", "DIALOGUE_SCHEMA_VERSION", "DialogueTurnRecord", "MANIFEST_NAME", "STAGES", "read_dialogue_manifest",
    "read_turns", "turn_key", "write_dialogue_manifest", "write_turn_shards",
]
