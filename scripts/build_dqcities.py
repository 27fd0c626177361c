"""Build DQ-Cities from a GSV-Cities folder: place shards, then dialogue-ready shards.

    python scripts/build_dqcities.py --config configs/build/dqcities_gsv.yaml                       # text, regions, places
    python -m dlgpr fit --config configs/cmpl_vitb16.yaml                                           # the retriever
    python scripts/build_dqcities.py --config configs/build/dqcities_gsv.yaml --stages [dialogues]  # + dialogues
    python scripts/build_dqcities.py --config configs/build/dqcities_gsv.yaml --cities [Boston] --limit 20   # a small run

Stages (``--stages``): ``text`` (VLM caption + description per image, OpenAI-compatible API),
``regions`` (spaCy maximal noun phrases grounded by YOLO-World), ``places`` (DQ-Cities place
shards), ``dialogues`` (API teacher over compact candidate sets, PRG / SA / DDI, DDI split,
dialogue-turn shards). Every stage resumes: rerun the same command after a crash or a kill.
Docs: docs/DATA.md (also the chain on to SFT, GRPO and Table 1); code: dlgpr/pipeline/dqcities.py.
"""

from __future__ import annotations

import logging
import sys

from jsonargparse import auto_cli

from dlgpr.pipeline.dqcities import STAGE_NAMES, DialoguesConfig, DQCitiesBuildConfig, RegionsConfig, build_dqcities, format_summary
from dlgpr.pipeline.gsv import SplitConfig
from dlgpr.pipeline.text import StageAborted, TextExpansionConfig


def build(
    gsv_root: str,
    out_dir: str = "data/dqcities",
    stages: list[str] = list(STAGE_NAMES),
    cities: list[str] | None = None,
    limit: int | None = None,
    max_views: int | None = None,
    split: SplitConfig = SplitConfig(),
    text: TextExpansionConfig = TextExpansionConfig(),
    regions: RegionsConfig = RegionsConfig(),
    retriever: str | None = None,
    dialogues: DialoguesConfig = DialoguesConfig(),
    max_samples_per_shard: int = 1000,
    progress: bool = True,
    seed: int = 0,
) -> dict:
    """Args:
        gsv_root: GSV-Cities folder (``Dataframes/<City>.csv``, ``Images/<City>/*.jpg``).
        out_dir: output: ``work/`` (per-image results), ``cache/`` (API replies), ``places/``
            (place shards), ``dialogues/`` (dialogue-turn shards), ``summary.json``.
        stages: which of text, regions, places, dialogues to run (in that order).
        cities: only these cities (default: all CSVs of the folder).
        limit: at most this many places per city (the first by place id): a small run.
        max_views: at most this many images per place.
        split: train / val / test assignment by place (seeded hash, or whole cities).
        text: stage 1, the VLM endpoint, prompt, retries and reply checks.
        regions: stage 2, spaCy phrases and YOLO-World grounding.
        retriever: checkpoint of a retriever trained on ``<out_dir>/places`` (the dialogues stage
            is skipped without one).
        dialogues: stages 3-4, the teacher and user endpoints, corpus sizes and DDI split.
        max_samples_per_shard: images per place shard.
        progress: a progress bar per stage.
        seed: seed of the retry jitter.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = DQCitiesBuildConfig(
            gsv_root=gsv_root, out_dir=out_dir, stages=stages, cities=cities, limit=limit, max_views=max_views, split=split, text=text,
            regions=regions, retriever=retriever, dialogues=dialogues, max_samples_per_shard=max_samples_per_shard, progress=progress,
            seed=seed,
        )
        summary = build_dqcities(config)
    except (StageAborted, FileNotFoundError, ValueError) as exc:
        sys.exit(f"build_dqcities: {exc}")
    print(format_summary(summary))
    print(f"wrote {out_dir}/summary.json")
    return summary


if __name__ == "__main__":
    auto_cli(build, as_positional=False)
