"""MP16-Reason-style geo-reasoning data: teachers, a GPS predictor, four validations, shards.

GLOBE (NeurIPS 2025) builds its training set by distillation: two VLM teachers say whether each
photo can be located, how sure they are, why (a reasoning chain) and where (city, country); a GPS
predictor (GeoCLIP) gives coordinates; four validations keep only the samples whose reasoning can
be trusted. This module runs that pipeline on any geo dataset :func:`dlgpr.data.geo.read_geo_dataset`
reads, in resumable stages (``scripts/build_geo_reasoning.py``):

1. ``teachers``: every teacher (:class:`~dlgpr.geo.predict.GeoPredictor`) over every image, in
   chunks; each chunk's predictions are appended to ``work/teacher-<name>.jsonl`` at once, so a
   killed run loses at most the chunk in flight and a rerun only asks for what is missing (failed
   predictions are asked again);
2. ``gps``: the GPS predictor likewise (``work/gps-<name>.jsonl``);
3. ``validate``: the four validations (:mod:`dlgpr.pipeline.geo_validation`) on every sample with
   all its predictions; cheap, so recomputed on every run from the stored predictions;
4. ``shards``: WebDataset shards ``shards/reason-NNNNN.tar`` (the image and one JSON per sample:
   ground truth, the chosen reasoning and answer, every teacher's and the GPS predictor's output,
   each validation's score and verdict, ``kept``), ``manifest.json`` and the funnel table
   (``funnel.md``: how many samples each filter removed).

Rejected samples are written too, flagged ``kept: false``: they are the negatives a
localizability reward model learns from; :func:`iter_reasoning_samples` reads kept ones by default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm import tqdm

from dlgpr.data.geo import GeoDatasetConfig, GeoReadStats, GeoSample, parse_dataset_spec, read_geo_dataset
from dlgpr.data.shards import DeterministicTar, iter_tar_members
from dlgpr.geo.gazetteer import Gazetteer, load_gazetteer
from dlgpr.geo.predict import GeoPrediction, GeoPredictor
from dlgpr.pipeline.geo_validation import (DetectorPhraseVerifier, HFSentenceEmbedder, PhraseVerifier, RecordRegionVerifier, SentenceEmbedder,
                                          ValidationConfig, ValidationContext, Verdict, first_failure, validate_many)
from dlgpr.pipeline.store import ItemStore

log = logging.getLogger("dlgpr.pipeline")

STAGES = ("teachers", "gps", "validate", "shards")
FORMAT = "dlgpr-geo-reasoning"
FORMAT_VERSION = 1


@dataclass
class GeoReasoningConfig:
    """What a geo-reasoning build reads, asks, checks and writes (``scripts/build_geo_reasoning.py``)."""

    dataset: str
    """The images to distil, as a dataset spec (``synthcities:data/synthcities-geo:train``,
    ``mp16:/data/mp16``...; see docs/GLOBE.md, Datasets)."""
    out_dir: str
    """Output: ``work/`` (per-predictor predictions), ``shards/``, ``manifest.json``, ``funnel.md``."""
    stages: Sequence[str] = STAGES
    limit: int | None = None
    """Only the first ``limit`` images of the dataset (a small run)."""
    chunk_size: int = 64
    """Images per predictor call; each finished chunk is on disk before the next starts."""
    shard_size: int = 1000
    """Samples per output shard."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"stages {unknown} unknown; choose from {', '.join(STAGES)}")
        if self.chunk_size < 1 or self.shard_size < 1:
            raise ValueError("chunk_size and shard_size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")


# ---- stages 1-2: predictions ------------------------------------------------------------------------

def _store_name(predictor: GeoPredictor, role: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", predictor.name)
    return f"{role}-{safe}.jsonl"


def run_predictor(predictor: GeoPredictor, samples: Sequence[GeoSample], store: ItemStore, chunk_size: int,
                  progress: bool = False, desc: str = "") -> dict[str, Any]:
    """Predict every sample ``store`` does not hold a successful prediction for; append by chunk.

    Returns counts: ``items``, ``resumed`` (already done), ``done``, ``failed`` and ``failures``
    by error kind. A prediction that failed is stored as failed; the next run asks again.
    """
    done = store.done()
    pending = [s for s in samples if s.key not in done]
    stats: dict[str, Any] = {"items": len(samples), "resumed": len(samples) - len(pending), "done": 0, "failed": 0,
                             "failures": Counter()}
    bar = tqdm(total=len(pending), desc=desc or predictor.name, disable=not progress, leave=False)
    for start in range(0, len(pending), chunk_size):
        chunk = pending[start : start + chunk_size]
        predictions = predictor.predict(chunk)
        if len(predictions) != len(chunk):
            raise RuntimeError(f"{predictor.name}: {len(predictions)} predictions for {len(chunk)} images")
        rows = []
        for sample, pred in zip(chunk, predictions):
            if pred.key != sample.key:
                raise RuntimeError(f"{predictor.name}: prediction for {pred.key!r} where {sample.key!r} was asked")
            rows.append({**pred.to_dict(), "key": sample.key, "ok": pred.ok})
            if pred.ok:
                stats["done"] += 1
            else:
                stats["failed"] += 1
                stats["failures"][pred.error.split(":", 1)[0] or "failed"] += 1
        store.append(rows)
        bar.update(len(chunk))
    bar.close()
    stats["failures"] = dict(stats["failures"])
    return stats


def load_predictions(store: ItemStore) -> dict[str, GeoPrediction]:
    """The successful predictions of a store, by key."""
    return {k: GeoPrediction.from_dict(v) for k, v in store.done().items()}


# ---- stage 3: validations and the funnel ------------------------------------------------------------

def choose_teacher(teachers: Sequence[GeoPrediction]) -> int:
    """Index of the teacher whose reasoning a sample keeps: the most confident one (the first on ties)."""
    best, best_conf = 0, -math.inf
    for i, t in enumerate(teachers):
        conf = t.confidence if math.isfinite(t.confidence) else -1.0
        if conf > best_conf:
            best, best_conf = i, conf
    return best


def funnel_counts(n_input: int, read_stats: GeoReadStats, missing: Counter, verdicts: dict[str, list[Verdict]]) -> dict[str, Any]:
    """How many samples each step removed, in pipeline order (a sample is charged to the first
    check it fails), plus how many each check fails on its own (``alone``)."""
    order: list[str] = []
    for vs in verdicts.values():
        for v in vs:
            if v.name not in order:
                order.append(v.name)
    fails = [f for f in map(first_failure, verdicts.values()) if f is not None]
    first = Counter(f.name for f in fails)
    alone = Counter(v.name for vs in verdicts.values() for v in vs if not v.passed)
    reasons = Counter(f"{f.name}:{f.reason}" for f in fails if f.reason)
    kept = len(verdicts) - len(fails)
    return {
        "rows_skipped_by_reader": read_stats.total_skipped,
        "reader_skipped": dict(read_stats.skipped),
        "input": n_input,
        "prediction_missing": sum(missing.values()),
        "prediction_missing_by": dict(missing),
        "validated": len(verdicts),
        "checks": [{"name": name, "removed": first.get(name, 0), "fails_alone": alone.get(name, 0)} for name in order],
        "reasons": dict(sorted(reasons.items())),
        "kept": kept,
    }


def format_funnel(funnel: dict[str, Any]) -> str:
    """The funnel as a markdown table: step, removed, remaining, and what the check removes alone."""
    lines = ["| step | removed | remaining | fails alone |", "|---|---:|---:|---:|"]
    remaining = funnel["input"]
    lines.append(f"| images read ({funnel['rows_skipped_by_reader']} bad rows skipped by the reader) | | {remaining} | |")
    remaining -= funnel["prediction_missing"]
    by = ", ".join(f"{k} {v}" for k, v in sorted(funnel["prediction_missing_by"].items())) or "none"
    lines.append(f"| a teacher or the GPS predictor gave no answer ({by}) | {funnel['prediction_missing']} | {remaining} | |")
    for check in funnel["checks"]:
        remaining -= check["removed"]
        lines.append(f"| {check['name']} | {check['removed']} | {remaining} | {check['fails_alone']} |")
    share = funnel["kept"] / funnel["input"] if funnel["input"] else float("nan")
    lines.append(f"| **kept** | | **{funnel['kept']}** ({share:.1%}) | |")
    return "\n".join(lines)


def default_context(spec: GeoDatasetConfig, validation: ValidationConfig, gazetteer: str | Gazetteer = "auto",
                    verifier: PhraseVerifier | None = None, embedder: SentenceEmbedder | None = None) -> ValidationContext:
    """The validations' tools for a dataset: on a SynthCities world its own gazetteer and its exact
    regions; on real photos GeoNames and YOLO-World; all-MiniLM-L6-v2 for reasoning alignment."""
    world = spec.kind == "synthcities"
    if gazetteer == "auto":
        gazetteer = "world" if world else "geonames"
    gazetteer = load_gazetteer(gazetteer, spec.root if gazetteer == "world" else None)
    if gazetteer is None:
        raise ValueError("the validations need a gazetteer: world or geonames")
    if verifier is None:
        verifier = RecordRegionVerifier() if world else DetectorPhraseVerifier()
    return ValidationContext(gazetteer=gazetteer, config=validation, embedder=embedder or HFSentenceEmbedder(), verifier=verifier)


# ---- stage 4: shards ---------------------------------------------------------------------------------

def member_stem(key: str, used: set[str]) -> str:
    """A tar member stem for ``key``: WebDataset splits names at the first dot and folders are not
    keys, so anything but letters, digits, ``_`` and ``-`` becomes ``_`` (the key itself is kept in
    the JSON); a collision gets a short hash suffix."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", key).strip("_") or "sample"
    if stem in used:
        stem = f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    used.add(stem)
    return stem


def sample_json(sample: GeoSample, teacher_names: Sequence[str], teachers: Sequence[GeoPrediction], gps_name: str,
                gps: GeoPrediction, verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """The JSON of one output sample (MP16-Reason-style fields plus the whole audit trail)."""
    chosen = choose_teacher(teachers)
    fail = first_failure(verdicts)
    return {
        "key": sample.key, "source": sample.source, "lat": sample.lat, "lon": sample.lon, "city": sample.city,
        "country": sample.country, "place_id": sample.place_id,
        "kept": fail is None, "first_failure": None if fail is None else fail.name,
        "reasoning": teachers[chosen].reasoning, "answer": {"city": teachers[chosen].city, "country": teachers[chosen].country},
        "teacher": teacher_names[chosen],
        "teachers": {name: t.to_dict() for name, t in zip(teacher_names, teachers)},
        "gps": {"predictor": gps_name, **gps.to_dict()},
        "validations": [v.to_dict() for v in verdicts],
    }


def write_shards(out: Path, rows: Sequence[tuple[GeoSample, dict[str, Any]]], shard_size: int,
                 progress: bool = False) -> list[dict[str, Any]]:
    """Write ``(sample, json)`` rows to ``out/shards/reason-NNNNN.tar``; returns the shard list.
    Each shard is written to a temporary file and renamed, so a kill never leaves half a shard."""
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for old in shard_dir.glob("reason-*.tar"):
        old.unlink()  # a rebuild replaces the whole set (the funnel may have changed)
    shards, used = [], set()
    bar = tqdm(total=len(rows), desc="shards", disable=not progress, leave=False)
    for index, start in enumerate(range(0, len(rows), shard_size)):
        path = shard_dir / f"reason-{index:05d}.tar"
        tar = DeterministicTar(path)
        part = rows[start : start + shard_size]
        for sample, meta in part:
            stem = member_stem(sample.key, used)
            tar.add(f"{stem}.jpg", sample.image_data())
            tar.add(f"{stem}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest = tar.close()
        shards.append({"path": f"shards/{path.name}", "samples": len(part), "kept": sum(1 for _, m in part if m["kept"]),
                       "sha256": digest})
        bar.update(len(part))
    bar.close()
    return shards


def iter_reasoning_samples(out_dir: str | os.PathLike, kept_only: bool = True) -> Iterator[tuple[dict[str, Any], bytes]]:
    """``(json, jpeg bytes)`` of a geo-reasoning build's shards, in order (kept samples only by default)."""
    out = Path(out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{out}/manifest.json: not a {FORMAT} manifest")
    for shard in manifest["shards"]:
        pending: dict[str, dict[str, bytes]] = {}
        for name, data in iter_tar_members(out / shard["path"]):
            stem, _, ext = name.rpartition(".")
            parts = pending.setdefault(stem, {})
            parts[ext] = data
            if "json" in parts and "jpg" in parts:
                meta = json.loads(pending.pop(stem)["json"])
                if meta["kept"] or not kept_only:
                    yield meta, parts["jpg"]


# ---- the build ----------------------------------------------------------------------------------------

def build_geo_reasoning(config: GeoReasoningConfig, teachers: Sequence[GeoPredictor], gps: GeoPredictor,
                        context: ValidationContext | None = None) -> dict[str, Any]:
    """Run ``config.stages``; returns (and writes to ``out_dir/summary.json``) the build summary.

    ``context`` (the gazetteer, sentence embedder, phrase extractor and verifier of the
    validations) is built from ``config.validation`` and the dataset when not given.
    """
    c = config
    if not teachers:
        raise ValueError("at least one teacher is needed")
    names = [t.name for t in teachers]
    if len(set(names)) != len(names) or gps.name in names:
        raise ValueError(f"teachers and the GPS predictor need distinct names, got {names} and {gps.name!r}")
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    read_stats = GeoReadStats()
    spec = parse_dataset_spec(c.dataset)
    samples: list[GeoSample] = []
    seen: set[str] = set()
    for sample in read_geo_dataset(spec, read_stats):
        if sample.key in seen:
            read_stats.skip("duplicate_key", sample.key)
            continue
        seen.add(sample.key)
        samples.append(sample)
        if c.limit is not None and len(samples) >= c.limit:
            break
    if not samples:
        raise ValueError(f"{c.dataset}: no readable image ({read_stats.summary()})")
    summary: dict[str, Any] = {"dataset": c.dataset, "images": len(samples), "reader": read_stats.as_dict(),
                               "teachers": names, "gps": gps.name, "stages": {}}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        summary["stages"][name] = {**(result if isinstance(result, dict) else {}), "seconds": round(time.perf_counter() - start, 2)}
        return result

    teacher_stores = [ItemStore(out / "work" / _store_name(t, "teacher")) for t in teachers]
    gps_store = ItemStore(out / "work" / _store_name(gps, "gps"))
    if "teachers" in c.stages:
        timed("teachers", lambda: {t.name: run_predictor(t, samples, s, c.chunk_size, c.progress, f"teacher {t.name}")
                                   for t, s in zip(teachers, teacher_stores)})
    if "gps" in c.stages:
        timed("gps", lambda: run_predictor(gps, samples, gps_store, c.chunk_size, c.progress, f"gps {gps.name}"))

    if "validate" in c.stages or "shards" in c.stages:
        teacher_preds = [load_predictions(s) for s in teacher_stores]
        gps_preds = load_predictions(gps_store)
        missing: Counter = Counter()  # charged once per sample: to the first predictor without an answer
        complete: list[GeoSample] = []
        for sample in samples:
            absent = next((n for n, p in [*zip(names, teacher_preds), (gps.name, gps_preds)] if sample.key not in p), None)
            if absent is None:
                complete.append(sample)
            else:
                missing[absent] += 1
        if context is None:
            context = default_context(spec, c.validation)
        start = time.perf_counter()
        verdict_lists = validate_many(complete, [[p[s.key] for p in teacher_preds] for s in complete],
                                      [gps_preds[s.key] for s in complete], context) if complete else []
        verdicts = {s.key: vs for s, vs in zip(complete, verdict_lists)}
        funnel = funnel_counts(len(samples), read_stats, missing, verdicts)
        summary["stages"]["validate"] = {"validated": len(complete), "kept": funnel["kept"], "seconds": round(time.perf_counter() - start, 2)}
        summary["funnel"] = funnel
        (out / "funnel.md").write_text(format_funnel(funnel) + "\n")
        if "shards" in c.stages:
            rows = [(s, sample_json(s, names, [p[s.key] for p in teacher_preds], gps.name, gps_preds[s.key], verdicts[s.key]))
                    for s in complete]
            shards = timed("shards", lambda: {"list": write_shards(out, rows, c.shard_size, c.progress)})["list"]
            manifest = {"format": FORMAT, "version": FORMAT_VERSION, "dataset": c.dataset, "teachers": names, "gps": gps.name,
                        "samples": len(rows), "kept": funnel["kept"], "shards": shards, "funnel": funnel,
                        "validation": asdict(c.validation)}
            tmp = out / "manifest.json.tmp"
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
            os.replace(tmp, out / "manifest.json")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run report: predictions per predictor, then the funnel."""
    lines = [f"geo reasoning: {summary['images']} images of {summary['dataset']} ({summary['seconds']:.0f} s); "
             f"reader: {summary['reader']['read']} read, skipped {summary['reader']['skipped'] or 'nothing'}"]
    rows = []
    for name, s in summary["stages"].get("teachers", {}).items():
        if isinstance(s, dict) and "items" in s:
            rows.append((f"teacher {name}", s))
    if "gps" in summary["stages"]:
        rows.append((f"gps {summary['gps']}", summary["stages"]["gps"]))
    if rows:
        lines.append(f"{'predictor':<28}{'items':>7}{'resumed':>9}{'done':>7}{'failed':>8}  failures")
        for name, s in rows:
            fails = ", ".join(f"{k} {v}" for k, v in sorted(s["failures"].items())) or "-"
            lines.append(f"{name:<28}{s['items']:>7}{s['resumed']:>9}{s['done']:>7}{s['failed']:>8}  {fails}")
    if "funnel" in summary:
        lines.append(format_funnel(summary["funnel"]))
    return "\n".join(lines)


__all__ = ["FORMAT", "STAGES", "GeoReasoningConfig", "build_geo_reasoning", "choose_teacher", "default_context", "format_funnel", "format_summary",
           "funnel_counts", "iter_reasoning_samples", "load_predictions", "member_stem", "run_predictor", "sample_json", "write_shards"]
