"""Geo dataset readers (dlgpr/data/geo.py): the MP-16 family, IM2GPS3K, YFCC4k and any CSV of ids
and coordinates, GSV-Cities, SynthCities; bad rows skipped and counted by reason; the spec strings
and the one-line configuration errors."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from dlgpr.data.geo import (
    GSV_CITIES,
    GeoDatasetConfig,
    GeoReadStats,
    GeoSample,
    parse_dataset_spec,
    read_geo_dataset,
)
from dlgpr.data.synth import SynthCitiesConfig, generate_synthcities
from dlgpr.geo.gazetteer import GeoNamesGazetteer
from dlgpr.pipeline.gsv import scan_gsv_cities, SplitConfig
from tests.helpers.gsv import make_gsv_folder


def _image(path: Path, color: tuple[int, int, int] = (200, 40, 40), fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path, format=fmt)
    return path


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _read(config: GeoDatasetConfig) -> tuple[list[GeoSample], GeoReadStats]:
    stats = GeoReadStats()
    return list(read_geo_dataset(config, stats)), stats


def _rows(samples: list[GeoSample]) -> list[tuple]:
    return [(s.key, s.lat, s.lon, s.city, s.country, s.source, s.place_id) for s in samples]


# ---- CSV datasets --------------------------------------------------------------------------------

MP16_PRO_HEADER = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor", "Prob_natural",
                   "Prob_urban", "neighbourhood", "city", "county", "state", "region", "country", "country_code", "continent"]


def _mp16_row(img_id: str, lat: object, lon: object, city: str = "", country: str = "") -> list[object]:
    return [img_id, "12345@N00", lat, lon, 2, 12, 353, 0.27, 0.04, 0.68, "", city, "", "", "", country, "", ""]


def test_mp16_pro_layout_every_bad_row_kind_counted(tmp_path: Path) -> None:
    root = tmp_path / "mp16"
    images = root / "mp-16-images"
    nested = _image(images / "9f" / "2b" / "12345.jpg")
    flat = _image(images / "aa_bb_777.jpg")  # G3's copy stores "aa/bb/777.jpg" flat
    pole = _image(images / "0c" / "0d" / "90.jpg")
    unnamed = _image(images / "0e" / "0f" / "5.jpg")
    _csv(root / "metadata" / "MP16_Pro_places365.csv", MP16_PRO_HEADER, [
        _mp16_row("9f/2b/12345.jpg", 48.8566, 2.3522, "Paris", "France"),   # line 2: read
        _mp16_row("aa/bb/777.jpg", -33.86, 151.21, "Sydney", "Australia"),  # line 3: read (flat file)
        _mp16_row("", 1.0, 2.0),                                            # empty_id
        _mp16_row("x/y/1.jpg", "north", 2.0),                               # bad_coordinates: not a number
        _mp16_row("x/y/2.jpg", 1.0, "nan"),                                 # bad_coordinates: NaN
        _mp16_row("x/y/3.jpg", 91.0, 2.0),                                  # bad_coordinates: out of range
        _mp16_row("x/y/4.jpg", 1.0, ""),                                    # bad_coordinates: missing
        _mp16_row("cc/dd/1.jpg", 1.0, 2.0),                                 # missing_image
        _mp16_row("9f/2b/12345.jpg", 10.0, 20.0, "Lyon", "France"),         # duplicate_id
        _mp16_row("0c/0d/90.jpg", -90.0, 180.0, "nan", "Antarctica"),       # read: bounds included, "nan" city is none
        _mp16_row(" 0e/0f/5.jpg ", " 1.5 ", "-2.5", "", ""),                # read: spaces stripped
    ])
    samples, stats = _read(GeoDatasetConfig(kind="mp16", root=str(root)))
    assert _rows(samples) == [
        ("9f/2b/12345.jpg", 48.8566, 2.3522, "Paris", "France", "mp16", None),
        ("aa/bb/777.jpg", -33.86, 151.21, "Sydney", "Australia", "mp16", None),
        ("0c/0d/90.jpg", -90.0, 180.0, "", "Antarctica", "mp16", None),
        ("0e/0f/5.jpg", 1.5, -2.5, "", "", "mp16", None),
    ]
    assert [s.image_path for s in samples] == [nested, flat, pole, unnamed]
    assert stats.read == 4
    assert dict(stats.skipped) == {"empty_id": 1, "bad_coordinates": 4, "missing_image": 1, "duplicate_id": 1}
    assert stats.first_reason["bad_coordinates"].startswith("MP16_Pro_places365.csv line 5: x/y/1.jpg")
    assert "line 10" in stats.first_reason["duplicate_id"] and "cc/dd/1.jpg" in stats.first_reason["missing_image"]
    assert stats.summary() == "4 read, 7 skipped (4 bad_coordinates, 1 duplicate_id, 1 empty_id, 1 missing_image)"


IM2GPS3K_HEADER = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor", "Prob_natural", "Prob_urban"]


@pytest.mark.parametrize("kind, csv_name, image_dir", [
    ("im2gps3k", "im2gps3k_places365.csv", "im2gps3ktest"),  # GeoEstimation / GLOBE layout
    ("im2gps3k", "im2gps3k_places365.csv", "images"),        # G3 layout
    ("yfcc4k", "yfcc4k_places365.csv", "yfcc4k"),
    ("yfcc4k", "yfcc4k_places365.csv", "images"),
])
def test_benchmark_presets_find_their_csv_and_images(tmp_path: Path, kind: str, csv_name: str, image_dir: str) -> None:
    root = tmp_path / kind
    a = _image(root / image_dir / "1000269685_e60e9cdfb4_1125_78841376@N00.jpg", (10, 200, 10))
    b = _image(root / image_dir / "103442236_09c8d53dbc_37_73293249@N00.jpg")
    _csv(root / csv_name, IM2GPS3K_HEADER, [
        [a.name, "78841376@N00", 32.325436, -64.764404, 2, 12, 353, 0.27, 0.05, 0.68],
        [b.name, "73293249@N00", 51.501821, -0.140655, 2, 11, 84, 0.0, 0.0, 1.0],
        ["gone.jpg", "1@N00", 1.0, 1.0, 0, 0, 0, 0.0, 0.0, 0.0],
    ])
    samples, stats = _read(GeoDatasetConfig(kind=kind, root=str(root)))
    assert _rows(samples) == [(a.name, 32.325436, -64.764404, "", "", kind, None),
                              (b.name, 51.501821, -0.140655, "", "", kind, None)]
    assert [s.image_path for s in samples] == [a, b]
    assert samples[0].image().getpixel((3, 3))[1] > 150 and samples[0].image().size == (8, 6)
    assert stats.read == 2 and dict(stats.skipped) == {"missing_image": 1}


@pytest.mark.parametrize("header", [
    ["id", "latitude", "longitude", "city", "country"],      # MP16-Reason / GLOBE evaluation CSVs, OSV-5M
    ["image_id", "lat", "lon", "City", "Country"],
    ["img_id", "Latitude", "Longitude", "city", "country_code"],
    ["IMG_FILE", "LAT", "LON", "city", "country"],          # GeoCLIP
    ["", "IMG_ID", "LAT", "LON", "city", "country"],        # pandas to_csv with its index column
])
def test_column_name_variants_and_bare_ids(tmp_path: Path, header: list[str]) -> None:
    _image(tmp_path / "123.jpg")
    png = _image(tmp_path / "456.png", fmt="PNG")
    exact = _image(tmp_path / "789")  # an id that is the file name itself is tried first
    rows = [["123", 45.0, 7.5, "Turin", "Italy"], ["456", -12.0, -77.0, "Lima", "PE"], ["789", 0.0, 0.0, "", ""],
            ["999", 1.0, 1.0, "", ""]]
    if header[0] == "":
        rows = [[i, *r] for i, r in enumerate(rows)]
    path = _csv(tmp_path / "mine.csv", header, rows)
    samples, stats = _read(GeoDatasetConfig(kind="csv", root=str(path)))  # the CSV as root: images beside it
    assert _rows(samples) == [("123", 45.0, 7.5, "Turin", "Italy", "mine", None), ("456", -12.0, -77.0, "Lima", "PE", "mine", None),
                              ("789", 0.0, 0.0, "", "", "mine", None)]
    assert samples[1].image_path == png and samples[2].image_path == exact
    assert dict(stats.skipped) == {"missing_image": 1}


def test_explicit_columns_and_folders(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    a = _image(root / "pics" / "p1.jpg")
    # "lat" / "lon" hold something else here: the named columns win over the aliases
    _csv(root / "meta" / "table.csv", ["photo", "y", "x", "lat", "lon", "town"], [["p1", 41.9, 12.5, 0, 0, "Rome"]])
    config = GeoDatasetConfig(kind="csv", root=str(root), csv="meta/table.csv", images="pics",
                              columns={"id": "photo", "lat": "y", "lon": "x", "city": "town"}, name="rome-set")
    samples, _ = _read(config)
    assert _rows(samples) == [("p1", 41.9, 12.5, "Rome", "", "rome-set", None)] and samples[0].image_path == a
    samples, _ = _read(GeoDatasetConfig(kind="csv", root=str(root), csv="meta/table.csv", images="pics",
                                        columns={"id": "photo", "lat": "y", "lon": "x", "city": None}))
    assert _rows(samples) == [("p1", 41.9, 12.5, "", "", "table", None)]


def test_limit_and_an_unparsable_line(tmp_path: Path) -> None:
    for i in range(4):
        _image(tmp_path / f"{i}.jpg")
    path = tmp_path / "x.csv"
    path.write_text("id,lat,lon\n0,1,1\n1," + "9" * 200_000 + ",1\n2,2,2\n3,3,3\n")
    samples, stats = _read(GeoDatasetConfig(kind="csv", root=str(path)))
    assert [s.key for s in samples] == ["0", "2", "3"] and dict(stats.skipped) == {"bad_row": 1}
    assert "field larger than field limit" in stats.first_reason["bad_row"]
    samples, stats = _read(GeoDatasetConfig(kind="csv", root=str(path), limit=2))
    assert [s.key for s in samples] == ["0", "2"] and stats.read == 2


# ---- GSV-Cities ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gsv(tmp_path_factory) -> tuple[Path, dict]:
    return make_gsv_folder(tmp_path_factory.mktemp("gsv"), cities=3, places=4, views=2, image_size=32,
                           rename={"Aurelia": "OSL", "Borgo": "WashingtonDC"})


def test_gsv_cities_reader_names_cities_and_keeps_place_ids(gsv: tuple[Path, dict]) -> None:
    root, written = gsv
    samples, stats = _read(GeoDatasetConfig(kind="gsv_cities", root=str(root), split="all"))
    assert stats.read == len(samples) == len(written) == 3 * 4 * 2 and not stats.skipped
    names = {s.image_path.name: s for s in samples}
    assert set(names) == set(written)
    display = {"Aurelia": ("Oslo", "Norway"), "Borgo": ("Washington", "United States"), "Caldera": ("Caldera", "")}
    for name, s in names.items():
        record = written[name]
        assert (s.lat, s.lon) == (record.lat, record.lon) and (s.city, s.country) == display[record.city]
        assert s.source == "gsv_cities"
    by_place: dict[int, set[str]] = {}
    for s in samples:
        by_place.setdefault(s.place_id, set()).add(written[s.image_path.name].key.rsplit("_", 1)[0])
    assert len(by_place) == 12 and all(len(v) == 1 for v in by_place.values())  # a place's views share its id
    assert sorted(len([s for s in samples if s.place_id == p]) for p in by_place) == [2] * 12
    # splits are the DQ-Cities builder's default assignment, by place
    scan = scan_gsv_cities(root, SplitConfig())
    for split in ("train", "val", "test"):
        keys = [s.key for s in read_geo_dataset(GeoDatasetConfig(kind="gsv_cities", root=str(root), split=split))]
        assert keys == [im.key for im in scan.images if im.split == split]
    limited, _ = _read(GeoDatasetConfig(kind="gsv_cities", root=str(root), split="all", limit=3, name="gsv"))
    assert [s.key for s in limited] == [s.key for s in samples[:3]] and {s.source for s in limited} == {"gsv"}


def test_gsv_cities_bad_rows_are_counted(tmp_path: Path) -> None:
    root, written = make_gsv_folder(tmp_path, cities=1, places=2, views=2, image_size=32)
    frame = next((root / "Dataframes").glob("*.csv"))
    rows = list(csv.DictReader(open(frame)))
    rows += [{**rows[0], "panoid": "no_such_image"}, {**rows[0], "lat": "north"}, dict(rows[1])]
    _csv(frame, list(rows[0]), [list(r.values()) for r in rows])
    samples, stats = _read(GeoDatasetConfig(kind="gsv_cities", root=str(root), split="all"))
    assert len(samples) == stats.read == len(written) == 4
    assert dict(stats.skipped) == {"missing_image": 1, "bad_row": 1, "duplicate_row": 1}


def test_gsv_city_table_resolves_in_the_real_gazetteer() -> None:
    iso = {"Bangkok": "TH", "BuenosAires": "AR", "LosAngeles": "US", "MexicoCity": "MX", "OSL": "NO", "Rome": "IT",
           "Barcelona": "ES", "Chicago": "US", "Madrid": "ES", "Miami": "US", "Phoenix": "US", "TRT": "CA", "Boston": "US",
           "Lisbon": "PT", "Medellin": "CO", "Minneapolis": "US", "PRG": "CZ", "WashingtonDC": "US", "Brussels": "BE",
           "London": "GB", "Melbourne": "AU", "Osaka": "JP", "PRS": "FR"}
    assert set(GSV_CITIES) == set(iso)
    assert GSV_CITIES["OSL"] == ("Oslo", "Norway") and GSV_CITIES["BuenosAires"] == ("Buenos Aires", "Argentina")
    gazetteer = GeoNamesGazetteer.cached()
    for folder, (city, country) in GSV_CITIES.items():
        match = gazetteer.resolve(city, country)
        assert match is not None and match.level == "city" and match.country_code == iso[folder], (folder, match)
        assert gazetteer.canonical_country(country) == iso[folder]


# ---- SynthCities ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def geo_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("geo") / "world"
    generate_synthcities(SynthCitiesConfig(num_cities=2, countries=2, places_per_city=10, views_per_place=2, image_size=32,
                                           num_workers=0, max_samples_per_shard=2), out)
    return out


def test_synthcities_reader_fills_countries_from_the_manifest(geo_world: Path) -> None:
    manifest = json.loads((geo_world / "manifest.json").read_text())
    country_name = {c["code"]: c["name"] for c in manifest["extra"]["countries"]}
    country_of = {c["name"]: country_name[c["country"]] for c in manifest["extra"]["cities"]}
    assert len(set(country_of.values())) == 2
    samples, stats = _read(GeoDatasetConfig(kind="synthcities", root=str(geo_world)))
    assert stats.read == len(samples) == manifest["counts"]["test"]["samples"] == 4 and not stats.skipped
    for s in samples:
        assert s.country == country_of[s.city] and s.source == "synthcities"
        assert (s.lat, s.lon, s.place_id) == (s.record.lat, s.record.lon, s.record.place_id) and s.image().size == (32, 32)
    everything, _ = _read(GeoDatasetConfig(kind="synthcities", root=str(geo_world), split="all", name="geo"))
    assert len(everything) == sum(c["samples"] for c in manifest["counts"].values()) and {s.source for s in everything} == {"geo"}
    assert len(_read(GeoDatasetConfig(kind="synthcities", root=str(geo_world), split=["train", "val"]))[0]) == 32 + 4


def test_synthcities_torn_shard_and_missing_jpg_are_counted(geo_world: Path, tmp_path: Path) -> None:
    world = tmp_path / "world"
    shutil.copytree(geo_world, world)
    first, second = world / "test-00000.tar", world / "test-00001.tar"
    first.write_bytes(first.read_bytes()[:600])  # cut inside the first member: nothing of that shard is usable
    with tarfile.open(second) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    dropped = next(m.name for m, _ in members if m.name.endswith(".jpg"))
    with tarfile.open(second, "w") as tar:
        for m, data in members:
            if m.name != dropped:
                tar.addfile(m, io.BytesIO(data))
    samples, stats = _read(GeoDatasetConfig(kind="synthcities", root=str(world)))
    assert [s.key for s in samples] == [m.name[: -len(".json")] for m, _ in members
                                        if m.name.endswith(".json") and m.name[: -len(".json")] != dropped[: -len(".jpg")]]
    assert stats.read == 1 and dict(stats.skipped) == {"truncated_shard": 1, "missing_member": 1}
    assert stats.first_reason["truncated_shard"].startswith("test-00000.tar")


# ---- spec strings and configuration errors -------------------------------------------------------


def test_parse_dataset_spec() -> None:
    assert parse_dataset_spec("im2gps3k:/data/im2gps3k") == GeoDatasetConfig(kind="im2gps3k", root="/data/im2gps3k")
    assert parse_dataset_spec("synthcities:data/synthcities-geo:test") == GeoDatasetConfig(kind="synthcities", root="data/synthcities-geo")
    both = parse_dataset_spec("synthcities:data/w:train,val")
    assert both.split == "train,val" and both.splits == ["train", "val"]
    assert parse_dataset_spec("gsv_cities:/data/gsv:all").splits == ["train", "val", "test"]
    assert parse_dataset_spec("csv:/data/x.csv:images=/data/imgs:lat=Latitude:lon=Longitude:limit=5:name=mine") == GeoDatasetConfig(
        kind="csv", root="/data/x.csv", images="/data/imgs", limit=5, name="mine", columns={"lat": "Latitude", "lon": "Longitude"})
    assert parse_dataset_spec("mp16:/data/mp16:csv=MP16_Pro_filtered.csv:split=train") == GeoDatasetConfig(
        kind="mp16", root="/data/mp16", csv="MP16_Pro_filtered.csv", split="train")


@pytest.mark.parametrize("spec, match", [
    ("im2gps3k", "expected KIND:ROOT"),
    ("im2gps3k:", "expected KIND:ROOT"),
    ("flickr:/data", "kind must be one of"),
    ("csv:/x.csv:foo=1", "unknown key 'foo'"),
    ("csv:/x.csv:limit=ten", "limit must be an integer"),
    ("csv:/x.csv:limit=0", "limit must be a positive integer"),
    ("synthcities:/w:dev", "split must be split names"),
    ("synthcities:/w:test:train", "split given twice"),
    ("gsv_cities:/g:lat=y", "columns applies to CSV datasets"),
])
def test_bad_specs_are_one_line_errors(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_dataset_spec(spec)
    assert "\n" not in str(info.value) and repr(spec) in str(info.value)


def test_configuration_errors_name_the_file_or_field(tmp_path: Path) -> None:
    def error(config: GeoDatasetConfig, kind: type[Exception], *needles: str) -> None:
        with pytest.raises(kind) as info:
            read_geo_dataset(config)  # raised on creation, before any row is read
        text = str(info.value)
        assert "\n" not in text and all(n in text for n in needles), text

    with pytest.raises(ValueError, match="GeoDatasetConfig.kind must be one of synthcities, mp16"):
        GeoDatasetConfig(kind="flickr", root="x")
    with pytest.raises(ValueError, match="GeoDatasetConfig.columns: unknown field"):
        GeoDatasetConfig(kind="csv", root="x", columns={"latitude": "y"})
    error(GeoDatasetConfig(kind="im2gps3k", root=str(tmp_path / "nope")), FileNotFoundError, str(tmp_path / "nope"))
    error(GeoDatasetConfig(kind="im2gps3k", root=str(tmp_path)), FileNotFoundError, "im2gps3k_places365.csv", str(tmp_path))
    error(GeoDatasetConfig(kind="csv", root=str(tmp_path)), ValueError, "kind csv needs the CSV file")
    error(GeoDatasetConfig(kind="csv", root=str(tmp_path), csv="none.csv"), FileNotFoundError, "none.csv")
    _csv(tmp_path / "nolat.csv", ["IMG_ID", "AUTHOR", "LON"], [["a.jpg", "x", 1.0]])
    error(GeoDatasetConfig(kind="csv", root=str(tmp_path / "nolat.csv")), ValueError, "nolat.csv", "no lat column", "IMG_ID, AUTHOR, LON")
    _csv(tmp_path / "ok.csv", ["id", "lat", "lon"], [["a", 1.0, 1.0]])
    error(GeoDatasetConfig(kind="csv", root=str(tmp_path / "ok.csv"), columns={"lat": "Latitude"}), ValueError, "ok.csv", "'Latitude'")
    error(GeoDatasetConfig(kind="csv", root=str(tmp_path / "ok.csv"), images="pics"), FileNotFoundError, str(tmp_path / "pics"))
    error(GeoDatasetConfig(kind="synthcities", root=str(tmp_path)), ValueError, "manifest.json", str(tmp_path))
    error(GeoDatasetConfig(kind="gsv_cities", root=str(tmp_path)), FileNotFoundError, "Dataframes")
