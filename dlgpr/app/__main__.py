"""``python -m dlgpr.app``: find a place by answering questions, on a web page or a terminal.

    python -m dlgpr.app                                   # the web page on http://127.0.0.1:7860
    python -m dlgpr.app --ckpt lightning_logs/version_0/checkpoints/last.ckpt --index runs/index/test
    python -m dlgpr.app --terminal --questioner dlgpr.dialogue.questioners.RandomQuestioner --stopping.rule margin

Defaults: the newest ``lightning_logs/*/checkpoints/last.ckpt`` under the working directory, and
the SynthCities test split encoded on the spot when no ``--index`` (``scripts/index_gallery.py``)
is given; the oracle teacher asks (it reads SynthCities' ground-truth attributes of the
candidates; any questioner class or config can replace it). The web page (:mod:`dlgpr.app.web`,
Gradio: ``pip install 'dlgpr[app]'``) binds to ``--host`` (127.0.0.1 by default) and appends
finished "try it" sessions to ``--try_log``; ``--terminal`` needs no browser. Both front ends
drive the same :class:`~dlgpr.app.finder.FinderSession`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import auto_cli

from dlgpr.dialogue.stopping import StoppingConfig
from dlgpr.dialogue.types import Questioner


def latest_checkpoint(root: str | Path = ".") -> Path:
    """The newest ``lightning_logs/*/checkpoints/last.ckpt`` under ``root``."""
    found = sorted(Path(root).glob("lightning_logs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"error: no lightning_logs/*/checkpoints/last.ckpt under {Path(root).resolve()}; pass --ckpt (train one with `make demo`)")
    return found[-1]


def app(
    terminal: bool = False,
    ckpt: str | None = None,
    index: str | None = None,
    data_dir: str = "data/synthcities",
    split: str = "test",
    questioner: Questioner | None = None,
    top_k: int = 30,
    show: int = 5,
    max_questions: int | None = 5,
    stopping: StoppingConfig | None = None,
    max_chars: int = 1000,
    target: int | None = None,
    transcript: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    try_log: str | None = "runs/tryit/sessions.jsonl",
    seed: int | None = None,
) -> None:
    """Args:
        terminal: run in the terminal instead of serving the web page.
        ckpt: retriever checkpoint (default: the newest under lightning_logs/).
        index: a saved gallery index folder (default: encode ``split`` of ``data_dir`` now).
        data_dir: DQ-Cities / SynthCities shards, read when no index is given.
        split: the split whose images form the gallery.
        questioner: who asks (default: the oracle teacher of SynthCities).
        top_k: candidates the questioner sees each round.
        show: candidates shown to the person.
        max_questions: questions before the finder stops asking on its own (None: no limit).
        stopping: adaptive stopping (None: off).
        max_chars: longer descriptions and answers are cut.
        target: place id the person has in mind, when known (its rank is printed; terminal).
        transcript: write the session's JSON here at the end (terminal; the page has a download button).
        host: bind address of the web page (127.0.0.1: this machine only; 0.0.0.0 opens it to the network).
        port: its port.
        try_log: JSONL file the page appends finished "try it" sessions to (None: not logged).
        seed: seed of the places "try it" shows (None: random).
    """
    from dlgpr.app.finder import FinderConfig, PlaceFinder
    from dlgpr.app.index import GalleryIndex, build_index, retriever_fingerprint
    from dlgpr.app.terminal import run_terminal
    from dlgpr.dialogue.questioners import OracleTeacherQuestioner
    from dlgpr.retrieval import ModuleTextRetriever, load_retriever

    if not terminal:
        try:  # before the retriever loads: a missing gradio is one line, at once
            from dlgpr.app import web
        except ImportError as exc:
            raise SystemExit(f"error: {exc}; or run with --terminal") from None
    ckpt_path = Path(ckpt) if ckpt else latest_checkpoint()
    try:
        module = load_retriever(ckpt_path)
        if index:
            gallery = GalleryIndex.load(index, fingerprint=retriever_fingerprint(module))
        else:
            print(f"No --index: encoding the {split} split of {data_dir} (scripts/index_gallery.py saves an index once)", file=sys.stderr)
            gallery = build_index(module, data_dir, split, checkpoint=str(ckpt_path))
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise SystemExit(f"error: {exc}") from None
    config = FinderConfig(top_k=top_k, show=show, stopping=stopping, max_questions=max_questions, max_chars=max_chars)
    finder = PlaceFinder(ModuleTextRetriever(module), gallery, questioner or OracleTeacherQuestioner(), config)
    if terminal:
        run_terminal(finder, sys.stdin, sys.stdout, target_place_id=target, transcript=transcript)
        return
    print(f"Serving the place finder on http://{host}:{port} (Ctrl-C stops it)", file=sys.stderr)
    web.launch(web.build_app(finder, try_log=try_log, seed=seed), host=host, port=port)


def main(args: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if args is None else args)
    # `--terminal` alone is a switch (jsonargparse's booleans otherwise want a value)
    args = ["--terminal=true" if a == "--terminal" else a for a in args]
    auto_cli(app, as_positional=False, args=args)


if __name__ == "__main__":
    main()
