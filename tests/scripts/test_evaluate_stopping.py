import json

import pytest

from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.loop import run_dialogue
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from dlgpr.dialogue.stopping import StoppingConfig
from tests.helpers.cmpl import tiny_checkpoint
from tests.helpers.lexical_world import lexical_world
from tests.helpers.scripts import load_script
from tests.helpers.shards import make_tiny_dataset


@pytest.fixture(scope="module")
def script():
    return load_script("evaluate_stopping")


@pytest.mark.parametrize("rule", ["margin", "entropy"])
def test_the_curve_read_off_the_fixed_dialogue_is_what_a_stopped_run_gives(script, rule):
    retriever, gallery, queries = lexical_world(places_per_city=15)
    qs = queries[:20]
    run = lambda cfg: run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), qs, gallery, rounds=4, top_k=10, stopping=cfg)  # noqa: E731
    fixed = run(StoppingConfig(rule=rule, threshold=script.NEVER[rule], temperature=0.1))
    grid = script.thresholds(fixed, 4, steps=5)
    assert len(grid) >= 2
    for th in grid:
        cfg = StoppingConfig(rule=rule, threshold=th, temperature=0.1)
        point = script.curve_point(fixed, cfg)
        real = run(cfg)
        assert point["mean_questions"] == pytest.approx(float(real.questions_asked.double().mean()))
        assert point["recall@1"] == pytest.approx(100 * float((real.ranks[:, -1] <= 1).double().mean()))
        assert point["cumulative_recall@1"] == pytest.approx(100 * real.summary()["round4/recall@1"])
    never = script.curve_point(fixed, StoppingConfig(rule=rule, threshold=script.NEVER[rule]))
    assert never["mean_questions"] == 4 and never["stopped_early"] == 0


def test_script_writes_table_figure_and_results(script, tmp_path):
    make_tiny_dataset(tmp_path / "data")
    tiny_checkpoint(tmp_path / "tiny.ckpt")
    out = script.evaluate_stopping(ckpt=str(tmp_path / "tiny.ckpt"), data_dir=str(tmp_path / "data"), rounds=2, steps=4, out_dir=str(tmp_path / "out"))
    assert set(out["rules"]) == {"margin", "entropy"} and all(r["run_agrees_with_curve"] for r in out["rules"].values())
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| fixed 2 rounds |" in table and "| margin >= threshold |" in table and "| entropy <= threshold |" in table
    assert (tmp_path / "out" / "curve.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rules"]["margin"]["threshold"] == out["rules"]["margin"]["threshold"]
