"""The DQ-Cities builder: GSV-Cities -> place shards -> dialogue-ready shards (DlgPR sec. 3.2).

Stages, each writing its own output under ``out_dir`` so that a rerun skips finished work and a
killed run loses nothing that was done:

==========  ==========================================  =====================================
stage       what                                        output (resume unit)
==========  ==========================================  =====================================
text        VLM caption + description per image (API)   ``work/text.jsonl`` (one image)
regions     spaCy maximal noun phrases, YOLO-World box  ``work/regions.jsonl`` (one image)
places      DQ-Cities place shards + manifest           ``places/`` (rewritten, seconds)
dialogues   API teacher CoT dialogues over compact      ``dialogues/work/*.jsonl`` (a chunk
            candidate sets, PRG / SA / DDI, DDI split,  of places); ``dialogues/`` shards
            dialogue-turn shards + manifest             and manifest
==========  ==========================================  =====================================

The dialogues stage needs a retriever trained on ``places/`` (``configs/cmpl_vitb16.yaml``, whose
``data_dir`` is ``data/dqcities/places``): a first run builds the places, a second one, given
``retriever`` (``configs/build/dqcities_gsv.yaml`` names the checkpoint that config writes), the
dialogues; docs/DATA.md walks the whole chain. ``summary.json`` holds counts, failures by kind, requests,
tokens and time per stage.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from PIL import Image
from tqdm.auto import tqdm

from dlgpr.data.schema import PlaceRecord, Region, RecordError
from dlgpr.data.shards import Manifest, write_manifest, write_split
from dlgpr.dialogue.api import ChatAPIConfig, LLMAnswerer
from dlgpr.pipeline.corpus import CorpusBuildConfig, build_corpus
from dlgpr.pipeline.dialogues import CorpusConfig
from dlgpr.pipeline.gsv import GSVImage, SplitConfig, scan_gsv_cities
from dlgpr.pipeline.phrases import PhraseConfig, PhraseExtractor
from dlgpr.pipeline.grounding import GroundingConfig, YOLOWorldGrounder, to_regions
from dlgpr.pipeline.store import ItemStore
from dlgpr.pipeline.teacher import EvidenceTeacherQuestioner
from dlgpr.pipeline.text import StageAborted, TextExpander, TextExpansionConfig, run_items

log = logging.getLogger("dlgpr.pipeline")

STAGE_NAMES = ("text", "regions", "places", "dialogues")
DATASET_NAME = "dqcities"
PLACES_DIR = "places"
"""The place shards under ``out_dir``: what ``configs/cmpl_vitb16.yaml`` trains on (its ``data_dir``)."""
DIALOGUES_DIR = "dialogues"
"""The dialogue-turn shards under ``out_dir``: what ``configs/dqpilot_*_qwen25vl7b.yaml`` train on."""


@dataclass
class RegionsConfig:
    """Stage 2: phrases from the description, grounded in the image."""

    phrases: PhraseConfig = field(default_factory=PhraseConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    batch_images: int = 32
    """Images per resumable batch (their descriptions are parsed by spaCy together)."""

    def __post_init__(self) -> None:
        if self.batch_images < 1:
            raise ValueError(f"regions.batch_images must be >= 1, got {self.batch_images}")


@dataclass
class TeacherConfig:
    """Stage 3: the LLM teacher over the candidates' evidence base."""

    api: ChatAPIConfig = field(default_factory=lambda: ChatAPIConfig(model="Qwen/Qwen2.5-VL-72B-Instruct", max_tokens=600))
    prompt: str = "teacher_v1"
    """Prompt name in ``dlgpr/pipeline/prompts`` or a ``.txt`` file."""
    max_regions: int = 12
    """Regions listed per candidate."""

    def __post_init__(self) -> None:
        if self.max_regions < 0:
            raise ValueError(f"dialogues.teacher.max_regions must be >= 0, got {self.max_regions}")


@dataclass
class DialoguesConfig:
    """Stages 3-4: dialogues, PRG / SA / DDI, DDI sampling (``dlgpr.pipeline.corpus``)."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    user: ChatAPIConfig = field(default_factory=lambda: ChatAPIConfig(model="Qwen/Qwen2.5-72B-Instruct", max_tokens=80))
    """The simulated user, answering from the target's description (GPT-4o in the paper)."""
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(chunk_places=20))
    train_split: str = "train"
    val_split: str | None = "val"
    val_limit: int | None = None
    """First N val places only (validation dialogues cost requests too)."""
    tokenizer_vocab_size: int = 4096
    """Byte-level BPE trained on the corpus for the from-scratch questioner (0: none)."""
    max_description_words: int = 40
    """Candidate descriptions cut to this many words in the tokenizer's texts (the questioner's prompt cut)."""

    def __post_init__(self) -> None:
        if self.val_limit is not None and self.val_limit < 1:
            raise ValueError(f"dialogues.val_limit must be >= 1 or null, got {self.val_limit}")
        if self.tokenizer_vocab_size < 0 or self.max_description_words < 1:
            raise ValueError("dialogues: tokenizer_vocab_size must be >= 0 and max_description_words >= 1")
        if self.train_split == self.val_split:
            raise ValueError(f"dialogues: train_split and val_split are both {self.train_split!r}")


def _failure_kind(error: str) -> str:
    # api errors keep their exception class; parse failures their first word
    return error if error.startswith("api_error:") else error.split(":", 1)[0]


@dataclass
class StageStats:
    """What one stage did in this run (a row of the summary)."""

    name: str
    items: int = 0
    resumed: int = 0
    """Items already finished by an earlier run (skipped)."""
    done: int = 0
    """Items finished by this run."""
    failed: int = 0
    failures: Counter = field(default_factory=Counter)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: int = 0
    seconds: float = 0.0
    skipped: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, result: dict[str, Any]) -> None:
        if result.get("ok"):
            self.done += 1
            self.cached += bool(result.get("cached"))
        else:
            self.failed += 1
            self.failures[_failure_kind(result.get("error", "unknown"))] += 1
        self.requests += int(result.get("attempts", 0))
        self.prompt_tokens += int(result.get("prompt_tokens", 0))
        self.completion_tokens += int(result.get("completion_tokens", 0))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = dict(self.failures)
        return d


# ---- stage 1 ---------------------------------------------------------------------------------------


def run_text_stage(images: Sequence[GSVImage], config: TextExpansionConfig, out: Path, seed: int, progress: bool) -> StageStats:
    stats = StageStats("text", items=len(images))
    store = ItemStore(out / "work" / "text.jsonl")
    done = store.done()
    todo = [im for im in images if im.key not in done]
    stats.resumed = len(images) - len(todo)
    expander = TextExpander(config, out / "cache" / "text", seed=seed)
    bar = tqdm(total=len(todo), desc="text", unit="img", disable=not progress)

    def on_result(result: dict[str, Any]) -> None:
        stats.count(result)
        bar.update(1)

    try:
        run_items(todo, expander, store, config.api.max_concurrency, on_result)
    finally:
        bar.close()
    return stats


# ---- stage 2 ---------------------------------------------------------------------------------------


def run_regions_stage(images: Sequence[GSVImage], texts: dict[str, dict[str, Any]], config: RegionsConfig, out: Path,
                      progress: bool) -> StageStats:
    items = [im for im in images if im.key in texts]
    stats = StageStats("regions", items=len(items))
    store = ItemStore(out / "work" / "regions.jsonl")
    done = store.done()
    todo = [im for im in items if im.key not in done]
    stats.resumed = len(items) - len(todo)
    if not todo:
        return stats
    extractor = PhraseExtractor(config.phrases)
    grounder = YOLOWorldGrounder(config.grounding)
    bar = tqdm(total=len(todo), desc="regions", unit="img", disable=not progress)
    n_phrases = n_regions = 0
    for start in range(0, len(todo), config.batch_images):
        batch = todo[start : start + config.batch_images]
        phrases = extractor([texts[im.key]["description"] for im in batch])
        results: dict[str, dict[str, Any]] = {}
        loaded: list[tuple[GSVImage, Image.Image, list[str]]] = []
        for im, ph in zip(batch, phrases):
            try:
                with Image.open(im.path) as raw:
                    loaded.append((im, raw.convert("RGB"), ph))
            except OSError as exc:  # unreadable image: a failed item, retried by the next run
                results[im.key] = {"key": im.key, "ok": False, "error": f"bad_image:{type(exc).__name__}"}
        grounded_all = _ground_batch(grounder, loaded)
        for (im, _, ph), grounded in zip(loaded, grounded_all):
            if isinstance(grounded, Exception):
                results[im.key] = {"key": im.key, "ok": False, "error": f"grounding_error:{type(grounded).__name__}"}
                continue
            try:
                regions = [r.to_dict() for r in to_regions(grounded)]
            except RecordError as exc:  # a box the schema rejects
                results[im.key] = {"key": im.key, "ok": False, "error": f"bad_box:{exc}"}
                continue
            results[im.key] = {"key": im.key, "ok": True, "phrases": ph, "regions": regions,
                               "scores": [round(float(g.score), 4) for g in grounded]}
            n_phrases += len(ph)
            n_regions += len(regions)
        results = [results[im.key] for im in batch]
        store.append(results)
        for r in results:
            stats.count(r)
        bar.update(len(batch))
    bar.close()
    stats.extra = {"phrases": n_phrases, "regions": n_regions}
    return stats


def _ground_batch(grounder: YOLOWorldGrounder, loaded: list[tuple[GSVImage, Image.Image, list[str]]]) -> list[Any]:
    """Grounding of each loaded image: one batched call, or image by image when the batch fails,
    so one image the detector cannot take (an exception instead of its result) fails alone."""
    try:
        return list(grounder.ground_many([image for _, image, _ in loaded], [ph for _, _, ph in loaded]))
    except (RuntimeError, ValueError) as exc:
        log.warning("regions: a batch of %d images failed (%s); grounding them one by one", len(loaded), type(exc).__name__)
    out: list[Any] = []
    for im, image, ph in loaded:
        try:
            out.append(grounder.ground(image, ph))
        except (RuntimeError, ValueError) as exc:
            log.warning("regions: %s: %s: %s", im.key, type(exc).__name__, exc)
            out.append(exc)
    return out


# ---- places ----------------------------------------------------------------------------------------


def write_places(images: Sequence[GSVImage], texts: dict[str, dict[str, Any]], regions: dict[str, dict[str, Any]],
                 places_dir: Path, max_samples_per_shard: int, extra: dict[str, Any], progress: bool = False) -> StageStats:
    """DQ-Cities place shards of every image whose text succeeded (its regions when it has them)."""
    stats = StageStats("places", items=len(images))
    by_split: dict[str, list[tuple[PlaceRecord, Path]]] = {}
    for im in sorted(images, key=lambda im: (im.place_id, im.view)):
        text = texts.get(im.key)
        if text is None:
            stats.failed += 1
            stats.failures["no_text"] += 1
            continue
        reg = regions.get(im.key)
        if reg is None:
            stats.failures["no_regions"] += 1  # kept, without regions
        record = PlaceRecord(key=im.key, place_id=im.place_id, city=im.city, lat=im.lat, lon=im.lon, view=im.view,
                             initial_caption=text["initial_caption"], description=text["description"], split=im.split,
                             regions=tuple(Region.from_dict(r) for r in (reg or {}).get("regions", [])))
        by_split.setdefault(im.split, []).append((record, im.path))
        stats.done += 1
    for old in places_dir.glob("*.tar"):
        old.unlink()
    shards = []
    bar = tqdm(total=stats.done, desc="places", unit="img", disable=not progress)
    for split in sorted(by_split):
        samples = ((rec, path.read_bytes()) for rec, path in bar_iter(by_split[split], bar))
        shards += write_split(places_dir, split, samples, max_samples_per_shard)
    bar.close()
    manifest = Manifest(name=DATASET_NAME, shards=shards, extra=extra)
    write_manifest(places_dir, manifest)
    stats.extra = {"counts": manifest.counts()}
    return stats


def bar_iter(items: Sequence[Any], bar: tqdm) -> Iterator[Any]:
    for item in items:
        yield item
        bar.update(1)


# ---- the build -------------------------------------------------------------------------------------


@dataclass
class DQCitiesBuildConfig:
    """What a DQ-Cities build reads, writes and runs (the arguments of ``scripts/build_dqcities.py``)."""

    gsv_root: str
    """GSV-Cities folder (``Dataframes/<City>.csv``, ``Images/<City>/*.jpg``)."""
    out_dir: str
    """Output: ``work/``, ``cache/``, ``places/``, ``dialogues/``, ``summary.json``."""
    stages: Sequence[str] = STAGE_NAMES
    """Which of text, regions, places, dialogues to run (in that order)."""
    cities: list[str] | None = None
    """Only these cities (None: all CSVs of the folder)."""
    limit: int | None = None
    """At most this many places per city (the first by place id): a small run."""
    max_views: int | None = None
    """At most this many images per place."""
    split: SplitConfig = field(default_factory=SplitConfig)
    text: TextExpansionConfig = field(default_factory=TextExpansionConfig)
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    retriever: str | None = None
    """Checkpoint of a retriever trained on ``<out_dir>/places`` (the dialogues stage is skipped without one)."""
    dialogues: DialoguesConfig = field(default_factory=DialoguesConfig)
    max_samples_per_shard: int = 1000
    progress: bool = True
    seed: int = 0
    """Seed of the retry jitter."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"stages {unknown} unknown; choose from {', '.join(STAGE_NAMES)}")


def build_dqcities(config: DQCitiesBuildConfig) -> dict[str, Any]:
    """Run ``config.stages`` in order; returns (and writes to ``out_dir/summary.json``) the build summary."""
    c = config
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scan = scan_gsv_cities(c.gsv_root, c.split, c.cities, c.limit, c.max_views)
    summary: dict[str, Any] = {"gsv_root": str(c.gsv_root), "cities": scan.cities, "images": len(scan.images),
                               "places": len({im.place_id for im in scan.images}), "scan_skipped": dict(scan.skipped), "stages": {}}
    images = scan.images

    def timed(name: str, fn: Callable[[], StageStats]) -> None:
        start = time.perf_counter()
        stats = fn()
        stats.seconds = round(time.perf_counter() - start, 2)
        summary["stages"][name] = stats.as_dict()

    if "text" in c.stages:
        timed("text", lambda: run_text_stage(images, c.text, out, c.seed, c.progress))
    texts = ItemStore(out / "work" / "text.jsonl").done()
    if "regions" in c.stages:
        timed("regions", lambda: run_regions_stage(images, texts, c.regions, out, c.progress))
    if "places" in c.stages:
        grounded = ItemStore(out / "work" / "regions.jsonl").done()
        extra = {"builder": "dlgpr.pipeline.dqcities", "gsv_root": str(c.gsv_root), "cities": scan.cities,
                 "text_model": c.text.api.model, "prompt_versions": sorted({t.get("prompt_version", "") for t in texts.values()}),
                 "split": asdict(c.split)}
        timed("places", lambda: write_places(images, texts, grounded, out / PLACES_DIR, c.max_samples_per_shard, extra, c.progress))
    if "dialogues" in c.stages:
        if c.retriever is None:
            summary["stages"]["dialogues"] = StageStats("dialogues", skipped="no retriever: train one on places/ and pass --retriever").as_dict()
        else:
            timed("dialogues", lambda: run_dialogue_stage(out, c.retriever, c.dialogues, c.progress))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))
    return summary


def run_dialogue_stage(out: Path, retriever: str, config: DialoguesConfig, progress: bool) -> StageStats:
    """Stages 3-4 over every place of ``out/places`` (``--limit`` already shaped them)."""
    teacher = EvidenceTeacherQuestioner(config.teacher.api, config.teacher.prompt, config.teacher.max_regions)
    user = LLMAnswerer(config.user)
    build = CorpusBuildConfig(
        retriever=retriever, data_dir=out / PLACES_DIR, out_dir=out / DIALOGUES_DIR, corpus=config.corpus, train_split=config.train_split,
        val_split=config.val_split, val_limit=config.val_limit, tokenizer_vocab_size=config.tokenizer_vocab_size,
        max_description_words=config.max_description_words, progress=progress,
    )
    corpus = build_corpus(build, teacher, user)
    stats = StageStats("dialogues")
    for split in (config.train_split, config.val_split):
        if split is not None:
            g = corpus[f"{split}_generation"]
            stats.items += g["dialogues"]
            stats.extra[f"{split}_dialogues_redone"] = g["dialogues_redone"]
            stats.extra[f"{split}_chunks_resumed"] = g["chunks_resumed"]
            stats.done += g["turns"]
            stats.failed += g["failed_turns"]
            if g["failed_turns"]:
                stats.failures["failed_turn"] += g["failed_turns"]
    for client in (teacher.client, user.client):
        u = client.usage
        stats.requests += u.requests
        stats.prompt_tokens += u.prompt_tokens
        stats.completion_tokens += u.completion_tokens
        if u.failures:
            stats.failures["api_request"] += u.failures
    stats.extra.update({"split": corpus["split"], "val": corpus.get("val", {})})
    return stats


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table: one line per stage."""
    n_cities = len(summary["cities"])
    lines = [f"DQ-Cities build: {summary['images']} images of {summary['places']} places in {n_cities} {'city' if n_cities == 1 else 'cities'} "
             f"({summary['seconds']:.0f} s); scan skipped {summary['scan_skipped'] or 'nothing'}"]
    lines.append(f"{'stage':<10}{'items':>8}{'resumed':>9}{'done':>8}{'failed':>8}{'requests':>10}{'tokens in':>11}{'tokens out':>11}{'s':>9}  failures")
    for name, s in summary["stages"].items():
        if s.get("skipped"):
            lines.append(f"{name:<10}skipped: {s['skipped']}")
            continue
        fails = ", ".join(f"{k} {v}" for k, v in sorted(s["failures"].items())) or "-"
        lines.append(f"{name:<10}{s['items']:>8}{s['resumed']:>9}{s['done']:>8}{s['failed']:>8}{s['requests']:>10}"
                     f"{s['prompt_tokens']:>11}{s['completion_tokens']:>11}{s['seconds']:>9.1f}  {fails}")
    return "\n".join(lines)


__all__ = ["DIALOGUES_DIR", "DQCitiesBuildConfig", "DialoguesConfig", "PLACES_DIR", "RegionsConfig", "STAGE_NAMES", "StageAborted", "TeacherConfig", "build_dqcities", "format_summary",
           "run_dialogue_stage", "run_regions_stage", "run_text_stage", "write_places"]
