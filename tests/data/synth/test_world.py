"""The geo world: SynthCities cities grouped into fictional countries (GLOBE, issue 15 item 3)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
import yaml

from dlgpr.data.synth import SynthCitiesConfig, generate_synthcities
from dlgpr.data.synth.generate import make_world
from dlgpr.geo.distance import haversine_km
from dlgpr.geo.gazetteer import WorldGazetteer

ROOT = Path(__file__).resolve().parents[3]
SMALL = dict(places_per_city=6, views_per_place=1, image_size=32, num_workers=1)


def _km(a: object, b: object) -> float:
    return float(haversine_km(a.lat, a.lon, b.lat, b.lon))  # type: ignore[attr-defined]


def _hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def test_default_world_has_no_countries_and_is_the_countries_0_world(tmp_path: Path) -> None:
    default, explicit = tmp_path / "default", tmp_path / "explicit"
    generate_synthcities(SynthCitiesConfig(num_cities=3, **SMALL), default)
    generate_synthcities(SynthCitiesConfig(num_cities=3, countries=0, **SMALL), explicit)
    assert _hashes(default) == _hashes(explicit)
    extra = json.loads((default / "manifest.json").read_text())["extra"]
    assert "countries" not in extra and "countries" not in extra["config"]
    assert all("country" not in c for c in extra["cities"])
    assert make_world(SynthCitiesConfig(num_cities=3, places_per_city=6)).countries == ()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geo_world_scales(seed: int) -> None:
    world = make_world(SynthCitiesConfig(num_cities=12, countries=4, places_per_city=40, seed=seed))
    assert [len(c.cities) for c in world.countries] == [3, 3, 3, 3]
    assert len({c.code for c in world.countries}) == len({c.name for c in world.countries}) == 4
    for a, b in itertools.combinations(world.countries, 2):
        assert _km(a, b) >= 1100.0
    country = {c.index: world.country_of(c.index) for c in world.cities}
    for a, b in itertools.combinations(world.cities, 2):
        d = _km(a, b)
        if country[a.index] is country[b.index]:
            assert 25.0 < d < 750.0 and 40.0 <= d <= 150.0
        else:
            assert d > 750.0
    for c in world.cities:
        assert 40.0 <= _km(c, country[c.index]) <= 75.0
    cities = {c.index: c for c in world.cities}
    assert max(_km(p, cities[p.city_index]) for p in world.places) < 12.0  # about 2 km around the city
    # the country layer moves cities only: style priors and place attributes are the plain world's
    plain = make_world(SynthCitiesConfig(num_cities=12, places_per_city=40, seed=seed))
    assert [c.style for c in plain.cities] == [c.style for c in world.cities]
    assert [p.attributes for p in plain.places] == [p.attributes for p in world.places]


def test_geo_world_is_deterministic() -> None:
    config = SynthCitiesConfig(num_cities=6, countries=2, places_per_city=5)
    assert make_world(config) == make_world(config)
    assert make_world(config).countries != make_world(SynthCitiesConfig(num_cities=6, countries=2, places_per_city=5, seed=1)).countries


def test_geo_manifest_read_by_world_gazetteer(tmp_path: Path) -> None:
    config = SynthCitiesConfig(num_cities=6, countries=2, **SMALL)
    manifest = generate_synthcities(config, tmp_path / "geo")
    world = make_world(config)
    extra = manifest.extra
    assert extra["config"]["countries"] == 2
    assert [c["code"] for c in extra["countries"]] == [c.code for c in world.countries]
    g = WorldGazetteer.from_manifest(tmp_path / "geo")
    for city in world.cities:
        country = world.country_of(city.index)
        assert country is not None
        m = g.lookup(city.name)
        assert m is not None and m.level == "city" and (m.lat, m.lon) == (city.lat, city.lon)
        assert m.country_code == country.code and m.country == country.name
        assert g.lookup(f"{city.name}, {country.name}").city == city.name  # type: ignore[union-attr]
    for country in world.countries:
        m = g.lookup(country.name)
        assert m is not None and m.level == "country" and (m.lat, m.lon) == (country.lat, country.lon)
        assert g.canonical_country(country.name) == country.code
    for place in world.places:
        r = g.reverse(place.lat, place.lon)
        assert r.city == place.city and r.country_code == world.country_of(place.city_index).code  # type: ignore[union-attr]


@pytest.mark.parametrize("kwargs", [dict(num_cities=5, countries=2), dict(num_cities=14, countries=2),
                                    dict(num_cities=13, countries=13), dict(num_cities=5, countries=-1)])
def test_bad_countries_names_the_field(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="SynthCitiesConfig.countries"):
        SynthCitiesConfig(**kwargs)


def test_geo_preset() -> None:
    preset = yaml.safe_load((ROOT / "configs/world/geo.yaml").read_text())
    config = SynthCitiesConfig(**preset)
    assert (config.countries, config.num_cities // config.countries) == (4, 3)
