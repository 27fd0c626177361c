import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlgpr.app.__main__ import main as app_main
from dlgpr.app.finder import FinderConfig, PlaceFinder
from dlgpr.app.terminal import run_terminal
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from tests.helpers.cmpl import tiny_checkpoint
from tests.helpers.lexical_world import lexical_world
from tests.helpers.scripts import load_script
from tests.helpers.shards import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_terminal_session_through_stdin(tmp_path):
    retriever, gallery, queries = lexical_world(places_per_city=10)
    q = queries[2]
    finder = PlaceFinder(retriever, gallery, OracleTeacherQuestioner(), FinderConfig(show=3))
    stdin = io.StringIO(f"{q.initial_description}\nThe door is red.\n\n?\n/bogus\n/confirm 99\n/confirm 2\n")
    out = io.StringIO()
    session = run_terminal(finder, stdin, out, target_place_id=q.target.place_id, transcript=tmp_path / "t.json")
    text = out.getvalue()
    assert text.count("Candidates after") == 3  # start, after the answer, after "?" (the empty answer changes nothing)
    assert "Q1: " in text and "Q2: " in text and "! The answer was empty" in text and "unknown command '/bogus'" in text
    assert "! rank must be between 1 and" in text and "Confirmed: " in text
    assert f"(target place {q.target.place_id}: rank" in text
    record = json.loads((tmp_path / "t.json").read_text())
    assert [t["answer"] for t in record["transcript"]] == ["The door is red.", "I don't know."]
    assert record["confirmed"]["rank"] == 2 and record["stop_reason"] == "confirmed" and session.confirmed.rank == 2


def test_terminal_ends_on_end_of_input_and_without_description():
    retriever, gallery, queries = lexical_world(places_per_city=10)
    finder = PlaceFinder(retriever, gallery, OracleTeacherQuestioner())
    assert run_terminal(finder, io.StringIO(""), io.StringIO()) is None
    out = io.StringIO()
    s = run_terminal(finder, io.StringIO("a red building\n"), out)
    assert s is not None and s.confirmed is None and '"questions_asked": 0' in out.getvalue()


def test_python_m_dlgpr_app_terminal_with_a_saved_index(tmp_path):
    make_tiny_dataset(tmp_path / "data")
    tiny_checkpoint(tmp_path / "tiny.ckpt")
    load_script("index_gallery").index_gallery(ckpt=str(tmp_path / "tiny.ckpt"), out=str(tmp_path / "index"), data_dir=str(tmp_path / "data"))
    cmd = [sys.executable, "-m", "dlgpr.app", "--terminal", "--ckpt", str(tmp_path / "tiny.ckpt"), "--index", str(tmp_path / "index"),
           "--questioner", "dlgpr.dialogue.questioners.RandomQuestioner", "--show", "3", "--transcript", str(tmp_path / "t.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(cmd, input="a red building\nThe facade is red.\n/confirm 1\n", capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Q1: " in run.stdout and str((tmp_path / "index" / "thumbs").resolve()) in run.stdout and "Confirmed: " in run.stdout
    record = json.loads((tmp_path / "t.json").read_text())
    assert record["transcript"][0]["answer"] == "The facade is red." and record["confirmed"]["rank"] == 1
    # an index built with another retriever stops the app with one line naming the file (in-process: the same entry point)
    meta_path = tmp_path / "index" / "index.json"
    payload = json.loads(meta_path.read_text())
    payload["meta"]["retriever_fingerprint"] = "0" * 64
    meta_path.write_text(json.dumps(payload))
    with pytest.raises(SystemExit) as stop:
        app_main(cmd[3:])
    assert str(stop.value).startswith("error: ") and "\n" not in str(stop.value)
    assert str(meta_path) in str(stop.value) and "another retriever" in str(stop.value)
