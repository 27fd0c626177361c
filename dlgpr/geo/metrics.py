"""Geo-localization metrics: accuracy at distance thresholds, city and country accuracy, median error.

The thresholds are the GLOBE / IM2GPS ones (street 1 km, city 25 km, region 200 km, country
750 km, continent 2500 km). A prediction that could not be turned into coordinates (a name no
gazetteer knows, a refusal) is given NaN coordinates: it is wrong at every threshold, its error
is infinite for the median, and it is counted in ``unresolved`` so that a table can say how
many there were.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dlgpr.geo.distance import haversine_km

#: GLOBE's distance thresholds in km (street, city, region, country, continent).
THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)


def normalize_name(name: str | None) -> str:
    """Lower case, accents removed, punctuation to spaces, spaces collapsed: ``"München "`` -> ``"munchen"``.

    ``ß`` becomes ``ss`` and ``&`` ``and``; ``None`` gives ``""`` (a missing name matches nothing).
    """
    if not name:
        return ""
    s = unicodedata.normalize("NFKD", str(name).replace("ß", "ss").replace("&", " and "))
    s = "".join(ch for ch in s if not unicodedata.combining(ch)).lower()
    s = re.sub(r"[\W_]+", " ", s)
    return " ".join(s.split())


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray([math.nan if v is None else v for v in x] if isinstance(x, (list, tuple)) else x, dtype=np.float64)


def threshold_key(km: float) -> str:
    """``acc@25km``-style name of a threshold (integers printed without a decimal point)."""
    return f"acc@{int(km) if float(km).is_integer() else km}km"


def _name_accuracy(pred: Sequence[str | None], true: Sequence[str | None], canonical: Callable[[str | None], str]) -> float:
    if len(pred) != len(true):
        raise ValueError(f"names: {len(pred)} predictions for {len(true)} ground truths")
    if not true:
        return math.nan
    hits = sum(1 for p, t in zip(pred, true) if canonical(t) and canonical(p) == canonical(t))
    return hits / len(true)


@dataclass
class GeoMetrics:
    """What :func:`geo_metrics` returns; ``as_dict`` flattens it for logging and tables."""

    n: int
    unresolved: int
    accuracy: dict[float, float]
    median_km: float
    median_km_resolved: float
    city_accuracy: float = math.nan
    country_accuracy: float = math.nan
    errors_km: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def as_dict(self) -> dict[str, float]:
        d: dict[str, float] = {threshold_key(k): v for k, v in self.accuracy.items()}
        d.update(n=self.n, unresolved=self.unresolved, median_km=self.median_km,
                 median_km_resolved=self.median_km_resolved, city_acc=self.city_accuracy,
                 country_acc=self.country_accuracy)
        return d


def geo_metrics(pred_lat: Any, pred_lon: Any, true_lat: Any, true_lon: Any,
                thresholds_km: Sequence[float] = THRESHOLDS_KM,
                pred_city: Sequence[str | None] | None = None, true_city: Sequence[str | None] | None = None,
                pred_country: Sequence[str | None] | None = None, true_country: Sequence[str | None] | None = None,
                canonical: Callable[[str | None], str] = normalize_name) -> GeoMetrics:
    """Accuracy at each threshold (fraction with error <= threshold), median error, city/country accuracy.

    Coordinates are 1-D tensors, arrays or lists (``None`` or NaN = unresolved prediction). Names
    are compared after ``canonical`` (default :func:`normalize_name`; a gazetteer's
    ``canonical_country`` makes "USA" equal "United States"); a missing predicted name is wrong.
    Ground-truth coordinates must be finite.
    """
    plat, plon, tlat, tlon = (_as_numpy(x).reshape(-1) for x in (pred_lat, pred_lon, true_lat, true_lon))
    n = len(tlat)
    if not (len(plat) == len(plon) == n == len(tlon)):
        raise ValueError(f"coordinates: lengths differ (pred {len(plat)}/{len(plon)}, true {n}/{len(tlon)})")
    if not (np.isfinite(tlat).all() and np.isfinite(tlon).all()):
        raise ValueError("true_lat/true_lon: ground-truth coordinates must be finite")
    err = haversine_km(plat, plon, tlat, tlon)
    resolved = np.isfinite(err)
    err = np.where(resolved, err, np.inf)
    acc = {float(k): (float((err <= k).mean()) if n else math.nan) for k in thresholds_km}
    out = GeoMetrics(n=n, unresolved=int((~resolved).sum()), accuracy=acc,
                     median_km=float(np.median(err)) if n else math.nan,
                     median_km_resolved=float(np.median(err[resolved])) if resolved.any() else math.nan,
                     errors_km=err)
    if true_city is not None:
        out.city_accuracy = _name_accuracy(list(pred_city or [None] * n), list(true_city), normalize_name)
    if true_country is not None:
        out.country_accuracy = _name_accuracy(list(pred_country or [None] * n), list(true_country), canonical)
    return out


class GeoAccumulator:
    """Collects batches (``update``) and scores them once (``compute``): for evaluation loops."""

    def __init__(self, thresholds_km: Sequence[float] = THRESHOLDS_KM,
                 canonical: Callable[[str | None], str] = normalize_name) -> None:
        self.thresholds_km, self.canonical = tuple(thresholds_km), canonical
        self.reset()

    def reset(self) -> None:
        self._coords: list[np.ndarray] = []
        self._names: dict[str, list[str | None]] = {"pred_city": [], "true_city": [], "pred_country": [], "true_country": []}

    def update(self, pred_lat: Any, pred_lon: Any, true_lat: Any, true_lon: Any, **names: Sequence[str | None]) -> None:
        """Add a batch; ``names`` are any of ``pred_city``, ``true_city``, ``pred_country``, ``true_country``."""
        cols = [_as_numpy(x).reshape(-1) for x in (pred_lat, pred_lon, true_lat, true_lon)]
        if len({len(c) for c in cols}) != 1:
            raise ValueError("update: coordinate batches differ in length")
        self._coords.append(np.stack(cols, axis=1))
        for key, values in names.items():
            if key not in self._names:
                raise ValueError(f"update: unknown name field {key!r} (expected one of {sorted(self._names)})")
            if len(values) != len(cols[0]):
                raise ValueError(f"update: {key} has {len(values)} names for {len(cols[0])} coordinates")
            self._names[key].extend(values)

    def compute(self) -> GeoMetrics:
        c = np.concatenate(self._coords) if self._coords else np.zeros((0, 4))
        n = len(c)
        for key, values in self._names.items():
            if 0 < len(values) < n:
                raise ValueError(f"compute: {key} was given for {len(values)} of {n} samples (give it with every batch)")
        names = {k: (v or None) for k, v in self._names.items()}
        return geo_metrics(c[:, 0], c[:, 1], c[:, 2], c[:, 3], self.thresholds_km,
                           pred_city=names["pred_city"], true_city=names["true_city"],
                           pred_country=names["pred_country"], true_country=names["true_country"],
                           canonical=self.canonical)
