"""The SynthCities world model: cities with style priors, places with exact static attributes.

A place is a flat dict of *slots* (``SLOTS``) with JSON-serialisable values. It is the ground
truth the simulated user answers from, so every slot is something the renderer draws and the
description states. Places of one city are drawn from that city's *style prior* (a skewed
distribution per slot), so they share many values and are hard negatives of each other, while
different cities favour different values.

Everything is a pure function of the seed: each random draw comes from a ``random.Random``
seeded with a string naming its purpose (string seeds are hashed with SHA-512 by ``random``,
unlike the salted built-in ``hash()``), so results do not depend on process or draw order.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

COLORS = ("red", "orange", "yellow", "green", "blue", "teal", "purple", "pink",
          "white", "grey", "black", "brown", "beige")
SHOP_SIGNS = ("CAFE", "BANK", "BAKERY", "PHARMACY", "HOTEL", "BOOKS", "MARKET", "TAILOR",
              "FLORIST", "BARBER", "PIZZA", "DELI", "GALLERY", "TOYS", "SHOES", "LAUNDRY")
NONE = "none"

#: Every static slot of a place and its possible values. Slots whose value is ``"none"`` mean the
#: element is absent; ``sign_color``, ``awning_pattern`` and ``phone_booth_color`` are ``"none"``
#: exactly when ``shop_sign``, ``awning`` and ``phone_booth`` are. Positions are as seen from the
#: street; ``phone_booth`` is relative to the door, ``bench``/``street_lamp``/``tree`` to the facade.
SLOTS: dict[str, list[Any]] = {
    "facade_color": list(COLORS),
    "material": ["brick", "stone", "stucco", "wood", "concrete", "glass"],
    "floors": [1, 2, 3, 4, 5, 6],
    # Windows on each upper floor (the ground floor is a shop front); on a one-storey building,
    # the windows beside the door.
    "windows_per_floor": [2, 3, 4, 5],
    "window_style": ["square", "arched", "narrow", "round"],
    "shutters": [NONE, *COLORS],
    "trim_color": list(COLORS),
    "roof": ["flat", "gabled", "mansard", "hipped"],
    "shop_sign": [NONE, *SHOP_SIGNS],  # the text painted on the sign
    "sign_color": [NONE, *COLORS],  # background colour of the sign board
    "awning": [NONE, *COLORS],
    "awning_pattern": [NONE, "plain", "striped"],
    "door_color": list(COLORS),
    "door_position": ["left", "center", "right"],
    "balcony": [NONE, "iron", "stone", "wooden"],  # on the first upper floor; none on one-storey buildings
    "flower_boxes": [NONE, "red", "pink", "yellow", "purple", "white"],  # colour of the flowers
    "phone_booth": [NONE, "left", "right"],  # side of the door
    "phone_booth_color": [NONE, "red", "blue", "green", "yellow", "black", "grey"],
    "bench": [NONE, "left", "right"],
    "street_lamp": [NONE, "left", "right"],
    "tree": [NONE, "left", "right"],
    "house_number": list(range(1, 200)),
    "sidewalk": ["cobblestone", "paved", "asphalt"],
}

#: Slots that only exist when their parent slot is not ``"none"`` (child -> parent).
DEPENDENT_SLOTS = {"sign_color": "shop_sign", "awning_pattern": "awning", "phone_booth_color": "phone_booth"}

#: Slots a city does not skew: house numbers are not a style.
_UNSKEWED = ("house_number",)

_CITY_NAMES = ("Aurelia", "Borgo", "Caldera", "Dunmore", "Eskerby", "Fennwick", "Galdora", "Halvik",
               "Istrana", "Jorvale", "Kestrel", "Lunetta", "Marbury", "Norhaven", "Ostrava", "Pellandra")
# (lat, lon) of the fictional city centres: spread over the globe so geo-distances are meaningful.
_CITY_CENTRES = ((41.90, 12.50), (45.44, 9.19), (37.98, -1.13), (53.35, -6.26), (59.91, 10.75),
                 (51.51, -0.13), (40.42, -3.70), (64.15, -21.94), (45.81, 15.98), (60.17, 24.94),
                 (-33.87, 151.21), (43.30, 5.37), (42.36, -71.06), (-37.81, 144.96), (49.82, 18.26),
                 (38.72, -9.14))
_NAME_HEADS = ("Ash", "Bel", "Cor", "Dal", "Elm", "Fal", "Gren", "Har", "Ivel", "Kar", "Lor", "Mor")
_NAME_TAILS = ("ford", "haven", "mere", "stad", "wick", "bury", "vale", "port", "holm", "dale")

#: City style priors mix a Dirichlet draw (small concentration: a few values dominate) with a
#: uniform floor so that every value stays possible in every city.
_DIRICHLET_ALPHA = 0.4
_UNIFORM_MIX = 0.2
#: Standard deviation (degrees) of place coordinates around their city centre (about 2 km).
_COORD_SIGMA_DEG = 0.02
#: Fictional countries of the geo world (``countries > 0``): ISO 3166 user-assigned codes (``X?``,
#: never a real country) and names that are neither real countries nor city names.
_COUNTRIES = (("XA", "Valdoria"), ("XB", "Ostmark"), ("XC", "Brenland"), ("XD", "Corvinia"),
              ("XE", "Drassia"), ("XF", "Elvania"), ("XG", "Farrowmark"), ("XH", "Gilmora"),
              ("XI", "Hestria"), ("XJ", "Islandra"), ("XL", "Jastovia"), ("XM", "Korvath"))
#: Geo world scales (km): country centres at least ``_COUNTRY_MIN_KM`` apart, so cities of different
#: countries are > 750 km apart; a city ``_CITY_RING_KM`` from its country's centre and at least
#: ``_CITY_MIN_KM`` from the other cities of its country (so at most 150 km from them), so 25 km
#: needs the city and 750 km the country, as on Earth.
_COUNTRY_MIN_KM = 1100.0
_CITY_RING_KM = (40.0, 75.0)
_CITY_MIN_KM = 40.0
_CONTINENT_KM = 1000.0
#: Most cities per country that fit the ring with these gaps (checked by the config).
MAX_CITIES_PER_COUNTRY = 6
_EARTH_RADIUS_KM = 6371.0088
#: Global place id = city_index * PLACE_ID_STRIDE + place_in_city (GSV-Cities convention).
PLACE_ID_STRIDE = 10**5


def seeded_rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from ``parts`` (e.g. ``(seed, "layout", place_id)``), stable across processes."""
    return random.Random(":".join(str(p) for p in parts))


@dataclass(frozen=True)
class City:
    index: int
    name: str
    lat: float
    lon: float
    #: slot -> probabilities over ``SLOTS[slot]`` (same order); the city's style prior.
    style: dict[str, tuple[float, ...]] = field(repr=False)


@dataclass(frozen=True)
class Place:
    place_id: int
    city: str
    city_index: int
    place_in_city: int
    lat: float
    lon: float
    split: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Country:
    """A country of the geo world: a fictional code and name, a centre, and its cities' indices."""

    code: str
    name: str
    lat: float
    lon: float
    cities: tuple[int, ...]


@dataclass(frozen=True)
class World:
    cities: tuple[City, ...]
    places: tuple[Place, ...]  # ordered by (city_index, place_in_city)
    #: Empty unless the world was built with ``countries > 0`` (the geo world).
    countries: tuple[Country, ...] = ()

    def country_of(self, city_index: int) -> Country | None:
        """The country of a city (by global index), or ``None`` in a world without countries."""
        return next((c for c in self.countries if city_index in c.cities), None)


def city_names(num_cities: int) -> list[str]:
    """The first ``num_cities`` city names: the fixed list, then composed ``Head+tail`` names."""
    names = list(_CITY_NAMES[:num_cities])
    composed = (h + t for t in _NAME_TAILS for h in _NAME_HEADS)
    while len(names) < num_cities:
        name = next(composed, None)
        if name is None:
            raise ValueError(f"num_cities={num_cities} exceeds the {len(names)} available city names")
        if name not in names:
            names.append(name)
    return names


def max_cities() -> int:
    return len(_CITY_NAMES) + len(_NAME_HEADS) * len(_NAME_TAILS)


def max_countries() -> int:
    return len(_COUNTRIES)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km (haversine; the same Earth radius as ``dlgpr.geo.distance``)."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _destination(lat: float, lon: float, bearing_deg: float, km: float) -> tuple[float, float]:
    """The point ``km`` away from ``(lat, lon)`` along the initial bearing (great circle)."""
    p1, l1, b, d = math.radians(lat), math.radians(lon), math.radians(bearing_deg), km / _EARTH_RADIUS_KM
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 180.0) % 360.0 - 180.0


def place_countries(cities: Sequence[City], num_countries: int, seed: int) -> tuple[tuple[City, ...], tuple[Country, ...]]:
    """Group ``cities`` (in order, equal shares) into ``num_countries`` countries and move them.

    Country centres are drawn uniformly in one continent (a disc of radius ``_CONTINENT_KM * (1 +
    sqrt(num_countries))`` around a random point), redrawn until at least ``_COUNTRY_MIN_KM`` from every earlier centre; each city is put ``_CITY_RING_KM`` from
    its centre in a random direction, redrawn until at least ``_CITY_MIN_KM`` from its country's
    other cities. The draws come from their own generators, so the cities' style priors (and
    every other draw of the world) are those of the same world without countries.
    """
    per = len(cities) // num_countries
    if num_countries < 1 or per * num_countries != len(cities) or per > MAX_CITIES_PER_COUNTRY or num_countries > len(_COUNTRIES):
        raise ValueError(f"countries={num_countries} must divide {len(cities)} cities into at most "
                         f"{MAX_CITIES_PER_COUNTRY} each, with at most {len(_COUNTRIES)} countries")
    centre_rng = seeded_rng(seed, "countries")
    # One continent: neighbouring countries are 1,100 to a few thousand km apart, so 2,500 km
    # separates some of them and not others, as on Earth.
    mid_lat, mid_lon = centre_rng.uniform(-30.0, 40.0), centre_rng.uniform(-180.0, 180.0)
    radius = _CONTINENT_KM * (1.0 + math.sqrt(num_countries))
    centres: list[tuple[float, float]] = []
    for _ in range(num_countries):
        for _attempt in range(10_000):
            # Uniform in the continent's disc.
            lat, lon = _destination(mid_lat, mid_lon, centre_rng.uniform(0.0, 360.0), radius * math.sqrt(centre_rng.random()))
            if all(_km(lat, lon, a, b) >= _COUNTRY_MIN_KM for a, b in centres):
                break
        else:
            raise RuntimeError(f"could not place {num_countries} countries {_COUNTRY_MIN_KM} km apart")
        centres.append((round(lat, 4), round(lon, 4)))
    moved: list[City] = []
    countries: list[Country] = []
    for k, (clat, clon) in enumerate(centres):
        rng = seeded_rng(seed, "country-cities", k)
        members: list[City] = []
        for city in cities[k * per:(k + 1) * per]:
            for _attempt in range(10_000):
                lat, lon = _destination(clat, clon, rng.uniform(0.0, 360.0), rng.uniform(*_CITY_RING_KM))
                lat, lon = round(lat, 4), round(lon, 4)
                if all(_km(lat, lon, c.lat, c.lon) >= _CITY_MIN_KM for c in members):
                    break
            else:
                raise RuntimeError(f"could not place {per} cities {_CITY_MIN_KM} km apart in one country")
            members.append(City(index=city.index, name=city.name, lat=lat, lon=lon, style=city.style))
        moved += members
        code, name = _COUNTRIES[k]
        countries.append(Country(code=code, name=name, lat=clat, lon=clon, cities=tuple(c.index for c in members)))
    return tuple(moved), tuple(countries)


def _dirichlet(rng: random.Random, k: int, alpha: float) -> list[float]:
    draws = [rng.gammavariate(alpha, 1.0) for _ in range(k)]
    total = sum(draws) or 1.0
    return [d / total for d in draws]


def _make_city(index: int, name: str, seed: int) -> City:
    rng = seeded_rng(seed, "city", index)
    if index < len(_CITY_CENTRES):
        lat, lon = _CITY_CENTRES[index]
    else:
        lat, lon = rng.uniform(-55.0, 65.0), rng.uniform(-170.0, 170.0)
    style: dict[str, tuple[float, ...]] = {}
    for slot, values in SLOTS.items():
        k = len(values)
        if slot in _UNSKEWED:
            style[slot] = tuple([1.0 / k] * k)
            continue
        skew = _dirichlet(rng, k, _DIRICHLET_ALPHA)
        style[slot] = tuple((1.0 - _UNIFORM_MIX) * p + _UNIFORM_MIX / k for p in skew)
    return City(index=index, name=name, lat=lat, lon=lon, style=style)


def _draw(rng: random.Random, city: City, slot: str, exclude: Sequence[Any] = ()) -> Any:
    values, weights = SLOTS[slot], city.style[slot]
    pairs = [(v, w) for v, w in zip(values, weights) if v not in exclude]
    return rng.choices([v for v, _ in pairs], weights=[w for _, w in pairs])[0]


def sample_attributes(rng: random.Random, city: City) -> dict[str, Any]:
    """One place's slot dict drawn from the city's style prior, with the slot constraints applied."""
    attrs: dict[str, Any] = {}
    for slot in SLOTS:
        parent = DEPENDENT_SLOTS.get(slot)
        if parent is not None:
            attrs[slot] = NONE if attrs[parent] == NONE else _draw(rng, city, slot, exclude=(NONE,))
        elif slot == "balcony" and attrs["floors"] == 1:
            attrs[slot] = NONE  # a balcony needs an upper floor
        else:
            attrs[slot] = _draw(rng, city, slot)
    return attrs


def assign_splits(n: int, fractions: Sequence[float], rng: random.Random) -> list[str]:
    """Split labels for ``n`` places in a random order, with counts from cumulative rounding."""
    bounds, acc = [], 0.0
    for f in fractions:
        acc += f
        bounds.append(round(acc * n))
    bounds[-1] = n
    order = list(range(n))
    rng.shuffle(order)
    labels = [""] * n
    start = 0
    for split, end in zip(("train", "val", "test"), bounds):
        for i in order[start:end]:
            labels[i] = split
        start = end
    return labels


def build_world(num_cities: int, places_per_city: int, split_fractions: Sequence[float], seed: int,
                first_city: int = 0, countries: int = 0) -> World:
    """All cities and places, deterministic in the arguments.

    The cities are entries ``first_city .. first_city + num_cities - 1`` of the city list (names,
    centres, place-id ranges), so worlds with disjoint ranges share no city and no place id.

    No two places share the full attribute dict: a collision is redrawn from the same place's
    generator, so the outcome is still a function of the seed alone. The split is by place,
    stratified per city.

    With ``countries > 0`` the cities are grouped into that many fictional countries and moved
    around their centres (:func:`place_countries`); places keep their scatter (about 2 km) around
    their city. With ``countries == 0`` nothing of this is drawn: the world is the one built
    before countries existed.
    """
    if num_cities < 1 or places_per_city < 1:
        raise ValueError("num_cities and places_per_city must be >= 1")
    if first_city < 0 or first_city + num_cities > max_cities():
        raise ValueError(f"first_city + num_cities must be in [1, {max_cities()}], got {first_city} + {num_cities}")
    if places_per_city >= PLACE_ID_STRIDE:
        raise ValueError(f"places_per_city must be < {PLACE_ID_STRIDE} (global ids are city * {PLACE_ID_STRIDE} + place)")
    names = city_names(first_city + num_cities)
    cities = tuple(_make_city(i, names[i], seed) for i in range(first_city, first_city + num_cities))
    country_list: tuple[Country, ...] = ()
    if countries:
        cities, country_list = place_countries(cities, countries, seed)
    seen: set[str] = set()
    places: list[Place] = []
    for city in cities:
        splits = assign_splits(places_per_city, split_fractions, seeded_rng(seed, "split", city.index))
        for k in range(places_per_city):
            place_id = city.index * PLACE_ID_STRIDE + k
            rng = seeded_rng(seed, "place", place_id)
            attrs = sample_attributes(rng, city)
            while (sig := json.dumps(attrs, sort_keys=True)) in seen:
                attrs = sample_attributes(rng, city)
            seen.add(sig)
            lat = max(-90.0, min(90.0, city.lat + rng.gauss(0.0, _COORD_SIGMA_DEG)))
            lon = (city.lon + rng.gauss(0.0, _COORD_SIGMA_DEG) + 180.0) % 360.0 - 180.0
            places.append(Place(place_id=place_id, city=city.name, city_index=city.index, place_in_city=k,
                                lat=round(lat, 6), lon=round(lon, 6), split=splits[k], attributes=attrs))
    return World(cities=cities, places=tuple(places), countries=country_list)
