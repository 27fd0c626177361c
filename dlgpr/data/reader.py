"""Reading DQ-Cities shards sample by sample, with bad data skipped and counted.

Shards are streamed with webdataset's tar iterators; every failure of the data (a truncated
tar, an image that does not decode, a json that does not parse or misses a field, a sample with
a member missing) is caught, counted by ``(shard, kind)`` in a :class:`BadSampleLog` and
skipped, so a long run never dies on one broken file.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image
from webdataset import tariterators

from dlgpr.data.jpeg import decode_jpeg
from dlgpr.data.schema import PlaceRecord, RecordError

log = logging.getLogger("dlgpr.data")

BAD_KINDS = ("truncated_tar", "bad_image", "bad_json", "missing_member", "bad_shard", "unknown_place")
"""``bad_shard``: a dialogue-turn shard that does not open; ``unknown_place``: a dialogue turn whose
target or candidate is not in the place shards (``datamodules/dialogue.py``)."""


class BadSampleLog:
    """Counts of skipped samples by shard name and kind (one of :data:`BAD_KINDS`)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.first_reason: str | None = None
        """The first skip's reason, e.g. ``"<key>: description must be a non-empty string"``."""

    def add(self, shard: str, kind: str, n: int = 1, reason: str | None = None) -> None:
        if kind not in BAD_KINDS:
            raise ValueError(f"unknown bad-sample kind {kind!r}")
        if n > 0:
            self.counts[(shard, kind)] += n
            if reason and self.first_reason is None:
                self.first_reason = f"{shard}: {reason}"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_kind(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, kind), n in self.counts.items():
            out[kind] += n
        return dict(out)

    def summary(self) -> str:
        per_shard: dict[str, list[str]] = {}
        for (shard, kind), n in sorted(self.counts.items()):
            per_shard.setdefault(shard, []).append(f"{n} {kind}")
        return "; ".join(f"{shard}: {', '.join(parts)}" for shard, parts in per_shard.items())

    def report(self, context: str) -> None:
        """One warning line for the whole epoch (nothing when no sample was bad)."""
        if self.total:
            first = f"; first: {self.first_reason}" if self.first_reason else ""
            log.warning("%s: skipped %d bad sample(s) this epoch (%s)%s", context, self.total, self.summary(), first)


@dataclass
class Sample:
    """A decoded gallery image with its record."""

    record: PlaceRecord
    image: Image.Image  # RGB


def _decode(raw: dict, shard: str, bad: BadSampleLog) -> Sample | None:
    if "json" not in raw or "jpg" not in raw:
        bad.add(shard, "missing_member")
        return None
    try:
        record = PlaceRecord.from_json(raw["json"])
    except RecordError as exc:
        log.debug("%s/%s: %s", shard, raw.get("__key__"), exc)
        bad.add(shard, "bad_json", reason=str(exc))
        return None
    try:
        image = decode_jpeg(raw["jpg"])  # decode now: a truncated or corrupt JPEG fails here, not inside a worker's collate
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        log.debug("%s/%s: image does not decode: %s", shard, raw.get("__key__"), exc)
        bad.add(shard, "bad_image")
        return None
    return Sample(record=record, image=image)


def iter_shard(path: str | os.PathLike, bad: BadSampleLog, expected_samples: int | None = None) -> Iterator[Sample]:
    """Decoded samples of one shard, in file order; failures go to ``bad`` and are skipped.

    When the manifest's sample count is given, samples that a truncated tar lost (neither
    delivered nor counted as bad) are counted as ``truncated_tar`` once the shard is read.
    """
    path = Path(path)
    shard = path.name
    errors: list[Exception] = []

    def handler(exc: Exception) -> bool:
        errors.append(exc)
        return True  # keep going: the next shard (or the rest of this one) is still usable

    seen = 0
    bad_before = sum(n for (s, _), n in bad.counts.items() if s == shard)
    try:
        stream = open(path, "rb")
    except OSError as exc:
        log.warning("cannot open shard %s: %s", path, exc)
        bad.add(shard, "truncated_tar", expected_samples or 1)
        return
    with stream:
        files = tariterators.tar_file_expander([{"url": str(path), "stream": stream}], handler=handler)
        for raw in tariterators.group_by_keys(files, handler=handler):
            seen += 1
            sample = _decode(raw, shard, bad)
            if sample is not None:
                yield sample
    bad_here = sum(n for (s, _), n in bad.counts.items() if s == shard) - bad_before
    if expected_samples is not None and seen < expected_samples:
        bad.add(shard, "truncated_tar", expected_samples - seen)
    elif errors and bad_here == 0:
        bad.add(shard, "truncated_tar")
    for exc in errors:
        log.debug("%s: %s", shard, exc)


def iter_records(path: str | os.PathLike, bad: BadSampleLog | None = None) -> Iterator[PlaceRecord]:
    """The records of one shard without decoding images (json members only)."""
    bad = bad if bad is not None else BadSampleLog()
    shard = Path(path).name

    def handler(exc: Exception) -> bool:
        log.debug("%s: %s", shard, exc)
        return True

    with open(path, "rb") as stream:
        files = tariterators.tar_file_expander([{"url": str(path), "stream": stream}], handler=handler, select_files=lambda n: n.endswith(".json"))
        for raw in tariterators.group_by_keys(files, handler=handler):
            try:
                yield PlaceRecord.from_json(raw["json"])
            except (KeyError, RecordError) as exc:
                bad.add(shard, "bad_json", reason=str(exc))
