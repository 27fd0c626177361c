""""Try it" sessions: a person is shown a random place, describes it from memory and answers the
questions; the target is known, so each finished session is a dialogue with a human user that
can be scored like a simulated one.

A try-it log is a JSONL file, one finished session per line: :meth:`FinderSession.to_dict`
(description, transcript, per round the query, the target's best rank ``target_rank`` and the
ranks of all its images ``positive_ranks``, candidates, timings, outcome) plus ``format``
(:data:`TRYIT_FORMAT`), ``version``, ``time`` (UTC, ISO 8601) and ``num_positives``.
:func:`log_result` turns such records into a :class:`~dlgpr.dialogue.loop.DialogueResult`, so
``scripts/evaluate_dialogue.py --human_logs`` reports R@K per round, BRI and PRG with the same
code as for the simulated user.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import torch

from dlgpr.app.finder import FinderSession, PlaceFinder
from dlgpr.data.turns import Target, Turn
from dlgpr.dialogue.loop import DialogueQuery, DialogueResult

__all__ = ["TRYIT_FORMAT", "append_log", "log_result", "pick_target", "read_logs", "tryit_record"]

TRYIT_FORMAT = "dlgpr-tryit"
TRYIT_VERSION = 1


def pick_target(finder: PlaceFinder, rng: random.Random) -> tuple[int, int]:
    """A random place of the finder's gallery, uniformly over places (not images): ``(place_id,
    row)`` with ``row`` its first image in the gallery (the one shown to the person)."""
    place_ids = finder.gallery.place_ids.tolist()
    first: dict[int, int] = {}
    for row, pid in enumerate(place_ids):
        first.setdefault(int(pid), row)
    place = rng.choice(sorted(first))
    return place, first[place]


def tryit_record(session: FinderSession) -> dict[str, Any]:
    """The JSON line a finished try-it session adds to the log."""
    if session.target_place_id is None:
        raise ValueError("a try-it record needs a session whose target place is known")
    record = session.to_dict()
    record.update({
        "format": TRYIT_FORMAT, "version": TRYIT_VERSION, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_positives": session.finder.gallery.num_positives(session.target_place_id),
    })
    return record


def append_log(path: str | Path, session: FinderSession) -> dict[str, Any]:
    """Append the session's :func:`tryit_record` as one line to the JSONL file ``path``."""
    record = tryit_record(session)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return record


def read_logs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every record of the try-it logs ``paths``; a line that is not a try-it record is refused
    with its file and line number."""
    records = []
    for path in paths:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if record.get("format") != TRYIT_FORMAT or record.get("target_place_id") is None:
                raise ValueError(f"{path}:{n}: not a try-it record (format {record.get('format')!r}, target {record.get('target_place_id')!r})")
            if not record.get("rounds") or record["rounds"][0].get("target_rank") is None:
                raise ValueError(f"{path}:{n}: the target place has no rank (its images were not in the gallery)")
            records.append(record)
    return records


def log_result(records: list[dict[str, Any]], rounds: int = 5) -> DialogueResult:
    """Try-it records as a :class:`DialogueResult` of ``rounds`` question rounds.

    Each turn is a round, a failed question's included (it added nothing to the query but used
    its round, as in ``run_dialogue``); a session that asked fewer questions repeats the ranks it ended with (as
    a stopped simulated dialogue does) and one that asked more is cut at ``rounds``.
    ``questions_asked`` is the number of rounds each session really had, up to ``rounds``.
    """
    if not records:
        raise ValueError("no try-it records to tabulate")
    n = len(records)
    ranked = [[r for r in rec["rounds"]] for rec in records]
    width = max(max((len(r.get("positive_ranks") or [1]) for r in rr), default=1) for rr in ranked)
    ranks = torch.zeros(n, rounds + 1, dtype=torch.float64)
    positive = torch.zeros(n, rounds + 1, width, dtype=torch.float64)
    num_pos = torch.zeros(n, dtype=torch.long)
    asked = torch.zeros(n, dtype=torch.long)
    queries, turns, top_keys = [], [], []
    for i, (rec, rr) in enumerate(zip(records, ranked)):
        kept = rr[: rounds + 1]
        asked[i] = len(kept) - 1
        for t in range(rounds + 1):
            r = kept[min(t, len(kept) - 1)]
            ranks[i, t] = float(r["target_rank"])
            pos = r.get("positive_ranks") or [float(r["target_rank"])]
            positive[i, t, : len(pos)] = torch.tensor(pos, dtype=torch.float64)
        num_pos[i] = int(rec.get("num_positives") or len(kept[0].get("positive_ranks") or [1]))
        queries.append(DialogueQuery(i, rec["description"], Target(int(rec["target_place_id"]), "")))
        turns.append([Turn(question=t["question"], answer=t["answer"], think=t.get("think", ""), failed=bool(t.get("failed")),
                           failure=t.get("failure", "")) for t in rec["transcript"]][:rounds])
        keys = [[c["key"] for c in r["candidates"]] for r in kept]
        top_keys.append(keys + [keys[-1]] * (rounds + 1 - len(keys)))
    return DialogueResult(queries, ranks, positive, num_pos, turns, top_keys, questions_asked=asked)
