"""The terminal front end of :class:`~dlgpr.app.finder.PlaceFinder`: candidates as text lines
with their image locations, questions and answers on stdin/stdout. Every step is a call on a
:class:`~dlgpr.app.finder.FinderSession`; nothing here decides anything about the search.

Lines the person types: a description first; then an answer to each question, or

    ?            don't know
    /more        ask another question although the finder has stopped asking
    /confirm N   candidate N is the place (ends the search)
    /quit        end without choosing (so does the end of the input)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from dlgpr.app.finder import FinderSession, PlaceFinder, candidates_text

HELP = "Answer in plain text; '?' = don't know, '/more' = another question, '/confirm N' = candidate N is the place, '/quit' = stop."

__all__ = ["HELP", "run_terminal"]


def _read(stdin: TextIO, stdout: TextIO, prompt: str) -> str | None:
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    return None if line == "" else line.rstrip("\n")


def _flush_messages(session: FinderSession, stdout: TextIO, seen: int) -> int:
    for m in session.messages[seen:]:
        stdout.write(f"! {m}\n")
    return len(session.messages)


def run_terminal(finder: PlaceFinder, stdin: TextIO, stdout: TextIO, target_place_id: int | None = None, transcript: str | Path | None = None) -> FinderSession | None:
    """One search on a terminal; returns the session (None when no description was given).
    With ``transcript`` the session's JSON is written there at the end."""
    description = _read(stdin, stdout, "Describe the place you are looking for:\n> ")
    if description is None or not description.strip():
        stdout.write("No description; bye.\n")
        return None
    session = finder.start(description, target_place_id)
    seen = _flush_messages(session, stdout, 0)
    stdout.write(f"{HELP}\n")
    force = False
    printed = 0
    while session.confirmed is None:
        if len(session.rounds) != printed:  # a new ranking since the last one shown
            printed = len(session.rounds)
            stdout.write(f"Candidates after {session.questions_asked} question(s):\n{candidates_text(session.candidates())}\n")
            rank = session.target_ranks[-1]
            if rank is not None:
                stdout.write(f"(target place {target_place_id}: rank {rank:g})\n")
        question = session.next_question(force=force)
        force = False
        seen = _flush_messages(session, stdout, seen)
        prompt = f"Q{session.questions_asked + 1}: {question.text}\n> " if question is not None else "> "
        line = _read(stdin, stdout, prompt)
        if line is None or line.strip() == "/quit":
            break
        cmd = line.strip()
        if cmd == "?":
            session.dont_know()
        elif cmd == "/more":
            force = True
        elif cmd.startswith("/confirm"):
            try:
                chosen = session.confirm(int(cmd.split()[1]))
                stdout.write(f"Confirmed: {chosen.key} (place {chosen.place_id}) {chosen.image}\n")
            except (IndexError, ValueError) as exc:
                stdout.write(f"! {exc if isinstance(exc, ValueError) and 'rank' in str(exc) else 'usage: /confirm N'}\n")
        elif cmd.startswith("/"):
            stdout.write(f"! unknown command {cmd.split()[0]!r}. {HELP}\n")
        else:
            session.answer(line)
        seen = _flush_messages(session, stdout, seen)
    if session.confirmed is not None and target_place_id is not None:
        stdout.write("Found the target place.\n" if session.confirmed.place_id == target_place_id else f"Not the target place ({target_place_id}).\n")
    if transcript is not None:
        Path(transcript).parent.mkdir(parents=True, exist_ok=True)
        Path(transcript).write_text(session.to_json())
        stdout.write(f"Transcript written to {transcript}\n")
    else:
        stdout.write(json.dumps({"questions_asked": session.questions_asked, "stop_reason": session.stop_reason}) + "\n")
    return session
