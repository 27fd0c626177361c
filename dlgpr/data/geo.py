"""Geo-tagged images as one record stream: what the GLOBE recipe reads (docs/GLOBE.md).

Every geo dataset (a SynthCities geo world, MP-16 / MP16-Reason, IM2GPS3K, YFCC4k, GSV-Cities)
is read into :class:`GeoSample` records: a key, the ground-truth coordinates, the city and
country when the dataset names them, and the image (a file path or JPEG bytes). Readers never
stop on a bad row: they skip it and count it in a :class:`GeoReadStats`, which says at the end
how many rows were read and why the others were dropped.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from PIL import Image

from dlgpr.data.schema import PlaceRecord, RecordError
from dlgpr.data.shards import iter_tar_members, read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeoSample:
    """One geo-tagged image.

    Attributes:
        key: unique within its dataset (the file stem, the CSV id or the shard key).
        lat, lon: ground-truth WGS84 coordinates (finite, in range: checked on creation).
        city, country: as the dataset names them (``""`` when it does not); the country may be
            a name or an ISO code (gazetteers' ``canonical_country`` compares either).
        source: the dataset's name (``synthcities``, ``mp16``, ``im2gps3k``, ...).
        place_id: the place the image shows, when the dataset groups views of one place
            (SynthCities, GSV-Cities); lets a retrieval geolocator leave the query's own place out.
        image_path / image_bytes: where the image is; exactly one is set by every reader.
        record: the full place record of a SynthCities or DQ-Cities shard (description, regions,
            attributes), for what needs more than the image; ``None`` for other datasets.
    """

    key: str
    lat: float
    lon: float
    city: str = ""
    country: str = ""
    source: str = ""
    place_id: int | None = None
    image_path: Path | None = None
    image_bytes: bytes | None = field(default=None, repr=False, compare=False)
    record: PlaceRecord | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError("key must be a non-empty string")
        for name, bound in (("lat", 90.0), ("lon", 180.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > bound:
                raise ValueError(f"{self.key}: {name} must be a finite number in [-{bound:g}, {bound:g}], got {v!r}")

    def image_data(self) -> bytes:
        """The image file's bytes (read from ``image_path`` when the sample holds no bytes)."""
        if self.image_bytes is not None:
            return self.image_bytes
        if self.image_path is None:
            raise ValueError(f"{self.key}: the sample has no image")
        return Path(self.image_path).read_bytes()

    def image(self) -> Image.Image:
        """The decoded RGB image (raises ``OSError`` on an unreadable or corrupt file)."""
        with Image.open(io.BytesIO(self.image_data())) as im:
            return im.convert("RGB")


@dataclass
class GeoReadStats:
    """What a reader read and what it skipped, by reason (``bad_coordinates``, ``missing_image``...)."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_reason: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if detail and reason not in self.first_reason:
            self.first_reason[reason] = detail

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.read} read"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"{self.read} read, {self.total_skipped} skipped ({parts})"

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "skipped": dict(self.skipped), "first_reason": dict(self.first_reason)}


def world_countries(extra: dict[str, Any]) -> dict[str, str]:
    """``city name -> country name`` of a SynthCities manifest's ``extra`` (empty without countries)."""
    names = {str(c["code"]): str(c["name"]) for c in extra.get("countries", [])}
    out = {}
    for city in extra.get("cities", []):
        code = str(city.get("country", ""))
        if code:
            out[str(city["name"])] = names.get(code, code)
    return out


def read_synthcities_geo(data_dir: str | os.PathLike, splits: str | Sequence[str] = "test",
                         stats: GeoReadStats | None = None) -> Iterator[GeoSample]:
    """The images of a SynthCities (or DQ-Cities) shard folder as geo samples, in manifest order.

    Cities come from the records, countries from the manifest's ``extra.cities`` (the geo world
    writes them; other worlds give ``""``). A sample whose record or image member is missing or
    bad is skipped and counted.
    """
    data_dir = Path(data_dir)
    stats = stats if stats is not None else GeoReadStats()
    manifest = read_manifest(data_dir)
    country_of = world_countries(manifest.extra)
    names = [splits] if isinstance(splits, str) else list(splits)
    shards = [s for name in names for s in manifest.split_shards(name)]
    if not shards:
        raise ValueError(f"{data_dir}: the manifest lists no shard of split(s) {names}")
    source = manifest.name or "synthcities"
    for shard in shards:
        members: dict[str, dict[str, bytes]] = {}
        try:
            for name, data in iter_tar_members(data_dir / shard.path):
                stem, _, ext = name.rpartition(".")
                members.setdefault(stem, {})[ext] = data
        except (OSError, EOFError, tarfile.TarError) as exc:  # a truncated tar keeps what was read before the cut
            stats.skip("truncated_shard", f"{shard.path}: {type(exc).__name__}")
        for stem, parts in members.items():
            if "json" not in parts or "jpg" not in parts:
                stats.skip("missing_member", f"{shard.path}/{stem}")
                continue
            try:
                record = PlaceRecord.from_json(parts["json"])
                sample = GeoSample(key=record.key, lat=record.lat, lon=record.lon, city=record.city,
                                   country=country_of.get(record.city, ""), source=source, place_id=record.place_id,
                                   image_bytes=parts["jpg"], record=record)
            except (RecordError, ValueError) as exc:
                stats.skip("bad_record", f"{shard.path}/{stem}: {exc}")
                continue
            stats.read += 1
            yield sample


__all__ = ["GeoReadStats", "GeoSample", "read_synthcities_geo", "world_countries"]
