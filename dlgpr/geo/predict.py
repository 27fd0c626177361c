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

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from dlgpr.data.geo import GeoSample
from dlgpr.geo.gazetteer import Gazetteer, GeoMatch

log = logging.getLogger(__name__)


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


def read_predictions(path: str | os.PathLike) -> dict[str, GeoPrediction]:
    """Predictions saved one JSON object a line (``scripts/evaluate_geo.py``'s files), by key; the
    last line of a key wins; a torn or bad line is skipped and counted in a warning."""
    path = Path(path)
    out: dict[str, GeoPrediction] = {}
    if not path.is_file():
        return out
    bad = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            p = GeoPrediction.from_dict(json.loads(line))
        except (ValueError, TypeError):  # a line cut by a killed run
            bad += 1
            continue
        out[p.key] = p
    if bad:
        log.warning("%s: %d unreadable line(s) skipped", path, bad)
    return out


class StoredGeoPredictor:
    """Predictions another run already made, read back (``class_path: dlgpr.geo.predict.StoredGeoPredictor``).

    For example the policy's answers that ``scripts/evaluate_geo.py`` stored under
    ``<out_dir>/predictions/<dataset>/<method>.jsonl``, as the city source of a
    :class:`~dlgpr.geo.policy.HybridGeoPredictor`, so hybrid variants do not generate again. The
    file is read at the first ``predict`` (an earlier method of the same evaluation may write it)
    and again whenever a key is missing. A sample it does not hold is asked of ``fallback``, or
    fails with ``not_stored``.
    """

    def __init__(self, path: str, name: str = "stored", fallback: GeoPredictor | None = None) -> None:
        self.path, self.name, self.fallback = Path(path), name, fallback
        self._saved: dict[str, GeoPrediction] | None = None

    def __repr__(self) -> str:
        return f"StoredGeoPredictor(path={str(self.path)!r}, name={self.name!r}, fallback={self.fallback!r})"

    def predict(self, samples: Sequence[GeoSample]) -> list[GeoPrediction]:
        if self._saved is None or any(s.key not in self._saved for s in samples):
            self._saved = read_predictions(self.path)
        missing = [s for s in samples if s.key not in self._saved]
        if missing and self.fallback is None and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no stored predictions (run the method that writes them first)")
        asked = {p.key: p for p in self.fallback.predict(missing)} if missing and self.fallback is not None else {}
        return [self._saved.get(s.key) or asked.get(s.key) or GeoPrediction.failed(s.key, "not_stored") for s in samples]


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
