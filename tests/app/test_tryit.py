"""The try-it log (no browser): its records, and their tabulation like simulated dialogues."""

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

from dlgpr.app.finder import FinderConfig, PlaceFinder, drive
from dlgpr.app.tryit import TRYIT_FORMAT, append_log, log_result, pick_target, read_logs
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.loop import run_dialogue
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from tests.helpers.lexical_world import lexical_world, oracle_answer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world():
    return lexical_world(places_per_city=10)




def test_log_records_and_their_table_match_run_dialogue(world, tmp_path):
    """Sessions answered as the simulated user would answer give, through the log, run_dialogue's ranks and metrics."""
    retriever, gallery, queries = world
    qs = queries[:6]
    finder = PlaceFinder(retriever, gallery, OracleTeacherQuestioner(), FinderConfig(top_k=10, show=3, max_questions=None))
    log = tmp_path / "log" / "tryit.jsonl"
    for q in qs:
        s = finder.start(q.initial_description, target_place_id=q.target.place_id)
        drive(s, oracle_answer(q, s), rounds=2)
        s.confirm(1)
        append_log(log, s)
    lines = log.read_text().splitlines()
    assert len(lines) == 6
    first = json.loads(lines[0])
    assert first["format"] == TRYIT_FORMAT and first["version"] == 1 and first["num_positives"] == 2 and first["time"].endswith("+00:00")
    assert first["target_place_id"] == qs[0].target.place_id and len(first["rounds"]) == 3
    # every image of the target has its rank each round; the best is the session's target rank
    for r in first["rounds"]:
        assert len(r["positive_ranks"]) == 2 and min(r["positive_ranks"]) >= 1 and r["target_rank"] >= 1

    result = log_result(read_logs([log]), rounds=2)
    loop = run_dialogue(retriever, OracleTeacherQuestioner(), OracleAnswerer(), qs, gallery, rounds=2, top_k=10)
    assert torch.equal(result.ranks, loop.ranks) and torch.equal(result.num_positives, loop.num_positives)
    assert torch.equal(result.positive_ranks.sort(dim=2).values, loop.positive_ranks.sort(dim=2).values)
    mine, theirs = result.summary(), loop.summary()
    for key in theirs:
        if key.startswith("round") or key in ("bri", "mean_questions", "queries"):
            assert mine[key] == pytest.approx(theirs[key]), key


def record(place, ranks, found=None):
    """A hand-written try-it record: ``ranks`` of the target per round (one image per place)."""
    return {"format": TRYIT_FORMAT, "version": 1, "target_place_id": place, "description": f"place {place}", "num_positives": 1,
            "transcript": [{"question": f"Q{t}?", "answer": f"A{t}.", "failed": False, "failure": "", "think": ""} for t in range(1, len(ranks))],
            "rounds": [{"target_rank": r, "positive_ranks": [r], "candidates": [{"key": f"k{t}"}]} for t, r in enumerate(ranks)],
            "found": found}


def test_evaluate_dialogue_tabulates_logs_with_hand_computed_recall(tmp_path, monkeypatch):
    # rounds=2; A hits at round 1; B stops after 1 question at rank 2 (repeated); C is cut at round 2, where it hits
    log = tmp_path / "tryit.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in (record(1, [3, 1, 1], True), record(2, [2, 2]), record(3, [5, 4, 1, 1]))) + "\n\n")
    spec = importlib.util.spec_from_file_location("evaluate_dialogue", ROOT / "scripts" / "evaluate_dialogue.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "evaluate_dialogue", script)  # its dataclasses look their module up
    spec.loader.exec_module(script)
    out = script.evaluate(human_logs=[str(log)], rounds=2, report_rounds=[1, 2], out_dir=str(tmp_path / "eval"))
    people = out["people"]
    # cumulative R@1: round 0 none of 3; round 1 A; round 2 A and C
    assert [people[f"round{t}/recall@1"] for t in range(3)] == pytest.approx([0, 1 / 3, 2 / 3])
    assert [people[f"round{t}/recall@1_this_round"] for t in range(3)] == pytest.approx([0, 1 / 3, 2 / 3])
    # R@5: every rank is <= 5 from round 0 on
    assert people["round0/recall@5"] == 1.0 and people["mean_questions"] == pytest.approx((2 + 1 + 2) / 3)
    table = (tmp_path / "eval" / "human.md").read_text()
    assert "R@1 by round (cumulative, %): 0.0 33.3 66.7" in table and "| People (try it) | 2 | 66.7 | 100.0 |" in table
    assert "3 try-it sessions" in table and "found (confirmed the target): 1" in table
    saved = json.loads((tmp_path / "eval" / "human.json").read_text())
    assert [q["ranks"] for q in saved["queries"]] == [[3, 1, 1], [2, 2, 2], [5, 4, 1]]


def test_read_logs_refuses_a_line_that_is_not_a_try_it_record(tmp_path):
    log = tmp_path / "x.jsonl"
    log.write_text(json.dumps(record(1, [1])) + "\n" + json.dumps({"format": "other"}) + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl:2: not a try-it record"):
        read_logs([log])
    log.write_text("{oops\n")
    with pytest.raises(ValueError, match=r"x.jsonl:1: not JSON"):
        read_logs([log])


def test_pick_target_draws_places_uniformly_and_shows_their_first_image(world):
    retriever, gallery, _ = world
    finder = PlaceFinder(retriever, gallery, OracleTeacherQuestioner())
    rng = random.Random(0)
    draws = [pick_target(finder, rng) for _ in range(200)]
    places = {int(p) for p in gallery.place_ids}
    assert {p for p, _ in draws} <= places and len({p for p, _ in draws}) > len(places) // 2
    for place, row in draws:
        assert int(gallery.place_ids[row]) == place and row == gallery.place_ids.tolist().index(place)
    assert pick_target(finder, random.Random(5)) == pick_target(finder, random.Random(5))
