"""Scoring geo predictions against their samples, GLOBE's Table 1 as markdown, and the accuracy curve.

:func:`evaluate_predictions` puts every method on one scale: a prediction's coordinates are its
own (GPS predictors) or its names geocoded by the gazetteer (language models), through
:func:`~dlgpr.geo.predict.prediction_coordinates`; a prediction with coordinates but no names is
named by the gazetteer's ``reverse``. City accuracy compares normalised names, country accuracy
the gazetteer's ``canonical_country`` (codes, so "USA" = "United States"). A failed prediction
(``ok=False``, or none for a sample) is wrong everywhere and counted in ``failed``, by kind in
``errors``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dlgpr.data.geo import GeoSample
from dlgpr.geo.gazetteer import Gazetteer
from dlgpr.geo.metrics import THRESHOLDS_KM, GeoMetrics, geo_metrics, normalize_name
from dlgpr.geo.predict import GeoPrediction, prediction_coordinates
from dlgpr.metrics import paired_bootstrap_interval, sign_test

__all__ = ["MISSING", "GeoEvaluation", "accuracy_figure", "comparison_table", "evaluate_predictions", "paired_comparison", "results_table"]

MISSING = "missing"
"""Failure kind of a sample for which no prediction was given."""


@dataclass
class GeoEvaluation(GeoMetrics):
    """:class:`~dlgpr.geo.metrics.GeoMetrics` plus the predictions that failed.

    ``unresolved`` counts every prediction without coordinates, the failed ones included;
    ``failed`` those that gave no answer at all (``errors``: how many of each kind).
    """

    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(super().as_dict())
        d.update(failed=self.failed, errors=dict(self.errors))
        return d


def evaluate_predictions(samples: Sequence[GeoSample], predictions: Sequence[GeoPrediction], gazetteer: Gazetteer | None = None,
                         thresholds_km: Sequence[float] = THRESHOLDS_KM) -> GeoEvaluation:
    """Score ``predictions`` (matched to ``samples`` by key; order and extra keys do not matter).

    City (country) accuracy is NaN when no sample names its city (country).
    """
    by_key = {p.key: p for p in predictions}
    aligned = [by_key.get(s.key) or GeoPrediction.failed(s.key, MISSING) for s in samples]
    lat, lon, _ = prediction_coordinates(aligned, gazetteer)
    pred_city: list[str | None] = []
    pred_country: list[str | None] = []
    for p, la, lo in zip(aligned, lat, lon):
        city, country = (p.city, p.country) if p.ok else ("", "")
        if p.ok and not (city or country) and gazetteer is not None and math.isfinite(la):
            match = gazetteer.reverse(float(la), float(lo))
            city, country = match.city or "", match.country or ""
        pred_city.append(city or None)
        pred_country.append(country or None)
    has_city, has_country = any(s.city for s in samples), any(s.country for s in samples)
    m = geo_metrics(lat, lon, [s.lat for s in samples], [s.lon for s in samples], thresholds_km,
                    pred_city=pred_city, true_city=[s.city for s in samples] if has_city else None,
                    pred_country=pred_country, true_country=[s.country for s in samples] if has_country else None,
                    canonical=gazetteer.canonical_country if gazetteer is not None else normalize_name)
    errors = Counter(p.error or "failed" for p in aligned if not p.ok)
    return GeoEvaluation(**{f: getattr(m, f) for f in GeoMetrics.__dataclass_fields__},
                         failed=sum(errors.values()), errors=dict(sorted(errors.items())))


def paired_comparison(a: GeoEvaluation, b: GeoEvaluation, km: float = 25.0, seed: int = 0) -> dict[str, float]:
    """Method ``a`` against ``b`` on the same samples (same order): accuracy within ``km`` of each,
    their difference with a 95 % paired bootstrap interval over samples, and the exact sign test
    over the samples where exactly one of them is within ``km`` (``wins``: only ``a``)."""
    ea, eb = np.asarray(a.errors_km, dtype=np.float64), np.asarray(b.errors_km, dtype=np.float64)
    if ea.shape != eb.shape or ea.size == 0:
        raise ValueError(f"paired_comparison: the two evaluations must cover the same samples ({ea.size} vs {eb.size})")
    hit_a, hit_b = ea <= km, eb <= km
    diff = torch.from_numpy(hit_a.astype(np.float64) - hit_b.astype(np.float64))
    low, high = paired_bootstrap_interval(diff, seed=seed)
    wins, losses = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
    return {"km": float(km), "acc_a": float(hit_a.mean()), "acc_b": float(hit_b.mean()), "diff": float(diff.mean()),
            "low": low, "high": high, "wins": wins, "losses": losses, "p": sign_test(wins, losses)}


def comparison_table(results: Mapping[str, Mapping[str, GeoEvaluation]], dataset: str, km: float = 25.0) -> str:
    """Every pair of methods on ``dataset`` (in the table's order) by :func:`paired_comparison`, as markdown."""
    methods = [m for m, by in results.items() if dataset in by]
    lines = [f"| {dataset}: A vs B within {_threshold_label(km)} | A | B | A - B (95 % interval) | only A / only B | sign test p |",
             "|---|---:|---:|---|---:|---:|"]
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            c = paired_comparison(results[a][dataset], results[b][dataset], km)
            lines.append(f"| {a} vs {b} | {100 * c['acc_a']:.1f} | {100 * c['acc_b']:.1f} | {100 * c['diff']:+.1f} "
                         f"[{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] | {c['wins']} / {c['losses']} | {c['p']:.2g} |")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:.1f}"


def _km(x: float) -> str:
    return "–" if math.isnan(x) else ("∞" if math.isinf(x) else f"{x:,.1f}")


def _threshold_label(km: float) -> str:
    return f"{int(km) if float(km).is_integer() else km} km"


def results_table(results: Mapping[str, Mapping[str, GeoEvaluation]], datasets: Sequence[str] | None = None) -> str:
    """GLOBE's Table 1 as markdown: one row per method, one column group per dataset.

    ``results[method][dataset]``. Each group: accuracy (%) within 1 / 25 / 200 / 750 / 2500 km,
    city and country accuracy (%), median error (km; ∞ when over half the predictions have no
    coordinates), and ``unresolved / failed`` counts (answered but not locatable / no answer).
    The first column of each group names the dataset and its size. A method without a dataset
    shows dashes.
    """
    if datasets is None:
        datasets = list(dict.fromkeys(d for per in results.values() for d in per))
    sizes = {d: next((per[d].n for per in results.values() if d in per), 0) for d in datasets}
    thresholds = next((tuple(r.accuracy) for per in results.values() for r in per.values()), THRESHOLDS_KM)
    columns = [_threshold_label(k) for k in thresholds] + ["city", "country", "median km", "unresolved / failed"]
    header = ["method"]
    for d in datasets:
        header += [f"**{d}** (n={sizes[d]}) {columns[0]}", *columns[1:]]
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for method, per in results.items():
        row = [method]
        for d in datasets:
            r = per.get(d)
            if r is None:
                row += ["–"] * len(columns)
                continue
            row += [_pct(r.accuracy[k]) for k in thresholds]
            row += [_pct(r.city_accuracy), _pct(r.country_accuracy), _km(r.median_km), f"{r.unresolved - r.failed} / {r.failed}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def accuracy_figure(results: Mapping[str, Mapping[str, GeoEvaluation]], datasets: Sequence[str] | None = None):
    """Matplotlib figure: accuracy (%) against the distance threshold (log scale), one line per
    method, one panel per dataset; the table's thresholds are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if datasets is None:
        datasets = list(dict.fromkeys(d for per in results.values() for d in per))
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.5 * max(1, len(datasets)), 3.5), dpi=120, squeeze=False)
    grid = np.logspace(-1, np.log10(20_000), 200)
    for ax, d in zip(axes[0], datasets):
        for method, per in results.items():
            r = per.get(d)
            if r is None or not r.n:
                continue
            err = np.sort(np.asarray(r.errors_km, dtype=np.float64))
            curve = 100 * np.searchsorted(err, grid, side="right") / r.n
            (line,) = ax.plot(grid, curve, label=method)
            ks = list(r.accuracy)
            ax.plot(ks, [100 * r.accuracy[k] for k in ks], "o", color=line.get_color(), markersize=4)
        for k in THRESHOLDS_KM:
            ax.axvline(k, color="grey", alpha=0.2, linewidth=0.8)
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel("distance threshold (km)")
        ax.set_title(d, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig

