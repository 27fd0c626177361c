"""WorldGazetteer on manifest ``extra`` dicts (the manifest format the geo world will write)."""

from __future__ import annotations

import pytest

from dlgpr.geo.gazetteer import Gazetteer, WorldGazetteer, load_gazetteer

# A default-world manifest: cities only (what generate_synthcities writes today).
DEFAULT_EXTRA = {"cities": [{"index": 0, "name": "Aurelia", "lat": 41.9, "lon": 12.5},
                            {"index": 1, "name": "Borgo", "lat": 45.44, "lon": 9.19}]}
# A world with countries: cities name their country, countries have a code, a name and a centre.
GEO_EXTRA = {"cities": [{"index": 0, "name": "Aurelia", "lat": 10.0, "lon": 20.0, "country": "Valdoria"},
                        {"index": 1, "name": "Borgo", "lat": 10.5, "lon": 20.3, "country": "Valdoria"},
                        {"index": 2, "name": "Caldera", "lat": 20.0, "lon": 30.0, "country": "Ostmark"}],
             "countries": [{"code": "C0", "name": "Valdoria", "lat": 10.2, "lon": 20.1},
                           {"code": "C1", "name": "Ostmark", "lat": 20.0, "lon": 30.0}]}


def test_default_world_resolves_city_names_both_ways() -> None:
    g = WorldGazetteer.from_manifest(DEFAULT_EXTRA)
    assert isinstance(g, Gazetteer)
    m = g.lookup("borgo")
    assert m is not None and m.city == "Borgo" and (m.lat, m.lon) == (45.44, 9.19)
    assert g.reverse(41.91, 12.49).city == "Aurelia"
    assert g.lookup("Rome") is None and g.stats["unresolved"] == 1


def test_world_with_countries() -> None:
    g = WorldGazetteer.from_manifest(GEO_EXTRA)
    m = g.lookup("Borgo, Valdoria")
    assert m is not None and m.level == "city" and m.country == "Valdoria" and m.country_code == "C0"
    c = g.lookup("Ostmark")
    assert c is not None and c.level == "country" and (c.lat, c.lon) == (20.0, 30.0)
    assert g.lookup("Borgo, Ostmark").level == "country"  # type: ignore[union-attr]  # not a city of Ostmark
    r = g.reverse(10.49, 20.31)
    assert r.city == "Borgo" and r.country == "Valdoria"
    assert g.canonical_country("valdoria") == "C0"


def test_malformed_manifest_names_the_field() -> None:
    with pytest.raises(ValueError, match="extra.cities"):
        WorldGazetteer.from_manifest({"cities": []})
    with pytest.raises(ValueError, match="extra.cities"):
        WorldGazetteer.from_manifest({"cities": [{"name": "X"}]})


def test_city_country_given_as_code() -> None:
    # the geo world writes the country's code in extra.cities[].country
    extra = {**GEO_EXTRA, "cities": [{**c, "country": {"Valdoria": "C0", "Ostmark": "C1"}[c["country"]]} for c in GEO_EXTRA["cities"]]}
    g = WorldGazetteer.from_manifest(extra)
    r = g.reverse(10.49, 20.31)
    assert r.city == "Borgo" and r.country == "Valdoria" and r.country_code == "C0"
    assert g.lookup("Caldera, Ostmark").level == "city"  # type: ignore[union-attr]


def test_load_gazetteer_by_name() -> None:
    g = load_gazetteer("world", GEO_EXTRA)
    assert isinstance(g, WorldGazetteer) and g.reverse(20.0, 30.0).country == "Ostmark"
    assert load_gazetteer(g) is g and load_gazetteer(None) is None and load_gazetteer("none") is None
    with pytest.raises(ValueError, match="needs the world's directory"):
        load_gazetteer("world")
    with pytest.raises(ValueError, match=r"one of \('world', 'geonames'\)"):
        load_gazetteer("google")
