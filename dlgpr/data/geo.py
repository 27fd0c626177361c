"""Geo-tagged images as one record stream: what the GLOBE recipe reads (docs/GLOBE.md).

Every geo dataset (a SynthCities geo world, MP-16 / MP16-Pro / MP16-Reason, IM2GPS3K, YFCC4k,
GSV-Cities, any CSV of ids and coordinates) is read into :class:`GeoSample` records: a key, the
ground-truth coordinates, the city and country when the dataset names them, and the image (a file
path or JPEG bytes). Readers never stop on a bad row: they skip it and count it in a
:class:`GeoReadStats`, which says at the end how many rows were read and why the others were
dropped. A wrong configuration (unknown kind, missing file or folder, a CSV without coordinate
columns) is a one-line ``ValueError`` / ``FileNotFoundError`` naming the file or field, raised
when the reader is created, before any row is read.

One entry point: :func:`read_geo_dataset` with a :class:`GeoDatasetConfig`, or its command-line
form :func:`parse_dataset_spec` (``"im2gps3k:/data/im2gps3k"``). The layouts and spec strings are
documented in docs/GLOBE.md, "Datasets".
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import logging
import math
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from PIL import Image

from dlgpr.data.schema import SPLITS, PlaceRecord, RecordError
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

    def merge(self, counts: Mapping[str, int], detail: str = "") -> None:
        """Add skip counts gathered elsewhere (e.g. a GSV-Cities scan), ``detail`` as their example."""
        for reason, n in counts.items():
            if n > 0:
                self.skipped[reason] += n
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


# -- CSV datasets (MP-16 family, IM2GPS3K, YFCC4k, any id + coordinates CSV) ---------------------

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("img_id", "id", "image_id", "img_file", "image_path", "filename"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "longitude", "lng"),
    "city": ("city",),
    "country": ("country", "country_name", "country_code"),
}
"""The header names each field is looked for under, in order, compared case-insensitively: the
MP-16 / MP16-Pro / IM2GPS3K / YFCC4k ``*_places365.csv`` files (``IMG_ID, AUTHOR, LAT, LON,
...``; MP16-Pro adds ``neighbourhood, city, county, state, region, country, country_code,
continent``), MP16-Reason / GLOBE's evaluation CSVs (``IMG_ID`` or ``id``, ``LAT``/``LON`` or
``latitude``/``longitude``, ``city``, ``country``), OSV-5M (``id, latitude, longitude, ...``) and
GeoCLIP (``IMG_FILE, LAT, LON``). ``GeoDatasetConfig.columns`` names a column explicitly."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".JPG", ".JPEG", ".PNG")
"""Tried, in order, after an id that is not itself a file name (``12345`` -> ``12345.jpg``)."""

_MISSING_TEXT = {"", "nan", "none", "null"}


def _check_column_fields(columns: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(columns) - set(COLUMN_ALIASES))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} (known: {', '.join(COLUMN_ALIASES)})")


def find_columns(header: Sequence[str], where: str, columns: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """``field -> header name`` for ``id``, ``lat``, ``lon`` and, when present, ``city``, ``country``.

    ``columns`` names a field's column exactly (``{"lat": "Latitude_deg"}``; ``None`` or ``""``
    for ``city`` / ``country`` reads none); other fields are found by :data:`COLUMN_ALIASES`.
    A missing ``id`` / ``lat`` / ``lon`` column is a one-line ``ValueError`` naming ``where``.
    """
    columns = dict(columns or {})
    _check_column_fields(columns, f"{where}: columns")
    names = [h.strip() for h in header]
    lowered = {}
    for h in names:
        lowered.setdefault(h.lower(), h)
    found: dict[str, str] = {}
    for name, aliases in COLUMN_ALIASES.items():
        required = name in ("id", "lat", "lon")
        if name in columns:
            given = columns[name]
            if not given:
                if required:
                    raise ValueError(f"{where}: columns.{name} must name a column, got {given!r}")
                continue
            if given not in names:
                raise ValueError(f"{where}: no column {given!r} (columns.{name}); the header is {', '.join(names)}")
            found[name] = given
            continue
        hit = next((lowered[a] for a in aliases if a in lowered), None)
        if hit is not None:
            found[name] = hit
        elif required:
            raise ValueError(f"{where}: no {name} column (looked for {', '.join(aliases)}, any case; "
                             f"name it with columns={{'{name}': ...}}); the header is {', '.join(names) or '(empty)'}")
    return found


def resolve_image(images: Path, image_id: str) -> Path | None:
    """The image file of a CSV id, or None: ``images / id`` as given, then with ``/`` replaced by
    ``_`` (MP-16 ids are ``e5/5d/1159233389.jpg``; some copies store the files flat as
    ``e5_5d_1159233389.jpg``), each also with :data:`IMAGE_EXTENSIONS` appended. Only ``stat``
    calls: nothing is opened or decoded. An absolute id is used as is."""
    stems = [image_id]
    if "/" in image_id:
        stems.append(image_id.replace("/", "_"))
    for stem in stems:
        for candidate in (stem, *(stem + ext for ext in IMAGE_EXTENSIONS)):
            path = images / candidate
            if path.is_file():
                return path
    return None


def _coordinate(text: str | None, bound: float) -> float | None:
    try:
        v = float(text.strip())  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        return None
    return v if math.isfinite(v) and abs(v) <= bound else None


def _text(value: str | None) -> str:
    value = (value or "").strip()
    return "" if value.lower() in _MISSING_TEXT else value


def _read_header(csv_path: Path) -> list[str]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such CSV file")
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        try:
            return next(csv.reader(fh), [])
        except csv.Error as exc:
            raise ValueError(f"{csv_path}: unreadable CSV header ({exc})") from None


def read_geo_csv(csv_path: str | os.PathLike, images: str | os.PathLike, columns: Mapping[str, str | None] | None = None,
                 source: str = "", stats: GeoReadStats | None = None) -> Iterator[GeoSample]:
    """The rows of a CSV of image ids and coordinates as geo samples, streamed in file order.

    The header is checked now (see :func:`find_columns`; a missing CSV or image folder raises
    ``FileNotFoundError``); rows are read lazily with the ``csv`` module, so a 4.7M-row MP-16
    file is never held in memory (only the ids read so far, to drop duplicates). The image of a
    row is found by :func:`resolve_image` under ``images``. Skipped and counted by reason:
    ``empty_id``, ``bad_coordinates`` (missing, not a number, NaN or out of range),
    ``duplicate_id`` (an id already read; the first row wins), ``missing_image``, ``bad_row``
    (a line the ``csv`` module rejects, e.g. one with a NUL byte).
    """
    csv_path, images = Path(csv_path), Path(images)
    found = find_columns(_read_header(csv_path), str(csv_path), columns)
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: no such image folder (the images of {csv_path.name})")
    return _iter_geo_csv(csv_path, images, found, source or csv_path.stem, stats if stats is not None else GeoReadStats())


def _iter_geo_csv(csv_path: Path, images: Path, found: dict[str, str], source: str, stats: GeoReadStats) -> Iterator[GeoSample]:
    seen: set[str] = set()
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.DictReader(fh)
        reader.fieldnames = [h.strip() for h in (reader.fieldnames or [])]
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                stats.skip("bad_row", f"{csv_path.name} line {reader.line_num}: {exc}")
                continue
            where = f"{csv_path.name} line {reader.line_num}"
            image_id = (row.get(found["id"]) or "").strip()
            if not image_id:
                stats.skip("empty_id", where)
                continue
            lat, lon = _coordinate(row.get(found["lat"]), 90.0), _coordinate(row.get(found["lon"]), 180.0)
            if lat is None or lon is None:
                stats.skip("bad_coordinates", f"{where}: {image_id} lat={row.get(found['lat'])!r} lon={row.get(found['lon'])!r}")
                continue
            if image_id in seen:
                stats.skip("duplicate_id", f"{where}: {image_id}")
                continue
            path = resolve_image(images, image_id)
            if path is None:
                stats.skip("missing_image", f"{where}: {image_id} (not in {images})")
                continue
            seen.add(image_id)
            stats.read += 1
            city = _text(row.get(found["city"])) if "city" in found else ""
            country = _text(row.get(found["country"])) if "country" in found else ""
            yield GeoSample(key=image_id, lat=lat, lon=lon, city=city, country=country, source=source, image_path=path)


@dataclass(frozen=True)
class CsvPreset:
    """Where a CSV dataset keeps its files, relative to its root folder (first one found wins)."""

    csv_names: tuple[str, ...]
    image_dirs: tuple[str, ...]
    """Image folders tried in order; the root itself when none exists."""


CSV_FOLDERS = ("", "metadata")
"""Sub-folders of the root a preset's CSV is looked for in (the MP16-Pro download has ``metadata/``)."""

CSV_PRESETS: dict[str, CsvPreset] = {
    "mp16": CsvPreset(("MP16_Pro_places365.csv", "MP16_Pro_filtered.csv", "mp16_places365.csv", "mp16-reason-test-12k.csv"),
                      ("mp-16-images", "images", "eval_images")),
    "im2gps3k": CsvPreset(("im2gps3k_places365.csv",), ("im2gps3ktest", "images")),
    "yfcc4k": CsvPreset(("yfcc4k_places365.csv",), ("yfcc4k", "images")),
}
"""The file names of the public releases: GeoEstimation's ``*_places365.csv``, G3's MP16-Pro
(``metadata/MP16_Pro_places365.csv``), GLOBE's evaluation files (``mp16-reason-test-12k.csv``
with ``eval_images/``, ``im2gps3ktest/``)."""


# -- GSV-Cities -------------------------------------------------------------------------------

GSV_CITIES: dict[str, tuple[str, str]] = {
    "Bangkok": ("Bangkok", "Thailand"),
    "Barcelona": ("Barcelona", "Spain"),
    "Boston": ("Boston", "United States"),
    "Brussels": ("Brussels", "Belgium"),
    "BuenosAires": ("Buenos Aires", "Argentina"),
    "Chicago": ("Chicago", "United States"),
    "Lisbon": ("Lisbon", "Portugal"),
    "London": ("London", "United Kingdom"),
    "LosAngeles": ("Los Angeles", "United States"),
    "Madrid": ("Madrid", "Spain"),
    "Medellin": ("Medellín", "Colombia"),
    "Melbourne": ("Melbourne", "Australia"),
    "MexicoCity": ("Mexico City", "Mexico"),
    "Miami": ("Miami", "United States"),
    "Minneapolis": ("Minneapolis", "United States"),
    "OSL": ("Oslo", "Norway"),
    "Osaka": ("Osaka", "Japan"),
    "PRG": ("Prague", "Czechia"),
    "PRS": ("Paris", "France"),
    "Phoenix": ("Phoenix", "United States"),
    "Rome": ("Rome", "Italy"),
    "TRT": ("Toronto", "Canada"),
    "WashingtonDC": ("Washington", "United States"),
}
"""GSV-Cities' folder names -> (city, country) as a gazetteer knows them. A city not listed keeps
its folder name and gets no country."""


def gsv_city(folder: str) -> tuple[str, str]:
    """``(city, country)`` of a GSV-Cities city folder name (``"OSL"`` -> ``("Oslo", "Norway")``)."""
    return GSV_CITIES.get(folder, (folder, ""))


def read_gsv_cities_geo(root: str | os.PathLike, splits: str | Sequence[str] = "all", source: str = "gsv_cities",
                        stats: GeoReadStats | None = None) -> Iterator[GeoSample]:
    """The images of a GSV-Cities folder (``Dataframes/<City>.csv``, ``Images/<City>/``) as geo samples.

    The folder is scanned by :func:`dlgpr.pipeline.gsv.scan_gsv_cities` (now: a missing folder or
    CSV column raises), so keys, global ``place_id`` s (views of one place share one) and the
    train / val / test assignment are the DQ-Cities builder's defaults; ``splits`` keeps those
    splits (``"all"``: every image). Rows the scan drops are counted (``bad_row``,
    ``missing_image``, ``duplicate_row``). Cities and countries come from :data:`GSV_CITIES`.
    """
    from dlgpr.pipeline.gsv import SplitConfig, scan_gsv_cities

    stats = stats if stats is not None else GeoReadStats()
    keep = set(_split_names(splits, "splits"))
    scan = scan_gsv_cities(root, SplitConfig())
    stats.merge(scan.skipped, f"GSV-Cities scan of {root}")
    return _iter_gsv(scan.images, keep, source, stats)


def _iter_gsv(images: Sequence[Any], keep: set[str], source: str, stats: GeoReadStats) -> Iterator[GeoSample]:
    for im in images:
        if im.split not in keep:
            continue
        city, country = gsv_city(im.city)
        stats.read += 1
        yield GeoSample(key=im.key, lat=im.lat, lon=im.lon, city=city, country=country, source=source,
                        place_id=im.place_id, image_path=im.path)


# -- one entry point --------------------------------------------------------------------------

DATASET_KINDS = ("synthcities", "mp16", "im2gps3k", "yfcc4k", "gsv_cities", "csv")


def _split_names(split: str | Sequence[str], where: str) -> list[str]:
    """``"train,val"`` / ``["train"]`` / ``"all"`` -> split names, checked."""
    names = [s.strip() for s in split.split(",")] if isinstance(split, str) else [str(s).strip() for s in split]
    if "all" in names:
        return list(SPLITS)
    bad = [s for s in names if s not in SPLITS]
    if bad or not names:
        raise ValueError(f"{where} must be split names among {', '.join(SPLITS)} or 'all', got {split!r}")
    return names


@dataclass
class GeoDatasetConfig:
    """Which geo dataset to read, and where (docs/GLOBE.md, "Datasets").

    Attributes:
        kind: ``synthcities`` (a SynthCities / DQ-Cities shard folder), ``mp16`` (MP-16,
            MP16-Pro, MP16-Reason), ``im2gps3k``, ``yfcc4k``, ``gsv_cities`` or ``csv`` (any CSV
            of image ids and coordinates).
        root: the dataset's folder; for ``csv`` the folder or the CSV file itself.
        csv: the CSV file (relative paths are under ``root``); presets find theirs by name.
        images: the image folder (relative paths are under ``root``, or under the CSV's folder
            when ``root`` is the CSV); presets try their usual folder names, then ``root``.
        split: for ``synthcities`` and ``gsv_cities``: ``train``, ``val``, ``test``, several
            (a list or ``"train,val"``) or ``all``. CSV datasets are read whole.
        limit: stop after this many samples (the counts then cover only the rows read so far).
        columns: explicit column names, e.g. ``{"id": "photo", "lat": "y", "lon": "x"}``
            (fields ``id``, ``lat``, ``lon``, ``city``, ``country``); the rest are found by name.
        name: ``GeoSample.source`` of every sample (default: the kind; for ``csv`` the CSV's
            stem; for ``synthcities`` the manifest's name).
    """

    kind: str
    root: str
    csv: str | None = None
    images: str | None = None
    split: list[str] | str = "test"
    limit: int | None = None
    columns: dict | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"GeoDatasetConfig.kind must be one of {', '.join(DATASET_KINDS)}, got {self.kind!r}")
        if not str(self.root or "").strip():
            raise ValueError(f"GeoDatasetConfig.root must name the {self.kind} dataset's folder, got {self.root!r}")
        self.root = str(self.root)
        _split_names(self.split, "GeoDatasetConfig.split")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"GeoDatasetConfig.limit must be a positive integer or None, got {self.limit!r}")
        if self.columns is not None:
            if not isinstance(self.columns, Mapping):
                raise ValueError(f"GeoDatasetConfig.columns must map fields to column names, got {self.columns!r}")
            _check_column_fields(self.columns, "GeoDatasetConfig.columns")
        if self.kind in ("synthcities", "gsv_cities"):
            given = [f for f in ("csv", "images", "columns") if getattr(self, f)]
            if given:
                raise ValueError(f"GeoDatasetConfig.{given[0]} applies to CSV datasets, not to kind {self.kind!r}")

    @property
    def splits(self) -> list[str]:
        return _split_names(self.split, "GeoDatasetConfig.split")


SPEC_KEYS = ("csv", "images", "split", "limit", "name", *COLUMN_ALIASES)


def parse_dataset_spec(spec: str) -> GeoDatasetConfig:
    """A :class:`GeoDatasetConfig` from its command-line form ``KIND:ROOT[:SPLIT][:KEY=VALUE]...``.

    ``SPLIT`` is ``train``, ``val``, ``test``, ``all`` or a comma list; keys are ``csv``,
    ``images``, ``split``, ``limit``, ``name`` and the column fields ``id``, ``lat``, ``lon``,
    ``city``, ``country`` (their column's name). Paths cannot contain ``:``. Examples::

        im2gps3k:/data/im2gps3k
        synthcities:data/synthcities-geo:test
        mp16:/data/mp16:images=mp-16-images:limit=1000
        csv:/data/x.csv:images=/data/imgs:lat=Latitude:lon=Longitude
    """
    parts = spec.split(":")
    if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
        raise ValueError(f"dataset spec {spec!r}: expected KIND:ROOT[:SPLIT][:KEY=VALUE]..., KIND one of {', '.join(DATASET_KINDS)}")
    kind, root = parts[0].strip(), parts[1].strip()
    options: dict[str, str] = {}
    columns: dict[str, str] = {}
    for part in parts[2:]:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            key, value = "split", part
        if key not in SPEC_KEYS:
            raise ValueError(f"dataset spec {spec!r}: unknown key {key!r} (known: {', '.join(SPEC_KEYS)})")
        if key in options or key in columns:
            raise ValueError(f"dataset spec {spec!r}: {key} given twice")
        (columns if key in COLUMN_ALIASES else options)[key] = value.strip()
    limit: int | None = None
    if "limit" in options:
        try:
            limit = int(options["limit"])
        except ValueError:
            raise ValueError(f"dataset spec {spec!r}: limit must be an integer, got {options['limit']!r}") from None
    try:
        return GeoDatasetConfig(kind=kind, root=root, csv=options.get("csv"), images=options.get("images"),
                                split=options.get("split", "test"), limit=limit, columns=columns or None,
                                name=options.get("name"))
    except ValueError as exc:
        raise ValueError(f"dataset spec {spec!r}: {exc}") from None


def read_geo_dataset(config: GeoDatasetConfig, stats: GeoReadStats | None = None) -> Iterator[GeoSample]:
    """The samples of ``config``'s dataset, in file order, at most ``config.limit`` of them.

    Everything that can be checked without reading rows is checked now (one-line
    ``ValueError`` / ``FileNotFoundError`` naming the file or field); bad rows are skipped and
    counted in ``stats`` while iterating.
    """
    stats = stats if stats is not None else GeoReadStats()
    root = Path(config.root)
    if config.kind == "csv" and root.is_file():
        csv_path: Path | None = root
        root = root.parent
    elif not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (root of the {config.kind} dataset)")
    else:
        csv_path = root / config.csv if config.csv else None
    if config.kind == "synthcities":
        read_manifest(root)  # a missing or malformed manifest.json is a one-line ManifestError now
        samples = read_synthcities_geo(root, config.splits, stats)
        if config.name:
            samples = (dataclasses.replace(s, source=config.name) for s in samples)
    elif config.kind == "gsv_cities":
        samples = read_gsv_cities_geo(root, config.splits, config.name or "gsv_cities", stats)
    else:
        preset = CSV_PRESETS.get(config.kind)
        if csv_path is None:
            if preset is None:
                raise ValueError(f"{root}: kind csv needs the CSV file (GeoDatasetConfig.csv, or the CSV itself as root)")
            tried = [root / sub / name for name in preset.csv_names for sub in CSV_FOLDERS]
            csv_path = next((p for p in tried if p.is_file()), None)
            if csv_path is None:
                raise FileNotFoundError(f"{root}: no {config.kind} CSV (looked for {', '.join(preset.csv_names)} in the folder and "
                                        f"in metadata/); name it with csv=")
        if config.images:
            images = root / config.images
        elif preset is not None:
            images = next((root / d for d in preset.image_dirs if (root / d).is_dir()), root)
        else:
            images = root
        source = config.name or (csv_path.stem if config.kind == "csv" else config.kind)
        samples = read_geo_csv(csv_path, images, config.columns, source, stats)
    return itertools.islice(samples, config.limit) if config.limit is not None else samples


__all__ = [
    "COLUMN_ALIASES", "CSV_PRESETS", "DATASET_KINDS", "GSV_CITIES", "CsvPreset", "GeoDatasetConfig", "GeoReadStats", "GeoSample",
    "find_columns", "gsv_city", "parse_dataset_spec", "read_geo_csv", "read_geo_dataset", "read_gsv_cities_geo", "read_synthcities_geo",
    "resolve_image", "world_countries",
]
