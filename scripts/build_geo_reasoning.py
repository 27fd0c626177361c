"""Distil MP16-Reason-style geo-reasoning data: teachers, a GPS predictor, four validations.

    python scripts/build_geo_reasoning.py --config configs/build/geo_reasoning_synthcities.yaml   # embedded, minutes
    python scripts/build_geo_reasoning.py --config configs/build/geo_reasoning_mp16.yaml          # paper scale
    python scripts/build_geo_reasoning.py --config ... --limit 50                                  # a small run first

Stages (``--stages``): ``teachers`` (every teacher over every image), ``gps`` (the GPS predictor),
``validate`` (the four validations and the funnel), ``shards`` (WebDataset shards with every
teacher's output, each validation's score and verdict). Every stage resumes: rerun the same
command after a crash or a kill. Docs: docs/GLOBE.md; code: dlgpr/pipeline/geo_reasoning.py.
"""

from __future__ import annotations

import logging
import sys

from jsonargparse import auto_cli

from dlgpr.geo.predict import GeoPredictor
from dlgpr.data.geo import parse_dataset_spec
from dlgpr.pipeline.geo_reasoning import STAGES, GeoReasoningConfig, build_geo_reasoning, default_context, format_summary
from dlgpr.pipeline.geo_validation import PhraseVerifier, SentenceEmbedder, ValidationConfig
from dlgpr.pipeline.text import StageAborted


def build(
    dataset: str,
    out_dir: str,
    teachers: list[GeoPredictor],
    gps: GeoPredictor,
    stages: list[str] = list(STAGES),
    limit: int | None = None,
    chunk_size: int = 64,
    shard_size: int = 1000,
    validation: ValidationConfig = ValidationConfig(),
    gazetteer: str = "auto",
    verifier: PhraseVerifier | None = None,
    embedder: SentenceEmbedder | None = None,
    progress: bool = True,
) -> dict:
    """Args:
        dataset: the images to distil, as a dataset spec (``synthcities:data/synthcities-geo:train``,
            ``mp16:/data/mp16``, ``im2gps3k:/data/im2gps3k``...; docs/GLOBE.md, Datasets).
        out_dir: output: ``work/`` (predictions), ``shards/``, ``manifest.json``, ``funnel.md``, ``summary.json``.
        teachers: the reasoning teachers (``class_path`` + ``init_args`` each): endpoints
            (``dlgpr.pipeline.geo_teachers.APIGeoTeacher``) or the embedded world teachers.
        gps: the GPS predictor (``dlgpr.geo.geolocator.GeoCLIPPredictor`` or ``RetrievalGeolocator``).
        stages: which of teachers, gps, validate, shards to run (in that order).
        limit: only the first ``limit`` images.
        chunk_size: images per predictor call (the unit of resumption).
        shard_size: samples per output shard.
        validation: thresholds of the four validations.
        gazetteer: turns the teachers' names into coordinates: ``world`` (the SynthCities world's
            own), ``geonames`` (real places, offline) or ``auto`` (world for a SynthCities dataset).
        verifier: whether a thing named in a reasoning is in the image (None: the record's exact
            regions on SynthCities, YOLO-World detections on real photos).
        embedder: sentence embeddings for reasoning alignment (None: all-MiniLM-L6-v2).
        progress: progress bars.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = GeoReasoningConfig(dataset=dataset, out_dir=out_dir, stages=stages, limit=limit, chunk_size=chunk_size,
                                    shard_size=shard_size, validation=validation, progress=progress)
        context = default_context(parse_dataset_spec(dataset), validation, gazetteer, verifier, embedder)
        summary = build_geo_reasoning(config, teachers, gps, context)
    except (StageAborted, FileNotFoundError, ValueError) as exc:
        sys.exit(f"build_geo_reasoning: {exc}")
    print(format_summary(summary))
    print(f"wrote {out_dir}/summary.json")
    return summary


if __name__ == "__main__":
    auto_cli(build, as_positional=False)
