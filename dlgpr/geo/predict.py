"""One interface for everything that says where a photo was taken.

Teachers of the distillation pipeline (a VLM behind an endpoint, or the embedded world-aware
teachers), GPS predictors (GeoCLIP, the retrieval geolocator), zero-shot VLMs and, later, the
GRPO-trained policies all implement :class:`GeoPredictor`: ``predict(samples)`` returns one
:class:`GeoPrediction` per sample, in order, and never raises on a bad sample (the prediction
comes back with ``ok=False`` and an error kind). A prediction carries names (city, country),
coordinates, or both; :func:`prediction_coordinates` turns names into coordinates through a
gazetteer where a predictor gave none, so every method is scored by the same distance metrics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from dlgpr.data.geo import GeoSample
from dlgpr.geo.gazetteer import Gazetteer, GeoMatch


@dataclass(frozen=True)
class GeoPrediction:
    """Where one predictor puts one image.

    Attributes:
        key: the sample's key.
        ok: False when the predictor gave no usable answer (``error`` says why).
        city, country: the place named (``""`` when none was named).
        lat, lon: coordinates when the predictor gives them (GPS predictors), else NaN: names
            are then geocoded for scoring.
        confidence: the predictor's own confidence in [0, 1] (NaN when it gives none).
        localizable: whether the predictor thinks the image can be located (None: not asked).
        reasoning: the chain of clues, for reasoning teachers and policies.
        raw: the raw reply text of a language model, kept for audits.
        extra: anything else worth keeping (token counts, top-k candidates...), JSON-serialisable.
    """

    key: str
    ok: bool = True
    error: str = ""
    city: str = ""
    country: str = ""
    lat: float = math.nan
    lon: float = math.nan
    confidence: float = math.nan
    localizable: bool | None = None
    reasoning: str = ""
    raw: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, key: str, error: str, **extra: Any) -> "GeoPrediction":
        return cls(key=key, ok=False, error=error, extra=dict(extra))

    @property
    def has_coordinates(self) -> bool:
        return math.isfinite(self.lat) and math.isfinite(self.lon)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN written as ``None``)."""
        d = asdict(self)
        for name in ("lat", "lon", "confidence"):
            if not math.isfinite(d[name]):
                d[name] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeoPrediction":
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        for name in ("lat", "lon", "confidence"):
            kw[name] = math.nan if kw.get(name) is None else float(kw[name])
        return cls(**kw)


@runtime_checkable
class GeoPredictor(Protocol):
    """``predict(samples) -> one GeoPrediction per sample, in order``; ``name`` labels table rows."""

    name: str

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]: ...


def prediction_coordinates(predictions: Sequence[GeoPrediction], gazetteer: Gazetteer | None
                           ) -> tuple[np.ndarray, np.ndarray, list[GeoMatch | None]]:
    """``(lat, lon, matches)`` of each prediction: its own coordinates when it has them, else its
    names resolved by ``gazetteer`` (NaN when unresolved, failed, or no gazetteer is given)."""
    lat = np.full(len(predictions), np.nan)
    lon = np.full(len(predictions), np.nan)
    matches: list[GeoMatch | None] = []
    for i, p in enumerate(predictions):
        match = None
        if p.ok and p.has_coordinates:
            lat[i], lon[i] = p.lat, p.lon
        elif p.ok and gazetteer is not None and (p.city or p.country):
            match = gazetteer.resolve(p.city or None, p.country or None)
            if match is not None:
                lat[i], lon[i] = match.lat, match.lon
        matches.append(match)
    return lat, lon, matches


__all__ = ["GeoPrediction", "GeoPredictor", "prediction_coordinates"]
