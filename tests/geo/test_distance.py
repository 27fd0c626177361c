"""Great-circle distances checked against known city pairs and an independent formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlgpr.geo.distance import EARTH_RADIUS_KM, haversine_km, pairwise_haversine_km, spherical_mean

PARIS, LONDON = (48.8566, 2.3522), (51.5074, -0.1278)
NEW_YORK, LOS_ANGELES = (40.7128, -74.0060), (34.0522, -118.2437)
SYDNEY, TOKYO = (-33.8688, 151.2093), (35.6762, 139.6503)


def _atan2_reference(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Central angle by the Vincenty-on-a-sphere atan2 form: another formula than haversine."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    y = math.hypot(math.cos(p2) * math.sin(dl), math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl))
    x = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return EARTH_RADIUS_KM * math.atan2(y, x)


@pytest.mark.parametrize(("a", "b", "km"), [
    (PARIS, LONDON, 343.6),          # commonly quoted 344 km
    (NEW_YORK, LOS_ANGELES, 3935.8),  # commonly quoted 3936 km
    ((0.0, 0.0), (0.0, 90.0), 10007.6),  # a quarter of the equator: pi/2 * R
])
def test_known_city_pairs(a: tuple[float, float], b: tuple[float, float], km: float) -> None:
    d = float(haversine_km(*a, *b))
    assert d == pytest.approx(km, abs=1.0)
    assert d == pytest.approx(_atan2_reference(*a, *b), abs=1e-6)
    assert float(haversine_km(*b, *a)) == pytest.approx(d, abs=1e-9)  # symmetric


def test_edge_cases() -> None:
    half_circumference = math.pi * EARTH_RADIUS_KM  # 20015.1 km
    assert float(haversine_km(*PARIS, *PARIS)) == 0.0
    assert float(haversine_km(0, 0, 0, 180)) == pytest.approx(half_circumference, rel=1e-12)
    assert float(haversine_km(90, 0, -90, 0)) == pytest.approx(half_circumference, rel=1e-12)
    assert float(haversine_km(48.8566, 2.3522, -48.8566, -177.6478)) == pytest.approx(half_circumference, rel=1e-9)
    # At a pole the longitude means nothing.
    assert float(haversine_km(90, 0, 90, 123)) == pytest.approx(0.0, abs=1e-9)
    assert float(haversine_km(-90, 10, -89, 170)) == pytest.approx(math.pi / 180 * EARTH_RADIUS_KM, rel=1e-9)
    # Across the dateline: 179.9 E to 179.9 W is 0.2 degrees of longitude, not 359.8.
    assert float(haversine_km(0, 179.9, 0, -179.9)) == pytest.approx(0.2 * math.pi / 180 * EARTH_RADIUS_KM, rel=1e-9)
    # One degree of latitude and a 1 km step: short distances stay accurate.
    assert float(haversine_km(0, 0, 1, 0)) == pytest.approx(111.195, abs=1e-3)
    assert float(haversine_km(45, 7, 45 + 1 / 111.195, 7)) == pytest.approx(1.0, abs=1e-4)
    assert math.isnan(float(haversine_km(math.nan, 0, 0, 0)))


def test_vectorised_numpy_and_torch_agree() -> None:
    lat1 = np.array([PARIS[0], NEW_YORK[0], SYDNEY[0], 0.0])
    lon1 = np.array([PARIS[1], NEW_YORK[1], SYDNEY[1], 179.9])
    lat2 = np.array([LONDON[0], LOS_ANGELES[0], TOKYO[0], 0.0])
    lon2 = np.array([LONDON[1], LOS_ANGELES[1], TOKYO[1], -179.9])
    d_np = haversine_km(lat1, lon1, lat2, lon2)
    assert isinstance(d_np, np.ndarray) and d_np.shape == (4,)
    expected = [_atan2_reference(*args) for args in zip(lat1, lon1, lat2, lon2)]
    np.testing.assert_allclose(d_np, expected, atol=1e-6)
    d_t = haversine_km(torch.tensor(lat1), torch.tensor(lon1), torch.tensor(lat2), torch.tensor(lon2))
    assert isinstance(d_t, torch.Tensor) and d_t.dtype == torch.float64
    np.testing.assert_allclose(d_t.numpy(), d_np, atol=1e-9)
    # float32 stays float32 and close; broadcasting a scalar against a batch works.
    d32 = haversine_km(torch.tensor(lat1, dtype=torch.float32), torch.tensor(lon1, dtype=torch.float32), 0.0, 0.0)
    assert d32.dtype == torch.float32 and d32.shape == (4,)
    np.testing.assert_allclose(d32.numpy(), haversine_km(lat1, lon1, 0.0, 0.0), rtol=1e-4)


def test_pairwise_and_spherical_mean() -> None:
    d = pairwise_haversine_km([PARIS[0], NEW_YORK[0]], [PARIS[1], NEW_YORK[1]],
                              [LONDON[0], LOS_ANGELES[0], PARIS[0]], [LONDON[1], LOS_ANGELES[1], PARIS[1]])
    assert d.shape == (2, 3) and d[0, 2] == 0.0 and d[1, 1] == pytest.approx(3935.75, abs=0.1)
    lat, lon = spherical_mean([10.0, -10.0], [179.0, -179.0])  # straddles the dateline
    assert lat == pytest.approx(0.0, abs=1e-9) and abs(lon) == pytest.approx(180.0, abs=1e-9)
    with pytest.raises(ValueError, match="spherical_mean"):
        spherical_mean([0.0, 0.0], [0.0, 180.0])
