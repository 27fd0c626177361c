"""scripts/evaluate_geo.py on a tiny geo world with a tiny retriever checkpoint: outputs, resume, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
import yaml

from dlgpr.geo.geolocator import RetrievalGeolocator
from tests.helpers.cmpl import tiny_checkpoint
from tests.helpers.geo import make_geo_world
from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
evaluate_geo = load_script("evaluate_geo")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("geo_eval")
    make_geo_world(tmp / "world")
    tiny_checkpoint(tmp / "tiny.ckpt")
    return tmp / "world", tmp / "tiny.ckpt"


def _config(tmp_path: Path, world: Path, ckpt: Path, k: int = 3) -> Path:
    methods = [{"class_path": "dlgpr.geo.geolocator.RetrievalGeolocator",
                "init_args": {"name": "retrieval", "retriever": str(ckpt), "reference": str(world), "k": k, "batch_size": 8}},
               {"class_path": "dlgpr.geo.geolocator.RetrievalGeolocator",
                "init_args": {"name": "nearest image", "retriever": str(ckpt), "reference": str(world), "k": 1}}]
    path = tmp_path / f"geo_k{k}.yaml"
    path.write_text(yaml.safe_dump({"datasets": [f"synthcities:{world}:test"], "methods": methods, "gazetteer": "world"}))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_table_predictions_figure_and_resume(setup, tmp_path, monkeypatch) -> None:
    world, ckpt = setup
    out = tmp_path / "out"
    config = _config(tmp_path, world, ckpt)
    report = evaluate_geo.main(["--config", str(config), "--out_dir", str(out), "--chunk_size", "5"])

    entry = report["datasets"]["world:test"]
    assert entry["n"] == 16  # 4 cities x 2 test places x 2 views
    first = {m: entry["methods"][m] for m in ("retrieval", "nearest image")}
    assert all(r["computed"] == 16 and r["failed"] == 0 and r["n"] == 16 for r in first.values())
    for slug in ("retrieval", "nearest_image"):
        lines = _lines(out / "predictions" / "world_test" / f"{slug}.jsonl")
        assert len(lines) == 16 and all(p["ok"] and p["city"] and p["country"] for p in lines)  # named by the world gazetteer
        assert (out / "predictions" / "world_test" / f"{slug}.config.json").is_file()
    table = (out / "table.md").read_text()
    assert "| **world:test** (n=16) 1 km |" in table.replace("| method | ", "| ")
    assert table.count("\n| retrieval |") == 1 and table.count("\n| nearest image |") == 1
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "| retrieval vs nearest image |" in (out / "comparisons.md").read_text()
    paired = report["datasets"]["world:test"]["paired_25km"]["retrieval vs nearest image"]
    assert paired["wins"] + paired["losses"] <= 16 and 0.0 <= paired["p"] <= 1.0
    saved = json.loads((out / "results.json").read_text())
    assert saved["datasets"]["world:test"]["methods"]["retrieval"]["acc@2500km"] == first["retrieval"]["acc@2500km"]

    # a rerun predicts nothing (nor loads the retriever): every prediction is read back
    def refuse(*args, **kwargs):
        raise AssertionError("encoded images again")

    monkeypatch.setattr(RetrievalGeolocator, "_embed", refuse)
    again = evaluate_geo.main(["--config", str(config), "--out_dir", str(out)])
    assert all(r["computed"] == 0 for r in again["datasets"]["world:test"]["methods"].values())
    assert (out / "table.md").read_text() == table
    monkeypatch.undo()

    # a killed run: five whole lines and a torn one survive; the rerun predicts the other eleven
    path = out / "predictions" / "world_test" / "retrieval.jsonl"
    kept = path.read_text().splitlines()[:5]
    path.write_text("\n".join(kept) + "\n" + kept[5 - 1][:20])
    resumed = evaluate_geo.main(["--config", str(config), "--out_dir", str(out)])
    assert resumed["datasets"]["world:test"]["methods"]["retrieval"]["computed"] == 11
    assert (out / "table.md").read_text() == table


def test_changed_method_config_is_refused_and_limit_subsets(setup, tmp_path) -> None:
    world, ckpt = setup
    out = tmp_path / "out"
    report = evaluate_geo.main(["--config", str(_config(tmp_path, world, ckpt)), "--out_dir", str(out), "--limit", "5"])
    assert report["datasets"]["world:test"]["n"] == 5
    with pytest.raises(ValueError, match="another config of this method"):
        evaluate_geo.main(["--config", str(_config(tmp_path, world, ckpt, k=7)), "--out_dir", str(out), "--limit", "5"])
    # a runtime-only setting (batch_size) may change
    evaluate_geo.main(["--config", str(_config(tmp_path, world, ckpt)), "--out_dir", str(out), "--limit", "5",
                       "--methods.init_args.batch_size", "2"])


def test_bad_inputs_give_one_line_errors(setup, tmp_path) -> None:
    world, ckpt = setup
    config = str(_config(tmp_path, world, ckpt))
    with pytest.raises(FileNotFoundError, match="somewhere: no such folder"):
        evaluate_geo.main(["--config", config, "--datasets", "[im2gps3k:somewhere]", "--out_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="split must be split names"):
        evaluate_geo.main(["--config", config, "--datasets", f"[synthcities:{world}:nosuchsplit]", "--out_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit):  # parser.error: two methods named alike
        evaluate_geo.main(["--config", config, "--methods+", "dlgpr.geo.geolocator.RetrievalGeolocator",
                           "--methods.retriever", str(ckpt), "--methods.reference", str(world), "--out_dir", str(tmp_path / "o")])


def test_a_real_photo_dataset_from_a_csv(setup, tmp_path) -> None:
    """A CSV of photos with coordinates (IM2GPS3K-style columns), scored with the GeoNames gazetteer."""
    world, ckpt = setup
    folder = tmp_path / "photos"
    folder.mkdir()
    rows = [("paris.jpg", 48.8566, 2.3522), ("rome.jpg", 41.9028, 12.4964), ("tokyo.jpg", 35.6762, 139.6503), ("bad.jpg", 91.0, 0.0)]
    for i, (name, _, _) in enumerate(rows):
        Image.new("RGB", (32, 32), (40 * i, 200 - 40 * i, 90)).save(folder / name)
    (folder / "photos.csv").write_text("IMG_ID,AUTHOR,LAT,LON\n" + "".join(f"{n},x,{a},{b}\n" for n, a, b in rows))
    report = evaluate_geo.main(["--config", str(_config(tmp_path, world, ckpt)), "--datasets", f"[csv:{folder / 'photos.csv'}]",
                                "--gazetteer", "geonames", "--out_dir", str(tmp_path / "out")])
    (name, entry), = report["datasets"].items()
    assert name == "photos" and entry["n"] == 3  # the row at latitude 91 is skipped and counted, not fatal
    result = entry["methods"]["retrieval"]
    assert result["computed"] == 3 and result["failed"] == 0
    assert result["acc@2500km"] == 0.0  # the tiny world's places are fictional: nowhere near Paris, Rome or Tokyo


def test_embedded_config_parses() -> None:
    cfg = evaluate_geo.build_parser().parse_args(["--config", str(ROOT / "configs" / "eval" / "geo_synthcities.yaml")])
    assert cfg.datasets == ["synthcities:data/synthcities-geo:test"] and cfg.gazetteer == "world"
    method, *teachers = cfg.methods
    assert [t.class_path for t in teachers] == ["dlgpr.pipeline.geo_teachers.WorldGeoTeacher"] * 2
    assert [t.init_args.profile for t in teachers] == ["architect", "colourist"]
    assert method.class_path == "dlgpr.geo.geolocator.RetrievalGeolocator"
    assert method.init_args.retriever == "lightning_logs/version_0/checkpoints/last.ckpt"
    assert method.init_args.reference == "data/synthcities-geo" and method.init_args.reference_splits == ["train"]
