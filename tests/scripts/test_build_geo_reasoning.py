"""scripts/build_geo_reasoning.py from a config: the stages, the printed funnel, a rerun, a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlgpr.pipeline.geo_reasoning import iter_reasoning_samples
from tests.helpers.cmpl import tiny_checkpoint
from tests.helpers.geo import make_geo_world

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "build_geo_reasoning.py"), *args], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("geo_build")
    make_geo_world(tmp / "world", num_cities=4, places_per_city=12)
    tiny_checkpoint(tmp / "tiny.ckpt")
    teacher = "dlgpr.pipeline.geo_teachers.WorldGeoTeacher"
    cfg = {
        "dataset": f"synthcities:{tmp / 'world'}:train",
        "out_dir": str(tmp / "out"),
        "teachers": [{"class_path": teacher, "init_args": {"data_dir": str(tmp / "world"), "profile": p}} for p in ("architect", "colourist")],
        "gps": {"class_path": "dlgpr.geo.geolocator.RetrievalGeolocator",
                "init_args": {"name": "retrieval", "retriever": str(tmp / "tiny.ckpt"), "reference": str(tmp / "world"), "k": 3}},
        "embedder": {"class_path": "dlgpr.pipeline.geo_validation.BagOfWordsEmbedder"},
        "validation": {"min_similarity": 0.2},
        "chunk_size": 8,
        "progress": False,
    }
    path = tmp / "geo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_script_builds_then_resumes(config: Path) -> None:
    first = _run("--config", str(config))
    assert first.returncode == 0, first.stderr[-3000:]
    out = Path(yaml.safe_load(config.read_text())["out_dir"])
    summary = json.loads((out / "summary.json").read_text())
    n = summary["images"]
    assert n == 4 * 6 * 2  # 4 cities x 6 train places x 2 views
    teachers = summary["stages"]["teachers"]
    assert teachers["world-architect"]["done"] == teachers["world-colourist"]["done"] == summary["stages"]["gps"]["done"] == n
    assert f"| **kept** | | **{summary['funnel']['kept']}**" in first.stdout
    assert len(list(iter_reasoning_samples(out, kept_only=False))) == n
    second = _run("--config", str(config))
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    assert all(again["stages"]["teachers"][t]["resumed"] == n and again["stages"]["teachers"][t]["done"] == 0
               for t in ("world-architect", "world-colourist"))
    assert again["stages"]["gps"]["resumed"] == n and again["funnel"] == summary["funnel"]


def test_a_wrong_setting_is_one_line(config: Path, tmp_path: Path) -> None:
    bad = _run("--config", str(config), "--stages", "[teachers,shardz]")
    assert bad.returncode != 0 and "build_geo_reasoning: stages ['shardz'] unknown" in bad.stderr
    missing = _run("--config", str(config), "--dataset", f"synthcities:{tmp_path / 'nowhere'}:train")
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0 and "nowhere" in missing.stderr
