"""An append-only JSON-lines file of per-item results: what makes a builder stage resumable.

Each finished item (success or failure) is appended as one line and flushed to disk at once, so a
process killed at any moment loses at most the items still in flight. On reading, the last line
of a key wins (a rerun appends a fresh result for an item that failed before) and a torn last
line, the trace of a kill during a write, is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("dlgpr.pipeline")


class ItemStore:
    """``store.done()`` -> finished items by key; ``store.append(results)`` after each completion."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.torn_lines = 0

    def load(self) -> dict[str, dict[str, Any]]:
        """The latest result of every key (``{"key": ..., "ok": bool, ...}``)."""
        latest: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        if not self.path.is_file():
            return latest
        with open(self.path, "rb") as fh:
            for line in fh:
                try:
                    item = json.loads(line)
                    key = item["key"]
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                    self.torn_lines += 1
                    continue
                latest[key] = item
        if self.torn_lines:
            log.warning("%s: ignored %d unreadable line(s) (a write cut by a kill)", self.path, self.torn_lines)
        return latest

    def done(self) -> dict[str, dict[str, Any]]:
        """Items whose latest result succeeded: a rerun skips them and retries the rest."""
        return {k: v for k, v in self.load().items() if v.get("ok")}

    def append(self, items: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n" for item in items)
        if not lines:
            return
        self._repair_tail()
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())

    def _repair_tail(self) -> None:
        # A kill during a write can leave a last line without its newline; start on a fresh line
        # so that the torn fragment stays one unreadable line instead of corrupting the next one.
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


__all__ = ["ItemStore"]
