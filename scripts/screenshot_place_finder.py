"""Serve the place finder's web page, run one "try it" search in headless Chromium and save a screenshot.

    python scripts/screenshot_place_finder.py                      # docs/place_finder.png
    python scripts/screenshot_place_finder.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt \
        --index runs/index/test --out docs/place_finder.png

The page is served on 127.0.0.1 on a free port with the retriever (default: the newest
``lightning_logs/*/checkpoints/last.ckpt``) and the gallery (``--index``, else the SynthCities
test split encoded now); the oracle teacher asks. The browser presses "Try it" (the place shown
is the seeded ``pick_target`` draw, so the script knows it), describes that place as a vague
memory ("A purple building with a BOOKS sign.": facade colour and shop sign), answers
``--questions`` questions as the oracle user would for it, saves the page, then confirms the top
candidate. Chromium: the system's (``chromium``,
``chromium-browser`` or ``$DLGPR_CHROMIUM``), driven by the ``playwright`` package; Playwright's own
browser downloads are not used. The browser tests (tests/app/test_web.py) drive the page with
:func:`drive_page` too.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

__all__ = ["drive_page", "find_chromium", "free_port", "screenshot", "vague_description"]


def find_chromium() -> str | None:
    """The system Chromium: ``$DLGPR_CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on the PATH."""
    env = os.environ.get("DLGPR_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _captions(page: Any) -> list[str]:
    # the grid's captions, in rank order
    return [t.strip() for t in page.locator("#candidates figcaption, #candidates .caption-label").all_inner_texts() if t.strip()]


def drive_page(
    url: str,
    describe: Callable[[], str],
    answer_fn: Callable[[str], str],
    questions: int,
    screenshot_path: str | Path,
    download_dir: str | Path,
    chromium: str | None = None,
    try_it: bool = True,
    timeout_ms: int = 30_000,
    final_screenshot: str | Path | None = None,
) -> dict[str, Any]:
    """Use the page like a person: (press "Try it"), type ``describe()``, start, answer
    ``questions`` questions with ``answer_fn(question text)``, save a full-page screenshot
    (``screenshot_path``), confirm candidate 1, download the transcript and save another
    screenshot (``final_screenshot``, if given). Returns what the page showed: the grid's captions
    after each step (``grids``), the questions, the rank line, the final message and the
    downloaded transcript (parsed)."""
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium binary found (install the distribution's chromium package, or set DLGPR_CHROMIUM)")
    seen: dict[str, Any] = {"grids": [], "questions": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            page.locator("#description textarea").wait_for()
            if try_it:
                page.locator("#try-it").click()
                page.locator("#target-image img").wait_for()
                seen["target_image_shown"] = True
            page.locator("#description textarea").fill(describe())
            page.locator("#start").click()
            question = page.locator("#question")
            expect(question).to_contain_text("Question 1:")
            if try_it:
                expect(page.locator("#target-image")).to_be_hidden()
            expect(page.locator("#candidates img").first).to_be_visible()
            seen["grids"].append(_captions(page))
            for i in range(1, questions + 1):
                text = question.inner_text().split(":", 1)[1].strip()
                seen["questions"].append(text)
                page.locator("#answer textarea").fill(answer_fn(text))
                page.locator("#answer-btn").click()
                # the next question (or the end of the questions) marks the new ranking
                expect(question).not_to_contain_text(f"Question {i}:")
                seen["grids"].append(_captions(page))
            seen["ranks"] = page.locator("#ranks").inner_text()
            Path(screenshot_path).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot_path), full_page=True)  # mid-search: grid, question, rank line
            page.locator("#confirm").click()
            expect(question).to_contain_text("Finished")
            seen["final_ranks"] = page.locator("#ranks").inner_text()
            seen["messages"] = page.locator("#messages").inner_text()
            with page.expect_download() as info:
                page.locator("#download").click()
            target = Path(download_dir) / "transcript.json"
            info.value.save_as(target)
            seen["transcript"] = json.loads(target.read_text())
            if final_screenshot is not None:
                page.screenshot(path=str(final_screenshot), full_page=True)
        finally:
            browser.close()
    return seen


def vague_description(attributes: dict[str, Any]) -> str:
    """What a person may remember of a SynthCities place: its facade colour and its shop sign."""
    sign = attributes.get("shop_sign")
    return f"A {attributes.get('facade_color', 'plain')} building" + (f" with a {sign} sign." if sign and sign != "none" else ".")


def screenshot(
    ckpt: str | None = None,
    index: str | None = None,
    data_dir: str = "data/synthcities",
    split: str = "test",
    out: str = "docs/place_finder.png",
    questions: int = 2,
    seed: int = 3,
    show: int = 5,
) -> dict[str, Any]:
    """Args:
        ckpt: retriever checkpoint (default: the newest under lightning_logs/).
        index: a saved gallery index (default: encode ``split`` of ``data_dir`` now).
        data_dir: SynthCities / DQ-Cities shards.
        split: the gallery's split.
        out: the screenshot to write.
        questions: questions answered before confirming.
        seed: seed of the "try it" draw.
        show: candidates in the grid.
    """
    import tempfile

    from dlgpr.app.__main__ import latest_checkpoint
    from dlgpr.app.finder import FinderConfig, PlaceFinder
    from dlgpr.app.index import GalleryIndex, build_index, retriever_fingerprint
    from dlgpr.app.tryit import pick_target
    from dlgpr.app.web import build_app, launch
    from dlgpr.data.turns import AnswerRequest, Target
    from dlgpr.dialogue.answerers import OracleAnswerer
    from dlgpr.dialogue.questioners import OracleTeacherQuestioner
    from dlgpr.retrieval import ModuleTextRetriever, load_retriever

    ckpt_path = Path(ckpt) if ckpt else latest_checkpoint()
    module = load_retriever(ckpt_path)
    gallery = GalleryIndex.load(index, fingerprint=retriever_fingerprint(module)) if index else build_index(module, data_dir, split)
    finder = PlaceFinder(ModuleTextRetriever(module), gallery, OracleTeacherQuestioner(), FinderConfig(top_k=30, show=show))
    place, row = pick_target(finder, random.Random(seed))  # the page's first draw with the same seed
    target = Target(place, gallery.descriptions[row], gallery.attributes[row])
    user = OracleAnswerer()
    asked: list[str] = []

    def answer(question: str) -> str:
        asked.append(question)
        return user.answer([AnswerRequest(0, len(asked), question, target, ())])[0].text

    demo = build_app(finder, try_log=None, seed=seed)
    port = free_port()
    launch(demo, port=port, block=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            seen = drive_page(f"http://127.0.0.1:{port}/", lambda: vague_description(target.attributes), answer, questions, out, tmp)
    finally:
        demo.close()
    print(f"wrote {out}: target place {place}; {seen['final_ranks']}")
    return seen


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(screenshot, as_positional=False)
