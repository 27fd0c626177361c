"""The web page in a real browser: the system's headless Chromium driven by Playwright against the
app served on 127.0.0.1 (skipped, with the reason, only when no chromium binary is found)."""

import json
import random

import pytest
import torch
from PIL import Image

from dlgpr.app.finder import FinderConfig, PlaceFinder
from dlgpr.app.index import GalleryIndex
from dlgpr.app.tryit import pick_target
from dlgpr.data.turns import AnswerRequest, Question
from dlgpr.dialogue.answerers import OracleAnswerer
from dlgpr.dialogue.questioners import OracleTeacherQuestioner
from tests.helpers.lexical_world import lexical_world
from tests.helpers.scripts import load_script

gr = pytest.importorskip("gradio", reason="the web page needs gradio (pip install 'dlgpr[app]')")
shots = load_script("screenshot_place_finder")
CHROMIUM = shots.find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (apt-get install chromium; .ci/run installs it as root)")

COLOURS = {"red": (200, 40, 40), "yellow": (230, 200, 40), "blue": (40, 80, 200), "green": (40, 160, 60), "white": (240, 240, 240),
           "grey": (128, 128, 128), "brown": (120, 80, 40), "beige": (220, 200, 160), "pink": (240, 150, 180), "orange": (240, 140, 30)}


def lexical_index(tmp_path):
    """The lexical world as a GalleryIndex whose images are squares of each place's facade colour."""
    retriever, gallery, queries = lexical_world(places_per_city=10)
    images = []
    for key, attrs in zip(gallery.keys, gallery.attributes):
        path = tmp_path / "imgs" / f"{key}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (48, 48), COLOURS.get(attrs["facade_color"], (90, 90, 90))).save(path)
        images.append(str(path))
    coords = torch.full((len(gallery), 2), float("nan"), dtype=torch.float64)
    index = GalleryIndex(gallery.embeddings, gallery.place_ids, coords, gallery.keys, gallery.descriptions, gallery.attributes, images)
    return retriever, index, queries


class FlakyQuestioner:
    """The endpoint is down on the first call; then it asks."""

    def __init__(self):
        self.calls = 0

    def ask(self, requests):
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("endpoint down")
        return [Question(text=f"Question number {self.calls}?", think="I compare the facades.")]


def serve(tmp_path, questioner, config):
    from dlgpr.app.web import build_app, launch

    retriever, index, queries = lexical_index(tmp_path)
    finder = PlaceFinder(retriever, index, questioner, config)
    demo = build_app(finder, try_log=tmp_path / "tryit.jsonl", seed=7)
    port = shots.free_port()
    launch(demo, port=port, block=False)
    return demo, f"http://127.0.0.1:{port}/", finder, queries


@pytest.fixture
def served(tmp_path):
    demo, url, finder, queries = serve(tmp_path, OracleTeacherQuestioner(), FinderConfig(top_k=10, show=4, max_questions=5))
    try:
        yield url, finder, queries
    finally:
        demo.close()


@needs_chromium
def test_try_it_search_in_the_browser(served, tmp_path):
    pytest.importorskip("playwright", reason="the browser tests need the playwright package (pip install 'dlgpr[dev]')")
    url, finder, queries = served
    place, _ = pick_target(finder, random.Random(7))  # the page's first draw
    query = next(q for q in queries if q.target.place_id == place)
    answers = []

    def answer(question):
        answers.append(OracleAnswerer().answer([AnswerRequest(0, len(answers) + 1, question, query.target, ())])[0].text)
        return answers[-1]

    seen = shots.drive_page(url, lambda: query.initial_description, answer, 2, tmp_path / "page.png", tmp_path, chromium=CHROMIUM,
                            final_screenshot=tmp_path / "final.png")

    assert seen["target_image_shown"]
    record = seen["transcript"]
    # the page shows the session's own candidates after each step, and they change with the answers
    assert len(seen["grids"]) == 3 and all(len(g) == 4 for g in seen["grids"])
    for grid, rnd in zip(seen["grids"], record["rounds"]):
        assert grid == [f"#{c['rank']} · place {c['place_id']}" for c in rnd["candidates"]]
    assert seen["grids"][0] != seen["grids"][2]
    assert [t["question"] for t in record["transcript"]] == seen["questions"] and [t["answer"] for t in record["transcript"]] == answers
    assert record["description"] == query.initial_description and record["target_place_id"] == place
    # the target's rank history, then the outcome
    ranks = " → ".join(f"{r:.4g}" for r in record["target_ranks"])
    assert f"Target place {place}: rank by round {ranks}" in seen["ranks"]
    assert record["stop_reason"] == "confirmed" and record["confirmed"]["rank"] == 1
    assert ("found it" in seen["final_ranks"]) == (record["confirmed"]["place_id"] == place)
    # the finished try-it session went to the log
    (logged,) = [json.loads(line) for line in (tmp_path / "tryit.jsonl").read_text().splitlines()]
    assert logged["format"] == "dlgpr-tryit" and logged["target_ranks"] == record["target_ranks"] and "tryit.jsonl" in seen["messages"]
    for name in ("page.png", "final.png"):
        shot = Image.open(tmp_path / name)
        assert shot.width >= 1000 and shot.height > 600


@needs_chromium
def test_a_failing_questioner_and_a_long_answer_show_messages_and_the_search_goes_on(tmp_path):
    pytest.importorskip("playwright", reason="the browser tests need the playwright package (pip install 'dlgpr[dev]')")
    from playwright.sync_api import expect, sync_playwright

    demo, url, finder, _ = serve(tmp_path, FlakyQuestioner(), FinderConfig(top_k=10, show=4, max_chars=40))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(url)
            page.locator("#description textarea").fill("A red building.")
            page.locator("#start").click()
            messages, question = page.locator("#messages"), page.locator("#question")
            expect(messages).to_contain_text("endpoint down")  # the questioner's failure, said to the person
            expect(question).to_contain_text("No question right now")
            expect(page.locator("#candidates img")).to_have_count(4)
            page.locator("#more").click()
            expect(question).to_contain_text("Question 2: Question number 2?")  # round 1 was the failed turn
            page.get_by_text("The questioner's reasoning").click()  # folded away until opened
            expect(page.locator("#think")).to_contain_text("I compare the facades.")
            page.locator("#answer textarea").fill("The facade is red and " + "very " * 20 + "old.")
            page.locator("#answer-btn").click()
            expect(messages).to_contain_text("only the first")
            expect(question).to_contain_text("Question 3:")
            page.locator("#dont-know").click()
            expect(question).to_contain_text("Question 4:")
            with page.expect_download() as info:
                page.locator("#download").click()
            info.value.save_as(tmp_path / "t.json")
            ranks = page.locator("#ranks").inner_text()
            browser.close()
    finally:
        demo.close()
    record = json.loads((tmp_path / "t.json").read_text())
    turns = record["transcript"]
    assert [t["failed"] for t in turns] == [True, False, False] and "endpoint down" in turns[0]["failure"] + " ".join(record["messages"])
    assert turns[1]["answer"].startswith("The facade is red") and len(turns[1]["answer"]) <= 40 and turns[2]["answer"] == "I don't know."
    # no target: no rank line, nothing logged
    assert ranks.strip() == "" and record["target_ranks"] == [None] * 4 and not (tmp_path / "tryit.jsonl").exists()


def test_python_m_dlgpr_app_serves_the_page_on_localhost_by_default(tmp_path, monkeypatch):
    """Without --terminal the entry point builds the page over the same PlaceFinder and serves it on 127.0.0.1."""
    from dlgpr.app import web
    from dlgpr.app.__main__ import main as app_main
    from tests.helpers.cmpl import tiny_checkpoint
    from tests.helpers.shards import make_tiny_dataset

    make_tiny_dataset(tmp_path / "data")
    tiny_checkpoint(tmp_path / "tiny.ckpt")
    load_script("index_gallery").index_gallery(ckpt=str(tmp_path / "tiny.ckpt"), out=str(tmp_path / "index"), data_dir=str(tmp_path / "data"))
    served = {}
    built = web.build_app

    def fake_build(finder, **kw):
        served["finder"], served["kw"] = finder, kw
        return built(finder, **kw)

    monkeypatch.setattr(web, "build_app", fake_build)
    monkeypatch.setattr(web, "launch", lambda demo, host, port: served.update(demo=demo, host=host, port=port))
    app_main(["--ckpt", str(tmp_path / "tiny.ckpt"), "--index", str(tmp_path / "index"), "--show", "3", "--try_log", str(tmp_path / "t.jsonl")])
    assert served["host"] == "127.0.0.1" and served["port"] == 7860 and isinstance(served["demo"], gr.Blocks)
    assert served["kw"]["try_log"] == str(tmp_path / "t.jsonl") and served["finder"].config.show == 3
    assert len(served["finder"].gallery) == 16 and served["finder"].index.images[0].endswith(".jpg")
