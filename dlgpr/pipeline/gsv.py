"""Reading a GSV-Cities folder: the input of the DQ-Cities builder (docs/METHOD.md, "Data layouts").

GSV-Cities (Ali-bey et al. 2022) stores one CSV per city, ``Dataframes/<City>.csv`` with columns
``place_id, year, month, northdeg, city_id, lat, lon, panoid``, and the images at
``Images/<City>/<City>_<place:07d>_<year:04d>_<month:02d>_<northdeg:03d>_<lat>_<lon>_<panoid>.jpg``.
``place_id`` is unique only within its city; as in GSV-Cities' own loader the global id is
``city_index * 10**5 + place_id``, with ``city_index`` the city's position among *all* CSVs of the
folder (sorted), so a run restricted to a few cities gives every place the id it has in a full run.

Rows are joined to files by (place, year, month, northdeg, panoid) parsed from the file names, not
by re-printing lat/lon (a float printed by another tool may differ in its last digits). Rows
without an image and rows that do not parse are skipped and counted, never fatal.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dlgpr.data.schema import SPLITS, PlaceRecord, make_key
from dlgpr.data.shards import iter_tar_members, read_manifest

log = logging.getLogger("dlgpr.pipeline")

PLACE_ID_STRIDE = 10**5
"""GSV-Cities' per-city offset of place ids."""

REQUIRED_COLUMNS = ("place_id", "year", "month", "northdeg", "lat", "lon", "panoid")


@dataclass(frozen=True)
class GSVImage:
    """One GSV-Cities image, with its DQ-Cities key and split."""

    key: str
    """``<City>_<place:07d>_<view>`` (:func:`dlgpr.data.schema.make_key`)."""
    path: Path
    city: str
    place_in_city: int
    place_id: int
    """Global id: ``city_index * 10**5 + place_in_city``."""
    view: int
    """Index of the image among its place's images, ordered by (year, month, northdeg, panoid)."""
    lat: float
    lon: float
    split: str


@dataclass
class SplitConfig:
    """How places are assigned to train / val / test (always by place, never by image)."""

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Shares of each city's places in train, val and test, drawn by a seeded hash of the place."""
    val_cities: list[str] = field(default_factory=list)
    """Cities whose places all go to val (held-out cities, as in VPR benchmarks)."""
    test_cities: list[str] = field(default_factory=list)
    """Cities whose places all go to test."""
    seed: int = 0

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)  # type: ignore[assignment]
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError(f"split.fractions must be three non-negative shares summing to 1, got {self.fractions}")
        both = set(self.val_cities) & set(self.test_cities)
        if both:
            raise ValueError(f"split: cities {sorted(both)} are in both val_cities and test_cities")

    def split_of(self, city: str, place_in_city: int) -> str:
        if city in self.test_cities:
            return "test"
        if city in self.val_cities:
            return "val"
        h = hashlib.sha256(f"split/{self.seed}/{city}/{place_in_city}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        train, val, _ = self.fractions
        return SPLITS[0] if u < train else SPLITS[1] if u < train + val else SPLITS[2]


@dataclass
class GSVScan:
    """What :func:`scan_gsv_cities` found."""

    images: list[GSVImage]
    cities: list[str]
    """The cities read, in order."""
    skipped: Counter[str]
    """Rows or files left out, by kind: ``bad_row``, ``missing_image``, ``duplicate_row``."""


def parse_image_name(name: str) -> tuple[str, int, int, int, int, str] | None:
    """``(city, place, year, month, northdeg, panoid)`` of a GSV-Cities file name, or None.

    Panoids may contain ``_``: everything after the seventh separator is the panoid.
    """
    if not name.endswith(".jpg"):
        return None
    parts = name[: -len(".jpg")].split("_", 7)
    if len(parts) != 8:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]), parts[7]
    except ValueError:
        return None


def list_cities(root: str | os.PathLike) -> list[str]:
    """All cities of a GSV-Cities folder (the stems of ``Dataframes/*.csv``, sorted)."""
    frames = Path(root) / "Dataframes"
    if not frames.is_dir():
        raise FileNotFoundError(f"{frames}: not a GSV-Cities folder (expected Dataframes/<City>.csv and Images/<City>/)")
    cities = sorted(p.stem for p in frames.glob("*.csv"))
    if not cities:
        raise FileNotFoundError(f"{frames}: no <City>.csv file")
    return cities


def scan_gsv_cities(
    root: str | os.PathLike,
    split: SplitConfig,
    cities: list[str] | None = None,
    limit: int | None = None,
    max_views: int | None = None,
) -> GSVScan:
    """Every usable image of ``cities`` (all when None), the first ``limit`` places of each city.

    Places are taken in ascending ``place_id`` order; ``max_views`` keeps a place's first views.
    """
    root = Path(root)
    all_cities = list_cities(root)
    chosen = all_cities if not cities else list(cities)
    unknown = [c for c in chosen if c not in all_cities]
    if unknown:
        raise ValueError(f"cities {unknown} have no CSV in {root / 'Dataframes'} (found: {', '.join(all_cities)})")
    skipped: Counter[str] = Counter()
    images: list[GSVImage] = []
    for city in chosen:
        city_index = all_cities.index(city)
        files = _index_images(root / "Images" / city, city)
        rows = _read_rows(root / "Dataframes" / f"{city}.csv", skipped)
        by_place: dict[int, list[tuple[tuple[int, int, int, str], float, float, Path]]] = {}
        seen: set[tuple[int, int, int, int, str]] = set()
        for place, year, month, northdeg, panoid, lat, lon in rows:
            ident = (place, year, month, northdeg, panoid)
            if ident in seen:
                skipped["duplicate_row"] += 1
                continue
            seen.add(ident)
            path = files.get(ident)
            if path is None:
                skipped["missing_image"] += 1
                continue
            by_place.setdefault(place, []).append(((year, month, northdeg, panoid), lat, lon, path))
        places = sorted(by_place)[:limit] if limit is not None else sorted(by_place)
        for place in places:
            views = sorted(by_place[place], key=lambda v: v[0])[:max_views]
            which = split.split_of(city, place)
            for view, (_, lat, lon, path) in enumerate(views):
                images.append(GSVImage(key=make_key(city, place, view), path=path, city=city, place_in_city=place,
                                       place_id=city_index * PLACE_ID_STRIDE + place, view=view, lat=lat, lon=lon, split=which))
    if skipped:
        log.warning("GSV-Cities scan of %s: skipped %s", root, dict(skipped))
    return GSVScan(images=images, cities=chosen, skipped=skipped)


def _index_images(folder: Path, city: str) -> dict[tuple[int, int, int, int, str], Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing image folder of city {city}")
    out = {}
    for entry in os.scandir(folder):
        parsed = parse_image_name(entry.name)
        if parsed is not None and parsed[0] == city:
            out[parsed[1:]] = Path(entry.path)
    return out


def _read_rows(path: Path, skipped: Counter[str]) -> list[tuple[int, int, int, int, str, float, float]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (GSV-Cities CSVs have {', '.join(REQUIRED_COLUMNS)})")
        rows = []
        for row in reader:
            try:
                place = int(row["place_id"]) % PLACE_ID_STRIDE  # some copies store the global id
                lat, lon = float(row["lat"]), float(row["lon"])
                if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                    raise ValueError("lat/lon out of range")
                rows.append((place, int(row["year"]), int(row["month"]), int(float(row["northdeg"])), row["panoid"].strip(), lat, lon))
            except (TypeError, ValueError, AttributeError):
                skipped["bad_row"] += 1
    return rows


def gsv_image_name(city: str, place: int, year: int, month: int, northdeg: int, lat: float, lon: float, panoid: str) -> str:
    """The GSV-Cities file name of an image (what the test fixtures and benchmarks write)."""
    return f"{city}_{place:07d}_{year:04d}_{month:02d}_{northdeg:03d}_{lat}_{lon}_{panoid}.jpg"


def export_gsv_folder(data_dir: str | os.PathLike, root: str | os.PathLike) -> dict[str, PlaceRecord]:
    """Write the images of a DQ-Cities shard folder (e.g. SynthCities) as a GSV-Cities folder.

    The inverse of the builder's input side, for tests, benchmarks and a demo without GSV-Cities:
    one CSV per city, JPEG bytes unchanged, GSV-Cities file names (the view number becomes the
    capture year, month and heading; the panoid is derived from the key and contains a ``_``, as
    real panoids can). Returns the source records by the written file's name.
    """
    data_dir, root = Path(data_dir), Path(root)
    rows: dict[str, list[dict[str, object]]] = {}
    written: dict[str, PlaceRecord] = {}
    for shard in read_manifest(data_dir).shards:
        members = dict(iter_tar_members(data_dir / shard.path))
        for name, blob in members.items():
            if not name.endswith(".json"):
                continue
            record = PlaceRecord.from_json(blob)
            place = record.place_id % PLACE_ID_STRIDE
            year, month, northdeg = 2010 + record.view, 1 + record.view % 12, (90 * record.view) % 360
            h = hashlib.sha1(record.key.encode()).hexdigest()
            panoid = f"{h[:10]}_{h[10:21]}"
            file_name = gsv_image_name(record.city, place, year, month, northdeg, record.lat, record.lon, panoid)
            folder = root / "Images" / record.city
            folder.mkdir(parents=True, exist_ok=True)
            (folder / file_name).write_bytes(members[name[: -len(".json")] + ".jpg"])
            rows.setdefault(record.city, []).append({"place_id": place, "year": year, "month": month, "northdeg": northdeg,
                                                     "city_id": record.city, "lat": record.lat, "lon": record.lon, "panoid": panoid})
            written[file_name] = record
    (root / "Dataframes").mkdir(parents=True, exist_ok=True)
    for city, city_rows in rows.items():
        with open(root / "Dataframes" / f"{city}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid"])
            writer.writeheader()
            writer.writerows(sorted(city_rows, key=lambda r: (r["place_id"], r["year"])))
    return written


__all__ = ["GSVImage", "GSVScan", "SplitConfig", "export_gsv_folder", "gsv_image_name", "list_cities", "parse_image_name", "scan_gsv_cities"]
