"""Evaluate geolocators on geo datasets: GLOBE's Table 1 (docs/GLOBE.md, "Evaluation").

    python scripts/evaluate_geo.py --config configs/eval/geo_synthcities.yaml
    python scripts/evaluate_geo.py --config configs/eval/geo_synthcities.yaml --limit 100 --out_dir runs/geo_eval/quick
    python scripts/evaluate_geo.py --datasets+ synthcities:data/synthcities-geo:test \\
        --methods+ dlgpr.geo.vlm.EndpointGeoPredictor --methods.api.model qwen2.5-vl --methods.name qwen-7b

Methods are GeoPredictors given as ``{class_path, init_args}`` (a config's ``methods`` list,
or ``--methods+`` flags); datasets are spec strings (``synthcities:<dir>[:<split>]``,
``im2gps3k:<dir>``, ``mp16:<dir>``...; docs/GLOBE.md, Datasets). For each
dataset and method the predictions are appended to
``<out_dir>/predictions/<dataset>/<method>.jsonl`` a chunk at a time, next to the method's
config; a rerun reads them back and predicts only the samples still missing (a killed run
loses at most one chunk; ``--retry_failed`` also redoes failed predictions). Writes
``table.md`` (one row per method, one column group per dataset), ``accuracy.png`` (accuracy
against the distance threshold), ``comparisons.md`` (every pair of methods within 25 km: the
paired difference with a 95 % bootstrap interval over samples and the exact sign test) and
``results.json`` (every metric, failures by kind, the paired tests, timings).
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from dlgpr.data.geo import GeoReadStats, GeoSample, parse_dataset_spec, read_geo_dataset
from dlgpr.geo.evaluation import GeoEvaluation, accuracy_figure, comparison_table, evaluate_predictions, paired_comparison, results_table
from dlgpr.geo.gazetteer import GAZETTEER_KINDS, Gazetteer, load_gazetteer
from dlgpr.geo.predict import GeoPrediction, GeoPredictor, read_predictions
from dlgpr.pipeline.text import StageAborted

log = logging.getLogger("evaluate_geo")

RUNTIME_ONLY = frozenset({"batch_size", "device", "max_concurrency", "requests_per_minute", "timeout_s", "cache_dir", "dtype"})
"""Settings that change how fast predictions come, not what they are: a change does not invalidate saved predictions."""


# ---- datasets --------------------------------------------------------------------------------------


def load_dataset(spec: str, limit: int | None = None, seed: int = 0) -> tuple[str, list[GeoSample], Path | None]:
    """``(name, samples, SynthCities world directory or None)`` of a dataset spec
    (:func:`~dlgpr.data.geo.parse_dataset_spec`: ``synthcities:<dir>[:<split>]``, ``im2gps3k:<dir>``...).

    ``limit`` keeps a seeded random subset of that many samples (in dataset order). Bad rows are
    skipped and reported in one line.
    """
    config = parse_dataset_spec(spec)
    stats = GeoReadStats()
    samples = list(read_geo_dataset(config, stats))
    if stats.skipped:
        log.warning("%s: %s", spec, stats.summary())
    if not samples:
        raise ValueError(f"dataset {spec!r}: no readable sample ({stats.summary()})")
    if limit is not None and limit < len(samples):
        keep = sorted(random.Random(seed).sample(range(len(samples)), limit))
        samples = [samples[i] for i in keep]
    world = Path(config.root) if config.kind == "synthcities" else None
    split = ",".join(config.splits) if config.kind in ("synthcities", "gsv_cities") else ""
    name = f"{Path(config.root).name}:{split}" if split else samples[0].source
    return name, samples, world


def dataset_gazetteer(kind: str, world: Path | None) -> Gazetteer | None:
    if kind == "world" and world is None:
        raise ValueError("--gazetteer world needs SynthCities datasets (their manifest names the cities); use geonames")
    return load_gazetteer(kind, world)


# ---- predictions on disk ---------------------------------------------------------------------------


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "method"


def check_method_config(path: Path, config: dict[str, Any]) -> None:
    """Write the method's config next to its predictions, or check it against the saved one."""

    def significant(c: Any) -> Any:
        if isinstance(c, dict):
            return {k: significant(v) for k, v in c.items() if k not in RUNTIME_ONLY}
        return c

    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if significant(saved) != significant(config):
            raise ValueError(f"{path}: the saved predictions were made with another config of this method; "
                             f"use another --out_dir, another method name, or delete {path.with_suffix('').with_suffix('.jsonl')}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1, default=str), encoding="utf-8")


def run_method(method: GeoPredictor, samples: list[GeoSample], path: Path, chunk_size: int, retry_failed: bool
               ) -> tuple[list[GeoPrediction], int, float]:
    """``(predictions of samples, how many were computed now, seconds spent predicting)``."""
    saved = read_predictions(path)
    todo = [s for s in samples if s.key not in saved or (retry_failed and not saved[s.key].ok)]
    start = time.perf_counter()
    if todo:
        log.info("%s on %s: %d of %d samples to predict", method.name, path.parent.name, len(todo), len(samples))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for i in range(0, len(todo), chunk_size):
                chunk = todo[i:i + chunk_size]
                preds = method.predict(chunk)
                if [p.key for p in preds] != [s.key for s in chunk]:
                    raise RuntimeError(f"{method.name}: predict returned {len(preds)} predictions for {len(chunk)} samples "
                                       "(a GeoPredictor returns one per sample, in order)")
                f.write("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in preds))
                f.flush()
                saved.update((p.key, p) for p in preds)
    return [saved[s.key] for s in samples], len(todo), time.perf_counter() - start


# ---- the script ------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--datasets", type=list[str], default=[], help="dataset specs (docs/GLOBE.md, Datasets): synthcities:<dir>[:<split>], im2gps3k:<dir>, mp16:<dir>, csv:<file>, ...")
    parser.add_argument("--methods", type=list[GeoPredictor], default=[], help="GeoPredictors as {class_path, init_args}")
    parser.add_argument("--gazetteer", type=str, default="world",
                        help=f"geocodes names and names coordinates: one of {GAZETTEER_KINDS} or none")
    parser.add_argument("--limit", type=int | None, default=None, help="a seeded random subset of this many samples per dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dir", type=Path, default=Path("runs/geo_eval"))
    parser.add_argument("--chunk_size", type=int, default=256, help="samples per predict call (and per append to the JSONL)")
    parser.add_argument("--retry_failed", type=bool, default=False, help="predict failed samples again on a rerun")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    cfg = parser.parse_args(argv)
    method_configs = [m.as_dict() if hasattr(m, "as_dict") else dict(m) for m in cfg.methods]
    init = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(cfg)  # renamed in jsonargparse 4.49
    methods: list[GeoPredictor] = init.methods
    if not methods or not init.datasets:
        parser.error("give at least one dataset (--datasets) and one method (--methods or a --config)")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        parser.error(f"method names must be unique (set init_args.name), got {names}")
    if init.chunk_size < 1 or (init.limit is not None and init.limit < 1):
        parser.error("--chunk_size and --limit must be >= 1")
    out = Path(init.out_dir)
    results: dict[str, dict[str, GeoEvaluation]] = {m.name: {} for m in methods}
    report: dict[str, Any] = {"datasets": {}, "gazetteer": init.gazetteer, "limit": init.limit}
    order = []
    for spec in init.datasets:
        name, samples, world = load_dataset(spec, init.limit, init.seed)
        gazetteer = dataset_gazetteer(init.gazetteer, world)
        order.append(name)
        entry: dict[str, Any] = {"spec": spec, "n": len(samples), "methods": {}}
        for method, config in zip(methods, method_configs):
            folder = out / "predictions" / slug(name)
            check_method_config(folder / f"{slug(method.name)}.config.json", config)
            preds, computed, seconds = run_method(method, samples, folder / f"{slug(method.name)}.jsonl", init.chunk_size, init.retry_failed)
            r = evaluate_predictions(samples, preds, gazetteer)
            results[method.name][name] = r
            entry["methods"][method.name] = {**r.as_dict(), "computed": computed, "predict_s": round(seconds, 3),
                                             "stats": dict(getattr(method, "stats", {}) or {})}
            print(f"{method.name} on {name}: {computed} predicted in {seconds:.1f} s; "
                  + " ".join(f"{k}={100 * v:.1f}%" for k, v in r.as_dict().items() if k.startswith("acc@")), flush=True)
        report["datasets"][name] = entry
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(results, order)
    legend = ("Accuracy (%) within 1 / 25 / 200 / 750 / 2500 km of the truth, city and country accuracy (%), median error "
              "(km; ∞: over half unresolved), unresolved (answered, not locatable) / failed (no answer).\n\n")
    (out / "table.md").write_text(legend + table, encoding="utf-8")
    accuracy_figure(results, order).savefig(out / "accuracy.png")
    # paired tests over the samples of each dataset: every pair of methods, within 25 km (the city)
    comparisons = "\n\n".join(comparison_table(results, name) for name in order) if len(methods) > 1 else ""
    for name in order:
        report["datasets"][name]["paired_25km"] = {f"{a} vs {b}": paired_comparison(results[a][name], results[b][name])
                                                   for i, a in enumerate(names) for b in names[i + 1:]}
    if comparisons:
        (out / "comparisons.md").write_text(comparisons + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(table)
    if comparisons:
        print("\n" + comparisons)
    print(f"wrote {out / 'table.md'}, {out / 'accuracy.png'}, {out / 'results.json'}" + (f", {out / 'comparisons.md'}" if comparisons else ""))
    return report


if __name__ == "__main__":
    try:
        main()
    except (StageAborted, ImportError, FileNotFoundError, RuntimeError, ValueError) as exc:
        sys.exit(f"evaluate_geo: {exc}")
