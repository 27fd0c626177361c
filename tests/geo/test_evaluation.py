"""Scoring predictions of every kind against samples (hand-made), the Table 1 markdown and the accuracy figure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlgpr.data.geo import GeoSample
from dlgpr.geo.distance import haversine_km
from dlgpr.geo.evaluation import (MISSING, GeoEvaluation, accuracy_figure, comparison_table, evaluate_predictions, paired_comparison,
                                  results_table)
from dlgpr.metrics import sign_test
from dlgpr.geo.gazetteer import WorldGazetteer
from dlgpr.geo.predict import GeoPrediction

WORLD = WorldGazetteer.from_manifest({
    "cities": [{"name": "Aurelia", "lat": 10.0, "lon": 20.0, "country": "XA"}, {"name": "Borgo", "lat": 10.5, "lon": 20.3, "country": "XA"},
               {"name": "Caldera", "lat": 20.0, "lon": 30.0, "country": "XB"}],
    "countries": [{"code": "XA", "name": "Valdoria", "lat": 10.2, "lon": 20.1}, {"code": "XB", "name": "Ostmark", "lat": 20.0, "lon": 30.0}],
})
SAMPLES = [GeoSample("s1", 10.0, 20.0, "Aurelia", "Valdoria"), GeoSample("s2", 10.5, 20.3, "Borgo", "Valdoria"),
           GeoSample("s3", 20.0, 30.0, "Caldera", "Ostmark"), GeoSample("s4", 10.01, 20.0, "Aurelia", "Valdoria"),
           GeoSample("s5", 20.0, 30.0, "Caldera", "Ostmark")]
BORGO_TO_AURELIA_KM = float(haversine_km(10.5, 20.3, 10.0, 20.0))  # about 64 km


def _predictions() -> list[GeoPrediction]:
    return [
        GeoPrediction("extra", lat=0.0, lon=0.0),  # not a sample of this dataset: ignored
        GeoPrediction("s5", city="Atlantis"),  # a name no gazetteer knows: unresolved
        GeoPrediction("s1", lat=10.0, lon=20.0),  # coordinates only: named by reverse lookup
        GeoPrediction("s2", city="Aurelia", country="XA"),  # wrong city, right country (as a code)
        GeoPrediction.failed("s3", "api_error:InternalServerError"),
        # s4: no prediction at all
    ]


def test_every_kind_of_prediction_on_one_scale() -> None:
    r = evaluate_predictions(SAMPLES, _predictions(), WORLD)
    assert isinstance(r, GeoEvaluation) and r.n == 5
    assert (r.failed, r.unresolved, r.errors) == (2, 3, {"api_error:InternalServerError": 1, MISSING: 1})
    assert r.accuracy == pytest.approx({1.0: 0.2, 25.0: 0.2, 200.0: 0.4, 750.0: 0.4, 2500.0: 0.4})
    assert r.city_accuracy == pytest.approx(0.2) and r.country_accuracy == pytest.approx(0.4)
    assert math.isinf(r.median_km) and r.median_km_resolved == pytest.approx(BORGO_TO_AURELIA_KM / 2)
    d = r.as_dict()
    assert d["failed"] == 2 and d["acc@200km"] == pytest.approx(0.4) and d["errors"][MISSING] == 1


def test_without_a_gazetteer_names_are_not_geocoded_and_countries_compare_as_names() -> None:
    r = evaluate_predictions(SAMPLES, _predictions(), None)
    assert r.unresolved == 4 and r.accuracy[1.0] == pytest.approx(0.2)  # only the GPS prediction has coordinates
    assert r.country_accuracy == 0.0 and r.city_accuracy == 0.0  # "XA" is not "Valdoria"; s1 is not named
    unnamed = [GeoSample("u", 0.0, 0.0)]
    r = evaluate_predictions(unnamed, [GeoPrediction("u", lat=0.0, lon=0.0)])
    assert math.isnan(r.city_accuracy) and math.isnan(r.country_accuracy) and r.accuracy[1.0] == 1.0


def _results() -> dict[str, dict[str, GeoEvaluation]]:
    perfect = [GeoPrediction(s.key, lat=s.lat, lon=s.lon, city=s.city, country=s.country) for s in SAMPLES]
    return {"retrieval": {"world:test": evaluate_predictions(SAMPLES, perfect, WORLD),
                          "other": evaluate_predictions(SAMPLES[:2], perfect, WORLD)},
            "vlm": {"world:test": evaluate_predictions(SAMPLES, _predictions(), WORLD)}}


def test_table_has_a_column_group_per_dataset_and_a_row_per_method() -> None:
    lines = results_table(_results()).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    group = ["25 km", "200 km", "750 km", "2500 km", "city", "country", "median km", "unresolved / failed"]
    assert header == ["method", "**world:test** (n=5) 1 km", *group, "**other** (n=2) 1 km", *group]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")][1:] for line in lines[2:]}
    assert rows["retrieval"] == ["100.0"] * 7 + ["0.0", "0 / 0"] + ["100.0"] * 7 + ["0.0", "0 / 0"]
    assert rows["vlm"][:9] == ["20.0", "20.0", "40.0", "40.0", "40.0", "20.0", "40.0", "∞", "1 / 2"]
    assert rows["vlm"][9:] == ["–"] * 9
    assert len(lines) == 4 and set(lines[1].strip("|").split("|")[1:]) == {"---:"}


def test_figure_has_a_panel_per_dataset_and_a_line_per_method(tmp_path) -> None:
    fig = accuracy_figure(_results())
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    curves = [line for line in fig.axes[0].lines if not line.get_label().startswith("_")]  # labelled: the methods
    assert [c.get_label() for c in curves] == ["retrieval", "vlm"]
    x, y = curves[1].get_data()
    assert y[x < 60].max() == pytest.approx(20.0) and y[x > 100].min() == pytest.approx(40.0)  # the step at 64 km
    fig.savefig(tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000


def _errors(km: list[float]) -> GeoEvaluation:
    return GeoEvaluation(n=len(km), unresolved=0, accuracy={}, median_km=math.nan, median_km_resolved=math.nan, errors_km=np.array(km))


def test_paired_comparison_counts_discordant_samples_and_tests_them() -> None:
    a = _errors([1.0, 5.0, 30.0, 2.0, 500.0, math.inf, 10.0, 3.0])
    b = _errors([40.0, 5.0, 20.0, 90.0, 500.0, 8.0, 300.0, 70.0])
    c = paired_comparison(a, b, km=25.0)
    # within 25 km: a hits samples 0, 1, 3, 6, 7; b hits 1, 2, 5
    assert (c["acc_a"], c["acc_b"]) == (5 / 8, 3 / 8) and c["diff"] == pytest.approx(2 / 8)
    assert (c["wins"], c["losses"]) == (4, 2) and c["p"] == pytest.approx(sign_test(4, 2))
    assert c["low"] <= c["diff"] <= c["high"]
    same = paired_comparison(a, a)  # a method against itself: no difference, nothing to test
    assert (same["diff"], same["low"], same["high"], same["wins"], same["losses"], same["p"]) == (0.0, 0.0, 0.0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="same samples"):
        paired_comparison(a, _errors([1.0]))
    table = comparison_table({"A": {"d": a}, "B": {"d": b}}, "d")
    assert "| A vs B | 62.5 | 37.5 | +25.0 [" in table and "| 4 / 2 |" in table

