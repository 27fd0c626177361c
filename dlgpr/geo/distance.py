"""Great-circle distance on a spherical Earth, vectorised over torch tensors or numpy arrays.

GLOBE (and IM2GPS, GeoCLIP) score a geo-localization by the great-circle distance between the
predicted and the true coordinates; the haversine form is numerically stable for the short
distances (1 km) that the finest threshold needs, unlike the spherical law of cosines.
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import torch

#: Mean Earth radius (IUGG, (2a + b) / 3), in km.
EARTH_RADIUS_KM = 6371.0088

ArrayLike = Union[torch.Tensor, np.ndarray, float, int, list, tuple]


def _is_torch(*xs: Any) -> bool:
    return any(isinstance(x, torch.Tensor) for x in xs)


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike,
                 radius_km: float = EARTH_RADIUS_KM) -> Any:
    """Great-circle distance in km between ``(lat1, lon1)`` and ``(lat2, lon2)`` in degrees.

    Arguments broadcast against each other. If any is a torch tensor the result is a float64-or-input-
    dtype tensor on its device; otherwise a numpy array (a numpy float for scalar inputs). NaN
    coordinates give NaN distances (an unresolved prediction; :func:`dlgpr.geo.metrics.geo_metrics`
    counts them as wrong).
    """
    if _is_torch(lat1, lon1, lat2, lon2):
        ref = next(x for x in (lat1, lon1, lat2, lon2) if isinstance(x, torch.Tensor))
        dtype = ref.dtype if ref.dtype.is_floating_point else torch.float64
        t = [torch.as_tensor(x, dtype=dtype, device=ref.device) for x in (lat1, lon1, lat2, lon2)]
        p1, l1, p2, l2 = (torch.deg2rad(x) for x in t)
        a = torch.sin((p2 - p1) / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin((l2 - l1) / 2) ** 2
        return 2 * radius_km * torch.asin(torch.sqrt(torch.clamp(a, 0.0, 1.0)))
    p1, l1, p2, l2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * radius_km * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def pairwise_haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> Any:
    """``[N, M]`` distances between N points and M points (e.g. predictions against a gallery)."""
    if _is_torch(lat1, lon1, lat2, lon2):
        lat1, lon1 = torch.as_tensor(lat1)[:, None], torch.as_tensor(lon1)[:, None]
        lat2, lon2 = torch.as_tensor(lat2)[None, :], torch.as_tensor(lon2)[None, :]
    else:
        lat1, lon1 = np.asarray(lat1, dtype=np.float64)[:, None], np.asarray(lon1, dtype=np.float64)[:, None]
        lat2, lon2 = np.asarray(lat2, dtype=np.float64)[None, :], np.asarray(lon2, dtype=np.float64)[None, :]
    return haversine_km(lat1, lon1, lat2, lon2)


def to_unit_vectors(lat: ArrayLike, lon: ArrayLike) -> np.ndarray:
    """``[N, 3]`` points on the unit sphere: the nearest by chord is the nearest by great circle."""
    p, l = np.radians(np.asarray(lat, dtype=np.float64)), np.radians(np.asarray(lon, dtype=np.float64))
    return np.stack([np.cos(p) * np.cos(l), np.cos(p) * np.sin(l), np.sin(p)], axis=-1)


def spherical_mean(lat: ArrayLike, lon: ArrayLike, weights: ArrayLike | None = None) -> tuple[float, float]:
    """The (weighted) mean direction of points on the sphere as ``(lat, lon)``; right across the dateline."""
    v = to_unit_vectors(lat, lon).reshape(-1, 3)
    w = np.ones(len(v)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    m = (v * w[:, None]).sum(axis=0)
    norm = float(np.linalg.norm(m))
    if not math.isfinite(norm) or norm <= 1e-9 * float(np.abs(w).sum()):
        raise ValueError("spherical_mean: points cancel out (no mean direction)")
    x, y, z = m / norm
    return math.degrees(math.asin(max(-1.0, min(1.0, z)))), math.degrees(math.atan2(y, x))
