"""Accuracy at thresholds, median error and name accuracy on a hand-made batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlgpr.geo.metrics import THRESHOLDS_KM, GeoAccumulator, geo_metrics, normalize_name, threshold_key

# Ground truth: five photos taken in Paris. Predictions at known distances (1 degree of latitude
# = 111.195 km on the mean sphere): 0.5 km, 10 km, 150 km, 600 km, 2000 km, 5000 km off, and one
# unresolved answer.
KM_PER_DEG = 111.19508
OFFSETS_KM = [0.5, 10.0, 150.0, 600.0, 2000.0, 5000.0]


def _batch() -> tuple[list[float | None], list[float | None], list[float], list[float]]:
    true_lat, true_lon = [48.8566] * 7, [2.3522] * 7
    pred_lat: list[float | None] = [48.8566 + km / KM_PER_DEG for km in OFFSETS_KM] + [None]
    pred_lon: list[float | None] = [2.3522] * 6 + [None]
    return pred_lat, pred_lon, true_lat, true_lon


def test_accuracy_at_thresholds_counts_unresolved_as_wrong() -> None:
    m = geo_metrics(*_batch())
    assert m.n == 7 and m.unresolved == 1
    expected = {1.0: 1 / 7, 25.0: 2 / 7, 200.0: 3 / 7, 750.0: 4 / 7, 2500.0: 5 / 7}
    for k, v in expected.items():
        assert m.accuracy[k] == pytest.approx(v)
    assert m.median_km == pytest.approx(600.0, abs=0.01)  # sorted: 0.5 10 150 [600] 2000 5000 inf
    assert m.median_km_resolved == pytest.approx((150.0 + 600.0) / 2, abs=0.01)
    assert math.isinf(m.errors_km[-1])
    d = m.as_dict()
    assert d["acc@25km"] == pytest.approx(2 / 7) and d["unresolved"] == 1 and tuple(m.accuracy) == THRESHOLDS_KM


def test_torch_inputs_and_nan_unresolved() -> None:
    pl, pn, tl, tn = _batch()
    pl_t = torch.tensor([math.nan if v is None else v for v in pl])
    pn_t = torch.tensor([math.nan if v is None else v for v in pn])
    m = geo_metrics(pl_t, pn_t, torch.tensor(tl), torch.tensor(tn))
    assert m.unresolved == 1 and m.accuracy[200.0] == pytest.approx(3 / 7)


def test_threshold_is_inclusive_and_everything_right() -> None:
    m = geo_metrics([0.0, 10.0], [0.0, 20.0], [0.0, 10.0], [0.0, 20.0])
    assert all(v == 1.0 for v in m.accuracy.values()) and m.median_km == 0.0 and m.unresolved == 0


def test_name_normalisation_and_accuracy() -> None:
    assert normalize_name("  München ") == "munchen"
    assert normalize_name("São Paulo") == "sao paulo"
    assert normalize_name("St. John's") == "st john s"
    assert normalize_name("Straße") == "strasse"
    assert normalize_name(None) == ""
    m = geo_metrics([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0],
                    pred_city=["MÜNCHEN", "Roma", None, "paris"], true_city=["München", "Rome", "Oslo", "Paris"],
                    pred_country=["germany", "Italy", "Norway", "USA"],
                    true_country=["Germany", "Italy", "Norway", "United States"])
    assert m.city_accuracy == pytest.approx(2 / 4)     # Roma != Rome without a gazetteer, None is wrong
    assert m.country_accuracy == pytest.approx(3 / 4)  # USA != United States without a canonicaliser
    alias = {"usa": "united states"}
    m2 = geo_metrics([0] * 4, [0] * 4, [0] * 4, [0] * 4, pred_country=["germany", "Italy", "Norway", "USA"],
                     true_country=["Germany", "Italy", "Norway", "United States"],
                     canonical=lambda s: alias.get(normalize_name(s), normalize_name(s)))
    assert m2.country_accuracy == 1.0


def test_accumulator_equals_one_shot_and_validates() -> None:
    pl, pn, tl, tn = _batch()
    acc = GeoAccumulator()
    acc.update(pl[:3], pn[:3], tl[:3], tn[:3], true_city=["Paris"] * 3, pred_city=["Paris", "Lyon", "Paris"])
    acc.update(pl[3:], pn[3:], tl[3:], tn[3:], true_city=["Paris"] * 4, pred_city=[None] * 4)
    m = acc.compute()
    ref = geo_metrics(pl, pn, tl, tn)
    assert m.accuracy == ref.accuracy and m.median_km == ref.median_km and m.city_accuracy == pytest.approx(2 / 7)
    with pytest.raises(ValueError, match="given for 7 of 8"):
        acc.update([0.0], [0.0], [0.0], [0.0])
        acc.compute()
    with pytest.raises(ValueError, match="true_lat"):
        geo_metrics([0.0], [0.0], [math.nan], [0.0])
    with pytest.raises(ValueError, match="lengths differ"):
        geo_metrics([0.0, 1.0], [0.0], [0.0], [0.0])
    assert threshold_key(25.0) == "acc@25km" and threshold_key(0.5) == "acc@0.5km"
    np.testing.assert_array_equal(geo_metrics([], [], [], []).n, 0)
