"""Typed records of the DQ-Cities shard format (docs/METHOD.md, "Data layouts").

One :class:`PlaceRecord` per gallery image. It is stored in a WebDataset tar as two members
sharing the key ``<City>_<place:07d>_<view>``: ``<key>.jpg`` (the image) and ``<key>.json``
(everything else, :meth:`PlaceRecord.to_json`). The same record serves real DQ-Cities (built by
the pipeline from GSV-Cities) and the embedded SynthCities world; ``attributes`` is only filled
by SynthCities, where it is the exact ground truth of the simulated user.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

#: Bumped whenever a field is added, removed or changes meaning. Readers refuse a newer major.
SCHEMA_VERSION = "1.0"

SPLITS = ("train", "val", "test")


class RecordError(ValueError):
    """A record that does not follow the schema. The message names the offending field."""


@dataclass(frozen=True)
class Region:
    """A phrase of the description grounded to a box of the image.

    ``box`` is ``(x0, y0, x1, y1)`` in image-relative coordinates, ``0 <= x0 < x1 <= 1``.
    """

    phrase: str
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if not isinstance(self.phrase, str) or not self.phrase.strip():
            raise RecordError("region.phrase must be a non-empty string")
        if len(self.box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.box):
            raise RecordError(f"region.box must be 4 finite numbers, got {self.box!r}")
        x0, y0, x1, y1 = self.box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise RecordError(f"region.box must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {self.box!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"phrase": self.phrase, "box": [float(v) for v in self.box]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Region":
        try:
            return cls(phrase=d["phrase"], box=tuple(float(v) for v in d["box"]))  # type: ignore[arg-type]
        except (KeyError, TypeError) as exc:
            raise RecordError(f"region is missing or has a malformed field: {exc}") from None


def make_key(city: str, place_in_city: int, view: int) -> str:
    """``<City>_<place:07d>_<view>``; ``place_in_city`` is the city-local place number."""
    if "_" in city or "." in city or not city:
        raise RecordError(f"city name {city!r} must be non-empty and contain no '_' or '.' (it is part of the key)")
    return f"{city}_{place_in_city:07d}_{view}"


_REQUIRED = ("key", "place_id", "city", "lat", "lon", "view", "initial_caption", "description", "split")


@dataclass(frozen=True)
class PlaceRecord:
    """Metadata of one gallery image of a place.

    Attributes:
        key: sample key, ``<City>_<place:07d>_<view>`` (see :func:`make_key`).
        place_id: global place id (unique across cities; GSV-Cities style ``city_index * 10**5 + place``).
        city: city name.
        lat, lon: WGS84 coordinates of the place.
        view: index of this view among the place's images.
        initial_caption: the vague first description a user would give (1-2 attributes, may be wrong).
        description: fine-grained description of the static scene (about 100-200 words).
        split: one of ``train``, ``val``, ``test`` (split by place, never by image).
        regions: phrases of the description grounded to boxes of this image.
        attributes: structured ground truth (SynthCities only; empty for real data).
    """

    key: str
    place_id: int
    city: str
    lat: float
    lon: float
    view: int
    initial_caption: str
    description: str
    split: str
    regions: tuple[Region, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise RecordError("key must be a non-empty string")
        if isinstance(self.place_id, bool) or not isinstance(self.place_id, int) or self.place_id < 0:
            raise RecordError(f"{self.key}: place_id must be a non-negative int, got {self.place_id!r}")
        if isinstance(self.view, bool) or not isinstance(self.view, int) or self.view < 0:
            raise RecordError(f"{self.key}: view must be a non-negative int, got {self.view!r}")
        for name in ("lat", "lon"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RecordError(f"{self.key}: {name} must be a finite number, got {v!r}")
        if not (-90.0 <= self.lat <= 90.0 and -180.0 <= self.lon <= 180.0):
            raise RecordError(f"{self.key}: lat/lon out of range: {self.lat}, {self.lon}")
        for name in ("city", "initial_caption", "description"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise RecordError(f"{self.key}: {name} must be a non-empty string")
        if self.split not in SPLITS:
            raise RecordError(f"{self.key}: split must be one of {SPLITS}, got {self.split!r}")
        if not isinstance(self.attributes, dict):
            raise RecordError(f"{self.key}: attributes must be a mapping")

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, no whitespace variation): identical records give identical bytes."""
        d = {
            "key": self.key,
            "place_id": self.place_id,
            "city": self.city,
            "lat": float(self.lat),
            "lon": float(self.lon),
            "view": self.view,
            "initial_caption": self.initial_caption,
            "description": self.description,
            "split": self.split,
            "regions": [r.to_dict() for r in self.regions],
            "attributes": self.attributes,
            "schema_version": SCHEMA_VERSION,
        }
        return json.dumps(d, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> "PlaceRecord":
        """Parse and validate; raises :class:`RecordError` naming the first bad or missing field."""
        if isinstance(data, (bytes, str)):
            try:
                d = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RecordError(f"json does not parse: {exc}") from None
        else:
            d = data
        if not isinstance(d, dict):
            raise RecordError("json must hold an object")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise RecordError(f"{d.get('key', '?')}: missing field(s) {', '.join(missing)}")
        version = str(d.get("schema_version", SCHEMA_VERSION))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise RecordError(f"{d['key']}: schema_version {version} is not readable by schema {SCHEMA_VERSION}")
        regions = d.get("regions") or []
        if not isinstance(regions, list):
            raise RecordError(f"{d['key']}: regions must be a list")
        return cls(
            key=d["key"],
            place_id=d["place_id"],
            city=d["city"],
            lat=d["lat"],
            lon=d["lon"],
            view=d["view"],
            initial_caption=d["initial_caption"],
            description=d["description"],
            split=d["split"],
            regions=tuple(Region.from_dict(r) for r in regions),
            attributes=d.get("attributes") or {},
        )
