"""Writing and indexing DQ-Cities WebDataset shards.

A dataset directory holds ``<split>-<index:05d>.tar`` shards and a ``manifest.json``::

    {"format": "dqcities", "schema_version": "1.0", "name": ..., "counts": {split: {samples, places}},
     "shards": [{"path", "split", "samples", "places", "sha256"}, ...], "extra": {...}}

Writing is byte-deterministic (fixed member order, mtime, owner and mode), so the same
generator seed gives byte-identical shards. A shard only ends on a place boundary: all views
of a place live in one shard, which is what lets a streaming reader build place-batched
batches (P places x K views) without a global index.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from dlgpr.data.schema import SCHEMA_VERSION, SPLITS, PlaceRecord

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "dqcities"
_MTIME = 946684800  # 2000-01-01: a fixed member mtime keeps shards byte-identical across runs


@dataclass
class ShardInfo:
    """One shard as listed in the manifest; ``path`` is relative to the dataset directory."""

    path: str
    split: str
    samples: int
    places: int
    sha256: str = ""


@dataclass
class Manifest:
    name: str
    shards: list[ShardInfo]
    schema_version: str = SCHEMA_VERSION
    format: str = FORMAT_NAME
    extra: dict[str, Any] = field(default_factory=dict)

    def split_shards(self, split: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for s in self.shards:
            c = out.setdefault(s.split, {"samples": 0, "places": 0, "shards": 0})
            c["samples"] += s.samples
            c["places"] += s.places
            c["shards"] += 1
        return out

    def to_json(self) -> str:
        d = {
            "format": self.format,
            "schema_version": self.schema_version,
            "name": self.name,
            "counts": self.counts(),
            "shards": [asdict(s) for s in self.shards],
            "extra": self.extra,
        }
        return json.dumps(d, indent=1, sort_keys=True)


class ManifestError(ValueError):
    pass


def read_manifest(data_dir: str | os.PathLike) -> Manifest:
    """Load ``<data_dir>/manifest.json``; a one-line :class:`ManifestError` names what is wrong."""
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {Path(data_dir)}")
    try:
        d = json.loads(path.read_text())
        shards = [ShardInfo(**s) for s in d["shards"]]
        m = Manifest(name=d.get("name", ""), shards=shards, schema_version=str(d["schema_version"]),
                     format=d.get("format", FORMAT_NAME), extra=d.get("extra", {}))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: malformed manifest ({exc.__class__.__name__}: {exc})") from None
    if m.schema_version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ManifestError(f"{path}: schema_version {m.schema_version} is not readable by schema {SCHEMA_VERSION}")
    for s in m.shards:
        if s.split not in SPLITS:
            raise ManifestError(f"{path}: shard {s.path} has unknown split {s.split!r}")
    return m


def write_manifest(data_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write atomically (temp file + rename): a killed writer never leaves half a manifest."""
    path = Path(data_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, path)
    return path


class DeterministicTar:
    """Minimal tar writer with fixed metadata; members are written in call order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_suffix(path.suffix + ".tmp")
        self._fh = open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = _MTIME
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> str:
        self._tar.close()
        self._fh.close()
        digest = hashlib.sha256(self._tmp.read_bytes()).hexdigest()
        os.replace(self._tmp, self.path)
        return digest


def write_split(
    data_dir: str | os.PathLike,
    split: str,
    samples: Iterable[tuple[PlaceRecord, bytes]],
    max_samples_per_shard: int = 1000,
) -> list[ShardInfo]:
    """Write ``(record, jpeg_bytes)`` pairs of one split into shards ``<split>-NNNNN.tar``.

    Samples must arrive grouped by place (all views of a place consecutive). A shard is closed
    at the first place boundary at or after ``max_samples_per_shard`` samples, so a place never
    straddles two shards. Returns the shard list for the manifest.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if max_samples_per_shard < 1:
        raise ValueError("max_samples_per_shard must be >= 1")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    infos: list[ShardInfo] = []
    writer: DeterministicTar | None = None
    n_samples = 0
    places: set[int] = set()
    seen_places: set[int] = set()
    last_place: int | None = None

    def close() -> None:
        nonlocal writer
        assert writer is not None
        digest = writer.close()
        infos.append(ShardInfo(path=writer.path.name, split=split, samples=n_samples, places=len(places), sha256=digest))
        writer = None

    for record, jpeg in samples:
        if record.split != split:
            raise ValueError(f"{record.key}: record of split {record.split!r} written into split {split!r}")
        new_place = record.place_id != last_place
        if new_place and record.place_id in seen_places:
            raise ValueError(f"{record.key}: views of place {record.place_id} are not consecutive")
        if writer is not None and new_place and n_samples >= max_samples_per_shard:
            close()
        if writer is None:
            writer = DeterministicTar(data_dir / f"{split}-{len(infos):05d}.tar")
            n_samples = 0
            places = set()
        writer.add(f"{record.key}.jpg", jpeg)
        writer.add(f"{record.key}.json", record.to_json())
        n_samples += 1
        places.add(record.place_id)
        seen_places.add(record.place_id)
        last_place = record.place_id
    if writer is not None:
        close()
    return infos


def iter_tar_members(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` of a tar in order (used by tests and tools)."""
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                yield m.name, f.read()
