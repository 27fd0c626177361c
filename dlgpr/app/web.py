"""The web page of :class:`~dlgpr.app.finder.PlaceFinder` (``python -m dlgpr.app``), built with Gradio.

The page is a front end only: every button is one call on a
:class:`~dlgpr.app.finder.FinderSession` (``start``, ``answer``, ``dont_know``,
``next_question``, ``confirm``, ``to_json``) and what it shows is read back from the session
(``candidates()``, ``pending``, ``target_ranks``, ``messages``), as the terminal front end does.
Sessions live on the server, one per browser tab, keyed by a random token kept in the page.

"Try it" shows the person the first image of a random place of the gallery; starting the search
hides it, and the person describes and answers from memory. The target is then known: the page
shows its rank after every round, and a finished (confirmed) try-it session is appended to the
JSONL log ``try_log`` (:mod:`dlgpr.app.tryit`).

Gradio is an optional dependency (``pip install 'dlgpr[app]'``); importing this module without
it raises one line naming the extra.
"""

from __future__ import annotations

import io
import os
import random
import secrets
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from dlgpr.app.finder import FinderSession, PlaceFinder
from dlgpr.app.tryit import append_log, pick_target
from dlgpr.utils import require_extra

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
gr = require_extra("gradio", "The place finder's web page")

__all__ = ["build_app", "launch", "load_image"]

PLACEHOLDER_SIZE = 128


@lru_cache(maxsize=512)
def load_image(location: str) -> Image.Image:
    """The image at a candidate's location: a file, or ``<shard>#<member>`` inside a tar shard; a
    grey square when there is none (a bare gallery has keys, not images)."""
    try:
        if "#" in location:
            shard, member = location.rsplit("#", 1)
            with tarfile.open(shard) as tar:
                data = tar.extractfile(member).read()
            return Image.open(io.BytesIO(data)).convert("RGB")
        return Image.open(location).convert("RGB")
    except (OSError, KeyError, AttributeError, tarfile.TarError):
        return Image.new("RGB", (PLACEHOLDER_SIZE, PLACEHOLDER_SIZE), (200, 200, 200))


@dataclass
class _Tab:
    """What the server keeps for one browser tab."""

    session: FinderSession | None = None
    target: int | None = None
    """Place id shown by "try it" (None: the person searches their own place)."""
    target_row: int | None = None
    seen: int = 0
    """Messages of the session already shown."""
    logged: bool = False
    notes: list[str] = field(default_factory=list)


class _Store:
    def __init__(self) -> None:
        self.tabs: dict[str, _Tab] = {}
        self.lock = threading.Lock()

    def get(self, token: str | None) -> tuple[str, _Tab]:
        with self.lock:
            if not token or token not in self.tabs:
                token = secrets.token_hex(8)
                self.tabs[token] = _Tab()
            return token, self.tabs[token]


def _fmt_rank(r: float | None) -> str:
    return "-" if r is None else f"{r:.4g}"


def build_app(finder: PlaceFinder, try_log: str | Path | None = None, seed: int | None = None, title: str = "dlgpr place finder") -> Any:
    """The page as a ``gradio.Blocks`` (not launched; see :func:`launch`).

    Args:
        finder: the PlaceFinder every session of the page uses.
        try_log: JSONL file finished "try it" sessions are appended to (None: not logged).
        seed: seed of the random places "try it" shows (None: different on every start).
        title: the page's title.
    """
    store = _Store()
    rng = random.Random(seed)
    files = Path(tempfile.mkdtemp(prefix="dlgpr-app-"))
    show = finder.config.show

    def view(token: str, tab: _Tab) -> dict:
        s = tab.session
        out: dict = {state: token}
        notes = list(tab.notes)
        tab.notes.clear()
        if s is None:
            out.update({messages: "\n".join(f"- {m}" for m in notes), grid: [], question: "", think: "", ranks: "",
                        download: gr.update(visible=False)})
            return out
        notes += s.messages[tab.seen:]
        tab.seen = len(s.messages)
        out[messages] = "\n".join(f"- {m}" for m in notes)
        out[grid] = [(load_image(c.image), f"#{c.rank} · place {c.place_id}") for c in s.candidates()]
        if s.confirmed is not None:
            out[question] = f"**Finished:** candidate #{s.confirmed.rank} (place {s.confirmed.place_id}) is the place."
        elif s.pending is not None:
            out[question] = f"**Question {s.questions_asked + 1}:** {s.pending.text}"
        elif s.stopped:
            out[question] = "**No more questions for now.** Confirm a candidate, or ask for another question."
        else:
            out[question] = "**No question right now.** Ask for another question, or add a detail as an answer."
        out[think] = (s.pending.think if s.pending is not None and s.pending.think else "(the questioner gave no reasoning)")
        if s.target_place_id is not None:
            history = " → ".join(_fmt_rank(r) for r in s.target_ranks)
            line = f"Target place {s.target_place_id}: rank by round {history}"
            if s.confirmed is not None:
                line += " — **found it!**" if s.confirmed.place_id == s.target_place_id else " — not the target place."
            out[ranks] = line
        else:
            out[ranks] = ""
        path = files / f"session-{token}.json"
        path.write_text(s.to_json())
        out[download] = gr.update(value=str(path), visible=True)
        return out

    def on_try(token: str | None) -> dict:
        token, tab = store.get(token)
        with store.lock:
            tab.session, tab.logged, tab.seen = None, False, 0
            tab.target, tab.target_row = pick_target(finder, rng)
        tab.notes.append("Look at this place, then describe it from memory below: the image hides when you start.")
        out = view(token, tab)
        out[target_image] = gr.update(value=load_image(finder.image_location(tab.target_row)), visible=True)
        return out

    def on_start(token: str | None, text: str) -> dict:
        token, tab = store.get(token)
        with store.lock:
            tab.session = finder.start(text or "", target_place_id=tab.target)
            tab.seen, tab.logged = 0, False
            tab.session.next_question()
        out = view(token, tab)
        out[target_image] = gr.update(visible=False)
        return out

    def step(token: str | None, action: str, text: str = "") -> dict:
        token, tab = store.get(token)
        s = tab.session
        if s is None:
            tab.notes.append("Start a search first: describe the place and press \"Start the search\".")
            return view(token, tab)
        with store.lock:
            if action == "answer":
                before = len(s.history)
                s.answer(text or "")
                if len(s.history) > before:
                    s.next_question()
            elif action == "dont_know":
                s.dont_know()
                s.next_question()
            elif action == "more":
                s.next_question(force=True)
        out = view(token, tab)
        if action == "answer" and len(s.history) and s.history[-1].answer:
            out[answer] = ""
        return out

    def on_confirm(token: str | None, rank: float | None) -> dict:
        token, tab = store.get(token)
        s = tab.session
        if s is None:
            tab.notes.append("Start a search first.")
            return view(token, tab)
        with store.lock:
            try:
                s.confirm(int(rank or 1))
            except ValueError as exc:
                tab.notes.append(str(exc))
            if s.confirmed is not None and s.target_place_id is not None and try_log is not None and not tab.logged:
                append_log(try_log, s)
                tab.logged = True
                tab.notes.append(f"This try-it session was added to {try_log}.")
            shown_row = tab.target_row if s.confirmed is not None else None
            if shown_row is not None:  # the next search is the person's own unless they press "Try it" again
                tab.target = tab.target_row = None
        out = view(token, tab)
        if shown_row is not None:
            out[target_image] = gr.update(value=load_image(finder.image_location(shown_row)), visible=True, label="The place you were shown")
        return out

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        state = gr.State(None)
        gr.Markdown(f"# {title}\nDescribe a place you remember; answer the questions; the candidates update after every answer. "
                    "Answers are plain text. Or press **Try it** to be shown a random place first and find it again from memory.")
        with gr.Row():
            try_btn = gr.Button("Try it: show me a random place", elem_id="try-it")
        target_image = gr.Image(label="Remember this place", visible=False, interactive=False, height=256, elem_id="target-image")
        description = gr.Textbox(label="Describe the place you are looking for", lines=2, elem_id="description")
        start_btn = gr.Button("Start the search", variant="primary", elem_id="start")
        messages = gr.Markdown(elem_id="messages")
        grid = gr.Gallery(label="Candidates (rank · place)", columns=show, object_fit="cover", height="auto",
                          allow_preview=False, elem_id="candidates")
        question = gr.Markdown(elem_id="question")
        with gr.Accordion("The questioner's reasoning", open=False):
            think = gr.Markdown(elem_id="think")
        answer = gr.Textbox(label="Your answer (plain text)", lines=1, elem_id="answer")
        with gr.Row():
            answer_btn = gr.Button("Answer", variant="primary", elem_id="answer-btn")
            dont_know_btn = gr.Button("Don't know", elem_id="dont-know")
            more_btn = gr.Button("Ask another question", elem_id="more")
        ranks = gr.Markdown(elem_id="ranks")
        with gr.Row():
            confirm_rank = gr.Number(label="Candidate rank", value=1, precision=0, minimum=1, elem_id="confirm-rank")
            confirm_btn = gr.Button("This is the place", variant="stop", elem_id="confirm")
            download = gr.DownloadButton("Download the transcript (JSON)", visible=False, elem_id="download")

        shown = [state, messages, grid, question, think, ranks, download]
        try_btn.click(on_try, [state], shown + [target_image])
        start_btn.click(on_start, [state, description], shown + [target_image])
        description.submit(on_start, [state, description], shown + [target_image])
        answer_btn.click(lambda t, a: step(t, "answer", a), [state, answer], shown + [answer])
        answer.submit(lambda t, a: step(t, "answer", a), [state, answer], shown + [answer])
        dont_know_btn.click(lambda t: step(t, "dont_know"), [state], shown)
        more_btn.click(lambda t: step(t, "more"), [state], shown)
        confirm_btn.click(on_confirm, [state, confirm_rank], shown + [target_image])
    return demo


def launch(demo: Any, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Serve the page on ``host:port`` (127.0.0.1 by default: this machine only); with
    ``block=False`` return at once (tests, screenshots) and stop it with ``demo.close()``."""
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block, share=False,
                       footer_links=[], theme=theme, ssr_mode=False)
