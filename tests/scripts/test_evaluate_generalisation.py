"""scripts/evaluate_generalisation.py on two tiny generated worlds and a tiny fitted checkpoint."""

import json
import sys
from pathlib import Path

import pytest

from dlgpr.cli import main as dlgpr_main
from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]

generalisation = load_script("evaluate_generalisation")
query_shapes = load_script("query_shapes")

WORLD = ["--{w}.num_cities", "1", "--{w}.places_per_city", "10", "--{w}.views_per_place", "2", "--{w}.image_size", "32",
         "--{w}.split_fractions", "[0.4,0.3,0.3]", "--{w}.num_workers", "0"]


def _world(name: str, *extra: str) -> list[str]:
    return [a.format(w=name) for a in WORLD] + list(extra)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny random CMPL fitted for two steps on a tiny generated world: only the protocols are under test."""
    tmp_path = tmp_path_factory.mktemp("fitted")
    home_dir = tmp_path / "home"
    argv = sys.argv
    sys.argv = ["dlgpr"]
    try:
        fit = dlgpr_main([
            "fit", "--config", str(ROOT / "configs" / "cmpl.yaml"),
            "--model.init_args.backbone.model_name", "dlgpr-tiny", "--model.init_args.backbone.pretrained", "null",
            "--model.init_args.logit_scale", "14.2857", "--model.init_args.backbone.image_size", "32",
            "--model.init_args.backbone.context_length", "24", "--model.init_args.backbone.long_text_length", "32",
            "--data.init_args.data_dir", str(home_dir), "--data.init_args.synthetic.num_cities", "1",
            "--data.init_args.synthetic.places_per_city", "10", "--data.init_args.synthetic.views_per_place", "2",
            "--data.init_args.synthetic.image_size", "32", "--data.init_args.synthetic.split_fractions", "[0.4,0.3,0.3]",
            "--data.init_args.synthetic.num_workers", "0", "--data.init_args.places_per_batch", "4",
            "--data.init_args.num_workers", "0", "--trainer.max_steps", "2", "--trainer.precision", "32-true",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
            "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(tmp_path / "runs"),
        ])
    finally:
        sys.argv = argv
    ckpt = fit.trainer.checkpoint_callback.best_model_path  # Lightning's default checkpoint (the config's callbacks are off)
    assert Path(ckpt).is_file()
    return ckpt, home_dir


def test_home_and_other_world_tables_and_retention(fitted, tmp_path):
    ckpt, home_dir = fitted
    other_dir = tmp_path / "other"
    out = tmp_path / "gen"
    payload = generalisation.main(["--ckpt", ckpt, "--home_dir", str(home_dir), *_world("home"),
                                   "--other_dir", str(other_dir), *_world("other", "--other.seed", "7", "--other.first_city", "3"),
                                   "--rounds", "2", "--top_k", "5", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["retention"] == payload["retention"]
    home, other = saved["worlds"]["home"], saved["worlds"]["other"]
    assert home["places"] == other["places"] == 3 and home["descriptions"] == 6  # test split: 3 places x 2 views
    for world in (home, other):
        assert set(world["static"]) == {"recall@1", "recall@5", "recall@10"}
        assert 0.0 <= world["static"]["recall@1"] <= world["static"]["recall@5"] <= world["static"]["recall@10"] == 1.0  # 3 places
        assert world["dialogue"]["round2/recall@1"] >= world["dialogue"]["round0/recall@1"]  # cumulative
    ratio = other["static"]["recall@1"] / max(home["static"]["recall@1"], 1e-9)
    assert saved["retention"]["static_recall@1"] == pytest.approx(ratio)
    assert (out / "table.md").read_text().count("\n| ") == 3  # header row + two worlds (after the title line)
    assert (other_dir / "manifest.json").is_file() or any(other_dir.iterdir())  # generated on demand
    with pytest.raises(ValueError, match="same world"):
        generalisation.main(["--ckpt", ckpt, "--home_dir", str(home_dir), *_world("home"), "--other_dir", str(home_dir),
                             *_world("other", "--other.seed", "0", "--other.first_city", "0"),
                             "--out", str(out)])


def test_query_shapes_reads_every_shape_and_records_it(fitted, tmp_path):
    ckpt, home_dir = fitted
    out = tmp_path / "shapes.json"
    table = query_shapes.main(["--ckpt", ckpt, "--data_dir", str(home_dir), "--split", "val", "--sentences", "2", "--answers", "3",
                               "--json", str(out)])
    assert list(table) == ["full description", "caption", "caption + 2 description sentences", "caption + 3 answers", "3 answers"]
    assert json.loads(out.read_text())["queries"] == 3  # 3 val places, one query each
    for row in table.values():
        assert 0.0 <= row["recall@1"] <= row["recall@5"] <= row["recall@10"] == 1.0  # 3 places: all within 10
    # the answers are the oracle user's sentences about the place's own attributes
    import random

    from dlgpr.data.synth.dialogue import answer_sentence
    rng_answers = query_shapes._answers({"door_color": "red", "roof": "flat"}, 5, random.Random(0))
    assert sorted(rng_answers) == sorted([answer_sentence("door_color", "red"), answer_sentence("roof", "flat")])


def test_query_shapes_per_slot_rows_match_a_direct_ranking(fitted, tmp_path):
    import torch

    from datamodules.dqcities import DQCitiesDataModule
    from dlgpr.data.synth.dialogue import SLOT_QUESTIONS, answer_sentence
    from dlgpr.ranking import rank_of_place
    from dlgpr.retrieval import ModuleTextRetriever, encode_gallery, load_retriever

    ckpt, home_dir = fitted
    out = tmp_path / "shapes.json"
    query_shapes.main(["--ckpt", ckpt, "--data_dir", str(home_dir), "--split", "val", "--sentences", "--answers", "--per_slot", "--json", str(out)])
    rows = json.loads(out.read_text())["per_slot"]
    assert set(rows) <= set(SLOT_QUESTIONS) and "facade_color" in rows
    for row in rows.values():
        assert 0.0 <= row["probe_accuracy"] <= 1.0 and 0.0 <= row["majority_rate"] <= 1.0 and row["values"] >= 1
    # the facade-colour row recomputed directly: one query per place (its first view), caption vs caption + answer
    dm = DQCitiesDataModule(data_dir=str(home_dir), synthetic=None, num_workers=0)
    dm.setup("validate")
    first = {}
    for r in sorted(dm.records("val"), key=lambda r: (r.place_id, r.view)):
        first.setdefault(r.place_id, r)
    module = load_retriever(ckpt).eval()
    gallery = encode_gallery(module, home_dir, "val")
    retriever = ModuleTextRetriever(module)
    ids = torch.tensor(list(first))

    def ranks(texts):
        return rank_of_place(retriever.embed_texts(texts), ids, gallery.embeddings, gallery.place_ids, k=10, backend="torch").double()

    base = ranks([r.initial_caption for r in first.values()])
    answered = ranks([f"{r.initial_caption} {answer_sentence('facade_color', r.attributes['facade_color'], r.attributes)}" for r in first.values()])
    assert rows["facade_color"]["dlog_rank"] == pytest.approx(float((answered.log() - base.log()).mean()), abs=1e-6)
